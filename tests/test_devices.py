"""The CPU allocator setting every script applies (utils.devices.keep_freed_memory)."""
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# page faults of the last 3 of 20 passes that each allocate, write and free 2 x 64 MB (glibc
# settles on reusing the freed memory after a few passes)
PROBE = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from utils.devices import keep_freed_memory
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(20):
    if i == 17:
        before = faults()
    x = torch.ones(1, 64, 512, 512)
    y = torch.nn.functional.silu(x)
    del x, y
print(faults() - before)
"""


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc's mallopt")
def test_freed_tensor_memory_is_reused_without_fresh_page_faults():
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True,
                             text=True, check=True)
        return int(out.stdout.split()[-1])
    pages = (64 << 20) // 4096
    assert faults("default") > pages // 2        # glibc maps fresh pages for each big tensor
    assert faults("keep") < pages // 20          # with the setting they are reused
