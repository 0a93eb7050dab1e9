"""Modules darktable runs at their defaults, computed exactly: the fixed blocks of a chain.

A chain lists the modules a user edits; darktable also runs others between them (demosaic,
the input and output colour profiles). These are computed exactly here, differentiably and
with nothing learned; they have no sliders. Each takes the image's *context*
(:class:`ImageContext`: what darktable derives from the file, such as the camera's colour
matrix), which is measured once per image and never regressed, so a camera never seen in
training works.

All are checked against darktable 5.0.1's tap-outs (``tests/models/test_fixed.py``,
``tests/models/test_demosaic_exact.py`` and ``tests/pipeline/test_fill.py``):

- :class:`Demosaic` (Bayer raws; darktable's default, RCD): models/demosaic_exact.py, tile by
  tile as darktable runs it; measured 153-172 dB over the full image on the built-in raws
  (all four CFA patterns, random white balance): float rounding, at most 5e-7.
- :class:`ColorIn` (input colour profile, matrix profiles): camera RGB -> XYZ (D50) by the
  image's 3x3 matrix -> Lab. The matrix is fitted to one darktable render of the image
  (``utils.pipeline.fill.image_context``); measured 98-105 dB on the built-in raws of four
  cameras (the Lab error is darktable's fast cube root).
- :class:`ColorOut` (output colour profile, sRGB): Lab -> XYZ -> linear sRGB (the
  D50-adapted sRGB matrix) -> the sRGB curve, clipped at 0 and, above 1, extrapolated as
  darktable does (a power law fitted to the curve at 0.7, 0.8, 0.9 and 1); 115-120 dB.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from models.colorspace import D50, _BRADFORD, _matmul, _xy_to_xyz, lab_to_xyz, profile_to_lab
from models.darktable.demosaic import rcd_demosaic


@dataclass
class ImageContext:
    """What darktable derives from an image file and a chain is conditioned on (never
    regressed): the CFA pattern at the mosaic tap-outs, colorin's matrix and the pipe's
    processed maximum at demosaic."""

    pattern: str = "RGGB"
    colorin_matrix: list[list[float]] = field(default_factory=lambda: np.eye(3).tolist())
    colorin_encoded: bool = False     # colorin's input is display-encoded sRGB (TIFF, PNG, JPEG)
    # darktable's processed maximum at demosaic: the largest white-balance multiplier (at
    # least 1), at the image's own white balance; a chain with a white-balance block sets
    # it from that block's sliders (utils.pipeline.chain.Chain.run). Demosaic's epsilons
    # are relative to it.
    processed_maximum: float | torch.Tensor = 1.0
    # darktable's pipe scale where the chain runs (utils.data.tapouts.pixel_scale; 0: unknown),
    # which proxies whose sliders are pixel lengths take
    pixel_scale: float = 0.0
    # the image's full size (W, H; None: unknown), which positional proxies' coordinate planes span
    full_size: tuple[int, int] | None = None

    def to_dict(self) -> dict:
        return {"pattern": self.pattern, "colorin_matrix": self.colorin_matrix,
                "colorin_encoded": self.colorin_encoded, "processed_maximum": float(self.processed_maximum),
                "pixel_scale": self.pixel_scale, "full_size": self.full_size}

    @classmethod
    def from_dict(cls, d: dict) -> "ImageContext":
        return cls(d.get("pattern", "RGGB"), d.get("colorin_matrix", np.eye(3).tolist()),
                   bool(d.get("colorin_encoded", False)), float(d.get("processed_maximum", 1.0)),
                   float(d.get("pixel_scale", 0.0)), tuple(d["full_size"]) if d.get("full_size") else None)


def srgb_decode(x: torch.Tensor) -> torch.Tensor:
    """Display-encoded sRGB -> linear (the sRGB curve's inverse)."""
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def srgb_encode(x: torch.Tensor) -> torch.Tensor:
    """Linear -> display-encoded sRGB (for 0..1)."""
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


@functools.lru_cache(maxsize=None)
def srgb_to_xyz_d50() -> np.ndarray:
    """Linear sRGB -> XYZ (D50): the sRGB primaries scaled to D65, Bradford-adapted to D50."""
    primaries = np.stack([_xy_to_xyz(*p) for p in ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))], axis=1)
    white = _xy_to_xyz(0.3127, 0.3290)
    to_xyz = primaries * np.linalg.solve(primaries, white)
    src, dst = _BRADFORD @ white, _BRADFORD @ np.array(D50)
    return np.linalg.inv(_BRADFORD) @ np.diag(dst / src) @ _BRADFORD @ to_xyz


