"""Training on a tiny real dataset (darktable tap-outs), resuming, torchrun (marked darktable)."""
import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch

from models.proxy import load_proxy
from tests.conftest import ROOT
from tests.conftest import train_tiny as train
from utils.data.tapouts import TapoutDataset
from utils.errors import UserError
from utils.proxies.registry import EXPOSURE

pytestmark = pytest.mark.darktable
NAME = "exposure_exposure_black"


def history(root):
    with open(root / f"{NAME}_model_weights" / "log.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(trained_tiny):
    return trained_tiny


def test_training_lowers_the_loss_and_writes_its_files(trained):
    rows = history(trained)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 21))
    loss = [float(r["train_loss"]) for r in rows]
    assert sum(loss[-3:]) < 0.5 * sum(loss[:3])
    assert float(rows[-1]["val_psnr"]) > float(rows[0]["val_psnr"]) + 3
    assert all(float(r["val_psnr"]) > 0 and float(r["seconds"]) > 0 for r in rows)
    weights = trained / f"{NAME}_model_weights"
    assert {p.name for p in weights.iterdir()} >= {"last.pt", "best.pt", "log.csv", "log.png"}
    assert not list(weights.glob("epoch_*.pt"))
    grids = sorted(p.name for p in (trained / f"{NAME}_predictions").iterdir())
    assert grids == ["epoch_0010.png", "epoch_0020.png"]


def test_checkpoint_alone_reproduces_validation(trained):
    proxy, payload = load_proxy(trained / f"{NAME}_model_weights" / "last.pt")
    assert payload["proxy_type"] == "exposure" and payload["darktable_version"]
    assert payload["module_version"] and payload["settings"]["settings"]["PROXY_MODEL_SIZE"] == "small"
    assert proxy.slider_names == ["exposure", "black"] and payload["epoch"] == 20
    val = TapoutDataset(trained / "stage_2" / NAME, EXPOSURE.sliders)
    from utils.evaluation.metrics import psnr
    with torch.no_grad():
        scores = [float(psnr(proxy(x[None], u[None]), y[None])[0]) for x, y, u in val]
    assert sum(scores) / len(scores) == pytest.approx(payload["val_psnr"], abs=1e-3)


def test_rerun_resumes_from_last_checkpoint(trained):
    proc = train(trained, "--epochs", "22")      # that run completed: nothing to do
    assert "training of exposure_exposure_black is complete" in proc.stderr
    assert "2 targets regressed by an earlier run are kept" in proc.stderr   # same weights, same settings
    assert [int(r["epoch"]) for r in history(trained)] == list(range(1, 21))
    proc = train(trained, "--epochs", "22", "--resume")
    assert "resuming" in proc.stderr and "after epoch 20" in proc.stderr
    assert [int(r["epoch"]) for r in history(trained)] == list(range(1, 23))


