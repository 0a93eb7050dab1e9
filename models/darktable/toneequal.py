"""darktable's tone equalizer (``iop/toneequal.c``), exact and differentiable, in the
configuration utils.proxies.registry.TONEEQUAL pins: the five sliders blacks .. whites (EV
gains at -5 .. -1 EV, the other four 0), blending 5 %, smoothing sqrt(2), feathering 1, no
quantization or boosts, one iteration, the exposure-independent guided filter (EIGF) on the
euclidean norm of RGB.

- The mask: L = sqrt((r^2 + g^2) + b^2), at least 2^-16, smoothed by darktable's EIGF: the
  radius int((0.05 x the image's long side - 1) / 2) px (the filter's sigma), a bilinear
  downscale by clamp(radius, 1, 4), darktable's recursive Gaussian of [L, L^2] (each pass's
  input clamped to the channel's range), the variance, a bilinear upscale and the blend
  a L + (1 - a) mean, a = v / (v + 1), v = variance / max(mean L, 1e-6).
- The correction: the nine channel gains (2^EV) fitted by eight Gaussian radial basis
  functions (centres -8 .. 0 EV, 2 sigma^2 = 4) by least squares through a Cholesky factor;
  the curve, clamped to [0.25, 4], read as darktable reads its 80001-entry table at
  round((log2 L' + 8) x 10000), times the pixel's RGB.

darktable's release build compiles with -ffast-math, and the least-squares system is badly
conditioned: its sums must run in the order the compiler vectorised them (four lanes, added
as (l0 + l2) + (l1 + l3)), else the curve moves by 1e-4 (78 dB). The bilinear and Gaussian
coefficients keep the compiler's reassociated forms; transcendentals are computed in float64
and rounded (darktable uses glibc's float functions and an approximate reciprocal, which
moves a few pixels one table step from ours). Measured against darktable 5.0.1 on the 140
samples of its table dataset: 122.4-160 dB (uncapped), against 78.9 dB for a plain float32
transcription. Gradients reach the RGB and the sliders; the table's rounding passes the
gradient of the unrounded exposure.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

F32 = np.float32
MIN_FLOAT = 2.0 ** -16
FULCRUM = 2.0 ** -4
CENTERS = np.arange(-56, 1, 8, dtype=F32) / F32(7.0)        # RBF centres, -8 .. 0 EV
SIGMA = F32(1.414213562)                                    # smoothing
BLENDING = F32(F32(5.0) * F32(0.01))                        # 5 %, as compiled
DENOM = F32(F32(F32(2.0) * SIGMA) * SIGMA)


def _exp32(x) -> torch.Tensor:
    """exp of a float32 value, correctly rounded to float32 (computed in float64)."""
    return torch.exp(torch.as_tensor(x).double()).float()


def _vec_sum(terms):
    """Sum as GCC vectorises `for k: s += t[k]`: 4 lanes reduced as (l0 + l2) + (l1 + l3),
    then the scalar tail; sequential below 4 terms."""
    n = len(terms)
    if n < 4:
        return sum(terms[1:], terms[0]) if terms else 0.0
    lanes = list(terms[:4])
    for k in range(4, n - n % 4):
        lanes[k % 4] = lanes[k % 4] + terms[k]
    s = (lanes[0] + lanes[2]) + (lanes[1] + lanes[3])
    for t in terms[n - n % 4:]:
        s = s + t
    return s


def _vec_sub(s, terms):
    """`for k: s -= t[k]` as vectorised by GCC: s - (4-lane sum), then the scalar tail."""
    nv = len(terms) - len(terms) % 4
    if nv:
        s = s - _vec_sum(terms[:nv])
    for t in terms[nv:]:
        s = s - t
    return s


def _solver_constants() -> tuple[np.ndarray, np.ndarray]:
    """The radial basis functions at the nine channels' exposures, A (9 x 8), and the Cholesky
    factor of A'A, in darktable's float32 order."""
    r = (np.arange(-8, 1, dtype=F32)[:, None] - CENTERS[None, :]).astype(F32)
    A = _exp32((-(r * r) / DENOM).astype(F32)).numpy()
    AtA = np.zeros((8, 8), F32)
    for i in range(8):
        for j in range(i + 1):
            AtA[i, j] = sum((F32(A[k, i] * A[k, j]) for k in range(9)), F32(0.0))
    L = np.zeros((8, 8), F32)
    for i in range(8):
        for j in range(i + 1):
            s = F32(AtA[i, j] - F32(_vec_sum([F32(L[i, k] * L[j, k]) for k in range(j)])))
            L[i, j] = np.sqrt(s) if i == j else F32(s / L[j, j])
    return A, L


BASIS, CHOLESKY = _solver_constants()


def _rbf_weights(sliders: torch.Tensor) -> torch.Tensor:
    """(B, 5) slider EVs -> (B, 8) weights of the radial basis functions: the least-squares
    fit of the nine channels' gains (darktable's get_channels_factors and pseudo_solve)."""
    z = torch.zeros_like(sliders[:, :1])
    gains = torch.cat([z, z, z, sliders, z], 1)
    y = torch.exp2(gains.double()).float()
    projected = [_vec_sum([float(BASIS[k, i]) * y[:, k] for k in range(9)]) for i in range(8)]   # A'y
    b = []
    for i in range(8):
        b.append(_vec_sub(projected[i], [float(CHOLESKY[i, j]) * b[j] for j in range(i)]) / float(CHOLESKY[i, i]))
    x = [None] * 8
    for i in range(7, -1, -1):
        s = _vec_sub(b[i], [float(CHOLESKY[j, i]) * x[j] for j in range(7, i, -1)])
        x[i] = s / float(CHOLESKY[i, i])
    return torch.stack(x, 1)


def _curve(expo: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The gain at exposure ``expo`` (B, 1, H, W; EV, float32) for the weights ``w`` (B, 8),
    clamped to [0.25, 4] as darktable's table."""
    res = torch.zeros_like(expo)
    for i in range(8):
        r = expo - float(CENTERS[i])
        g = torch.exp((-(r * r) / float(DENOM)).double()).float()
        res = res + g * w[:, i].view(-1, 1, 1, 1)
    return torch.clamp(res, 0.25, 4.0)


