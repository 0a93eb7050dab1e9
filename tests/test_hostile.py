"""Hostile input and a hostile machine: every bad request is one line and a non-zero status,
refused before any work, with nothing written; a full or read-only disk mid-run loses
nothing, leaves no temporary file, and the same command completes once the cause is gone.

Tests that need a full or read-only file system mount a small tmpfs (as root) and skip
where mounting is not allowed."""
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from utils.darktable.files import write_tiff
from utils.errors import UserError
from utils.pipeline.config import parse_config


def run(script, *args, timeout=600):
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def run_watching_darktable(dt, tmp_path, script, *args):
    """``run`` with darktable-cli behind a wrapper that logs its calls: (the run, the calls)."""
    calls, wrapper = tmp_path / "calls.log", tmp_path / "darktable-cli"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\nexec "{dt.install.path}" "$@"\n')
    wrapper.chmod(0o755)
    proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DARKTABLE_CLI": str(wrapper)})
    return proc, calls.read_text().splitlines() if calls.exists() else []


def rendered_nothing(calls):
    """darktable was at most asked its version."""
    return all("--version" in line for line in calls)


def one_line(proc, message):
    """The run ended with one ``error:`` line (after any progress bars) holding ``message``."""
    lines = proc.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert message in errors[0], errors[0]
    assert "Traceback" not in proc.stderr


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


@pytest.mark.parametrize("args, message", [
    (("--seed", "-1"), "--seed -1: use 0 or more"),
    (("--max-minutes", "nan"), "--max-minutes nan: give a finite number"),
    (("--lr", "inf"), "--lr inf: give a finite number"),
    (("--lr", "0"), "--lr 0: use a number above 0"),
    (("--epochs", "0"), "--epochs 0: use 1 or more"),
    (("--set", "SEED=-1"), "setting SEED=-1 must be 0 or more"),
    (("--set", "PROXY_MODEL_LR=inf"), "must be a finite number"),
    (("--resume",), "--resume:"),
    (("--device", "cuda"), "--device cuda"),
    (("-c", "x" * 300), "use a -c NAME of at most"),
])
def test_bad_values_are_refused_before_any_work(dt, folders, tmp_path, args, message):
    if args == ("--device", "cuda"):
        import torch
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
    out = tmp_path / "out"
    proc, calls = run_watching_darktable(dt, tmp_path, "Darktable_proxies.py", "exposure", "-n", "1", "--images",
                                         str(folders / "train"), "--eval-images", str(folders / "eval"),
                                         "--out", str(out), *args)
    assert proc.returncode == 2
    one_line(proc, message)
    assert rendered_nothing(calls), calls
    assert files_under(out) == []          # no dataset.json or settings.json blocks the corrected command


def test_out_that_is_a_file_is_refused(folders, tmp_path):
    out = tmp_path / "a-file"
    out.write_text("not a folder")
    proc = run("Darktable_proxies.py", "exposure", "-n", "1", "--images", str(folders / "train"),
               "--out", str(out))
    assert proc.returncode == 2
    one_line(proc, "is a file, not a folder")
    proc = run("Darktable_proxies.py", "exposure", "-n", "1", "--images", str(folders / "train"),
               "--out", str(out / "below"))
    assert proc.returncode == 2
    one_line(proc, "is a file, not a folder")


def test_read_only_out_is_refused_before_work(folders, tmp_path):
    with tmpfs(tmp_path / "ro", "size=4m") as mount:
        remount(mount, "ro")
        proc = run("Darktable_proxies.py", "exposure", "-n", "1", "--images", str(folders / "train"),
                   "--out", str(mount / "runs"))
        assert proc.returncode == 2
        one_line(proc, "is read-only")


