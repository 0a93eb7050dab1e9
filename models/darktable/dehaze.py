"""darktable's haze removal (hazeremoval.c, after He, Sun and Tang's dark channel prior) in
torch: its box filters, its colour-guided filter (common/guided_filter.c) and the
module's estimate of the ambient light, as darktable 5.0.1 runs them.

The operation, on linear RGB ``x`` (B, 3, H, W), per image:

1. the dark channel: the least of R, G, B, then its minimum over a (2 w1 + 1)^2 box;
2. the ambient light A: the haziest pixels (dark channel at or above what darktable's quick
   select leaves at its 95 % place), of those the brightest (R + G + B at or above what it
   leaves at their 95 % place, gathered in darktable's order), averaged; the image's depth,
   -1.125 ln(that haze level). The selection is not exact (:func:`quick_select`): it is
   darktable's;
3. the transmission 1 - strength min_c(x_c / A_c), its maximum over the box, then its
   minimum (a closing), filtered by the guided filter with the image as guide (w2, eps);
4. the output (x - A) / max(t, t_min) + A, t_min = exp(-distance * depth) within
   [1/1024, 1].

The windows are pixels of the image the module gets, whatever its scale (measured: the
128 px tap-outs of 450-512 px images fit at w1 = 6, w2 = 9 and at no other pair).
Differentiable in ``x`` through steps 3-4 and in the sliders; A and the depth are constants
of the image (step 2 takes order statistics). Against darktable 5.0.1 every one of 140
samples (8 images, 128 px) comes out at the 120 dB cap; with exact 95 % quantiles in step 2
they came out at 49.7-98.0 dB (docs/proxies.md).
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from models.darktable import cpu_kernels

DARK_WINDOW = 6          # w1: the dark channel's and the transmission's box, (2 w1 + 1) px
GUIDED_WINDOW = 9        # w2: the guided filter's box
GUIDED_EPS = 0.025       # its regularisation (sqrt(0.025) squared, as darktable passes it)
HAZY_QUANTILE = 0.95     # of the dark channel: the haziest pixels
BRIGHT_QUANTILE = 0.95   # of R + G + B among those
DEPTH_FACTOR = 1.125     # the depth is -DEPTH_FACTOR * ln(the haze quantile)
FLT_MAX = 3.4028234663852886e38


def box_min(x: torch.Tensor, w: int) -> torch.Tensor:
    """The minimum of (B, C, H, W) over a (2w + 1)^2 box, cut at the image's edges."""
    return -box_max(-x, w)


def box_max(x: torch.Tensor, w: int) -> torch.Tensor:
    """The maximum of (B, C, H, W) over a (2w + 1)^2 box, cut at the image's edges: along
    rows, then columns, each by maxima of shifted slices over spans that double (about
    log2(2w + 1) passes; torch's max pooling took 11 ms a pass at 512 x 512 px)."""
    return _running_max(_running_max(x, w, 3), w, 2)


def _running_max(x: torch.Tensor, w: int, dim: int) -> torch.Tensor:
    n, k = x.shape[dim], 2 * w + 1
    edge = list(x.shape)
    edge[dim] = w
    m = torch.cat([x.new_full(edge, -math.inf), x, x.new_full(edge, -math.inf)], dim)
    span = 1
    while 2 * span <= k:     # m[i] = the maximum of the padded x[i : i + span]
        m = torch.maximum(m.narrow(dim, 0, m.shape[dim] - span), m.narrow(dim, span, m.shape[dim] - span))
        span *= 2
    rest = k - span
    if rest:
        m = torch.maximum(m.narrow(dim, 0, n), m.narrow(dim, rest, n))
    return m


