"""darktable's lowpass (``iop/lowpass.c``), exact and differentiable: its recursive Gaussian
of Lab, then its contrast and brightness curves on L and the saturation on a and b.

darktable blurs the Lab image with its recursive Gaussian (``common/gaussian.c``: Deriche's
zero-order filter, alpha = 1.695 / sigma, a causal and an anti-causal pass per axis started
at their steady state on the edge pixel) at sigma = radius x the pipe's pixel scale, then
maps L through a contrast curve and a brightness curve (65536-entry tables below 100, a power
law fitted to them above) and scales a and b by the saturation, clipped to +-128.

Here each axis' filter is a matrix: the two passes are a convolution of the signal extended
by its edge values with their impulse responses, known in closed form (a double pole at
exp(-alpha)), and the edge columns gather the responses' tails. A blur is then two matrix
products, differentiable in the image and in sigma; the curves are read where darktable
reads its tables, with the slopes of the continuous functions it tabulates. Measured against
darktable 5.0.1's tap-outs: 130-180 dB on a and b, 106-134 dB on L (the tables' steps).
"""
from __future__ import annotations

import math

import torch

ALPHA = 1.695             # Deriche's alpha x sigma, as darktable sets it
TABLE = 0x10000           # darktable's curve tables: entries over L 0..100
SIGMOID_BOOST = 5.0       # darktable's contrast curve beyond |contrast| 1
EXTRAPOLATION_AT = (0.7, 0.8, 0.9, 1.0)   # where dt_iop_estimate_exp reads a table (x L/100)


def deriche_matrix(n: int, sigma: torch.Tensor) -> torch.Tensor:
    """(n, n) float64: darktable's recursive Gaussian along an axis of ``n`` pixels, y = M x,
    for a scalar ``sigma`` (float64 tensor, differentiable)."""
    alpha = ALPHA / sigma
    r = torch.exp(-alpha)
    k = (1 - r) ** 2 / (1 + 2 * alpha * r - r * r)
    a0, a1, a2, a3 = k, k * (alpha - 1) * r, k * (alpha + 1) * r, -k * r * r
    d = torch.arange(n, dtype=torch.float64, device=sigma.device)
    # causal response at lag d >= 0: (a0 + a1 z^-1) / (1 - r z^-1)^2; anti-causal at lead m >= 1
    causal = a0 * (d + 1) * r ** d + a1 * d * r ** (d - 1).clamp_min(0)
    lead = d[1:]
    anti = a2 * lead * r ** (lead - 1) + a3 * (lead - 1) * r ** (lead - 2).clamp_min(0)
    # their sums (the steady state on a constant signal) less the lags inside the image: the
    # weights of the edge pixels, repeated outward
    gain = (1 - r) ** 2                  # 1 + b1 + b2: the passes' sums are (a0 + a1) / gain, (a2 + a3) / gain
    before = (a0 + a1) / gain - torch.cumsum(causal, 0)          # row i: the lags beyond i
    after = (a2 + a3) / gain - torch.cumsum(anti, 0)             # row i: the leads beyond n - 1 - i
    lag = torch.arange(n, device=sigma.device)[:, None] - torch.arange(n, device=sigma.device)[None, :]
    leads = torch.cat([anti, anti.new_zeros(1)])                  # (a lead of n is never read)
    m = torch.where(lag >= 0, causal[lag.clamp_min(0)], leads[(-lag - 1).clamp_min(0)])
    edges = torch.zeros_like(m)
    edges[:, 0] = before                                          # the first pixel, repeated outward
    edges[:, -1] += torch.cat([((a2 + a3) / gain).view(1), after]).flip(0)   # the last one
    return m + edges


