"""Reliability without darktable: journals and locks, interrupted and concurrent training and
regression, numerical safety, damaged files. Data sets here are synthetic: the exposure law
applied to fixed random images (these tests are about the machinery, not darktable)."""
import csv
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.proxy import load_proxy
from tests.conftest import ROOT
from utils.darktable.files import write_tiff
from utils.errors import UserError
from utils.journal import Journal, run_lock
from utils.proxies.registry import EXPOSURE
from utils.runs import RunPaths

NAME = "exposure_exposure_black"


# ------------------------------------------------------------------ synthetic data

def write_dataset(folder: Path, images: int, per_image: int, side: int = 16, seed: int = 0) -> Path:
    """A dataset folder in the generator's layout, outputs by the exposure law."""
    rng = np.random.default_rng(seed)
    (folder / "inputs").mkdir(parents=True)
    (folder / "outputs").mkdir()
    rows = [["input", "output", "exposure", "black", "image", "sample"]]
    for i in range(images):
        tap_in = rng.uniform(0.0, 1.0, (side, side, 3)).astype(np.float32)
        write_tiff(folder / "inputs" / f"img{i}.tif", tap_in)
        for k in range(per_image):
            exposure, black = rng.uniform(-2, 2), rng.uniform(-0.01, 0.01)
            write_tiff(folder / "outputs" / f"img{i}_{k:05d}.tif",
                       ((tap_in - black) / (2.0 ** -exposure - black)).astype(np.float32))
            rows.append([f"inputs/img{i}.tif", f"outputs/img{i}_{k:05d}.tif", f"{exposure:.9g}",
                         f"{black:.9g}", f"img{i}.dng", f"img{i}_{k:05d}"])
    with open(folder / "manifest.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    (folder / "dataset.json").write_text(json.dumps({"proxy": "exposure", "size": side,
                                                     "darktable_version": "5.0.1", "module_version": 7}))
    return folder


@pytest.fixture
def synthetic_root(tmp_path):
    write_dataset(tmp_path / "stage_1" / NAME, 2, 6)
    write_dataset(tmp_path / "stage_2" / NAME, 1, 3, seed=1)
    return tmp_path


def train_cmd(root, epochs, *extra):
    return [sys.executable, "Darktable_proxies.py", "exposure", "-d", NAME, "--out", str(root),
            "--no-eval", "--device", "cpu", "--epochs", str(epochs), "--batch-size", "4",
            "--set", "PROXY_MODEL_SIZE=tiny", "--set", "SAVE_OUTPUT_FREQ=1000", *extra]


