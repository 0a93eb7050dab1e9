"""The command line: Darktable_proxies.py, and the flags every script shares."""
import re
import subprocess
import sys

from tests.conftest import ROOT
from utils.proxies.registry import PROXIES


def run(*args, env=None):
    return subprocess.run([sys.executable, "Darktable_proxies.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_list_proxies_one_line_each():
    proc = run("--list-proxies")
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(PROXIES)
    for line in lines:   # name, sliders, then after "  # " the GUI name and close types
        assert re.fullmatch(r"\S+ +(\S+=\S+\.\.\S+ ?)+ # [^#]+", line)
    by_name = {ln.split()[0]: ln for ln in lines}
    assert by_name["colorbalance"].endswith("# color balance; see also colorbalancergb")
    assert by_name["colorbalancergb"].endswith("# color balance rgb; see also colorbalance")


def test_help_lists_every_proxy():
    proc = run("--help")
    assert proc.returncode == 0
    for name in PROXIES:
        assert re.search(rf"^\s+{name}\s", proc.stdout, re.M)


def test_bad_input_is_one_line():
    for args, message in [(("nosuch", "-n", "1"), "unknown proxy type 'nosuch'"),
                          (("colourbalance", "-n", "1"), "nearest: colorbalance (color balance), "
                                                         "colorbalancergb (color balance rgb)"),
                          (("exposure", "-p", "gain", "-n", "1"), "no slider 'gain'"),
                          (("exposure", "-n", "0"), "-n N"),
                          (("exposure",), "-n N"),
                          (("exposure", "-n", "1", "--images", "/nonexistent"), "does not exist"),
                          (("exposure", "-n", "1", "--set", "SEED=x"), "not a valid int"),
                          (("exposure", "-n", "1", "--shard", "3/2"), "--shard"),
                          (("exposure", "-d", "nosuch"), "no dataset 'nosuch'")]:
        proc = run(*args)
        assert proc.returncode == 2, args
        assert proc.stderr.strip().splitlines() == [f"error: {proc.stderr.strip()[7:]}"]
        assert message in proc.stderr


def test_empty_and_unreadable_image_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run("exposure", "-n", "1", "--images", str(tmp_path / "empty"))
    assert proc.returncode == 2 and "holds no raw or TIFF/PNG/JPEG files" in proc.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "photo.dng").write_bytes(b"this is not a raw file")
    proc = run("exposure", "-n", "1", "--images", str(bad))
    assert proc.returncode == 2 and "photo.dng is unreadable" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_every_script_takes_the_common_flags():
    for script in ("Darktable_proxies.py", "Eval.py", "Sweep.py", "Pipeline_regression.py"):
        proc = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, script
        for flag in ("--device", "--out", "--set", "--quiet"):
            assert flag in proc.stdout, (script, flag)
        if script != "Pipeline_regression.py":
            for flag in ("-p SLIDERS, --params SLIDERS", "-c NAME, --name NAME"):
                assert flag in proc.stdout, (script, flag)


def test_a_missing_device_is_refused_before_any_work(tmp_path):
    import torch
    if torch.backends.mps.is_available():
        return
    proc = run("exposure", "-n", "1", "--device", "mps", "--out", str(tmp_path))
    assert proc.returncode == 2 and "no Apple MPS device" in proc.stderr
    assert not any(tmp_path.iterdir())       # nothing generated


def test_quiet_silences_messages_and_bars():
    import logging

    from utils.progress import progress
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.WARNING)
        assert progress(3, "x", "item").disable
        root.setLevel(logging.INFO)
        assert not progress(3, "x", "item").disable
        assert progress(3, "x", "item", enabled=False).disable
    finally:
        root.setLevel(level)
