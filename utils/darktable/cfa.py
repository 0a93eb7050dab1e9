"""The CFA (Bayer) pattern of a raw image at darktable's mosaic tap-outs.

darktable's raw modules before demosaic (rawprepare out, temperature, highlights, demosaic
in) see the mosaic after rawprepare's crop, so the pattern at a tap-out is the sensor's
pattern moved by the crop. Measured with darktable 5.0.1 on DNGs (tests/test_mosaic.py):

- ``CFAPattern`` is relative to the ``ActiveArea``'s top-left corner (as the DNG
  specification has it): an odd ActiveArea offset crops the mosaic but does not change the
  phase;
- darktable then crops to ``DefaultCropOrigin`` / ``DefaultCropSize``, and an odd origin
  shifts the phase (x by columns, y by rows).

Other raw formats: the pattern is measured with darktable itself (:func:`probe_pattern`:
white balance with distinct red, green and blue multipliers and the photosite ratios).
Names are the top-left 2x2 tile row by row, e.g. ``RGGB``.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import tifffile

from utils.darktable.runner import Darktable
from utils.darktable.xmp import HistoryItem
from utils.errors import UserError

COLOURS = "RGB"          # DNG CFA colour indices 0, 1, 2
PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
TAG_CFA_REPEAT = 33421
TAG_CFA_PATTERN = 33422
TAG_DEFAULT_CROP_ORIGIN = 50719


def shift_pattern(pattern: str, rows: int, cols: int) -> str:
    """The pattern seen from ``rows`` down and ``cols`` right of its origin."""
    tile = [pattern[0:2], pattern[2:4]]
    return "".join(tile[(dy + rows) % 2][(dx + cols) % 2] for dy in (0, 1) for dx in (0, 1))


def _number(value) -> float:
    """A TIFF value that may be an int, a float or a rational (numerator, denominator)."""
    if isinstance(value, tuple):
        return float(Fraction(int(value[0]), int(value[1])))
    return float(value)


def _pairs(value) -> list:
    """tifffile gives RATIONAL arrays flat (n1, d1, n2, d2) or as pairs; we want pairs/ints."""
    values = list(value) if isinstance(value, (tuple, list, np.ndarray)) else [value]
    if values and isinstance(values[0], (tuple, list)):
        return [tuple(v) for v in values]
    return values


def _cfa_page(tif: tifffile.TiffFile):
    """The IFD holding the CFA mosaic: the main image, or a SubIFD (real DNGs keep a preview
    in the main IFD and the raw in SubIFD 0)."""
    for page in tif.pages:
        for candidate in (page, *(page.pages or ())):
            if TAG_CFA_PATTERN in candidate.tags:
                return candidate
    return None


def read_pattern(path: str | Path) -> str:
    """The 2x2 Bayer pattern of a DNG (or TIFF-based raw with CFA tags) at darktable's mosaic
    tap-outs, read from the file; UserError when the file has no 2x2 Bayer CFA."""
    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            page = _cfa_page(tif)
            if page is None:
                raise UserError(f"{path} has no CFAPattern tag: not a Bayer raw in DNG/TIFF form")
            repeat = tuple(int(v) for v in page.tags[TAG_CFA_REPEAT].value) \
                if TAG_CFA_REPEAT in page.tags else (2, 2)
            colours = [int(v) for v in page.tags[TAG_CFA_PATTERN].value]
            origin = page.tags.get(TAG_DEFAULT_CROP_ORIGIN)
            x0, y0 = (_number(v) for v in _pairs(origin.value)) if origin is not None else (0, 0)
    except (OSError, ValueError, KeyError, tifffile.TiffFileError) as e:
        raise UserError(f"cannot read the CFA pattern of {path} ({type(e).__name__}: {e})") from None
    if repeat != (2, 2) or len(colours) != 4 or sorted(colours) != [0, 1, 1, 2]:
        raise UserError(f"{path}: CFA {repeat[0]}x{repeat[1]} {colours} is not a 2x2 Bayer pattern "
                        "(X-Trans and 4-colour sensors are not supported by the mosaic proxies)")
    if x0 != int(x0) or y0 != int(y0):
        raise UserError(f"{path}: DefaultCropOrigin ({x0}, {y0}) is not on whole photosites")
    return shift_pattern("".join(COLOURS[c] for c in colours), int(y0), int(x0))


def pattern_from_ratios(ratios: np.ndarray, gains: tuple[float, float, float]) -> str:
    """Name the pattern from the output/input ratio of each 2x2 position (row-major) under
    white-balance ``gains`` (red, green, blue: distinct)."""
    names = []
    for r in ratios:
        k = int(np.argmin([abs(r - g) for g in gains]))
        if abs(r - gains[k]) > 1e-3 * gains[k]:
            raise UserError(f"photosite ratio {r:.4g} matches none of the multipliers {gains}")
        names.append(COLOURS[k])
    pattern = "".join(names)
    if pattern not in PATTERNS:
        raise UserError(f"darktable's mosaic has pattern {pattern}, not a Bayer pattern")
    return pattern


PROBE_GAINS = (2.0, 1.0, 3.0)   # red, green, blue multipliers of the probe render


def probe_pattern(dt: Darktable, image: str | Path, white_balance: HistoryItem) -> str:
    """The pattern at the mosaic tap-outs, measured with darktable: ``white_balance`` is a
    temperature history item with the multipliers PROBE_GAINS; the ratio out/in of each 2x2
    position names its colour."""
    render = dt.render(image, [white_balance], dump=["temperature"], size=0, hq=True)
    return pattern_from_ratios(tap_ratios(*render.io("temperature")), PROBE_GAINS)


def tap_ratios(tap_in: np.ndarray, tap_out: np.ndarray) -> np.ndarray:
    """Median out/in ratio of each of the four 2x2 positions (row-major) of a mosaic."""
    ratios = []
    for dy in (0, 1):
        for dx in (0, 1):
            a, b = tap_in[dy::2, dx::2], tap_out[dy::2, dx::2]
            lit = a > 1e-3
            if not lit.any():
                raise UserError("the mosaic is black at one CFA position; cannot measure its pattern")
            ratios.append(float(np.median(b[lit] / a[lit])))
    return np.array(ratios)


def image_pattern(path: str | Path, dt: Darktable | None = None,
                  white_balance: Callable[[], HistoryItem] | None = None) -> str:
    """The pattern at the tap-outs: read from a DNG/TIFF-based raw, else measured with ``dt``
    and the temperature history item that ``white_balance()`` makes (see probe_pattern)."""
    try:
        return read_pattern(path)
    except UserError:
        if dt is None or white_balance is None or Path(path).suffix.lower() == ".dng":
            raise
        return probe_pattern(dt, path, white_balance())
