"""Dataset generation with the real darktable-cli on small images (marked ``darktable``)."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT, generate_exposure
from utils.darktable.files import read_tiff
from utils.data.images import list_images
from utils.data.manifest import read_manifest

pytestmark = pytest.mark.darktable
N = 3            # settings per image
SIZE = "64"      # long side of the tap-outs


def generate(folders, root, *extra, check=True):
    return generate_exposure(folders, root, N, SIZE, "--set", "DARKTABLE_BATCH_SIZE=2", *extra, check=check)


def dataset_bytes(folder):
    """Everything that defines a dataset: the manifest and every file it names."""
    rows = read_manifest(folder)
    files = {r[c]: open(r[c], "rb").read() for r in rows for c in ("input", "output")}
    return (folder / "manifest.csv").read_text(), {os.path.relpath(k, folder): v for k, v in files.items()}


def assert_exposure_law(folder, expected_rows):
    rows = read_manifest(folder)
    assert len(rows) == expected_rows
    assert len({r["sample"] for r in rows}) == expected_rows
    for row in rows:
        tap_in, tap_out = read_tiff(row["input"]), read_tiff(row["output"])
        exposure, black = float(row["exposure"]), float(row["black"])
        expected = (tap_in.astype(np.float64) - black) / (2.0 ** -exposure - black)
        assert np.max(np.abs(tap_out - expected) / np.maximum(np.abs(expected), 1e-3)) < 1e-4, row
        assert max(tap_out.shape[:2]) == int(SIZE)


@pytest.fixture(scope="module")
def one_worker(folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("w1")
    generate(folders, root, "--workers", "1")
    return root


def test_rows_and_exposure_law(one_worker):
    stage1 = one_worker / "stage_1" / "exposure_exposure_black"
    assert_exposure_law(stage1, 2 * N)
    assert_exposure_law(one_worker / "stage_2" / "exposure_exposure_black", 2)
    header = (stage1 / "manifest.csv").read_text().splitlines()[0]
    assert header == "input,output,exposure,black,image,sample"
    assert len(list((stage1 / "inputs").iterdir())) == 2   # one input per image, stored once
    assert (stage1 / "settings.json").exists() and (stage1 / "preview.png").exists()


def test_same_seed_same_dataset_with_two_workers(folders, one_worker, tmp_path):
    generate(folders, tmp_path, "--workers", "2")
    for stage in ("stage_1", "stage_2"):
        a = dataset_bytes(one_worker / stage / "exposure_exposure_black")
        b = dataset_bytes(tmp_path / stage / "exposure_exposure_black")
        assert a == b


def test_shards_combine_into_one_dataset(folders, one_worker, tmp_path):
    generate(folders, tmp_path, "--shard", "2/2", "--set", "GENERATE_STAGE_2=false")
    partial = read_manifest(tmp_path / "stage_1" / "exposure_exposure_black")
    assert 0 < len(partial) < 2 * N
    generate(folders, tmp_path, "--shard", "1/2", "--set", "GENERATE_STAGE_2=false")
    assert dataset_bytes(one_worker / "stage_1" / "exposure_exposure_black") == \
        dataset_bytes(tmp_path / "stage_1" / "exposure_exposure_black")


def test_killed_run_resumes_without_loss_or_duplicates(folders, one_worker, tmp_path):
    cmd = [sys.executable, "Darktable_proxies.py", "exposure", "-n", str(N), "--generate-only",
           "--images", str(folders / "train"), "--eval-images", str(folders / "eval"),
           "--size", SIZE, "--out", str(tmp_path), "--set", "GENERATE_STAGE_2=false",
           "--set", "DARKTABLE_BATCH_SIZE=1", "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    part = tmp_path / "stage_1" / "exposure_exposure_black" / "parts" / "1-of-1.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if part.exists() and part.read_text().count("\n") >= 3:   # header + 2 samples
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with open(part, "a") as f:
        f.write("inputs/half-written-li")   # what a kill in the middle of a write leaves
    generate(folders, tmp_path, "--set", "GENERATE_STAGE_2=false", "--workers", "1")
    assert dataset_bytes(one_worker / "stage_1" / "exposure_exposure_black") == \
        dataset_bytes(tmp_path / "stage_1" / "exposure_exposure_black")


def test_other_settings_into_the_same_dataset_are_refused(folders, one_worker):
    proc = generate(folders, one_worker, "--seed", "7", check=False)
    assert proc.returncode == 2 and "made with other settings (seed: 0 there, 7 now)" in proc.stderr


def test_batched_equals_single_calls(dt, folders):
    from utils.darktable.runner import Job
    from utils.proxies.registry import EXPOSURE
    images = list_images(folders / "train")
    item = EXPOSURE.history_item(dt, {"exposure": 1.0, "black": 0.005})
    batch = dt.render_batch([Job(p, (item,)) for p in images * 2], dump=["exposure"], size=64, hq=False)
    for image, result in zip(images * 2, batch):
        single = dt.render(image, [item], dump=["exposure"], size=64, hq=False)
        for a, b in zip(single.io("exposure"), result.io("exposure")):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * max(1.0, np.abs(a).max()))


@pytest.mark.parametrize("workers,batch", [("2", "32"), ("1", "32")])
def test_batched_generation_equals_one_call_per_sample(folders, tmp_path, workers, batch):
    """The generation path (batches of several images, parallel processes) against one
    darktable call per sample: the same tap-outs, to darktable's own 1e-6 (see the facts on
    the first image of a process)."""
    common = ("--set", "GENERATE_STAGE_2=false")
    generate_exposure(folders, tmp_path / "single", N, SIZE, *common, "--set", "DARKTABLE_BATCH_SIZE=1",
                      "--workers", "1")
    generate_exposure(folders, tmp_path / "batched", N, SIZE, *common, "--set", f"DARKTABLE_BATCH_SIZE={batch}",
                      "--workers", workers)
    single = read_manifest(tmp_path / "single" / "stage_1" / "exposure_exposure_black")
    batched = read_manifest(tmp_path / "batched" / "stage_1" / "exposure_exposure_black")
    assert [r["sample"] for r in single] == [r["sample"] for r in batched] and len(single) == 2 * N
    for a, b in zip(single, batched):
        assert (a["exposure"], a["black"]) == (b["exposure"], b["black"])
        for column in ("input", "output"):
            x, y = read_tiff(a[column]), read_tiff(b[column])
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6 * max(1.0, np.abs(x).max()))
