"""The darktable wrapper against the real darktable-cli (marked ``darktable``)."""
import os
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile

from tests.conftest import ROOT
from utils.darktable.install import DarktableInstall, own_install_path
from utils.darktable.runner import Darktable
from utils.darktable.xmp import HistoryItem
from utils.data.images import Camera, write_dng
from utils.errors import DarktableError
from utils.proxies.registry import COLORBALANCERGB, EXPOSURE
from utils.settings import DEFAULTS

pytestmark = pytest.mark.darktable


def exposure_law(tap_in, exposure, black):
    return (tap_in.astype(np.float64) - black) / (2.0 ** -exposure - black)


def assert_relative_error(out, expected, tol=1e-4):
    """Relative error per pixel (absolute where the expected value is tiny)."""
    scale = np.maximum(np.abs(expected), 1e-3)
    assert np.max(np.abs(out - expected) / scale) < tol


@pytest.mark.parametrize("values", [{"exposure": 1.7, "black": 0.015}, {"exposure": -2.5, "black": -0.01}])
def test_exposure_law_on_raw(dt, raw_image, values):
    render = dt.render(raw_image, [EXPOSURE.history_item(dt, values)], dump=["exposure"])
    tap_in, tap_out = render.io("exposure")
    assert tap_in.shape == tap_out.shape and tap_in.ndim == 3
    assert tap_out.max() > 1.0 or values["exposure"] < 0   # scene-referred: not clipped
    assert_relative_error(tap_out, exposure_law(tap_in, **values))
    assert render.order == ["exposure"]


def test_exposure_law_on_16bit_tiff(dt, tiff16):
    values = {"exposure": 3.0, "black": -0.02}
    render = dt.render(tiff16, [EXPOSURE.history_item(dt, values)], dump=["colorin", "exposure"])
    tap_in, tap_out = render.io("exposure")
    assert_relative_error(tap_out, exposure_law(tap_in, **values))
    assert render.order == ["colorin", "exposure"]   # TIFF: exposure works on linear Rec.2020


def test_dump_orientation_tiff(dt, tmp_path):
    image = np.full((32, 48, 3), 16384, np.uint16)
    corners = {(0, 0): (65535, 0, 0), (0, -1): (0, 65535, 0), (-1, 0): (0, 0, 65535), (-1, -1): (65535,) * 3}
    for (y, x), colour in corners.items():
        image[y, x] = colour
    path = tmp_path / "corners.tif"
    tifffile.imwrite(path, image, photometric="rgb")
    tap_in, _ = dt.render(path, [], dump=["colorin"]).io("colorin")
    np.testing.assert_allclose(tap_in, image / 65535.0, atol=1e-6)


def test_dump_orientation_and_p5_raw(dt, tmp_path):
    counts = np.full((32, 48), 600, np.uint16)
    counts[:4, :4] = 4000     # a bright top-left corner
    counts[-2:, -6:] = 100    # a dark bottom-right strip
    path = tmp_path / "corners.dng"
    write_dng(path, counts, Camera("RGGB", 12, 64, 2.0, 1.5, 0.0, 1.0, 0.0), "corner test")
    render = dt.render(path, [], dump=["rawprepare"])
    raw_in, raw_out = render.io("rawprepare")
    np.testing.assert_array_equal(raw_in, counts)   # the maxval-less P5 dump, flipped
    np.testing.assert_allclose(raw_out, (counts - 64.0) / (4095 - 64), atol=1e-6)


def test_malformed_params_are_an_error(dt, tiff16):
    version = EXPOSURE.module_version(dt)
    bad = HistoryItem("exposure", version, b"\0" * 20)
    with pytest.raises(DarktableError, match="rejected our exposure params"):
        dt.render(tiff16, [bad], dump=["exposure"])


def chroma(rgb):
    return (rgb.max(axis=-1) - rgb.min(axis=-1)).mean()


def test_colorbalancergb_saturation_direction(dt, tiff16):
    chromas = {}
    for saturation in (-0.6, 0.0, 0.6):
        item = COLORBALANCERGB.history_item(dt, {"saturation_global": saturation})
        tap_in, tap_out = dt.render(tiff16, [item], dump=["colorbalancergb"]).io("colorbalancergb")
        chromas[saturation] = chroma(tap_out)
    assert chromas[-0.6] < 0.9 * chroma(tap_in) < chromas[0.0] < 1.1 * chroma(tap_in) < chromas[0.6]