@functools.lru_cache(maxsize=None)
def _gauss_coeffs(sigma):
    """Order-0 Deriche coefficients of dt_gaussian_blur, as GCC reassociated them."""
    one = F32(1.0)
    alpha = F32(F32(1.695) / F32(sigma))
    m2a = F32(F32(-2.0) * alpha)
    e, e2 = F32(_exp32(-alpha)), F32(_exp32(m2a))
    b1 = F32(F32(-2.0) * e)
    k = F32(F32(F32(one - e) * F32(one - e)) / F32(F32(F32(-F32(m2a * e)) - e2) + one))
    a1 = F32(k * F32(F32(alpha - one) * e))
    a2 = F32(k * F32(F32(alpha + one) * e))
    k_e2 = F32(k * e2)
    den = F32(F32(e2 + one) + b1)
    return tuple(float(c) for c in (k, a1, a2, -k_e2, b1, e2,
                                    F32(F32(k + a1) / den), F32(F32(a2 - k_e2) / den)))


def _bilinear(img, w_out, h_out):
    """interpolate_bilinear of (B, C, H, W) to (w_out, h_out), darktable's -ffast-math form."""
    def axis(n_in, n_out):
        ratio = (torch.tensor(1.0 / n_out, dtype=torch.float32) * n_in).item()
        x = torch.arange(n_out, dtype=torch.float32, device=img.device) * ratio
        prev = x.floor().long()
        nxt = (prev + 1).clamp(max=n_in - 1)
        return prev.clamp(max=n_in - 1), nxt, nxt.float() - x, (1.0 + x) - nxt.float()
    xp, xn, dxn, dxp = axis(img.shape[3], w_out)
    yp, yn, dyn, dyp = axis(img.shape[2], h_out)
    rp, rn = img.index_select(2, yp), img.index_select(2, yn)
    dyn, dyp = dyn.view(-1, 1), dyp.view(-1, 1)
    return dyp * (rn.index_select(3, xp) * dxn + rn.index_select(3, xn) * dxp) + \
        dyn * (rp.index_select(3, xp) * dxn + rp.index_select(3, xn) * dxp)


