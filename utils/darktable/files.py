"""Readers for darktable's tap-out files and float32 TIFF writing (no ImageMagick needed).

darktable 5.0 writes each module's input and output as portable float maps:

- ``PF`` (3 channels, darktable's 4th float dropped) and ``Pf`` (1 channel, raw mosaic);
  header ``PF\\n<w> <h>\\n<scale>\\n``, a negative scale meaning little-endian float32;
- the raw input of rawprepare as ``P5\\n<w> <h>\\n`` followed by uint16 little-endian
  samples, with NO maxval line (so it is not a valid PGM).

In both, rows are stored bottom-to-top; the readers return them top-to-bottom, as (H, W) or
(H, W, 3) arrays. Unknown magics (darktable's development branch moved to 16-bit PPM/PGM)
are refused with a clear error instead of being misread.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from utils.atomic import write_atomic
from utils.errors import UserError


class TapoutFormatError(UserError):
    """A tap-out file whose header or size we do not understand."""


def _read_header(data: bytes, path: Path, nlines: int) -> tuple[list[bytes], int]:
    """Split the first ``nlines`` newline-terminated header lines off ``data``."""
    lines, pos = [], 0
    for _ in range(nlines):
        end = data.find(b"\n", pos)
        if end < 0 or end - pos > 64:
            raise TapoutFormatError(f"{path}: truncated or malformed header")
        lines.append(data[pos:end].strip())
        pos = end + 1
    return lines, pos


def _size(line: bytes, path: Path) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in line.split())
    except ValueError:
        raise TapoutFormatError(f"{path}: bad size line {line!r} in header") from None
    if w <= 0 or h <= 0:
        raise TapoutFormatError(f"{path}: bad image size {w}x{h}")
    return w, h


def read_tapout(path: str | Path) -> np.ndarray:
    """Read a darktable tap-out (``PF``/``Pf`` float map or maxval-less ``P5``), top row first.

    Returns float32 (H, W, 3) for ``PF``, float32 (H, W) for ``Pf``, uint16 (H, W) for ``P5``.
    """
    path = Path(path)
    data = path.read_bytes()
    magic = data[:3]
    if magic in (b"PF\n", b"Pf\n"):
        (_, size, scale_line), offset = _read_header(data, path, 3)
        w, h = _size(size, path)
        try:
            scale = float(scale_line)
        except ValueError:
            raise TapoutFormatError(f"{path}: bad scale line {scale_line!r}") from None
        if scale == 0:
            raise TapoutFormatError(f"{path}: scale 0 in header")
        channels = 3 if magic == b"PF\n" else 1
        dtype = np.dtype("<f4" if scale < 0 else ">f4")
    elif magic == b"P5\n":
        (_, size), offset = _read_header(data, path, 2)
        w, h = _size(size, path)
        channels, dtype = 1, np.dtype("<u2")
    else:
        raise TapoutFormatError(
            f"{path}: unknown tap-out format (magic {data[:2]!r}); this darktable writes dumps "
            "we cannot read, use darktable 4.4 to 5.x")
    expected = w * h * channels * dtype.itemsize
    if len(data) - offset != expected:
        raise TapoutFormatError(
            f"{path}: {len(data) - offset} bytes of pixels, expected {expected} for {w}x{h}x{channels}")
    pixels = np.frombuffer(data, dtype=dtype, count=w * h * channels, offset=offset)
    shape = (h, w, 3) if channels == 3 else (h, w)
    return np.ascontiguousarray(pixels.reshape(shape)[::-1]).astype(dtype.newbyteorder("="))


def write_pfm(path: str | Path, image: np.ndarray) -> None:
    """Write a float32 (H, W) or (H, W, 3) array as a little-endian PFM, as darktable does."""
    image = np.asarray(image, dtype="<f4")
    if image.ndim == 3 and image.shape[2] == 3:
        magic = b"PF"
    elif image.ndim == 2:
        magic = b"Pf"
    else:
        raise ValueError(f"PFM needs (H, W) or (H, W, 3), got {image.shape}")
    h, w = image.shape[:2]
    with open(path, "wb") as f:
        f.write(magic + f"\n{w} {h}\n-1.0\n".encode())
        f.write(np.ascontiguousarray(image[::-1]).tobytes())


def write_tiff(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W) or (H, W, C) array as an uncompressed float32 TIFF."""
    image = np.asarray(image, dtype=np.float32)
    photometric = "rgb" if image.ndim == 3 and image.shape[2] == 3 else "minisblack"
    tifffile.imwrite(path, image, photometric=photometric)


def write_tiff_atomic(path: Path, image: np.ndarray) -> None:
    """:func:`write_tiff` through a temporary file renamed into place (never half-written)."""
    write_atomic(path, lambda tmp: write_tiff(tmp, image))


def read_tiff(path: str | Path) -> np.ndarray:
    """Read a TIFF written by :func:`write_tiff` (or any TIFF) as a float32 array."""
    try:
        return tifffile.imread(path).astype(np.float32, copy=False)
    except (OSError, ValueError, tifffile.TiffFileError) as e:
        raise UserError(f"{path}: unreadable TIFF ({e}); delete it and regenerate") from None


def tiff_shape(path: str | Path) -> tuple[int, ...]:
    """The array shape of a TIFF, read from its header only."""
    try:
        with tifffile.TiffFile(path) as tif:
            return tif.pages[0].shape
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as e:
        raise UserError(f"{path}: unreadable TIFF ({e}); delete it and regenerate") from None


def tapout_to_tiff(src: str | Path, dst: str | Path) -> np.ndarray:
    """Convert one darktable tap-out to a float32 TIFF (the ImageMagick step of the seed)."""
    image = read_tapout(src).astype(np.float32)
    write_tiff(dst, image)
    return image
