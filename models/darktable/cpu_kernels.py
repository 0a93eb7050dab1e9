"""darktable's loops compiled for the CPU (numba), for the exact passes.

torch runs darktable's per-pixel loops as one whole-image operation after another: each step
writes an image and the next reads it back. Where a loop mixes many taps per pixel, that is a
dozen passes over memory per tap. Compiled, the whole loop is one pass, vectorised, with
every intermediate in registers. Here: denoise's edge-aware a-trous step and its gradient
(a 512 px pass 113 -> 25-28 ms, with the sliders' gradient 1100 -> 180 ms), haze removal's
box mean (32 -> 4 ms for its 13 planes; its gradient is the same pass), and, beside
darktable's loops, the multiscale family's separable blurs without a gradient (its fine
blurs 7.5 -> 3.3 ms a 512 px pass). GPU passes stay in torch; each kernel is tested against
its torch twin (tests/models/test_cpu_kernels.py).

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


def available(x: torch.Tensor, differentiable: bool = False) -> bool:
    """Whether a kernel here can compute on ``x``: float32 on the CPU, no gradient asked for
    unless the kernel has one (``differentiable``), and not under ``torch.compile``, which
    cannot trace a kernel that reads tensors as numpy arrays (it compiles the torch twin)."""
    return (INSTALLED and x.device.type == "cpu" and x.dtype == torch.float32
            and (differentiable or not (torch.is_grad_enabled() and x.requires_grad))
            and not torch.compiler.is_compiling())


def _jit(**options):
    """numba.njit keeping the machine code for later processes, or, where there is nowhere to
    keep it (a read-only checkout and no writable cache folder: numba refuses at decoration),
    compiling it again in each process."""
    def compile_(function):
        try:
            return numba.njit(cache=True, **options)(function)
        except RuntimeError:
            return numba.njit(**options)(function)
    return compile_


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

    @numba.njit(inline="always")
    def _difference(p0, p1, p2, n0, n1, n2, i):
        """The three channels' differences of pixels p and n at ``i`` and their squares' sum,
        in the order the torch pass sums them."""
        a0 = p0[i] - n0[i]
        a1 = p1[i] - n1[i]
        a2 = p2[i] - n2[i]
        d2 = a0 * a0 + a1 * a1
        return a0, a1, a2, d2 + a2 * a2

    @numba.njit(inline="always")
    def _channels(image, b, y, x0, w):
        """The three channels of image ``b``'s row ``y``, columns x0 .. x0 + w."""
        return image[b, 0, y, x0:x0 + w], image[b, 1, y, x0:x0 + w], image[b, 2, y, x0:x0 + w]

    @numba.njit(inline="always")
    def _weight_and_slope(d2, inv_sigma2, f, cut):
        """A tap's weight f 2^-x, x = max(0, 0.02 d2 inv_sigma2 - 9), in darktable's bit trick,
        and its derivative in d2 as the torch pass takes it (the piecewise-linear function the
        bits follow, zero where x is clamped or the weight dropped)."""
        raw = d2 * inv_sigma2 * F32(0.02) - F32(9.0)
        bits = max(raw, F32(0.0)) * F32(-8388608.0) + F32(1065353216.0)
        if not bits > cut:
            return F32(0.0), F32(0.0)
        weight = _int_bits_as_float(np.int32(bits)) * f
        if raw < F32(0.0):
            return weight, F32(0.0)
        n = np.int32(np.floor(raw))                            # 2^-(n + 1): the slope's size
        return weight, -_int_bits_as_float(np.int32((126 - n) << 23)) * f * (inv_sigma2 * F32(0.02))

    @_jit(parallel=True, nogil=True)
    def _eaw_coarse(padded, pad, mult, inv_sigma2, tap_dy, tap_dx, tap_weight, centre, cut, coarse, weights):
        """The coarse image of one edge-aware a-trous step, and each pixel's sum of weights;
        see :func:`eaw_coarse`."""
        n, _, h, w = coarse.shape
        for row in numba.prange(n * h):
            b, y = row // h, row % h
            yc = y + pad
            p0, p1, p2 = _channels(padded, b, yc, pad, w)
            wsum, s0, s1, s2 = (np.empty(w, np.float32), np.empty(w, np.float32), np.empty(w, np.float32),
                                np.empty(w, np.float32))
            for x in range(w):
                wsum[x] = centre
                s0[x] = p0[x] * centre
                s1[x] = p1[x] * centre
                s2[x] = p2[x] * centre
            for k in range(tap_dy.shape[0]):
                n0, n1, n2 = _channels(padded, b, yc + mult * tap_dy[k], pad + mult * tap_dx[k], w)
                for x in range(w):
                    _, _, _, d2 = _difference(p0, p1, p2, n0, n1, n2, x)
                    weight, _ = _weight_and_slope(d2, inv_sigma2, tap_weight[k], cut)
                    wsum[x] += weight
                    s0[x] += weight * n0[x]
                    s1[x] += weight * n1[x]
                    s2[x] += weight * n2[x]
            for x in range(w):
                coarse[b, 0, y, x] = s0[x] / wsum[x]
                coarse[b, 1, y, x] = s1[x] / wsum[x]
                coarse[b, 2, y, x] = s2[x] / wsum[x]
                weights[b, y, x] = wsum[x]

    @_jit(parallel=True, nogil=True)
    def _eaw_backward_own(padded, pad, mult, inv_sigma2, tap_dy, tap_dx, tap_weight, centre, cut,
                          coarse, weights, grad, g, gc, own):
        """Per pixel p, with G the gradient of its coarse value and W its weight sum: g = G / W,
        gc = G . coarse / W, and the gradient its own value gets: centre g, and through each
        tap's weight w(|p - n|^2), sum (g . n - gc) w' 2 (p - n)."""
        nb, _, h, w = coarse.shape
        two = F32(2.0)
        for row in numba.prange(nb * h):
            b, y = row // h, row % h
            yc = y + pad
            p0, p1, p2 = _channels(padded, b, yc, pad, w)
            g0, g1, g2, gcr = g[b, 0, y], g[b, 1, y], g[b, 2, y], gc[b, y]
            o0, o1, o2 = own[b, 0, y], own[b, 1, y], own[b, 2, y]
            for x in range(w):
                inv_w = F32(1.0) / weights[b, y, x]
                g0[x] = grad[b, 0, y, x] * inv_w
                g1[x] = grad[b, 1, y, x] * inv_w
                g2[x] = grad[b, 2, y, x] * inv_w
                gcr[x] = g0[x] * coarse[b, 0, y, x] + g1[x] * coarse[b, 1, y, x] + g2[x] * coarse[b, 2, y, x]
                o0[x] = centre * g0[x]
                o1[x] = centre * g1[x]
                o2[x] = centre * g2[x]
            for k in range(tap_dy.shape[0]):
                n0, n1, n2 = _channels(padded, b, yc + mult * tap_dy[k], pad + mult * tap_dx[k], w)
                for x in range(w):
                    a0, a1, a2, d2 = _difference(p0, p1, p2, n0, n1, n2, x)
                    _, slope = _weight_and_slope(d2, inv_sigma2, tap_weight[k], cut)
                    t = (g0[x] * n0[x] + g1[x] * n1[x] + g2[x] * n2[x] - gcr[x]) * slope * two
                    o0[x] += t * a0
                    o1[x] += t * a1
                    o2[x] += t * a2

    @_jit(parallel=True, nogil=True)
    def _eaw_backward_gather(padded, pad, mult, inv_sigma2, tap_dy, tap_dx, tap_weight, cut, g, gc, own, out):
        """The gradient of every pixel q of ``padded``: its own part where it is in the image,
        and, for each tap d of each pixel p = q - d in the image, as that tap's neighbour:
        w g_p (its value in p's mean) - (g_p . q - gc_p) w' 2 (p - q) (its weight)."""
        nb, _, hp, wp = padded.shape
        h, w = hp - 2 * pad, wp - 2 * pad
        two = F32(2.0)
        for row in numba.prange(nb * hp):
            b, qy = row // hp, row % hp
            for x in range(wp):
                out[b, 0, qy, x] = F32(0.0)
                out[b, 1, qy, x] = F32(0.0)
                out[b, 2, qy, x] = F32(0.0)
            if pad <= qy < pad + h:
                for x in range(w):
                    out[b, 0, qy, pad + x] = own[b, 0, qy - pad, x]
                    out[b, 1, qy, pad + x] = own[b, 1, qy - pad, x]
                    out[b, 2, qy, pad + x] = own[b, 2, qy - pad, x]
            for k in range(tap_dy.shape[0]):
                dy, dx = mult * tap_dy[k], mult * tap_dx[k]
                py = qy - dy - pad                          # p's row in the image
                if py < 0 or py >= h:
                    continue
                lo, hi = max(0, pad + dx), min(wp, pad + w + dx)     # q's columns whose p is in the image
                q0, q1, q2 = _channels(padded, b, qy, lo, hi - lo)
                o0, o1, o2 = _channels(out, b, qy, lo, hi - lo)
                p0, p1, p2 = _channels(padded, b, py + pad, lo - dx, hi - lo)
                i0 = lo - dx - pad                                # p's first column in the image
                g0, g1, g2 = _channels(g, b, py, i0, hi - lo)
                gcp = gc[b, py, i0:i0 + hi - lo]
                f = tap_weight[k]
                for i in range(hi - lo):
                    a0, a1, a2, d2 = _difference(p0, p1, p2, q0, q1, q2, i)
                    weight, slope = _weight_and_slope(d2, inv_sigma2, f, cut)
                    t = (g0[i] * q0[i] + g1[i] * q1[i] + g2[i] * q2[i] - gcp[i]) * slope * two
                    o0[i] += weight * g0[i] - t * a0
                    o1[i] += weight * g1[i] - t * a1
                    o2[i] += weight * g2[i] - t * a2


    @_jit(parallel=True, nogil=True)
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

    @_jit(parallel=True, nogil=True)
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


    @_jit(parallel=True, nogil=True)
    def _taps_rows(x, taps, out):
        """Each row of every plane of ``x`` (B, P, H, W) correlated with its image's ``taps``
        (B, K), edges repeated: out[.., j] = sum over k in order of taps[k] x[.., j + k - K // 2]."""
        b, planes, h, w = x.shape
        k, r = taps.shape[1], taps.shape[1] // 2
        for n in numba.prange(b * planes * h):
            i, p, image = n % h, (n // h) % planes, n // (h * planes)
            row = np.empty(w + 2 * r, np.float32)
            for j in range(w + 2 * r):
                row[j] = x[image, p, i, min(max(j - r, 0), w - 1)]
            tap = taps[image, 0]
            for j in range(w):
                out[image, p, i, j] = row[j] * tap
            for t in range(1, k):
                tap = taps[image, t]
                for j in range(w):
                    out[image, p, i, j] += row[j + t] * tap

    @_jit(parallel=True, nogil=True)
    def _taps_columns(x, taps, out):
        """Each column of every plane of ``x`` (B, P, H, W) likewise, a row at a time."""
        b, planes, h, w = x.shape
        k, r = taps.shape[1], taps.shape[1] // 2
        for n in numba.prange(b * planes):
            p, image = n % planes, n // planes
            for i in range(h):
                first, tap = min(max(i - r, 0), h - 1), taps[image, 0]
                for j in range(w):
                    out[image, p, i, j] = x[image, p, first, j] * tap
                for t in range(1, k):
                    at, tap = min(max(i + t - r, 0), h - 1), taps[image, t]
                    for j in range(w):
                        out[image, p, i, j] += x[image, p, at, j] * tap


def separable(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float32 ``x`` convolved along W, then H, with each image's ``taps`` (B, K),
    edges repeated, the taps summed in their order as models.multiscale._separable's slices
    sum them (their twin, without a gradient): one pass per direction where the slices make
    two per tap."""
    _threads()
    taps = taps.detach().to(torch.float32).contiguous().numpy()
    rows = torch.empty(x.shape, dtype=torch.float32)
    _taps_rows(x.contiguous().numpy(), taps, rows.numpy())
    out = torch.empty_like(rows)
    _taps_columns(rows.numpy(), taps, out.numpy())
    return out


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
    Returns (B, 3, H, W), differentiable in ``padded`` (compiled too: the torch pass's
    gradient, with the weights' piecewise-linear slope)."""
    return _EawCoarse.apply(padded, _EawArgs(pad, mult, F32(inv_sigma2), taps, F32(centre)))


class _EawArgs:
    """eaw_coarse's settings as the kernels take them."""

    def __init__(self, pad: int, mult: int, inv_sigma2, taps, centre):
        self.pad, self.mult, self.inv_sigma2, self.centre = pad, mult, inv_sigma2, centre
        self.tap_dy, self.tap_dx, self.tap_weight = (np.array(col, dtype=dt) for col, dt in
                                                     zip(zip(*taps), (np.int64, np.int64, np.float32)))
        self.cut = F32(SMALLEST_WEIGHT_BITS)

    def taps(self) -> tuple:
        return self.pad, self.mult, self.inv_sigma2, self.tap_dy, self.tap_dx, self.tap_weight


class _EawCoarse(torch.autograd.Function):
    """eaw_coarse's pass and its gradient, each as compiled loops: the gradient gathers what
    each pixel gets as a centre and as every tap's neighbour, so that no two threads write one
    pixel."""

    @staticmethod
    def forward(ctx, padded: torch.Tensor, args: _EawArgs) -> torch.Tensor:
        _threads()
        padded = padded.detach().contiguous()
        b, c, hp, wp = padded.shape
        coarse = torch.empty((b, c, hp - 2 * args.pad, wp - 2 * args.pad), dtype=torch.float32)
        weights = torch.empty((b, hp - 2 * args.pad, wp - 2 * args.pad), dtype=torch.float32)
        _eaw_coarse(padded.numpy(), *args.taps(), args.centre, args.cut, coarse.numpy(), weights.numpy())
        ctx.args = args
        ctx.save_for_backward(padded, coarse, weights)
        return coarse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        _threads()
        padded, coarse, weights = ctx.saved_tensors
        args = ctx.args
        grad = grad.contiguous().to(torch.float32)
        g, own = torch.empty_like(coarse), torch.empty_like(coarse)
        gc = torch.empty_like(weights)
        _eaw_backward_own(padded.numpy(), *args.taps(), args.centre, args.cut, coarse.numpy(), weights.numpy(),
                          grad.numpy(), g.numpy(), gc.numpy(), own.numpy())
        out = torch.empty_like(padded)
        _eaw_backward_gather(padded.numpy(), *args.taps(), args.cut, g.numpy(), gc.numpy(), own.numpy(), out.numpy())
        return out, None
