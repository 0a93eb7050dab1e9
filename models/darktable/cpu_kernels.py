"""darktable's loops compiled for the CPU (numba), for exact passes without a gradient.

torch runs darktable's per-pixel loops as one whole-image operation after another: each step
writes an image and the next reads it back. Where a loop mixes many taps per pixel, that is a
dozen passes over memory per tap. Compiled, the whole loop is one pass, vectorised, with
every intermediate in registers. Here: denoise's edge-aware a-trous step (113 -> 25-28 ms of
a 512 px pass) and haze removal's box mean (32 -> 4 ms for its 13 planes). The gradient and
GPU passes stay in torch; each kernel is tested against its torch twin
(tests/models/test_cpu_kernels.py).

numba compiles a kernel at its first call (2-4 s) and keeps the machine code next to this
file (``__pycache__``): a later process loads it in a quarter of a second.
"""
from __future__ import annotations

import numpy as np
import torch

try:                    # 0.1 s after torch's import
    import numba
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic
except ImportError:     # numba is in requirements.txt; without it every pass runs its torch twin
    numba = None

F32 = np.float32
INSTALLED = numba is not None


def available(x: torch.Tensor) -> bool:
    """Whether a kernel here can compute on ``x``: float32 on the CPU, no gradient asked for."""
    return (INSTALLED and x.device.type == "cpu" and x.dtype == torch.float32
            and not (torch.is_grad_enabled() and x.requires_grad))


