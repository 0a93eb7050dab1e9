"""darktable failing during generation, and the chroot wrapper killed mid-render (marked
``darktable``).

The faults come from a stand-in DARKTABLE_CLI that passes every call through to the real
darktable-cli, except the renders of one image ("the bad image"), where it crashes, hangs,
exits 0 without output, or runs darktable and then damages the tap-out it wrote.
"""
import csv
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from utils.darktable.install import own_install_path
from utils.data.images import list_images
from utils.data.manifest import read_manifest
from utils.settings import DEFAULTS

pytestmark = pytest.mark.darktable
NAME = "exposure_exposure_black"
HANG_TIMEOUT_S = 15   # DARKTABLE_TIMEOUT_S for the hanging darktable (real calls must fit in it)

FAKE = r'''#!{python}
import glob, os, subprocess, sys, time
REAL, BAD, CALLS, MODE = {real!r}, {bad!r}, {calls!r}, {mode!r}
args = sys.argv[1:]


def renders_bad_image():
    if "--dump-pipe" not in args:   # --version, module version probes
        return False
    bad = open(BAD, "rb").read()
    return any(open(os.path.join(args[0], n), "rb").read() == bad
               for n in os.listdir(args[0]) if not n.endswith(".xmp"))


if not renders_bad_image():
    os.execv(REAL, [REAL] + args)
with open(CALLS, "a") as f:
    f.write("call\n")
if MODE == "flaky" and sum(1 for _ in open(CALLS)) > 1:
    os.execv(REAL, [REAL] + args)
if MODE in ("crash", "flaky"):
    print("Segmentation fault", flush=True)
    sys.exit(139)
if MODE == "hang":
    time.sleep(600)
if MODE == "silent":
    sys.exit(0)
status = subprocess.run([REAL] + args).returncode
for path in glob.glob(os.path.join(args[args.index("--dumpdir") + 1], "export", "*_exposure_cpu_out_C.pfm")):
    data = open(path, "rb").read()
    header = data[:data.index(b"\n", data.index(b"\n", 3) + 1) + 1]   # PF, size and scale lines
    body = data[len(header):]
    if MODE == "nan":
        body = b"\x00\x00\xc0\x7f" * (len(body) // 4)   # float32 NaN
    else:   # truncated
        body = body[:len(body) // 2]
    open(path, "wb").write(header + body)
sys.exit(status)
'''


def fake_darktable(tmp_path, dt, bad, mode):
    path = tmp_path / "fake" / "darktable-cli"
    path.parent.mkdir()
    path.write_text(FAKE.format(python=sys.executable, real=dt.install.path, bad=str(bad),
                                calls=str(tmp_path / "fake" / "calls"), mode=mode))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def generation(folders, root, cache, cli, timeout=300):
    """The command and environment of a small generation run with darktable ``cli``."""
    env = {**os.environ, "DARKTABLE_CLI": str(cli), "DTP_DARKTABLE_RETRIES": "2",
           "DTP_DARKTABLE_TIMEOUT_S": str(timeout), "DTP_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "Darktable_proxies.py", "exposure", "-n", "1", "--generate-only",
           "--images", str(folders / "train"), "--eval-images", str(folders / "eval"), "--size", "48",
           "--workers", "2", "--out", str(root), "--set", "GENERATE_STAGE_2=false"]
    return cmd, env


def generate(folders, root, cache, cli, timeout=300):
    cmd, env = generation(folders, root, cache, cli, timeout)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def assert_only_whole_samples(folder):
    """Every row's files exist, and no file is there that no row names (nor a temporary one)."""
    rows = read_manifest(folder)
    named = {os.path.relpath(r[c], folder) for r in rows for c in ("input", "output")}
    on_disk = {str(p.relative_to(folder)) for sub in ("inputs", "outputs") for p in (folder / sub).iterdir()}
    assert on_disk == named
    assert not list(folder.rglob("*.tmp"))
    return rows