def gaussian(x: torch.Tensor, sigma: torch.Tensor, floor: float | None = None) -> torch.Tensor:
    """darktable's recursive Gaussian of (B, C, H, W) ``x`` at each image's ``sigma`` (B,):
    the vertical pass, then the horizontal one; unbounded, or with each pass's input clipped
    from below at ``floor`` (dt_gaussian_init's minimum: darktable clips what a pass reads)."""
    h, w = x.shape[-2:]
    clip = (lambda t: t) if floor is None else (lambda t: t.clamp_min(floor))   # noqa: E731
    out = []
    for image, s in zip(x, sigma):
        rows, cols = (_normal(deriche_matrix(n, s).to(x.dtype)) for n in (h, w))
        out.append(clip(rows @ clip(image)) @ cols.T)
    return torch.stack(out)


def _normal(m: torch.Tensor) -> torch.Tensor:
    """``m`` with its subnormal entries (a narrow filter's far tails) zero: they weigh nothing
    against the image's values, and a CPU multiplies them many times slower (lowpass at 512
    px on a Xeon: 75 ms a pass with them, 16 ms without)."""
    return torch.where(m.abs() < torch.finfo(m.dtype).tiny, torch.zeros_like(m), m)


def contrast_curve(index: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """darktable's contrast table at (continuous) ``index`` 0..TABLE for each image's
    ``contrast`` (broadcast): a line through L 50 up to |contrast| 1, a sigmoid beyond."""
    line = contrast * (100 * index / TABLE - 50) + 50
    spread = SIGMOID_BOOST * (contrast.abs() - 1) ** 2
    kx = 2 * index / TABLE - 1
    sigmoid = 50 * (torch.sign(contrast) * torch.sqrt(1 + spread) * kx / torch.sqrt(1 + spread * kx * kx) + 1)
    return torch.where(contrast.abs() <= 1, line, sigmoid)


def brightness_curve(index: torch.Tensor, brightness: torch.Tensor) -> torch.Tensor:
    """darktable's brightness table: a gamma curve, 1 / (1 + brightness) up, 1 - brightness down."""
    gamma = torch.where(brightness >= 0, 1 / (1 + brightness), 1 - brightness)
    return 100 * (index / TABLE).clamp_min(1e-20) ** gamma     # 0 at index 0, with a finite gradient


def _extrapolated(curve, value: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """darktable's use of a table on L ``value``: the table below 100 (its first entry below
    0), above it the power law dt_iop_estimate_exp fits to the entries at 0.7, 0.8, 0.9 and
    1 (its last entry) x TABLE."""
    index = (value / 100 * TABLE).clamp(0, TABLE - 1)
    # the entry darktable reads (the index truncated), with the continuous curve's slope
    inside = curve(index + (index.floor() - index).detach(), parameter)
    at = [curve(torch.full_like(parameter, min(int(x * TABLE), TABLE - 1)), parameter) for x in EXTRAPOLATION_AT]
    y0, exponents = at[-1], []
    for x, y in zip(EXTRAPOLATION_AT[:-1], at[:-1]):
        ratio = y / y0
        exponent = torch.log(ratio.clamp_min(1e-30)) / math.log(x)
        exponents.append(torch.where((ratio > 0) & (exponent.abs() < 100), exponent, torch.full_like(exponent, math.nan)))
    exponents = torch.stack(exponents)
    counted = (~exponents.isnan()).sum(0)
    mean = torch.where(counted > 0, torch.nan_to_num(exponents).sum(0) / counted.clamp_min(1), torch.ones_like(y0))
    above = y0 * (value / 100).clamp_min(1) ** mean
    return torch.where(value < 100, inside, above)


def lowpass_lab(lab: torch.Tensor, radius: torch.Tensor, contrast: torch.Tensor, brightness: torch.Tensor,
            saturation: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """darktable's lowpass of Lab ``lab`` (B, 3, H, W); the sliders and each image's pixel
    ``scale`` are (B,) float64."""
    blurred = gaussian(lab, radius.clamp_min(0.1) * scale)
    per_image = lambda v: v.to(lab.dtype).view(-1, 1, 1)   # noqa: E731
    L = _extrapolated(contrast_curve, blurred[:, 0], per_image(contrast))
    L = _extrapolated(brightness_curve, L, per_image(brightness))
    ab = (blurred[:, 1:] * per_image(saturation)[:, None]).clamp(-128, 128)
    return torch.cat([L[:, None], ab], 1)