def box_mean(x: torch.Tensor, w: int) -> torch.Tensor:
    """The mean of (B, C, H, W) over a (2w + 1)^2 box, over the pixels inside the image:
    along rows, then columns (a cut box is a rectangle, its count a product), each from
    cumulative sums in float64 (torch's average pooling took 44 ms a pass at 512 x 512 px);
    on the CPU, the same sums compiled (models.darktable.cpu_kernels). Its gradient is the
    same pass again (:class:`_BoxMean`)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _BoxMean.apply(x, w)
    if cpu_kernels.available(x):
        return cpu_kernels.box_mean(x, w)
    return _running_mean(_running_mean(x, w, 3), w, 2)


class _BoxMean(torch.autograd.Function):
    """:func:`box_mean` and its adjoint. A box's sum is symmetric (pixel j is in i's box when
    i is in j's), so the gradient is the box mean of grad / count, times count, where count
    is the number of pixels in each cut box: the same pass. Through autograd the cumulative
    sums' reversal and the slices' zero-filled buffers made about half of haze removal's
    pass with the sliders' gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: int) -> torch.Tensor:
        ctx.w = w
        return box_mean(x, w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, w = grad.shape[-2:]
        count = (_box_counts(h, ctx.w, grad.device)[:, None] * _box_counts(w, ctx.w, grad.device)).to(grad.dtype)
        return box_mean(grad / count, ctx.w) * count, None


def _box_counts(n: int, w: int, device: torch.device) -> torch.Tensor:
    """The pixels of each box of 2w + 1 along an axis of ``n``, cut at its ends: (n,) float64."""
    at = torch.arange(n, device=device)
    return ((at + w + 1).clamp(max=n) - (at - w).clamp(min=0)).double()


def _running_mean(x: torch.Tensor, w: int, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    row = dim % x.ndim == x.ndim - 1
    # S[j] = the sum of x[: clamp(j - w, 0, n)]: the box around i sums S[i + 2w + 1] - S[i]
    sums = F.pad(x.double().cumsum(dim), (w + 1, 0) if row else (0, 0, w + 1, 0))
    sums = F.pad(sums, (0, w, 0, 0) if row else (0, 0, 0, w), mode="replicate")
    count = _box_counts(n, w, x.device)
    count = count if row else count[:, None]
    return ((sums.narrow(dim, 2 * w + 1, n) - sums.narrow(dim, 0, n)) / count).to(x.dtype)


# the guide's products in the order of guided_filter's covariance (upper triangle)
_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def guided_filter(guide: torch.Tensor, p: torch.Tensor, w: int, eps: float) -> torch.Tensor:
    """darktable's colour-guided filter of ``p`` (B, 1, H, W) by ``guide`` (B, 3, H, W): per
    box, the linear map of the guide's colour that fits ``p`` best (regularised by ``eps``),
    the maps averaged over the boxes around each pixel and applied to its colour. A singular
    system (|det| <= 4 FLT_EPSILON) maps nothing: the box's mean."""
    products = torch.cat([p, guide, guide * p, *(guide[:, i:i + 1] * guide[:, j:j + 1] for i, j in _PAIRS)], 1)
    means = box_mean(products, w)
    mean_p, mean_i, mean_ip, mean_ii = means[:, :1], means[:, 1:4], means[:, 4:7], means[:, 7:]
    cov = mean_ip - mean_i * mean_p                                          # (B, 3, H, W)
    s = {(i, j): mean_ii[:, k:k + 1] - mean_i[:, i:i + 1] * mean_i[:, j:j + 1] + (eps if i == j else 0.0)
         for k, (i, j) in enumerate(_PAIRS)}
    a = _cramer(s[0, 0], s[0, 1], s[0, 2], s[1, 1], s[1, 2], s[2, 2], cov[:, 0:1], cov[:, 1:2], cov[:, 2:3])
    offset = mean_p - (a * mean_i).sum(1, keepdim=True)
    ab = box_mean(torch.cat([a, offset], 1), w)
    return (ab[:, :3] * guide).sum(1, keepdim=True) + ab[:, 3:]


def _cramer(s00, s01, s02, s11, s12, s22, c0, c1, c2) -> torch.Tensor:
    """The solution (B, 3, H, W) of the symmetric 3x3 systems S a = c per pixel by Cramer's
    rule, as guided_filter.c solves them (elementwise: many times faster than a batched
    solver); 0 where |det S| <= 4 FLT_EPSILON."""
    m0, m1, m2 = s11 * s22 - s12 * s12, s01 * s22 - s02 * s12, s01 * s12 - s02 * s11
    det = s00 * m0 - s01 * m1 + s02 * m2
    d1 = c0 * m0 - s01 * (c1 * s22 - c2 * s12) + s02 * (c1 * s12 - c2 * s11)
    d2 = s00 * (c1 * s22 - c2 * s12) - c0 * m1 + s02 * (s01 * c2 - s02 * c1)
    d3 = s00 * (s11 * c2 - s12 * c1) - s01 * (s01 * c2 - s02 * c1) + c0 * m2
    regular = det.abs() > 4 * torch.finfo(torch.float32).eps
    safe = torch.where(regular, det, torch.ones_like(det))
    return torch.cat([d1, d2, d3], 1) / safe * regular.to(det.dtype)


def quick_select(values: np.ndarray, first: int, nth: int, last: int) -> None:
    """darktable 5.0.1's quick select of ``values[first:last]`` toward ``nth``, in place, as its
    binary runs it (hazeremoval.c's new mode): the median of three (first, nth, last - 1) at
    last - 1 for the pivot, a two-sided partition that skips ``first`` and takes the pivot's
    slot too, the pivot swapped to where the scans met, then the side holding ``nth``. Not an
    exact selection: the element it leaves at ``nth`` is near, not at, that order statistic,
    and darktable's ambient light is the average of the pixels at or above it (measured: with
    the exact statistic the held-out samples reached 49.7-98.0 dB, with this 120 dB, the cap).
    Read off the machine code of darktable 5.0.1's libhazeremoval.so, whose source is not at
    hand: its older source's selection (the partition's result unused) is another one.

    Each partition runs as whole-array operations: the forward scan stops at the elements
    not under the pivot, the backward one at those not over it, and the k-th stop of each
    are swapped while the forward one lies before the backward one."""
    def swap(i: int, j: int) -> None:
        values[i], values[j] = values[j], values[i]

    while first + 1 < last:
        if not values[last - 1] > values[first]:
            swap(first, last - 1)
        if not values[nth] > values[first]:
            swap(first, nth)
        if not values[nth] > values[last - 1]:
            swap(nth, last - 1)
        pivot = values[last - 1]
        part = values[first + 1:last]
        forward = np.flatnonzero(~(pivot > part)) + first + 1            # ascending
        backward = np.flatnonzero(~(part > pivot))[::-1] + first + 1     # descending; last - 1 first
        k = min(len(forward), len(backward))
        crossed = forward[:k] >= backward[:k]
        m = int(crossed.argmax()) if crossed.any() else k                # the swaps made
        values[forward[:m]], values[backward[:m]] = values[backward[:m]], values[forward[:m]].copy()
        i = min(forward[m] if m < len(forward) else last, backward[m - 1] if m else last)
        swap(last - 1, int(i))
        if nth == i:
            return
        if nth > i:
            if i + 2 >= last:
                return
            first = int(i) + 1
        else:
            if first + 1 >= i:
                return
            last = int(i)


def _at_quantile(values: np.ndarray, first: int, last: int, quantile: float) -> float:
    """What darktable's quick select leaves at first + (size_t)(n * quantile) (a float32
    product) of ``values[first:last]``."""
    nth = first + int(np.float32(last - first) * np.float32(quantile))
    quick_select(values, first, nth, last)
    return float(values[nth])


_LIGHTS: dict = {}      # ambient lights by image content: slider regression asks for one image's each step
_LIGHTS_KEPT = 16


def ambient_light(x: torch.Tensor, w: int = DARK_WINDOW) -> tuple[torch.Tensor, float]:
    """hazeremoval.c's ambient light A (3,) of one image ``x`` (3, H, W), float32 as darktable
    computes it, and the image's depth; remembered for the last few images."""
    x = x.detach().float().cpu().contiguous()
    key = (tuple(x.shape), w, hashlib.blake2b(x.numpy().tobytes(), digest_size=16).digest())
    if key not in _LIGHTS:
        if len(_LIGHTS) >= _LIGHTS_KEPT:
            _LIGHTS.pop(next(iter(_LIGHTS)))
        _LIGHTS[key] = _ambient_light(x, w)
    return _LIGHTS[key]


def _ambient_light(x: torch.Tensor, w: int) -> tuple[torch.Tensor, float]:
    dark = box_min(x.amin(0, keepdim=True)[None], w).flatten()
    values = dark.numpy().copy()
    n = len(values)
    haze = _at_quantile(values, 0, n, HAZY_QUANTILE)
    sums = ((x[0] + x[1]) + x[2]).flatten()
    hazy = dark >= haze
    # two sections gather the hazy pixels' sums about the middle: the first half's backwards
    # below it, the second half's in order from it
    half = n // 2
    below, above = sums[:half][hazy[:half]].flip(0).numpy(), sums[half:][hazy[half:]].numpy()
    first, last = half - len(below), half + len(above)
    values[first:half], values[half:last] = below, above
    bright = hazy & (sums >= _at_quantile(values, first, last, BRIGHT_QUANTILE))
    a = x.flatten(1)[:, bright].double().mean(1)
    depth = float(-np.float32(DEPTH_FACTOR) * np.log(np.float32(haze))) if haze > 0 else math.log(FLT_MAX) / 2
    return a, depth


def hazeremoval(x: torch.Tensor, strength: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """darktable's haze removal of linear RGB ``x`` (B, 3, H, W) at ``strength`` and
    ``distance`` (B,) each."""
    lights = [ambient_light(image) for image in x]
    a = torch.stack([light for light, _ in lights]).to(x)[:, :, None, None]             # (B, 3, 1, 1)
    depth = torch.tensor([d for _, d in lights], dtype=torch.float64, device=x.device)
    s = strength.to(x.dtype).view(-1, 1, 1, 1)
    t = 1 - (x / a).amin(1, keepdim=True) * s
    t = box_min(box_max(t, DARK_WINDOW), DARK_WINDOW)
    t = guided_filter(x, t, GUIDED_WINDOW, GUIDED_EPS)
    t_min = torch.exp(-distance.double() * depth).clamp(1 / 1024, 1).to(x.dtype).view(-1, 1, 1, 1)
    return (x - a) / torch.maximum(t, t_min) + a