def test_a_run_that_cannot_fit_on_the_disk_is_refused_before_rendering(dt, folders, tmp_path):
    proc, calls = run_watching_darktable(dt, tmp_path, "Darktable_proxies.py", "exposure", "-n", str(10 ** 9),
                                         "--images", str(folders / "train"), "--eval-images", str(folders / "eval"),
                                         "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    one_line(proc, "needs about")
    assert "free at" in proc.stderr
    assert rendered_nothing(calls), calls
    assert files_under(tmp_path / "out") == []


def test_tiny_and_broken_images_are_refused_by_name(tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    write_tiff(tiny / "dot.tif", np.full((8, 8, 3), 0.5, np.float32))
    proc = run("Darktable_proxies.py", "exposure", "-n", "1", "--images", str(tiny), "--eval-images", str(tiny),
               "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    one_line(proc, "dot.tif (8x8) gives 8x8 tap-outs")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "gone.dng").symlink_to(tmp_path / "nowhere.dng")
    proc = run("Darktable_proxies.py", "exposure", "-n", "1", "--images", str(broken), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    one_line(proc, "gone.dng is a link to a file that does not exist")
    proc = run("Eval.py", "exposure", "--image", str(tmp_path), "-v", "1,0", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2


@pytest.mark.parametrize("proxy, missing, family", [("colorin", "DNG colour matrix for D65", "pointwise"),
                                                    ("denoiseprofile", "DNG as-shot white balance", "multiscale")])
def test_an_exact_proxy_refuses_images_without_what_it_needs_of_a_dng_before_rendering(tmp_path, proxy, missing,
                                                                                       family):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_tiff(photos / "photo.tif", np.full((64, 96, 3), 0.5, np.float32))
    proc = run("Darktable_proxies.py", proxy, "-n", "1", "--images", str(photos), "--eval-images", str(photos),
               "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    one_line(proc, f"photo.tif: no {missing}")
    assert f"--model {family}" in proc.stderr and not (tmp_path / "out" / "stage_1").exists()


def test_config_with_a_byte_order_mark_and_a_folder_as_config(tmp_path):
    config = tmp_path / "bom.txt"
    config.write_bytes("\ufeffexposure full 1\n".encode("utf-8"))
    assert [line.name for line in parse_config(config)] == ["exposure"]
    with pytest.raises(UserError, match="is a folder"):
        parse_config(tmp_path)


@pytest.mark.darktable
def test_full_disk_during_generation_loses_nothing(folders, tmp_path):
    """The file system runs out of inodes (ENOSPC) mid-generation: one line naming the path,
    no temporary file left; with room again the same command completes the dataset exactly
    as a run that never failed."""
    reference = tmp_path / "reference"
    args = ["exposure", "-n", "6", "--size", "48", "--generate-only", "--images", str(folders / "train"),
            "--eval-images", str(folders / "eval"), "--set", "STAGE_2_SAMPLES_PER_IMAGE=2", "--workers", "1",
            "--set", "DARKTABLE_BATCH_SIZE=2"]
    assert run("Darktable_proxies.py", *args, "--out", str(reference)).returncode == 0
    with tmpfs(tmp_path / "small", "size=64m,nr_inodes=24") as mount:
        out = mount / "runs"
        proc = run("Darktable_proxies.py", *args, "--out", str(out))
        assert proc.returncode in (2, 3)
        one_line(proc, "no space left on its device")
        assert not [p for p in files_under(out) if p.name.endswith(".tmp")]
        remount(mount, "nr_inodes=4000")
        proc = run("Darktable_proxies.py", *args, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        for stage in ("stage_1", "stage_2"):
            mine = (out / stage / "exposure_exposure_black" / "manifest.csv").read_text()
            theirs = (reference / stage / "exposure_exposure_black" / "manifest.csv").read_text()
            assert mine == theirs


def test_full_disk_while_training_is_one_line_and_leaves_no_temporary_file(tmp_path):
    """The weights folder's file system fills up at the first checkpoint: one line naming the
    checkpoint, exit 2, no temporary file; with room again the same command trains."""
    from tests.test_reliability import NAME, write_dataset
    data = tmp_path / "data"
    write_dataset(data / "stage_1" / NAME, 2, 6)
    write_dataset(data / "stage_2" / NAME, 1, 3, seed=1)
    with tmpfs(tmp_path / "small", "size=48k") as mount:
        args = ["exposure", "-d", str(data / "stage_1" / NAME), "--out", str(mount), "--no-eval", "--device", "cpu",
                "--epochs", "1", "--batch-size", "4", "--set", "PROXY_MODEL_SIZE=tiny", "--set", "SAVE_OUTPUT_FREQ=1000"]
        proc = run("Darktable_proxies.py", *args)
        assert proc.returncode == 2
        one_line(proc, "no space left on its device")
        assert not [p for p in files_under(mount) if p.name.endswith(".tmp")]
        remount(mount, "size=8m")
        proc = run("Darktable_proxies.py", *args)
        assert proc.returncode == 0, proc.stderr
        assert (mount / f"{NAME}_model_weights" / "last.pt").exists()