def run(cmd, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def start(cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)


def wait_for(condition, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def kill9(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def one_line_error(proc, message):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()   # progress lines may come first
    assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr and sum(ln.startswith("error") for ln in lines) == 1


def epochs_logged(root):
    with open(root / f"{NAME}_model_weights" / "log.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


# ------------------------------------------------------------------ journal and locks

def test_journal_records_reloads_and_ignores_a_half_written_line(tmp_path):
    path = tmp_path / "work.jsonl"
    with Journal(path, {"seed": 1}) as journal:
        journal.record("a", value=1.5, values=[1, 2])
        journal.record("b", value=float("nan"))
    with open(path, "a") as f:
        f.write('{"key": "c", "val')          # what a kill in the middle of a write leaves
    with Journal(path, {"seed": 1}) as journal:
        assert "a" in journal and "b" in journal and "c" not in journal and len(journal) == 2
        assert journal["a"] == {"value": 1.5, "values": [1, 2]}
        journal.record("c", value=3)
    lines = path.read_text().splitlines()
    assert [json.loads(ln).get("key") for ln in lines] == [None, "a", "b", "c"]


def test_journal_of_other_work_is_set_aside(tmp_path):
    path = tmp_path / "work.jsonl"
    with Journal(path, {"seed": 1}) as journal:
        journal.record("a", value=1)
    with Journal(path, {"seed": 2}) as journal:
        assert len(journal) == 0
    assert (tmp_path / "work.jsonl.old").exists()


def test_damaged_journal_is_named(tmp_path):
    path = tmp_path / "work.jsonl"
    path.write_text('{"meta": {}}\nnot json\n{"key": "a"}\n')
    with pytest.raises(UserError, match="work.jsonl, line 2, is damaged"):
        Journal(path, {})


def test_run_lock_refuses_a_second_holder(tmp_path):
    with run_lock(tmp_path / ".lock", "doing X"):
        with pytest.raises(UserError, match=r"another run is doing X \(.*\); wait for it to finish"):
            with run_lock(tmp_path / ".lock", "doing X"):
                pass
    with run_lock(tmp_path / ".lock", "doing X"):   # released with its holder
        pass


# ------------------------------------------------------------------ training

@pytest.mark.parametrize("extra", [("--set", "PROXY_MODEL_EMA=0"), ()], ids=["last", "average"])
def test_killed_training_resumes_with_nothing_lost_or_duplicated(synthetic_root, tmp_path, extra):
    """kill -9 mid-training, then the same command: the result equals an uninterrupted run
    (with a moving average of the weights too: it and the training weights are both resumed)."""
    epochs = 6
    reference = tmp_path / "reference"
    reference.mkdir()
    for stage in ("stage_1", "stage_2"):
        os.symlink(synthetic_root / stage, reference / stage)
    uninterrupted_run = start(train_cmd(reference, epochs, *extra))
    proc = start(train_cmd(synthetic_root, epochs, *extra))
    weights = synthetic_root / f"{NAME}_model_weights"
    wait_for(lambda: (weights / "log.csv").exists() and len(epochs_logged(synthetic_root)) >= 2)
    kill9(proc)
    killed_at = load_proxy(weights / "last.pt")[1]["epoch"]
    assert 2 <= killed_at < epochs

    again = run(train_cmd(synthetic_root, epochs, *extra))   # the same command, no --resume
    assert again.returncode == 0, again.stderr
    assert f"after epoch {killed_at}" in again.stderr
    assert epochs_logged(synthetic_root) == list(range(1, epochs + 1))
    assert uninterrupted_run.wait() == 0
    resumed, payload = load_proxy(weights / "last.pt")
    uninterrupted, expected = load_proxy(reference / f"{NAME}_model_weights" / "last.pt")
    assert payload["epoch"] == expected["epoch"] == epochs
    for key, tensor in uninterrupted.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], tensor, rtol=0, atol=0)
    if not extra:                                            # the default: an average is kept
        assert "training_state_dict" in payload and payload["ema_steps"] == expected["ema_steps"] > 0
        for key, tensor in expected["training_state_dict"].items():
            torch.testing.assert_close(payload["training_state_dict"][key], tensor, rtol=0, atol=0)
    assert [h["train_loss"] for h in payload["history"]] == [h["train_loss"] for h in expected["history"]]


def test_concurrent_training_is_refused(synthetic_root):
    with run_lock(synthetic_root / f"{NAME}_model_weights" / ".lock", "training"):
        proc = run(train_cmd(synthetic_root, 1))
    one_line_error(proc, f"another run is training {NAME}")
    assert not (synthetic_root / f"{NAME}_model_weights" / "last.pt").exists()


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(synthetic_root, monkeypatch):
    import utils.proxies.train as training
    calls = {"n": 0}
    real = training.parse_loss("mse")

    def loss_going_nan(spec):
        def loss(pred, target):
            calls["n"] += 1
            value = real(pred, target)
            return value * float("nan") if calls["n"] > 6 else value
        return loss

    monkeypatch.setattr(training, "parse_loss", loss_going_nan)
    cfg = training.default_config(EXPOSURE, epochs=10, batch_size=4, size="tiny", device="cpu")
    cfg.loss = "mse"
    with pytest.raises(UserError, match=r"the training loss became nan at epoch (\d+); nothing of this "
                                        r"epoch is saved .*last.pt keeps epoch"):
        training.train(EXPOSURE, EXPOSURE.sliders, NAME, synthetic_root / "stage_1" / NAME,
                       synthetic_root / "stage_2" / NAME, RunPaths(synthetic_root), cfg)
    weights = synthetic_root / f"{NAME}_model_weights"
    for name in ("last.pt", "best.pt"):
        proxy, payload = load_proxy(weights / name)
        assert payload["epoch"] >= 1 and np.isfinite(payload["val_psnr"])
        assert all(torch.isfinite(p).all() for p in proxy.state_dict().values() if p.is_floating_point())
    assert max(epochs_logged(synthetic_root)) == load_proxy(weights / "last.pt")[1]["epoch"]


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "unreadable TIFF"),
    (lambda p: p.write_bytes(b"garbage"), "unreadable TIFF"),
    (lambda p: p.unlink(), "unreadable TIFF"),
    (lambda p: write_tiff(p, np.full((16, 16, 3), np.nan, np.float32)), "holds NaN or Inf"),
])
def test_damaged_tiff_in_a_dataset_is_named_before_training(synthetic_root, damage, message):
    victim = synthetic_root / "stage_1" / NAME / "outputs" / "img1_00004.tif"
    damage(victim)
    proc = run(train_cmd(synthetic_root, 2))
    one_line_error(proc, message)
    assert "img1_00004.tif" in proc.stderr
    assert not (synthetic_root / f"{NAME}_model_weights" / "last.pt").exists()


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "is not a readable checkpoint"),
    ({"format": 999}, "has checkpoint format 999"),
    ({"format": 1}, "holds a proxy with another model|does not fit this version's proxies"),
])
def test_incompatible_checkpoint_is_one_line(synthetic_root, content, message):
    weights = synthetic_root / f"{NAME}_model_weights"
    weights.mkdir()
    for name in ("last.pt", "best.pt"):
        if isinstance(content, bytes):
            (weights / name).write_bytes(content)
        else:
            torch.save(content, weights / name)
    proc = run(train_cmd(synthetic_root, 2))
    one_line_error(proc, message.split("|")[0])
    assert "to train anew" in proc.stderr or "use another -c NAME" in proc.stderr
    proc = run([sys.executable, "Eval.py", "exposure", "--image", "x.dng", "-v", "1,0",
                "--out", str(synthetic_root)])
    one_line_error(proc, message.split("|")[-1])
    assert "retrain the proxy" in proc.stderr
    assert (weights / "last.pt").read_bytes()        # nothing destroyed