@functools.lru_cache(maxsize=None)
def _srgb_extrapolation_gamma() -> float:
    """darktable's exponent for curve values above 1: the mean of log(curve(x)) / log(x) at
    x = 0.7, 0.8, 0.9 (``dt_iop_estimate_exp`` on the curve's LUT, normalised at 1)."""
    xs = torch.tensor([0.7, 0.8, 0.9], dtype=torch.float64)
    return float((srgb_encode(xs).log() / xs.log()).mean())


class Fixed(nn.Module):
    """A block without sliders, computed exactly: the interface of a Proxy that a chain uses."""

    sliders: tuple = ()
    layout = "rgb"
    scale = 1.0          # the value scale of its output's loss domain (models.transform)
    exact = True
    # pixels of context around a crop that make the block's output on the crop what darktable
    # computes there on the whole image (even: a mosaic keeps its phase)
    context_margin = 0

    @property
    def slider_names(self) -> list[str]:
        return []

    @property
    def meta(self) -> dict:
        return {"proxy_type": self.operation, "exact": True}

    def to_unit(self, values: torch.Tensor) -> torch.Tensor:
        return values.float()

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        return u.double()


class ColorIn(Fixed):
    """Input colour profile: camera (or sRGB-decoded) RGB -> Lab by the image's matrix."""

    operation = "colorin"

    def forward(self, x: torch.Tensor, u: torch.Tensor, context: ImageContext) -> torch.Tensor:
        rgb = srgb_decode(x) if context.colorin_encoded else x
        return profile_to_lab(np.asarray(context.colorin_matrix), rgb)


class ColorOut(Fixed):
    """Output colour profile, sRGB: Lab -> display-encoded sRGB, as darktable computes it."""

    operation = "colorout"

    def forward(self, x: torch.Tensor, u: torch.Tensor, context: ImageContext | None = None) -> torch.Tensor:
        linear = _matmul(np.linalg.inv(srgb_to_xyz_d50()), lab_to_xyz(x))
        low = srgb_encode(linear.clamp(0.0, 1.0))
        high = linear.clamp_min(1.0) ** _srgb_extrapolation_gamma()
        return torch.where(linear < 1.0, low, high)


class Demosaic(Fixed):
    """darktable's default Bayer demosaic (RCD, no green equilibration, no colour smoothing):
    (B, 1, H, W) white-balanced mosaic -> (B, 3, H, W) camera RGB, for the context's CFA
    pattern (or a pattern name, or one per image) and processed maximum."""

    operation = "demosaic"
    layout = "mosaic_rgb"
    # on a crop darktable's 7 px border interpolation and RCD's tile edges (9 px) would fall
    # inside it: measured on 64 px crops of the built-in raws, 47 dB mean (33 worst) against
    # the whole image's demosaic, 147 dB (112) 10 px inside
    context_margin = 10

    def forward(self, x: torch.Tensor, u: torch.Tensor, context: ImageContext | str | Sequence[str]) -> torch.Tensor:
        if isinstance(context, ImageContext):
            return rcd_demosaic(x, context.pattern, context.processed_maximum)
        return rcd_demosaic(x, context)


# operation -> its exact stand-in, for the modules a chain fills in
EXACT = {"colorin": ColorIn, "colorout": ColorOut, "demosaic": Demosaic}