def _threads() -> None:
    """As many kernel threads as torch uses (``--threads``, OMP_NUM_THREADS), within numba's pool."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


if INSTALLED:
    @intrinsic
    def _int_bits_as_float(typingctx, bits):
        """The float32 whose bits are the int32 ``bits`` (C's type pun, one instruction)."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())
        return types.float32(types.int32), codegen

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _eaw_coarse(padded, pad, mult, inv_sigma2, tap_dy, tap_dx, tap_weight, centre, cut, coarse):
        """The coarse image of one edge-aware a-trous step; see :func:`eaw_coarse`."""
        n, _, h, w = coarse.shape
        c002, nine, zero = F32(0.02), F32(9.0), F32(0.0)
        minus_mantissa, one_bits = F32(-8388608.0), F32(1065353216.0)
        for row in numba.prange(n * h):
            b, y = row // h, row % h
            yc = y + pad
            p0, p1, p2 = padded[b, 0, yc, pad:pad + w], padded[b, 1, yc, pad:pad + w], padded[b, 2, yc, pad:pad + w]
            wsum, s0, s1, s2 = (np.empty(w, np.float32), np.empty(w, np.float32), np.empty(w, np.float32),
                                np.empty(w, np.float32))
            for x in range(w):
                wsum[x] = centre
                s0[x] = p0[x] * centre
                s1[x] = p1[x] * centre
                s2[x] = p2[x] * centre
            for k in range(tap_dy.shape[0]):
                f = tap_weight[k]
                dy, dx = mult * tap_dy[k], mult * tap_dx[k]
                x0 = pad + dx
                n0, n1, n2 = (padded[b, 0, yc + dy, x0:x0 + w], padded[b, 1, yc + dy, x0:x0 + w],
                              padded[b, 2, yc + dy, x0:x0 + w])
                for x in range(w):
                    a0 = p0[x] - n0[x]
                    a1 = p1[x] - n1[x]
                    a2 = p2[x] - n2[x]
                    d2 = a0 * a0 + a1 * a1
                    d2 = d2 + a2 * a2
                    bits = max(d2 * inv_sigma2 * c002 - nine, zero) * minus_mantissa + one_bits
                    weight = _int_bits_as_float(np.int32(bits)) * f if bits > cut else zero
                    wsum[x] += weight
                    s0[x] += weight * n0[x]
                    s1[x] += weight * n1[x]
                    s2[x] += weight * n2[x]
            for x in range(w):
                coarse[b, 0, y, x] = s0[x] / wsum[x]
                coarse[b, 1, y, x] = s1[x] / wsum[x]
                coarse[b, 2, y, x] = s2[x] / wsum[x]


    @numba.njit(parallel=True, cache=True, nogil=True)
    def _box_mean_rows(x, w, out):
        """Each row of ``x`` (N, n) averaged over i - w .. i + w, cut at its ends; see :func:`box_mean`."""
        rows, n = x.shape
        for r in numba.prange(rows):
            sums = np.empty(n, np.float64)
            total = 0.0
            for i in range(n):
                total += np.float64(x[r, i])
                sums[i] = total
            for i in range(n):
                hi, lo = min(i + w, n - 1), i - w - 1
                box = sums[hi] - sums[lo] if lo >= 0 else sums[hi] - 0.0
                out[r, i] = np.float32(box / np.float64(hi + 1 - max(lo + 1, 0)))

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _box_mean_columns(x, w, out):
        """Each column of every plane of ``x`` (P, H, W) averaged likewise, a row of sums at a time."""
        planes, h, width = x.shape
        for p in numba.prange(planes):
            sums = np.empty((h, width), np.float64)
            for j in range(width):
                sums[0, j] = np.float64(x[p, 0, j])
            for i in range(1, h):
                for j in range(width):
                    sums[i, j] = sums[i - 1, j] + np.float64(x[p, i, j])
            for i in range(h):
                hi, lo = min(i + w, h - 1), i - w - 1
                count = np.float64(hi + 1 - max(lo + 1, 0))
                if lo >= 0:
                    for j in range(width):
                        out[p, i, j] = np.float32((sums[hi, j] - sums[lo, j]) / count)
                else:
                    for j in range(width):
                        out[p, i, j] = np.float32((sums[hi, j] - 0.0) / count)


def box_mean(x: torch.Tensor, w: int) -> torch.Tensor:
    """The mean of (B, C, H, W) float32 ``x`` over a (2w + 1)^2 box cut at the image's edges,
    rows then columns, each from running sums in float64 rounded to float32 after each
    direction: models.darktable.dehaze.box_mean's arithmetic, in one pass per direction."""
    _threads()
    b, c, h, width = x.shape
    rows = torch.empty((b, c, h, width), dtype=torch.float32)
    _box_mean_rows(x.contiguous().numpy().reshape(-1, width), w, rows.numpy().reshape(-1, width))
    out = torch.empty_like(rows)
    _box_mean_columns(rows.numpy().reshape(-1, h, width), w, out.numpy().reshape(-1, h, width))
    return out


# The smallest weight a tap keeps, in the bits darktable's 2^-x computes: 2^-64. A pixel's
# weights sum to at least the centre's 9/64, so a smaller one cannot move a float32 sum;
# kept, its products fall below float32's normal range, which a CPU computes up to 100 times
# slower (measured: one scale 11 ms against 1.6 ms at 512 px).
SMALLEST_WEIGHT_BITS = 1065353216.0 - 64 * 8388608.0


def eaw_coarse(padded: torch.Tensor, pad: int, mult: int, inv_sigma2: float,
               taps: list[tuple[int, int, float]], centre: float) -> torch.Tensor:
    """The coarse image of darktable's edge-aware a-trous step (``common/eaw.c``), float32 as
    darktable computes it: ``padded`` (B, 3, H + 2 pad, W + 2 pad), the image with its edges
    repeated; each pixel's weighted mean of itself (weight ``centre``) and its neighbours at
    ``mult`` x (dy, dx) for each of ``taps`` (dy, dx, spline weight), in that order, each
    weighted by 2^-max(0, 0.02 |difference|^2 x ``inv_sigma2`` - 9) in darktable's bit trick.
    Returns (B, 3, H, W)."""
    _threads()
    b, c, hp, wp = padded.shape
    coarse = torch.empty((b, c, hp - 2 * pad, wp - 2 * pad), dtype=torch.float32)
    tap_dy, tap_dx, tap_weight = (np.array(col, dtype=dt) for col, dt in
                                  zip(zip(*taps), (np.int64, np.int64, np.float32)))
    _eaw_coarse(padded.contiguous().numpy(), pad, mult, F32(inv_sigma2), tap_dy, tap_dx, tap_weight,
                F32(centre), F32(SMALLEST_WEIGHT_BITS), coarse.numpy())
    return coarse
