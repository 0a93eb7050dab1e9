"""The command line of Darktable_proxies.py."""
import re
import subprocess
import sys

from tests.conftest import ROOT
from utils.registry import PROXIES


def run(*args):
    return subprocess.run([sys.executable, "Darktable_proxies.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_list_proxies_one_line_each():
    proc = run("--list-proxies")
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(PROXIES)
    for line in lines:
        assert re.fullmatch(r"\S+  (\S+=\S+\.\.\S+ ?)+", line)


def test_help_lists_every_proxy():
    proc = run("--help")
    assert proc.returncode == 0
    for name in PROXIES:
        assert re.search(rf"^\s+{name}\s", proc.stdout, re.M)


def test_bad_input_is_one_line():
    for args, message in [(("nosuch", "--preview", "1"), "unknown proxy type 'nosuch'"),
                          (("exposure", "-p", "gain", "--preview", "1"), "no slider 'gain'"),
                          (("exposure", "--preview", "1", "--images", "/nonexistent"), "does not exist")]:
        proc = run(*args)
        assert proc.returncode == 2, args
        assert proc.stderr.strip().splitlines() == [f"error: {proc.stderr.strip()[7:]}"]
        assert message in proc.stderr
