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


def _tiny_proxy(family: str):
    import torch
    from models.networks import ModelSpec, new_network_options
    from models.proxy import Proxy
    from utils.proxies.registry import EXPOSURE
    torch.manual_seed(0)
    spec = ModelSpec(family, "tiny", 3, 3, len(EXPOSURE.sliders), **new_network_options(family))
    return Proxy(spec, EXPOSURE.sliders, EXPOSURE.value_scale).eval()


def test_inference_dtype_is_bf16_only_for_the_convolution_families_where_the_device_computes_it():
    import torch
    from utils.devices import inference_dtype, native_bf16
    cpu = torch.device("cpu")
    for family in ("pointwise", "multiscale"):
        assert inference_dtype(cpu, family) is None
    for family in ("unet", "neighbourhood"):
        assert inference_dtype(cpu, family) == (torch.bfloat16 if native_bf16(cpu) else None)
    assert inference_dtype(torch.device("meta"), "unet") is None     # a device not measured: fp32
    assert inference_dtype(torch.device("cuda"), "unet") is None     # measured slower there


def test_training_is_bf16_only_for_the_convolution_families_on_cuda():
    import torch
    from utils.devices import training_dtype
    cuda, cpu = torch.device("cuda"), torch.device("cpu")      # named only: nothing runs on them
    assert [training_dtype(cuda, f) for f in ("unet", "neighbourhood")] == [torch.bfloat16] * 2
    assert [training_dtype(cuda, f) for f in ("pointwise", "multiscale", "exact")] == [None] * 3
    assert [training_dtype(cpu, f) for f in ("unet", "pointwise")] == [None] * 2


def test_a_proxy_runs_in_its_inference_dtype_only_without_gradients():
    import torch
    proxy = _tiny_proxy("unet")
    x, u = torch.rand(1, 3, 32, 32) * 0.8 + 0.1, torch.tensor([[0.3, 0.6]])
    with torch.no_grad():
        fp32 = proxy(x, u)
    proxy.inference_dtype = torch.bfloat16
    with torch.no_grad():
        fast = proxy(x, u)
    slow = proxy(x, u.clone().requires_grad_())             # gradients: fp32 as in training
    assert fast.dtype == torch.float32 and not torch.equal(fast, fp32)
    assert torch.allclose(fast, fp32, rtol=0.05, atol=1e-3)
    assert torch.equal(slow.detach(), fp32)


def test_a_loaded_proxy_gets_the_inference_dtype_of_its_family_on_its_device(tmp_path):
    import torch
    from models.proxy import save_checkpoint
    from utils.devices import inference_dtype
    from utils.proxies.trained import load_trained
    from utils.runs import RunPaths
    paths = RunPaths(tmp_path)
    for family in ("unet", "pointwise"):
        paths.weights(family).mkdir()
        save_checkpoint(paths.weights(family) / "best.pt", _tiny_proxy(family), proxy_type="exposure")
        proxy, _ = load_trained(paths, family, torch.device("cpu"))
        assert proxy.inference_dtype == inference_dtype(torch.device("cpu"), family)


def test_a_proxy_without_inference_dtype_keeps_its_callers_autocast():
    import torch
    proxy = _tiny_proxy("unet")
    x, u = torch.rand(1, 3, 32, 32) * 0.8 + 0.1, torch.tensor([[0.3, 0.6]])
    with torch.no_grad():
        fp32 = proxy(x, u)
        with torch.autocast("cpu", dtype=torch.bfloat16):       # as training on CUDA, the bench's variants
            assert not torch.equal(proxy(x, u), fp32)