def test_eval_of_a_never_trained_proxy_is_one_line(tmp_path):
    proc = run([sys.executable, "Eval.py", "exposure", "--image", "x.dng", "-v", "1,0", "--out", str(tmp_path)])
    one_line_error(proc, f"no trained proxy '{NAME}'")


# ------------------------------------------------------------------ slider regression

def tiny_proxy():
    """An untrained tiny exposure proxy, the same in every process."""
    from models.networks import ModelSpec
    from models.proxy import Proxy
    torch.manual_seed(0)
    return Proxy(ModelSpec("pointwise", "tiny", 3, 3, 2), EXPOSURE.sliders, EXPOSURE.value_scale)


REGRESSION_SCRIPT = """
import sys
from pathlib import Path
import torch
from tests.test_reliability import tiny_proxy
from utils.data.tapouts import TapoutDataset
from utils.evaluation.regress import slider_regression
from utils.journal import Journal
from utils.proxies.registry import EXPOSURE

folder, journal_path = Path(sys.argv[1]), Path(sys.argv[2])   # argv[0] is '-c'
proxy = tiny_proxy()
data = TapoutDataset(folder, EXPOSURE.sliders)
with Journal(journal_path, {"test": 1}) as journal:
    slider_regression(proxy, EXPOSURE, data, list(range(len(data))), torch.device("cpu"),
                      int(sys.argv[3]), 2, 0, None, journal)
"""


def test_killed_regression_continues_with_the_remaining_targets(tmp_path):
    data = write_dataset(tmp_path / "data", 2, 3)

    def command(journal, iterations=100):
        return [sys.executable, "-c", REGRESSION_SCRIPT, str(data), str(journal), str(iterations)]

    reference = tmp_path / "reference.jsonl"
    uninterrupted_run = start(command(reference))
    journal = tmp_path / "regression.jsonl"
    proc = start(command(journal))
    wait_for(lambda: journal.exists() and journal.read_text().count("\n") >= 3)   # meta + 2 targets
    kill9(proc)
    done_before = journal.read_text().count("\n") - 1
    assert 2 <= done_before < 6
    assert run(command(journal)).returncode == 0
    assert uninterrupted_run.wait() == 0

    def rows(path):
        return [json.loads(ln) for ln in path.read_text().splitlines()[1:]]
    assert [r["key"] for r in rows(journal)] == [f"img{i}_{k:05d}" for i in range(2) for k in range(3)]
    assert rows(journal) == rows(reference)   # each target exactly once, as without the kill


