import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def dt():
    """The real darktable-cli (installed by ``make test``)."""
    from utils.darktable.runner import Darktable
    return Darktable()


@pytest.fixture(scope="session")
def raw_image():
    """A built-in raw DNG (real photograph, unprocessed)."""
    from utils.data.images import builtin_images, list_images
    return list_images(builtin_images("train"))[1]


@pytest.fixture(scope="session")
def tiff16(tmp_path_factory):
    """A 16-bit sRGB TIFF of a real photograph."""
    import tifffile
    from skimage import data
    path = tmp_path_factory.mktemp("tiff") / "coffee16.tif"
    photo = data.coffee()[::4, ::4].astype(np.uint16) * 257
    tifffile.imwrite(path, photo, photometric="rgb")
    return path


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """Two built-in training images and one evaluation image, in their own folders."""
    from utils.data.images import builtin_images, list_images
    base = tmp_path_factory.mktemp("images")
    (base / "train").mkdir()
    (base / "eval").mkdir()
    for src in list_images(builtin_images("train"))[:2]:
        shutil.copy(src, base / "train")
    shutil.copy(list_images(builtin_images("eval"))[0], base / "eval")
    return base


def generate_exposure(folders, root, n, size, *extra, check=True):
    """Run ``Darktable_proxies.py exposure --generate-only`` on ``folders`` into ``root``."""
    cmd = [sys.executable, "Darktable_proxies.py", "exposure", "-n", str(n), "--generate-only",
           "--images", str(folders / "train"), "--eval-images", str(folders / "eval"),
           "--size", str(size), "--out", str(root), "--set", "STAGE_2_SAMPLES_PER_IMAGE=2", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="session")
def tiny_dataset(folders, tmp_path_factory):
    """A small real exposure dataset (stage 1: 2 images x 6 settings; stage 2: 2 settings)."""
    root = tmp_path_factory.mktemp("tiny")
    generate_exposure(folders, root, 6, 48)
    return root


def train_tiny(root, *extra):
    """Train (and evaluate, unless --no-eval is in ``extra``) the small exposure proxy."""
    cmd = [sys.executable, "Darktable_proxies.py", "exposure", "-d", "exposure_exposure_black",
           "--out", str(root), "--set", "PROXY_MODEL_SIZE=small", "--set", "SAVE_OUTPUT_FREQ=10",
           "--device", "cpu", "--batch-size", "4", "--lr", "3e-3", "-r", "2",
           "--set", "PARAM_TUNING_NUM_ITER=60", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="session")
def trained_tiny(tiny_dataset, tmp_path_factory):
    """A ROOT with the tiny dataset, a small exposure proxy trained 20 epochs, and its evaluation."""
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(tiny_dataset / "stage_1", root / "stage_1")
    shutil.copytree(tiny_dataset / "stage_2", root / "stage_2")
    train_tiny(root, "--epochs", "20")
    return root
