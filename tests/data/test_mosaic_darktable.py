"""Mosaic and profile modules against the real darktable-cli (marked ``darktable``)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.mosaic import even_crop
from models.priors import PRIORS
from tests.conftest import ROOT
from tests.models.test_mosaic import crop_tags, write_test_dng
from utils.darktable.cfa import read_pattern
from utils.darktable.files import read_tiff
from utils.darktable.runner import Job
from utils.data.images import builtin_images, list_images
from utils.data.manifest import read_manifest
from utils.evaluation.metrics import psnr
from utils.proxies.registry import (
    COLORIN,
    COLOROUT,
    DEMOSAIC,
    EXPOSURE,
    HIGHLIGHTS,
    TEMPERATURE,
)

pytestmark = pytest.mark.darktable


def colour_mask(pattern: str, shape, colour: str) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for k, c in enumerate(pattern):
        if c == colour:
            mask[k // 2::2, k % 2::2] = True
    return mask


@pytest.fixture(scope="module")
def all_images():
    return list_images(builtin_images("train")) + list_images(builtin_images("eval"))


def test_pattern_read_from_the_file_is_darktables(dt, all_images, tmp_path):
    """Raising the red multiplier changes exactly the photosites our pattern calls red, for
    the built-in images (all four patterns) and DNGs with odd crop offsets."""
    odd = [write_test_dng(tmp_path / f"odd{i}.dng", crop_tags(*origin, 32, 32, active), (32, 32), "GBRG")
           for i, (origin, active) in enumerate([((1, 0), (0, 0)), ((0, 1), (1, 1)), ((1, 1), (1, 0))])]
    images = all_images + odd
    patterns = [read_pattern(p) for p in images]
    assert {"RGGB", "BGGR", "GRBG", "GBRG"} <= set(patterns)
    assert patterns[-3:] == ["BGGR", "RGGB", "GRBG"]
    plain = TEMPERATURE.history_item(dt, {"red": 1.0, "green": 1.0, "blue": 1.0})
    redder = TEMPERATURE.history_item(dt, {"red": 2.0, "green": 1.0, "blue": 1.0})
    jobs = [Job(p, (item,)) for p in images for item in (plain, redder)]
    results = dt.render_batch(jobs, dump=["temperature"], size=0, hq=True)
    for k, (image, pattern) in enumerate(zip(images, patterns)):
        tap_in, base = results[2 * k].io("temperature")
        changed = results[2 * k + 1].io("temperature")[1] != base
        red = colour_mask(pattern, tap_in.shape, "R")
        assert not (changed & ~red).any(), image.name
        assert np.array_equal(changed, red & (tap_in != 0)), image.name


def test_highlights_clip_mode_is_min_and_the_slider_is_live(dt, all_images):
    lo = HIGHLIGHTS.slider("clip").lo
    items = [HIGHLIGHTS.history_item(dt, {"clip": c}) for c in (lo, 1.0)]
    jobs = [Job(p, (item,)) for p in all_images for item in items] + [Job(all_images[0], (items[0],))]
    results = dt.render_batch(jobs, dump=["highlights"], size=0, hq=True)
    clipped_at_default = 0
    for k, image in enumerate(all_images):
        for j, clip in enumerate((lo, 1.0)):
            tap_in, tap_out = results[2 * k + j].io("highlights")
            for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):   # one threshold per CFA position
                a, b = tap_in[dy::2, dx::2], tap_out[dy::2, dx::2]
                if not (a > clip * 1.001).any():
                    np.testing.assert_array_equal(b, a)
                    continue
                # clip x the smallest white-balance multiplier, about 1 (within 1e-4 here)
                threshold = b[b != a].max()
                assert abs(threshold / clip - 1) < 1e-3, image.name
                np.testing.assert_array_equal(b, np.minimum(a, threshold), err_msg=image.name)
        assert (tap_in > lo).mean() > 1e-3, f"{image.name}: clip={lo:g} changes nothing"
        clipped_at_default += bool((tap_in > 1.0).any())
    assert clipped_at_default == 0   # the built-in images: nothing above darktable's default threshold
    # clip mode keeps (almost) no state between the images of one process: last job == first
    # job, but for the threshold, which for the first image of a process is 9e-5 lower
    for a, b in zip(results[0].io("highlights"), results[-1].io("highlights")):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=0)


def test_pinned_params_are_darktables_defaults(dt, raw_image):
    """Our demosaic, colorin and colorout structs reproduce what darktable does by default
    (both histories hold an identity exposure: with an empty one darktable applies its
    workflow defaults, +0.7 EV among them)."""
    identity = EXPOSURE.history_item(dt, {"exposure": 0.0, "black": 0.0})
    ours = tuple(p.history_item(dt, {}) for p in (DEMOSAIC, COLORIN, COLOROUT))
    default, pinned = dt.render_batch([Job(raw_image, (identity,)), Job(raw_image, (identity, *ours))],
                                      dump=["demosaic", "colorin", "colorout"], size=64, hq=False)
    for op in ("demosaic", "colorin", "colorout"):
        # colorin differs by up to 0.015 in L (of 0..100) whatever matrix type we pin, with
        # blue mapping on it differs by 2: a rounding-level difference of darktable's own path
        peak = np.abs(default.io(op)[1]).max()
        np.testing.assert_allclose(pinned.io(op)[1], default.io(op)[1], rtol=0, atol=3e-4 * peak, err_msg=op)


def run_type(proxy, folders, root, *extra):
    cmd = [sys.executable, "Darktable_proxies.py", proxy, "-n", "2", "--images", str(folders / "train"),
           "--eval-images", str(folders / "eval"), "--size", "32", "--out", str(root),
           "--set", "STAGE_2_SAMPLES_PER_IMAGE=2", "--set", "PROXY_MODEL_SIZE=tiny",
           "--set", "CREATE_ANIMATION=false", "--epochs", "2", "--device", "cpu", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_white_balance_and_clip_are_the_exact_priors(dt, raw_image):
    """The temperature and highlights types' exact proxies against one darktable render."""
    values = {"red": 2.7, "green": 0.8, "blue": 1.9}
    items = (TEMPERATURE.history_item(dt, values), HIGHLIGHTS.history_item(dt, {"clip": 0.3}))
    render = dt.render_batch([Job(raw_image, items)], dump=["temperature", "highlights"], size=0, hq=True)[0]
    pattern = read_pattern(raw_image)
    for name, sliders in (("temperature", values), ("highlights", {"clip": 0.3})):
        tap_in, tap_out = (even_crop(torch.from_numpy(np.ascontiguousarray(a)))[None, None] for a in render.io(name))
        ours = PRIORS[name](tap_in, {k: torch.tensor([v], dtype=torch.float64) for k, v in sliders.items()},
                            torch.ones(1), pattern)
        assert not torch.equal(tap_in, tap_out), name       # the module did change the mosaic
        # measured: the 120 dB cap; clip's threshold is 1e-4 lower in a process's first image
        assert float(psnr(ours, tap_out)[0]) > (100 if name == "temperature" else 70), name