def test_concurrent_evaluation_is_refused(synthetic_root, tmp_path):
    from utils.evaluation.evaluate import evaluate
    proxy = tiny_proxy()
    with run_lock(synthetic_root / "eval" / NAME / ".lock", "evaluating"):
        with pytest.raises(UserError, match=f"another run is evaluating {NAME}"):
            evaluate(None, proxy, EXPOSURE, NAME, RunPaths(synthetic_root), synthetic_root / "stage_2" / NAME,
                     torch.device("cpu"), 1, 0)


# ------------------------------------------------------------------ darktable calls share nothing

def test_parallel_darktable_calls_share_no_directory(tmp_path):
    """Each call gets its own config, cache and dump directory, removed afterwards."""
    from utils.darktable.install import DarktableInstall
    from utils.darktable.runner import Darktable, Job
    seen = tmp_path / "seen"
    seen.mkdir()
    fake = tmp_path / "darktable-cli"
    fake.write_text(f"#!{sys.executable}\n"
                    "import os, sys, time, json\n"
                    "a = sys.argv\n"
                    "dirs = {k: a[a.index(k) + 1] for k in ('--configdir', '--cachedir', '--dumpdir')}\n"
                    "dirs['exists'] = all(os.path.isdir(d) for d in dirs.values())\n"
                    f"open(os.path.join({str(seen)!r}, str(os.getpid())), 'w').write(json.dumps(dirs))\n"
                    "time.sleep(0.5)\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    dt = Darktable(install=DarktableInstall(str(fake), (5, 0, 1)))
    image = tmp_path / "image.tif"
    write_tiff(image, np.zeros((4, 4, 3), np.float32))
    threads = [threading.Thread(target=dt.render_batch, args=([Job(image)],)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls = [json.loads(p.read_text()) for p in seen.iterdir()]
    assert len(calls) == 4 and all(c.pop("exists") for c in calls)
    paths = [Path(d) for c in calls for d in c.values()]
    assert len(set(paths)) == 12
    for a in paths:   # no directory inside another call's
        assert not any(a != b and b in a.parents for b in paths)
    assert not any(p.exists() for p in paths)


def test_files_that_are_not_images_are_ignored(tmp_path):
    from utils.data.images import list_images
    write_tiff(tmp_path / "photo.tif", np.zeros((4, 4, 3), np.float32))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "photo.tif.xmp").write_text("<x:xmpmeta/>")
    assert list_images(tmp_path) == [tmp_path / "photo.tif"]


def test_concurrent_generation_of_the_same_shard_is_refused(tmp_path):
    import fcntl

    from utils.data.generate import generate
    folder = tmp_path / "stage_1" / NAME
    (folder / "parts").mkdir(parents=True)
    with open(folder / "parts" / ".1-of-1.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(UserError, match=r"another run is generating .* \(shard 1/1\)"):
            generate(None, EXPOSURE, EXPOSURE.sliders, [], folder, 1, 0, 1, 16, 1)


def test_folders_of_killed_darktable_calls_are_removed(tmp_path, monkeypatch):
    """kill -9 leaves a call's private folder behind; the next run removes it, and only it."""
    import fcntl
    import tempfile

    from utils.darktable.runner import remove_abandoned_work
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folders = {}
    for name in ("killed", "running", "starting", "not-a-call"):
        folders[name] = tmp_path / f"dtp-{name}"
        (folders[name] / "dump").mkdir(parents=True)
        if name != "not-a-call":
            (folders[name] / ".lock").touch()
        if name != "starting":
            os.utime(folders[name], (time.time() - 3600,) * 2)
    with open(folders["running"] / ".lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert remove_abandoned_work() == 1
    assert [n for n, f in folders.items() if not f.exists()] == ["killed"]