def test_a_checkpoint_from_before_hsl_roles_resumes(trained, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(trained, root)
    path = root / f"{NAME}_model_weights" / "last.pt"
    payload = torch.load(path, weights_only=True)
    payload["sliders"] = [{k: v for k, v in d.items() if k != "hsl"} for d in payload["sliders"]]
    torch.save(payload, path)
    proc = train(root, "--epochs", str(payload["epoch"] + 1), "--resume")
    assert "resuming" in proc.stderr and f"after epoch {payload['epoch']}" in proc.stderr


def test_adam_takes_its_fused_kernel_also_when_resuming_a_run_saved_without_it(trained, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(trained, root)
    path = root / f"{NAME}_model_weights" / "last.pt"
    payload = torch.load(path, weights_only=True)
    assert [g["fused"] for g in payload["optimizer"]["param_groups"]] == [True]     # CPU: fused
    for group in payload["optimizer"]["param_groups"]:      # as versions before the fused kernel saved
        group.update(fused=None, foreach=None)
    torch.save(payload, path)
    proc = train(root, "--epochs", str(payload["epoch"] + 1), "--resume")
    assert "resuming" in proc.stderr
    again = torch.load(path, weights_only=True)
    assert again["epoch"] == payload["epoch"] + 1 and again["optimizer"]["param_groups"][0]["fused"] is True


def test_other_model_into_the_same_weights_is_refused(trained):
    cmd = [sys.executable, "Darktable_proxies.py", "exposure", "-d", NAME, "--out", str(trained),
           "--model", "unet", "--epochs", "30", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "holds a proxy of the pointwise family, not unet" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_retired_family_is_refused_for_new_training_before_any_work():
    from utils.proxies.registry import PROXIES
    from utils.proxies.train import default_config
    with pytest.raises(UserError, match="--model 'neighbourhood': retired, .*choose one of unet, pointwise, multiscale"):
        default_config(PROXIES["sharpen"], family="neighbourhood")


def test_a_proxy_of_a_family_no_longer_the_types_default_is_named_not_rebuilt(tmp_path):
    """shadhi's default became the exact family: an earlier multiscale proxy in the weights
    folder is refused with what to do, before any network of the new family is built."""
    from models.networks import ModelSpec
    from models.proxy import Proxy, save_checkpoint
    from utils.proxies.registry import PROXIES
    from utils.proxies.slider import conditioning_width
    from utils.proxies.train import default_config
    from utils.proxies.train import train as train_proxy
    from utils.runs import RunPaths
    shadhi = PROXIES["shadhi"]
    spec = ModelSpec("multiscale", "tiny", 3, 3, conditioning_width(shadhi.sliders), extra_channels=4)
    weights = RunPaths(tmp_path).weights("shadhi_old")
    weights.mkdir(parents=True)
    save_checkpoint(weights / "last.pt", Proxy(spec, shadhi.sliders, shadhi.value_scale))
    with pytest.raises(UserError, match="multiscale family, not exact .shadhi's default now.; give --model multiscale"):
        train_proxy(shadhi, shadhi.sliders, "shadhi_old", tmp_path / "missing", None, RunPaths(tmp_path),
                    default_config(shadhi))


def test_torchrun_two_processes_on_cpu(tiny_dataset, tmp_path):
    shutil.copytree(tiny_dataset / "stage_1", tmp_path / "stage_1")
    shutil.copytree(tiny_dataset / "stage_2", tmp_path / "stage_2")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "Darktable_proxies.py", "exposure",
           "-d", NAME, "--out", str(tmp_path), "--set", "PROXY_MODEL_SIZE=tiny", "--epochs", "2",
           "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    weights = tmp_path / f"{NAME}_model_weights"
    assert sorted(p.name for p in weights.glob("*.pt")) == ["best.pt", "last.pt"]
    assert [int(r["epoch"]) for r in history(tmp_path)] == [1, 2]
    proxy, payload = load_proxy(weights / "last.pt")
    assert payload["epoch"] == 2


def test_new_positional_proxies_get_four_coordinate_planes_and_resumed_ones_keep_theirs():
    from models.networks import ModelSpec, new_network_options
    from utils.proxies.registry import PROXIES
    from utils.proxies.train import coordinate_planes_of
    vignette = PROXIES["vignette"]
    assert coordinate_planes_of(EXPOSURE, None) == 0
    assert coordinate_planes_of(vignette, None) == 4
    older = ModelSpec("pointwise", "base", 3, 3, 4, extra_channels=2)
    assert coordinate_planes_of(vignette, older) == 2
    colorin = PROXIES["colorin"]              # the camera matrix's planes, for its exact proxies only
    assert coordinate_planes_of(colorin, None, "exact") == 9 and coordinate_planes_of(colorin, None, "pointwise") == 0
    assert coordinate_planes_of(PROXIES["soften"], None) == 5               # the scale: soften is ``scaled``
    assert new_network_options("pointwise", positional=True)["fields"] > 0
    assert new_network_options("pointwise")["fields"] == 0       # no planes, no fields of them
