"""Evaluation, Eval.py and Sweep.py on a small proxy trained in the test (marked darktable)."""
import json
import subprocess
import sys

import pytest
import torch

from models.proxy import load_proxy
from tests.conftest import ROOT
from utils.data.images import builtin_images, list_images
from utils.data.tapouts import TapoutDataset
from utils.evaluation.regress import regress
from utils.proxies.registry import EXPOSURE

pytestmark = pytest.mark.darktable
NAME = "exposure_exposure_black"


def run(script, *args):
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_metrics_contract(trained_tiny):
    metrics = json.loads((trained_tiny / "eval" / NAME / "metrics.json").read_text())
    for key in ("proxy", "params", "val_psnr", "val_ssim", "val_samples", "darktable_version", "regression"):
        assert key in metrics
    for key in ("param_mae", "proxy_psnr", "darktable_psnr", "darktable_psnr_min", "targets"):
        assert key in metrics["regression"]
    assert metrics["proxy"] == NAME and metrics["params"] == ["exposure", "black"]
    assert metrics["val_samples"] == 2 and metrics["regression"]["targets"] == 2
    assert metrics["val_psnr"] > 15 and metrics["regression"]["darktable_psnr"] > 15
    report = (trained_tiny / "eval" / NAME / "report.md").read_text()
    assert f"{metrics['val_psnr']:.2f} dB" in report
    assert f"identity (the input taken as output), same samples | {metrics['val_identity_psnr']:.2f} dB" in report
    params = (trained_tiny / "params" / f"{NAME}.csv").read_text().splitlines()
    assert params[0].startswith("sample,image,exposure_true,black_true,exposure_recovered")
    assert len(params) == 3
    animations = trained_tiny / f"{NAME}_animations"
    assert list(animations.glob("*.mp4")) and list(animations.glob("*_0000.png"))


def test_regression_recovers_a_known_exposure(trained_tiny):
    proxy, _ = load_proxy(trained_tiny / f"{NAME}_model_weights" / "best.pt")
    data = TapoutDataset(trained_tiny / "stage_1" / NAME, EXPOSURE.sliders)
    errors = []
    for i in range(0, len(data), 3):
        x, y, u = data[i]
        rec = regress(proxy, 2, proxy.scale, x[None], y[None], 150, 4, torch.Generator().manual_seed(i))
        errors.append(abs(float(rec.u[0]) - float(u[0])))   # exposure, as a fraction of its range
    assert sum(errors) / len(errors) < 0.1


def test_eval_script(trained_tiny):
    image = list_images(builtin_images("eval"))[0]
    proc = run("Eval.py", "exposure", "--image", str(image), "-v", "1.5,0.01", "--out", str(trained_tiny))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("PSNR: ") and proc.stdout.strip().endswith(" dB")
    folder = trained_tiny / "eval" / NAME / f"{image.stem}_1.5_0.01"
    for key in ("input", "darktable", "proxy", "error"):
        assert (folder / f"{key}.tif").exists() and (folder / f"{key}.png").exists()


@pytest.mark.parametrize("args, message", [
    (["-v", "1.5"], "has 2 slider(s) (exposure, black); -v gave 1 value"),
    (["-v", "9,0"], "exposure.exposure=9 is out of range"),
    (["-v", "1,0", "-c", "never_trained"], "no trained proxy 'never_trained'"),
    (["-v", "a,b"], "give numbers separated by commas"),
])
def test_eval_bad_input(trained_tiny, args, message):
    image = list_images(builtin_images("eval"))[0]
    proc = run("Eval.py", "exposure", "--image", str(image), "--out", str(trained_tiny), *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_sweep_script(trained_tiny):
    image = list_images(builtin_images("eval"))[0]
    proc = run("Sweep.py", "exposure", "--param", "exposure", "--image", str(image), "-n", "4",
               "--out", str(trained_tiny))
    assert proc.returncode == 0, proc.stderr
    folder = trained_tiny / "sweep" / NAME
    frames = sorted(p.name for p in folder.glob("*.png"))
    assert frames == [f"{image.stem}_exposure_exposure_sweep_{k:04d}.png" for k in range(4)]
    assert (folder / f"{image.stem}_exposure_exposure_sweep.mp4").stat().st_size > 0
    proc = run("Sweep.py", "exposure", "--param", "gain", "--image", str(image), "--out", str(trained_tiny))
    assert proc.returncode == 2 and "no slider 'gain'" in proc.stderr
    # -p names the proxy as Darktable_proxies.py -p does; none was trained on exposure alone
    proc = run("Sweep.py", "exposure", "--param", "exposure", "-p", "exposure", "--image", str(image),
               "--out", str(trained_tiny))
    assert proc.returncode == 2 and "no trained proxy 'exposure_exposure'" in proc.stderr


def test_sweep_prefers_the_proxy_trained_on_the_swept_slider_alone(trained_tiny, tmp_path):
    import shutil
    root = tmp_path / "root"
    shutil.copytree(trained_tiny / f"{NAME}_model_weights", root / "exposure_black_only_model_weights")
    shutil.copytree(trained_tiny / f"{NAME}_model_weights", root / "exposure_black_model_weights")
    image = list_images(builtin_images("eval"))[0]
    proc = run("Sweep.py", "exposure", "--param", "black", "--image", str(image), "-n", "2", "--out", str(root))
    assert proc.returncode == 0, proc.stderr
    assert "proxy exposure_black:" in proc.stdout and (root / "sweep" / "exposure_black").is_dir()
    proc = run("Sweep.py", "exposure", "--param", "black", "-c", "exposure_black_only", "--image", str(image),
               "-n", "2", "--out", str(root))
    assert proc.returncode == 0 and (root / "sweep" / "exposure_black_only").is_dir()
