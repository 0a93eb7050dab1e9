import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def dt():
    """The real darktable-cli (installed by ``make test``)."""
    from utils.darktable import Darktable
    return Darktable()


@pytest.fixture(scope="session")
def raw_image():
    """A built-in raw DNG (real photograph, unprocessed)."""
    from utils.images import builtin_images, list_images
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
