"""darktable's local contrast in its local laplacian mode (``iop/bilat.c``,
``common/locallaplacian.c``), exact and differentiable.

darktable maps the sliders straight onto the filter: sigma = midtone, shadows = the
``sigma_s`` field, highlights = ``sigma_r``, clarity = ``detail``. It works on L / 100 of
the buffer it gets (the pipe's scale and the full size play no part in this mode):

1. pad the image by 2^(levels - 1) pixels, edges repeated, levels = floor(log2(min side));
2. its Gaussian pyramid: each level the 5 x 5 binomial ([1 4 6 4 1] / 16 per axis) at the
   even pixels of the one below, inside it, the one-pixel border repeated;
3. six copies of it remapped by a curve around gamma = (k + 0.5) / 6 (linear beyond 2 sigma
   with the shadows' or highlights' slope, a quadratic Bezier inside, plus clarity x c x
   exp(-c^2 / (2 sigma^2 / 3)), c = x - gamma, with darktable's ``dt_fast_expf``), and their
   pyramids;
4. collapse from the coarsest level of the image's pyramid: at each level the expanded
   level above (the same kernel, x 4, darktable's border fill) plus the Laplacians of the two
   copies whose gammas bracket the image's pyramid there, mixed linearly;
5. L x 100 of the unpadded part; a and b as they were.

The exponential is the one that mattered: with ``expf`` (the code before darktable 4.4) the
match is 44.5-58.5 dB; with ``dt_fast_expf`` (a piecewise-linear exponential from a float's
bits) it is 138-147 dB on the 140 samples of the table dataset, float32 rounding. The
curve's backward pass is written out (autograd through it took 6.1 s at 512 px).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from models.darktable.bilateral import BINOMIAL    # [1 4 6 4 1] / 16, darktable's 5-tap binomial

GAMMAS = 6            # the remapped copies
MAX_LEVELS = 30
ONE_BITS = 1065353216.0          # the bits of 1.0f
EXP_SLOPE = 11401300.0           # 0x402DF854 - 0x3F800000: dt_fast_expf's bits per unit of x
MANTISSA = 8388608.0             # 2^23


def fast_expf(x: torch.Tensor) -> torch.Tensor:
    """darktable's ``dt_fast_expf`` (common/math.h): e^x read off a float's bits, exact in
    float32; the gradient of the piecewise-linear function it samples where ``x`` carries one."""
    bits = torch.clamp(ONE_BITS + x.float() * EXP_SLOPE, min=0.0)
    value = bits.to(torch.int32).view(torch.float32).to(x.dtype)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return value
    s = x * (EXP_SLOPE / MANTISSA)                   # log2 of the value
    e = torch.floor(s).detach()
    smooth = torch.where(bits.to(x.dtype) > 0, torch.exp2(e) * (1 + (s - e)), torch.zeros_like(s))
    return value + (smooth - smooth.detach())


def _slope(q: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """d fast_expf / dq of the piecewise-linear function (0 where it is clamped at 0)."""
    return torch.where(bits > 0, torch.exp2(torch.floor(q * (EXP_SLOPE / MANTISSA))) * (EXP_SLOPE / MANTISSA),
                       torch.zeros_like(q))


def _remap(x, gamma, sigma, shadows, highlights, clarity) -> torch.Tensor:
    """The curve of every gamma (1, K, 1, 1) at x (B, 1, H, W); sliders (B, 1, 1, 1)."""
    c = x - gamma
    below = c < 0
    s = torch.where(below, -sigma, sigma)            # the highlights' branch is the shadows' mirrored
    slope = torch.where(below, highlights, shadows)
    linear = gamma + s + slope * (c - s)
    t = torch.clamp(c / (2 * s), 0, 1)
    bezier = gamma + s * 2 * (1 - t) * t + t * t * (s + s * slope)
    value = torch.where(torch.abs(c) > 2 * sigma, linear, bezier)
    return value + clarity * c * fast_expf(-(c * c) / (2 * sigma * sigma / 3))


class _Remap(torch.autograd.Function):
    """:func:`_remap` with its derivatives written out: inside 2 sigma the curve is gamma + c +
    c^2 (slope - 1) / (4 s); the clarity term's exponential takes the slope of the function
    its bits follow."""

    @staticmethod
    def forward(ctx, x, gamma, sigma, shadows, highlights, clarity):
        ctx.save_for_backward(x, gamma, sigma, shadows, highlights, clarity)
        return _remap(x, gamma, sigma, shadows, highlights, clarity)

    @staticmethod
    def backward(ctx, grad):
        x, gamma, sigma, shadows, highlights, clarity = ctx.saved_tensors
        c = x - gamma
        below = c < 0
        s = torch.where(below, -sigma, sigma)
        slope = torch.where(below, highlights, shadows)
        linear = torch.abs(c) > 2 * sigma
        sign = torch.where(below, -1.0, 1.0).to(c.dtype)
        d_x = torch.where(linear, slope, 1 + c * (slope - 1) / (2 * s))
        d_sigma = torch.where(linear, sign * (1 - slope), -sign * c * c * (slope - 1) / (4 * s * s))
        d_slope = torch.where(linear, c - s, c * c / (4 * s))
        q = -1.5 * c * c / (sigma * sigma)
        bits = ONE_BITS + q.float() * EXP_SLOPE
        e = torch.clamp(bits, min=0).to(torch.int32).view(torch.float32).to(c.dtype)
        c_de = c * _slope(q, bits.to(c.dtype))
        d_x = d_x + clarity * (e + c_de * (-3 * c / (sigma * sigma)))
        d_sigma = d_sigma + clarity * c_de * (3 * c * c / (sigma * sigma * sigma))

        def total(d):                                # each image's sum, (B, 1, 1, 1)
            return (grad * d).sum(dim=(1, 2, 3), keepdim=True)

        needs = ctx.needs_input_grad
        return ((grad * d_x).sum(1, keepdim=True) if needs[0] else None, None,
                total(d_sigma) if needs[2] else None,
                total(torch.where(below, 0.0, d_slope)) if needs[3] else None,
                total(torch.where(below, d_slope, 0.0)) if needs[4] else None,
                total(c * e) if needs[5] else None)


def _reduce(x: torch.Tensor) -> torch.Tensor:
    """One level down the Gaussian pyramid of (N, 1, h, w) ``x``: the binomial at its even
    pixels 2 .. inside it, as sums of strided slices; the border repeated."""
    for dim in (-1, -2):
        x = _BinomialAtEven.apply(x, dim)
    return F.pad(x, (1, 1, 1, 1), mode="replicate")


def _expand(c: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, 1, ch, cw) coarse ``c`` up to (N, 1, h, w): the binomial x 4 (even fine pixels
    (c[m-1] + 6 c[m] + c[m+1]) / 8, odd ones (c[m] + c[m+1]) / 2 per axis) at the fine pixels
    1 .. ((n - 1) & ~1) - 1, the rest repeated (darktable's border fill)."""
    for dim, n in ((-1, w), (-2, h)):
        last = ((n - 1) & ~1) - 1                    # the last fine pixel computed, odd
        fine = _Interpolate.apply(c, dim, (last - 1) // 2)                    # fine pixels 1 .. last
        pad = (1, n - 1 - last, 0, 0) if dim == -1 else (0, 0, 1, n - 1 - last)
        c = F.pad(fine, pad, mode="replicate")
    return c


class _BinomialAtEven(torch.autograd.Function):
    """y_i = sum_j BINOMIAL[j] x[2i + j] / 16 along ``dim``, i = 0 .. (n - 3) // 2 - 1, and its
    adjoint as the backward pass: one gradient buffer that every tap adds into. Through
    autograd each of the ten slices took a zero-filled buffer of its whole input, which made
    half of bilat's pass with the sliders' gradient (229 ms at 512 px)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.dim, ctx.shape = dim, x.shape
        m = (x.shape[dim] - 3) // 2                  # the inner coarse pixels 1 .. c - 2
        taps = [_every_other(x.narrow(dim, j, 2 * m - 1), dim) for j in range(5)]    # fine 2i - 2 .. 2i + 2
        return (taps[0] + taps[4]).add_(taps[1] + taps[3], alpha=4).add_(taps[2], alpha=6).mul_(1 / 16)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dim, m = ctx.dim, grad.shape[ctx.dim]
        out = grad.new_zeros(ctx.shape)
        for j, k in enumerate(BINOMIAL):
            _every_other(out.narrow(dim, j, 2 * m - 1), dim).add_(grad, alpha=k / 16)
        return out, None


def _every_other(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Every second element of ``x`` along ``dim`` (-1 or -2), from the first."""
    return x[..., ::2] if dim == -1 else x[..., ::2, :]


class _Interpolate(torch.autograd.Function):
    """The fine pixels 1 .. 2k + 1 between the coarse pixels of ``c`` along ``dim``: odd fine
    pixel 2m + 1 is (c[m] + c[m + 1]) / 2 (m = 0 .. k), even 2m is (c[m - 1] + 6 c[m] + c[m +
    1]) / 8 (m = 1 .. k); the adjoint as the backward pass (one buffer, as _BinomialAtEven)."""

    @staticmethod
    def forward(ctx, c: torch.Tensor, dim: int, k: int) -> torch.Tensor:
        ctx.dim, ctx.k, ctx.shape = dim, k, c.shape
        odd = (c.narrow(dim, 0, k + 1) + c.narrow(dim, 1, k + 1)).mul_(0.5)
        even = (c.narrow(dim, 0, k) + c.narrow(dim, 2, k)).add_(c.narrow(dim, 1, k), alpha=6).mul_(0.125)   # m = 1 .. k
        pairs = torch.stack([even, odd.narrow(dim, 1, k)], dim)                     # even m, odd m, m = 1 .. k
        pairs = pairs.flatten(-2) if dim == -1 else pairs.flatten(-3, -2)
        return torch.cat([odd.narrow(dim, 0, 1), pairs], dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dim, k = ctx.dim, ctx.k
        odd = _every_other(grad, dim)                                   # fine 1, 3, .. 2k + 1: m = 0 .. k
        even = _every_other(grad.narrow(dim, 1, 2 * k - 1), dim) if k else None    # fine 2 .. 2k: m = 1 .. k
        out = grad.new_zeros(ctx.shape)
        out.narrow(dim, 0, k + 1).add_(odd, alpha=0.5)
        out.narrow(dim, 1, k + 1).add_(odd, alpha=0.5)
        if even is not None:
            out.narrow(dim, 0, k).add_(even, alpha=0.125)
            out.narrow(dim, 2, k).add_(even, alpha=0.125)
            out.narrow(dim, 1, k).add_(even, alpha=0.75)
        return out, None, None


def _expand_window(c: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    """:func:`_expand` of coarse ``c`` at the fine pixels ``rows`` x ``cols`` ([start, stop)
    each) only, all of them at least 2 px inside the computed ones: from the coarse pixels
    around them, expanded as a block whose own border is cut away."""
    blocks = []
    for start, stop in (rows, cols):
        first, end = start // 2 - 1, (stop - 1) // 2 + 2           # coarse pixels m - 1 .. m + 1
        blocks.append((first, end, 2 * (end - first) - 1))           # an odd block: fine 1 .. 2K - 3
    (y0, y1, h), (x0, x1, w) = blocks
    fine = _expand(c[..., y0:y1, x0:x1], h, w)
    return fine[..., rows[0] - 2 * y0:rows[1] - 2 * y0, cols[0] - 2 * x0:cols[1] - 2 * x0]


def _column(v: torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(v, dtype=like.dtype, device=like.device).expand(batch).reshape(batch, 1, 1, 1)


def local_contrast_lab(lab: torch.Tensor, detail: torch.Tensor, sigma_r: torch.Tensor, sigma_s: torch.Tensor,
                       midtone: torch.Tensor) -> torch.Tensor:
    """darktable's local contrast (local laplacian) of Lab ``lab`` (B, 3, H, W), the sliders
    (B,) as the params struct holds them. Differentiable in ``lab``'s L and the sliders."""
    b, _, height, width = lab.shape
    if min(height, width) < 2:
        return lab
    sigma, shadows, highlights, clarity = (_column(v, b, lab) for v in (midtone, sigma_s, sigma_r, detail))
    levels = min(MAX_LEVELS, int(math.floor(math.log2(min(height, width)))))
    border = 1 << (levels - 1)
    lightness = lab[:, :1] * 0.01
    image = [F.pad(lightness, (border,) * 4, mode="replicate")]
    for _ in range(levels - 1):
        image.append(_reduce(image[-1]))
    gamma = ((torch.arange(GAMMAS, dtype=torch.float32) + 0.5) / GAMMAS).to(lab.dtype).to(lab.device)
    remap = _Remap.apply if torch.is_grad_enabled() else _remap
    # the curves are per pixel: those of the padded image are the padded curves of the image
    # (a quarter of the pixels at 512 px)
    copies = [F.pad(remap(lightness, gamma.view(1, -1, 1, 1), sigma, shadows, highlights, clarity)
                    .reshape(b * GAMMAS, 1, height, width), (border,) * 4, mode="replicate")]
    for _ in range(levels - 1):
        copies.append(_reduce(copies[-1]))
    out = image[-1]
    # the finest level only where the image is: three quarters of the pixels, padding (from 2 px)
    window = ((border, border + height), (border, border + width)) if border >= 2 else None
    for level in range(levels - 2, 0 if window else -1, -1):
        ph, pw = image[level].shape[-2:]
        laplacian = (copies[level] - _expand(copies[level + 1], ph, pw)).reshape(b, GAMMAS, ph, pw)
        out = _expand(out, ph, pw) + _mix(laplacian, image[level], gamma)
    if window:
        (y0, y1), (x0, x1) = window
        laplacian = (copies[0][..., y0:y1, x0:x1] - _expand_window(copies[1], *window)).reshape(b, GAMMAS, height, width)
        out = _expand_window(out, *window) + _mix(laplacian, image[0][..., y0:y1, x0:x1], gamma)
    else:
        out = out[..., border:border + height, border:border + width]
    return torch.cat([100 * out, lab[:, 1:]], 1)


def _mix(laplacian: torch.Tensor, v: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """The Laplacians (B, K, h, w) of the two copies whose gammas bracket the image's pyramid
    ``v`` (B, 1, h, w) there, mixed linearly."""
    hi = 1 + (v >= gamma[1:-1].view(1, -1, 1, 1)).sum(1, keepdim=True)   # the first gamma above v, 1 .. K - 1
    lo = hi - 1
    a = torch.clamp((v - gamma[lo]) / (gamma[hi] - gamma[lo]), 0, 1)
    return laplacian.gather(1, lo) * (1 - a) + laplacian.gather(1, hi) * a