@pytest.mark.parametrize("mode, message", [
    ("crash", "exited with status 139"),
    ("hang", f"timed out after {HANG_TIMEOUT_S} s"),
    ("silent", "darktable exported nothing"),
    ("nan", "exposure output holds NaN or Inf"),
    ("truncated", "darktable wrote an unreadable tap-out"),
])
def test_failing_darktable_is_retried_recorded_and_the_run_goes_on(dt, folders, tmp_path, mode, message):
    bad, good = list_images(folders / "train")
    cli = fake_darktable(tmp_path, dt, bad, mode)
    proc = generate(folders, tmp_path / "runs", tmp_path / "cache", cli,
                    HANG_TIMEOUT_S if mode == "hang" else 300)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "stage 1: 1 samples failed" in proc.stderr and "Exit status 3" in proc.stderr
    assert (tmp_path / "fake" / "calls").read_text().count("call") == 3   # 1 + DARKTABLE_RETRIES
    folder = tmp_path / "runs" / "stage_1" / NAME
    rows = assert_only_whole_samples(folder)
    assert [r["image"] for r in rows] == [good.name]
    with open(folder / "failed-1-of-1.csv") as f:
        failed = list(csv.DictReader(f))
    assert [r["sample"] for r in failed] == [f"{bad.stem}_00000"] and message in failed[0]["error"]
    if mode == "crash":   # darktable fixed: the same command completes the dataset
        proc = generate(folders, tmp_path / "runs", tmp_path / "cache", dt.install.path)
        assert proc.returncode == 0, proc.stderr
        assert sorted(r["image"] for r in assert_only_whole_samples(folder)) == sorted([bad.name, good.name])
        assert not (folder / "failed-1-of-1.csv").exists()


def test_darktable_failing_once_is_retried(dt, folders, tmp_path):
    bad, good = list_images(folders / "train")
    proc = generate(folders, tmp_path / "runs", tmp_path / "cache", fake_darktable(tmp_path, dt, bad, "flaky"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fake" / "calls").read_text().count("call") == 2
    rows = assert_only_whole_samples(tmp_path / "runs" / "stage_1" / NAME)
    assert sorted(r["image"] for r in rows) == sorted([bad.name, good.name])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_terminated_run_ends_its_darktable_calls(dt, folders, tmp_path, sig):
    """SIGTERM or Ctrl-C to the script alone while darktable hangs: the run ends now, no call
    is left running, no private folder left behind."""
    bad, _ = list_images(folders / "train")
    cli = fake_darktable(tmp_path, dt, bad, "hang")
    cmd, env = generation(folders, tmp_path / "runs", tmp_path / "cache", cli)
    (tmp_path / "tmp").mkdir()
    env["TMPDIR"] = str(tmp_path / "tmp")
    # a shell's background job starts with SIGINT ignored, and Python then keeps ignoring it
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (tmp_path / "fake" / "calls").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and stderr.strip().splitlines()[-1] == "error: interrupted", stderr
    time.sleep(0.5)
    assert processes_naming(str(cli)) == []
    assert list((tmp_path / "tmp").glob("dtp-*")) == []
    assert not list((tmp_path / "runs").rglob("*.tmp"))


# ------------------------------------------------------------- the chroot wrapper, killed

def processes_naming(text):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and "darktable" in cmdline and int(pid) != os.getpid():
            found.append((int(pid), cmdline))
    return found


@pytest.mark.parametrize("target", ["wrapper", "group"])
def test_killed_chroot_wrapper_leaves_no_mount_and_no_process(dt, raw_image, tmp_path, target):
    if dt.install.path != str(own_install_path(DEFAULTS.CACHE_DIR)):
        pytest.skip("darktable is a native install here, not the chroot wrapper")
    for sub in ("out", "config", "cache", "dump"):
        (tmp_path / sub).mkdir()
    mounts_before = open("/proc/self/mountinfo").read()
    cmd = dt.command(raw_image, tmp_path / "out", tmp_path, ["exposure"], 0, True)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not any("/usr/bin/darktable-cli" in c for _, c in processes_naming(str(tmp_path))):
        assert proc.poll() is None and time.monotonic() < deadline, "darktable-cli never started"
        time.sleep(0.01)
    if target == "group":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while processes_naming(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_naming(str(tmp_path)) == []
    assert open("/proc/self/mountinfo").read() == mounts_before
    assert not os.listdir(own_install_path(DEFAULTS.CACHE_DIR).parent.parent / "mnt")