def test_parallel_calls_agree_and_leave_no_mount(dt, tiff16):
    item = EXPOSURE.history_item(dt, {"exposure": 1.0})
    mounts_before = open("/proc/self/mountinfo").read()
    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda _: dt.render(tiff16, [item], dump=["exposure"]).io("exposure")[1], range(3)))
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    assert open("/proc/self/mountinfo").read() == mounts_before


def test_an_openmp_limit_is_not_passed_to_darktable(dt, raw_image, monkeypatch):
    """darktable 5.0.1 under OMP_NUM_THREADS=1 left part of colorin's output unconverted."""
    first = dt.render(raw_image, [], dump=["colorin"]).io("colorin")[1]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    np.testing.assert_array_equal(dt.render(raw_image, [], dump=["colorin"]).io("colorin")[1], first)


def test_a_probe_lists_what_darktable_runs(dt, raw_image):
    from utils.darktable.dumps import OPERATIONS
    render = dt.render(raw_image, [EXPOSURE.history_item(dt, {})], dump=OPERATIONS, require=False)
    assert render.order[:4] == ["rawprepare", "temperature", "highlights", "demosaic"]
    assert render.order.index("exposure") < render.order.index("colorin") < render.order.index("colorout")


def test_missing_dump_is_named(dt, tiff16):
    with pytest.raises(DarktableError, match="no 'in' tap-out for temperature"):
        dt.render(tiff16, [], dump=["temperature"])


# ------------------------------------------------------------- broken darktables

def fake_cli(tmp_path, body):
    path = tmp_path / "darktable-cli"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def run_script(env_cli):
    env = {**os.environ, "DARKTABLE_CLI": env_cli}
    return subprocess.run([sys.executable, "Darktable_proxies.py", "exposure", "-n", "1", "--generate-only",
                           "--out", str(ROOT / "runs" / "never")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("body, message", [
    (None, "does not exist"),
    ('echo "darktable 4.2.1"', "darktable 4.2.1 at .* is too old"),
    ("echo hello", "printed no darktable version"),
])
def test_unusable_darktable_is_one_line(tmp_path, body, message):
    cli = str(tmp_path / "nothing") if body is None else fake_cli(tmp_path, body)
    proc = run_script(cli)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "DARKTABLE_CLI" in lines[0]
    import re
    assert re.search(message, lines[0])


def test_failing_darktable_is_named(tmp_path, tiff16):
    cli = fake_cli(tmp_path, 'echo "something broke"; echo "segfault at 0x0" >&2; exit 3')
    dt = Darktable(install=DarktableInstall(cli, (5, 0, 1)))
    with pytest.raises(DarktableError, match=r"coffee16.tif: darktable-cli exited with status 3 running '.*darktable-cli .*segfault at 0x0"):
        dt.render(tiff16, [], dump=["exposure"])


def test_hanging_darktable_is_killed(tmp_path, tiff16):
    marker = tmp_path / "child.pid"
    cli = fake_cli(tmp_path, f"sleep 60 & echo $! > {marker}; wait")
    dt = Darktable(DEFAULTS.replace(DARKTABLE_TIMEOUT_S=1), install=DarktableInstall(cli, (5, 0, 1)))
    start = time.monotonic()
    with pytest.raises(DarktableError, match="timed out after 1 s"):
        dt.render(tiff16, [], dump=["exposure"])
    assert time.monotonic() - start < 10
    child = int(marker.read_text())
    time.sleep(0.2)
    assert not os.path.exists(f"/proc/{child}") or "Z" in open(f"/proc/{child}/stat").read().split()[2]


def test_chroot_wrapper_is_in_use_or_native(dt):
    """Either a native darktable >= 4.4, or our wrapper around the private Debian root."""
    assert dt.version[:2] >= (4, 4)
    if dt.install.path == str(own_install_path(DEFAULTS.CACHE_DIR)):
        out = subprocess.run([dt.install.path, "--version"], capture_output=True, text=True, check=True)
        assert "darktable" in out.stdout