def _iir(x, lo, hi, c, dim, swap_bwd):
    """Causal + anti-causal Deriche pass along `dim` on inputs clamped to [lo, hi].
    swap_bwd: anti-causal recurrence associated as (a x - b1 y) + (a' x' - b2 y')."""
    a0, a1, a2, a3, b1, b2, coefp, coefn = c
    xs = torch.minimum(torch.maximum(x, lo), hi).unbind(dim)
    n = len(xs)
    xp, yb = xs[0], xs[0] * coefp
    yp, fwd = yb, []
    for xc in xs:
        yc = (a0 * xc + a1 * xp) - (b1 * yp + b2 * yb)
        fwd.append(yc)
        xp, yb, yp = xc, yp, yc
    xn = xa = xs[-1]
    yn = ya = xs[-1] * coefn
    bwd = [None] * n
    for j in range(n - 1, -1, -1):
        if swap_bwd:
            yc = (a2 * xn - b1 * yn) + (a3 * xa - b2 * ya)
        else:
            yc = (a2 * xn + a3 * xa) - (b1 * yn + b2 * ya)
        xa, xn, ya, yn = xn, xs[j], yn, yc
        bwd[j] = yc
    return torch.stack(fwd, dim) + torch.stack(bwd, dim)


def _gaussian_blur(x, sigma):
    """dt_gaussian_blur of the 2-channel (B, 2, h, w) [L, L^2], vertical then horizontal,
    clamped to each image's per-channel min / max."""
    c = _gauss_coeffs(sigma)
    out = []
    for ch in range(2):
        xc = x[:, ch:ch + 1]
        lo = xc.detach().amin(dim=(2, 3), keepdim=True)
        hi = xc.detach().amax(dim=(2, 3), keepdim=True)
        t = _iir(xc, lo, hi, c, 2, ch == 0)
        out.append(_iir(t, lo, hi, c, 3, ch == 0))
    return torch.cat(out, 1)


def _eigf(lum, radius):
    """fast_eigf_surface_blur (1 iteration, linear blending) of (B, 1, H, W)."""
    H, W = lum.shape[2:]
    scaling = max(min(radius, 4), 1)
    ds = _bilinear(lum, W // scaling, H // scaling)
    blur = _gaussian_blur(torch.cat([ds, ds * ds], 1), max(radius / scaling, 1.0))
    avg = blur[:, :1]
    up = _bilinear(torch.cat([avg, blur[:, 1:] - avg * avg], 1), W, H)
    avg, var = up[:, :1], up[:, 1:]
    nv = var / torch.clamp(lum * avg, min=float(F32(1e-6)))
    a = nv / (nv + 1.0)
    return torch.clamp(a * lum + (1.0 - a) * avg, min=MIN_FLOAT)


def luminance_mask(rgb: torch.Tensor) -> torch.Tensor:
    """The smoothed luminance mask (B, 1, H, W) of float32 whole images ``rgb`` (B, 3, H, W)."""
    long_side = F32(max(rgb.shape[-2:]))
    radius = int(F32(F32(F32(BLENDING * long_side) - F32(1.0)) * F32(0.5)))   # modify_roi_in, in float32
    r, g, b = rgb.unbind(1)
    # sqrt in float64 (float32 torch.sqrt is not correctly rounded on a CPU); the clamp keeps
    # the gradient finite, far below the 2^-16 floor
    lum = torch.sqrt(torch.clamp((r * r + g * g) + b * b, min=1e-20).double()).float()
    lum = torch.clamp((lum - FULCRUM) + FULCRUM, min=MIN_FLOAT).unsqueeze(1)   # not a no-op in float32
    return _eigf(lum, radius)


def toneequal_rgb(rgb: torch.Tensor, sliders: torch.Tensor) -> torch.Tensor:
    """darktable's tone equalizer of whole images of linear RGB ``rgb`` (B, 3, H, W), computed
    in float32, at ``sliders`` (B, 5): the EV gains of blacks, shadows, midtones, highlights,
    whites. Returned in ``rgb``'s dtype."""
    x = rgb.float()
    weights = _rbf_weights(sliders.to(device=x.device, dtype=torch.float32))
    exposure = torch.clamp(torch.log2(luminance_mask(x)), -8.0, 0.0)
    with torch.no_grad():
        t = (exposure + 8.0) * 10000.0
        index = t.floor() + (t - t.floor() >= 0.5).float()         # roundf
        tabulated = index * float(F32(1e-4)) - 8.0                 # j * 1e-4f - 8, as compiled
    # the table's exposure forward, the gradient of the unrounded one
    return (_curve(tabulated + (exposure - exposure.detach()), weights) * x).to(rgb.dtype)
