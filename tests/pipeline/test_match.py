"""Pipeline_regression.py --match: the edit of a user's export as an XMP darktable opens, end
to end against the real darktable-cli (tiny untrained proxies: the contract, not the quality,
which tools/match_bench.py measures)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from models.proxy import save_checkpoint
from tests.conftest import ROOT
from tests.pipeline.test_pipeline import tiny_proxy
from utils.proxies.registry import COLORBALANCERGB, EXPOSURE

pytestmark = pytest.mark.darktable

CHAIN = ("exposure_exposure_black exposure 1\n"
         "colorbalancergb_saturation_global_vibrance_grey_fulcrum_contrast saturation_global,contrast 1\n")


@pytest.fixture(scope="module")
def match_root(tmp_path_factory, dt, raw_image):
    """A ROOT with tiny proxies, the raw, and a 16-bit darktable export of it with an edit."""
    from utils.pipeline.match import orientation_item
    root = tmp_path_factory.mktemp("match")
    for name, sliders, kind in (("exposure_exposure_black", EXPOSURE.sliders, "exposure"),
                                ("colorbalancergb_saturation_global_vibrance_grey_fulcrum_contrast",
                                 COLORBALANCERGB.sliders, "colorbalancergb")):
        (root / f"{name}_model_weights").mkdir()
        save_checkpoint(root / f"{name}_model_weights" / "best.pt", tiny_proxy(sliders, kind))
    (root / "raws").mkdir()
    raw = root / "raws" / raw_image.name
    shutil.copy(raw_image, raw)
    items = [EXPOSURE.history_item(dt, {"exposure": 1.0}),
             COLORBALANCERGB.history_item(dt, {"saturation_global": 0.3, "contrast": 0.2}), orientation_item(dt)]
    export = np.clip(dt.render(raw, items, (), 96, True, output=True).output, 0, 1)
    (root / "looks").mkdir()
    tifffile.imwrite(root / "looks" / f"{raw.stem}.tif", np.round(export * 65535).astype(np.uint16),
                     photometric="rgb")
    (root / "chain.txt").write_text(CHAIN)
    return root


def run_match(root, target, image, *extra):
    return subprocess.run([sys.executable, "Pipeline_regression.py", "--config", str(root / "chain.txt"),
                           "--out", str(root), "--match", str(target), "--image", str(image), "--iters", "3",
                           "--device", "cpu", *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_match_writes_an_xmp_darktable_renders(match_root, dt):
    raw = next((match_root / "raws").iterdir())
    target = match_root / "looks" / f"{raw.stem}.tif"
    proc = run_match(match_root, target, raw)
    assert proc.returncode == 0, proc.stderr
    assert "darktable PSNR: " in proc.stdout
    xmp = match_root / "match" / f"{raw.stem}.xmp"
    metrics = json.loads((match_root / "match" / raw.stem / "metrics.json").read_text())
    assert set(metrics) >= {"target", "image", "sliders", "proxy_psnr", "darktable_psnr"}
    assert set(metrics["sliders"]["exposure_exposure_black"]) == {"exposure"}
    assert np.isfinite(metrics["darktable_psnr"]) and (match_root / "match" / raw.stem / "sheet.png").exists()
    # darktable's polish starts from the (here untrained) chain's edit and only ever improves it
    polished = metrics["polish_psnr"]
    assert polished[0] == metrics["chain_edit_darktable_psnr"] and polished == sorted(polished)
    assert metrics["darktable_psnr"] >= polished[0] - 0.01 and metrics["polish_renders"] >= 6
    # darktable itself renders the sidecar, with the recovered exposure in it
    out = match_root / "rendered.tif"
    done = subprocess.run([dt.install.path, str(raw), str(xmp), str(out), "--core", "--library", ":memory:",
                           "--configdir", str(match_root / "dtconfig")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and out.exists(), done.stdout[-500:]
    assert "exposure" in xmp.read_text()
    # an existing XMP is never overwritten without --force
    again = run_match(match_root, target, raw)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr
    assert run_match(match_root, target, raw, "--force", "--set", "MATCH_POLISH_STEPS=0").returncode == 0
    # folders: each target with the raw of its file name, XMPs in the --xmp folder
    folders = run_match(match_root, match_root / "looks", match_root / "raws", "--xmp", str(match_root / "xmps"),
                        "--set", "MATCH_POLISH_STEPS=0")
    assert folders.returncode == 0, folders.stderr
    assert (match_root / "xmps" / f"{raw.stem}.xmp").exists() and "darktable PSNR: " in folders.stdout


def test_match_refuses_bad_input_in_one_line(match_root, tmp_path):
    raw = next((match_root / "raws").iterdir())
    target = match_root / "looks" / f"{raw.stem}.tif"
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00garbage")
    wide = tmp_path / "wide.tif"
    tifffile.imwrite(wide, tifffile.imread(target)[: tifffile.imread(target).shape[0] // 2], photometric="rgb")
    bad_raw = tmp_path / "photo.dng"
    bad_raw.write_bytes(b"not a raw at all")
    for args, message in (((broken, raw), "unreadable"), ((wide, raw), "exports"),
                          ((target, bad_raw), "unreadable"), ((tmp_path / "none.png", raw), "does not exist")):
        proc = run_match(match_root, *args, "--xmp", str(tmp_path / "out.xmp"))
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert "Traceback" not in proc.stderr and len(errors) == 1 and message in errors[0]


def test_match_refuses_a_module_darktable_does_not_run(match_root, tmp_path, tiff16):
    (tmp_path / "chain.txt").write_text("exposure full 1\ndemosaic full 1\n")
    target = tmp_path / "look.tif"
    tifffile.imwrite(target, tifffile.imread(tiff16), photometric="rgb")
    proc = subprocess.run([sys.executable, "Pipeline_regression.py", "--config", str(tmp_path / "chain.txt"),
                           "--out", str(tmp_path), "--match", str(target), "--image", str(tiff16),
                           "--train-missing"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "line 2: demosaic works on a raw mosaic" in proc.stderr, proc.stderr
    assert not list(tmp_path.glob("stage_*"))    # refused from the probe, before any data or training