@pytest.mark.parametrize("proxy, family", [(TEMPERATURE, ""), (HIGHLIGHTS, ""), (DEMOSAIC, ""), (COLOROUT, ""),
                                           (TEMPERATURE, "pointwise"), (DEMOSAIC, "unet")])
def test_each_type_generates_and_trains(proxy, family, folders, tmp_path):
    """Each type with its default family (exact: one epoch, darktable's output), and the
    mosaic layouts with learned families (two epochs)."""
    run_type(proxy.name, folders, tmp_path, "--no-eval", *(("--model", family) if family else ()))
    name = "_".join([proxy.name, *(s.name for s in proxy.sliders)])
    stage1 = tmp_path / "stage_1" / name
    rows = read_manifest(stage1)
    assert len(rows) == 4
    spec = json.loads((stage1 / "dataset.json").read_text())
    assert spec["layout"] == proxy.layout
    x, y = read_tiff(rows[0]["input"]), read_tiff(rows[0]["output"])
    assert x.shape[:2] == y.shape[:2]
    if proxy.mosaic_input:
        assert x.ndim == 2 and y.ndim == (3 if proxy.layout == "mosaic_rgb" else 2)
        assert spec["cfa_patterns"] == {p.name: read_pattern(p) for p in (folders / "train").iterdir()}
        assert max(x.shape) > 32          # full raw resolution, whatever --size says
    log = (tmp_path / f"{name}_model_weights" / "log.csv").read_text().splitlines()
    val_psnr = float(log[-1].split(",")[2])
    if family:
        assert len(log) == 3 and np.isfinite(val_psnr)
    else:
        assert proxy.model == "exact" and len(log) == 2 and val_psnr > 90
    if not proxy.sliders:   # the sampler varied the module's input
        column = ".".join(proxy.sampler)
        assert spec["sampler"] == column and len({r[column] for r in rows}) == 4
        assert len({r["input"] for r in rows}) == 4


def test_sliderless_colorin_sampler_and_evaluation(folders, tmp_path):
    """colorin's input is exposure's output: two samples of one image differ by 2^(EV a - EV b);
    evaluation measures fidelity and says that regression is skipped; Eval.py runs it without -v."""
    run_type("colorin", folders, tmp_path, "-r", "2")
    rows = read_manifest(tmp_path / "stage_1" / "colorin")
    a, b = [r for r in rows if r["image"] == rows[0]["image"]][:2]
    xa, xb = read_tiff(a["input"]), read_tiff(b["input"])
    lit = (xa > 1e-3) & (xb > 1e-3)
    ratio = np.median(xa[lit] / xb[lit])
    expected = 2.0 ** (float(a["exposure.exposure"]) - float(b["exposure.exposure"]))
    assert abs(ratio / expected - 1) < 1e-3
    metrics = json.loads((tmp_path / "eval" / "colorin" / "metrics.json").read_text())
    assert metrics["params"] == [] and np.isfinite(metrics["val_psnr"])
    assert "no sliders" in metrics["regression"]["skipped"]
    assert metrics["val_psnr"] > 70         # exact, from each DNG's colour matrix (measured 96 dB at 128 px)
    dng = next((folders / "eval").glob("*.dng"))                # Eval.py takes no -v for it
    proc = subprocess.run([sys.executable, "Eval.py", "colorin", "--image", str(dng), "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split("PSNR:")[1].split()[0]) > 70
