"""PFM / P5 tap-out parsing on hand-made files (the layouts darktable 5.0 writes)."""
import shutil
import subprocess

import numpy as np
import pytest

from utils.darktable.files import (
    TapoutFormatError,
    read_tapout,
    read_tiff,
    tapout_to_tiff,
    write_pfm,
)


def test_pf_rows_bottom_to_top(tmp_path):
    image = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    path = tmp_path / "0001_exposure_cpu_out_C.pfm"
    path.write_bytes(b"PF\n3 2\n-1.0\n" + image[::-1].astype("<f4").tobytes())
    np.testing.assert_array_equal(read_tapout(path), image)


def test_pf_mono_and_big_endian(tmp_path):
    image = np.array([[1.5, -2.0], [1e6, 0.25]], np.float32)
    path = tmp_path / "m.pfm"
    path.write_bytes(b"Pf\n2 2\n1.0\n" + image[::-1].astype(">f4").tobytes())
    out = read_tapout(path)
    assert out.dtype == np.float32 and out.shape == (2, 2)
    np.testing.assert_array_equal(out, image)


def test_write_read_round_trip_keeps_values_above_one(tmp_path):
    image = np.random.default_rng(0).normal(0, 100, (5, 4, 3)).astype(np.float32)
    write_pfm(tmp_path / "x.pfm", image)
    np.testing.assert_array_equal(read_tapout(tmp_path / "x.pfm"), image)


def test_p5_without_maxval(tmp_path):
    counts = np.array([[0, 1, 2], [65535, 4096, 7]], np.uint16)
    path = tmp_path / "0000_rawprepare_cpu_in_M.ppm"
    path.write_bytes(b"P5\n3 2\n" + counts[::-1].astype("<u2").tobytes())
    np.testing.assert_array_equal(read_tapout(path), counts)


@pytest.mark.parametrize("data, message", [
    (b"P6\n1 1\n255\n\x00\x00\x00", "unknown tap-out format"),
    (b"PF\n2 2\n-1.0\n" + b"\x00" * 10, "bytes of pixels"),
    (b"PF\nx y\n-1.0\n", "bad size"),
    (b"PF\n1 1\n0\n" + b"\x00" * 12, "scale 0"),
    (b"PF\n1 1", "truncated"),
])
def test_header_errors_are_named(tmp_path, data, message):
    path = tmp_path / "bad.pfm"
    path.write_bytes(data)
    with pytest.raises(TapoutFormatError, match=message):
        read_tapout(path)


def test_tiff_conversion_is_lossless(tmp_path):
    image = np.random.default_rng(1).uniform(-1, 40, (3, 5, 3)).astype(np.float32)
    write_pfm(tmp_path / "a.pfm", image)
    tapout_to_tiff(tmp_path / "a.pfm", tmp_path / "a.tif")
    np.testing.assert_array_equal(read_tiff(tmp_path / "a.tif"), image)


@pytest.mark.skipif(not shutil.which("magick"), reason="ImageMagick 7 ('magick') is not installed")
def test_tiff_equals_imagemagick_conversion(tmp_path):
    image = np.random.default_rng(2).uniform(-0.5, 8.0, (6, 7, 3)).astype(np.float32)
    write_pfm(tmp_path / "a.pfm", image)
    tapout_to_tiff(tmp_path / "a.pfm", tmp_path / "ours.tif")
    subprocess.run(["magick", str(tmp_path / "a.pfm"), "-define", "quantum:format=floating-point",
                    "-depth", "32", str(tmp_path / "magick.tif")], check=True)
    theirs = read_tiff(tmp_path / "magick.tif")
    np.testing.assert_allclose(read_tiff(tmp_path / "ours.tif"), theirs.reshape(image.shape), rtol=1e-6)
