"""darktable's bilateral grid (src/common/bilateral.c), differentiable: the base layer that
shadows and highlights (shadhi.c, its bilateral algorithm) takes as its mask.

darktable splats each pixel's count (not its value) into a coarse grid over x, y and
lightness with trilinear weights, blurs the grid with the binomial kernel [1 4 6 4 1] / 16
along x and y and with the derivative kernel [-2 -4 0 4 2] / 16 along lightness, and moves
each pixel's lightness by the trilinear lookup of that derivative: L + sigma_r 0.04 grid(x,
y, L), at least 0. shadhi's range sigma is 100, so the lightness axis has 4 cells (the least
the grid allows) and its derivative pulls each pixel toward the lightness most common
around it.

The grid's spatial cells follow the sigma in pixels only in steps (their number is the
image's side over sigma, rounded): the base is a step function of a blur radius slider, with
no slope between its steps (slider regression searches such sliders,
utils.evaluation.regress.line_search). It is differentiable in the lightness.

Measured on shadhi's held-out samples (darktable 5.0.1, 128 px), this base with shadhi's
overlay reproduces darktable at 147-158 dB (float rounding) at each image's own pixel scale.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.blocks import depthwise_conv

MAX_CELLS = 3000        # darktable's DT_COMMON_BILATERAL_MAX_RES_S
MAX_RANGE_CELLS = 50    # DT_COMMON_BILATERAL_MAX_RES_R
LIGHTNESS_RANGE = 100.0
BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)       # / 16, along x and y
DERIVATIVE = (-2.0, -4.0, 0.0, 4.0, 2.0)   # / 16, along lightness


def _cells(side: int, sigma: np.float32, most: int) -> int:
    """darktable's initial cell count of a side: side / sigma rounded half away from zero,
    clamped to 4..most (float32, as darktable computes it)."""
    return min(max(int(np.floor(np.float32(side) / sigma + np.float32(0.5))), 4), most)


def grid_geometry(height: int, width: int, sigma_s: float, sigma_r: float) -> tuple[float, float, tuple[int, int, int]]:
    """(effective sigma_s, effective sigma_r, (size_y, size_x, size_z)) of darktable's grid
    for an image of ``height`` x ``width`` (dt_bilateral_grid_size, in float32)."""
    f = np.float32
    s = max(f(sigma_s), f(0.5))
    cx, cy = _cells(width, s, MAX_CELLS), _cells(height, s, MAX_CELLS)
    cz = _cells(int(LIGHTNESS_RANGE), f(sigma_r), MAX_RANGE_CELLS)
    s = max(f(height) / f(cy), f(width) / f(cx))
    r = f(LIGHTNESS_RANGE) / f(cz)
    sizes = (int(np.ceil(f(height) / s)) + 1, int(np.ceil(f(width) / s)) + 1, int(np.ceil(f(LIGHTNESS_RANGE) / r)) + 1)
    return float(s), float(r), sizes


def _axis(n: int, sigma: float, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel index's lower cell and its fraction along one spatial axis."""
    pos = torch.arange(n, dtype=torch.float32, device=device) / torch.tensor(sigma, dtype=torch.float32)
    pos = pos.clamp(0, size - 1)
    cell = pos.floor().clamp(max=size - 2)
    return cell.long(), pos - cell


def bilateral_base(lightness: torch.Tensor, sigma_s: float, sigma_r: float = 100.0) -> torch.Tensor:
    """darktable's bilateral base layer (detail -1) of one image's ``lightness`` (H, W), Lab L
    in 0..100, at spatial ``sigma_s`` pixels and range ``sigma_r``: (H, W), differentiable
    in ``lightness``."""
    h, w = lightness.shape
    s, r, (sy, sx, sz) = grid_geometry(h, w, sigma_s, sigma_r)
    dev = lightness.device
    yi, yf = _axis(h, s, sy, dev)
    xi, xf = _axis(w, s, sx, dev)
    z = (lightness.float() / r).clamp(0, sz - 1)
    zi = z.detach().floor().clamp(max=sz - 2)
    zf, zi = z - zi, zi.long()
    first = (yi[:, None] * sx + xi[None, :]) * sz + zi                       # (H, W) flat cell index
    wy, wx, wz = torch.stack([1 - yf, yf])[:, :, None], torch.stack([1 - xf, xf])[:, None, :], torch.stack([1 - zf, zf])
    corners = [(a, b, c) for a in range(2) for b in range(2) for c in range(2)]
    index = torch.stack([first + (a * sx + b) * sz + c for a, b, c in corners]).reshape(-1)
    weight = torch.stack([wy[a] * wx[b] * wz[c] for a, b, c in corners]).reshape(-1)
    grid = torch.zeros(sy * sx * sz, dtype=weight.dtype, device=dev).index_add(0, index, weight * (100.0 / (s * s)))
    grid = _filter(_filter(_filter(grid.reshape(sy, sx, sz), BINOMIAL, 1), BINOMIAL, 0), DERIVATIVE, 2)
    looked_up = (grid.reshape(-1)[index] * weight).reshape(8, h, w).sum(0)
    return (lightness + (r * 0.04) * looked_up.to(lightness.dtype)).clamp(min=0)


def _filter(grid: torch.Tensor, taps: tuple[float, ...], dim: int) -> torch.Tensor:
    """``grid`` correlated with ``taps`` / 16 along ``dim``, zero beyond its ends (as
    darktable's in-place line blurs)."""
    g = grid.movedim(dim, -1)
    kernel = torch.tensor(taps, dtype=grid.dtype, device=grid.device).view(1, 1, 1, -1) / 16
    r = len(taps) // 2
    out = depthwise_conv(F.pad(g.reshape(-1, 1, 1, g.shape[-1]), (r, r)), kernel)   # float32 sums on CUDA too
    return out.reshape(g.shape).movedim(-1, dim)
