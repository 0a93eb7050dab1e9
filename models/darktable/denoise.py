"""darktable's profiled denoise (``iop/denoiseprofile.c``, ``common/eaw.c``), exact, in the
configuration utils.proxies.registry.DENOISEPROFILE pins: wavelets, Y0U0V0 colours, the new
variance-stabilising transform adapted to the white balance, the generic noise profile
(a = 1e-4, b = 0: what darktable takes for a camera it has no profile for, as the built-in
DNGs), flat force curves, no bias.

The image goes through the generalised Anscombe transform per channel (its exponent from the
shadows slider and the white balance), to Y0U0V0 scaled by 2.5 x strength x the pipe scale;
each of ``max_scale`` edge-aware a-trous scales (B3 spline, weights 2^-max(0, 0.02 d^2 /
sigma^2 - 9) from the 3-channel difference d, with darktable's bit-trick 2^-x) gives a detail
band, soft-thresholded at 8 sigma^2 / sqrt(var - sigma^2) from the band's own variance; the
bands and the last coarse image are summed, back to RGB and through the inverse transform.
The number of scales follows the full size and the pipe scale. Measured against darktable
5.0.1 on the 140 samples of its table dataset: 118.9-158.7 dB in float32 (121.8-162.6 in
float64; the rest is rounding); with the white balance taken as 1, 45.8 dB. A float32 pass
at 512 x 512 (6 scales) takes 25-35 ms on 2 CPU cores with the a-trous step compiled
(models.darktable.cpu_kernels), 90-115 ms as torch operations, 800 ms tap by tap in float64;
with the sliders' gradient 180 ms compiled, 1100 ms as torch operations. On a GPU each step
takes its 25 taps at once (:func:`unfolds`): a 512 px pass is about 300 operations that
launch kernels where the pairs of taps take about 1600 (1050 against 5750 with the sliders'
gradient), and a GPU's pass over one image is bound by its launches.
"""
from __future__ import annotations

import functools
import math

import torch

from models.darktable import cpu_kernels

GENERIC_A = 1e-4     # generic poissonian profile (no ISO / no matching camera profile)
GENERIC_B = 0.0
P_FULCRUM = 0.05
COMPENSATE_STRENGTH = 2.5   # Y0U0V0 mode
MAX_MAX_SCALE = 7           # number of bands
B3 = (1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16)
VARF = math.sqrt(2.0 + 2.0 * 16.0 + 36.0) / 16.0


def max_scales(full: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The number of wavelet scales darktable runs (B,) (int64) for each image of full size
    ``full`` (B, 2) (W, H) at pipe scale ``s`` (B,): the most whose support at full size stays
    within a fifth of the long side (at most 257 px), in darktable's float32 steps; on their
    device, nothing read back (the same as numpy's float32 on 66,000 sizes and scales)."""
    f32 = torch.float32
    inverse = 1 / s.to(f32).clamp(max=1.0)
    longest = full.max(1).values.to(f32)
    supp0 = (longest * 0.2).clamp(max=float(2 * (2 << (MAX_MAX_SCALE - 1)) + 1))
    i0 = torch.log2((supp0 - 1) * 0.5)
    going = torch.ones(s.shape, dtype=torch.bool, device=s.device)
    count = torch.zeros(s.shape, dtype=torch.int64, device=s.device)
    for ms in range(MAX_MAX_SCALE):   # darktable stops at the first support whose t < 0
        supp_in = float(2 * (2 << ms) + 1) * inverse
        i_in = torch.log2((supp_in - 1) * 0.5) - 1
        going = going & ~(1 - (i_in + 0.5) / i0 < 0)
        count = count + going
    return count


ONE_BITS = 1065353216.0   # the bits of 1.0f, as a float
MANTISSA = 8388608.0      # 2^23: one step of the exponent field; below it the bits are a denormal


def _fast_mexp2(x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """darktable's fast_mexp2f, 2^-x for x >= 0 from a float's bits (bit-exact: computed in
    float32 as darktable does), with the gradient of the piecewise-linear function the bits
    follow where ``x`` carries one; ``in_place``: float32 ``x`` without one becomes scratch."""
    with torch.no_grad():
        bits = x.detach().to(torch.float32)
        bits = (bits.mul_(-MANTISSA) if in_place and bits is x else bits.mul(-MANTISSA)).add_(ONE_BITS)
        # darktable zeroes what would be a denormal (bits below 2^23); the threshold keeps 2^23 itself
        exact = torch.nn.functional.threshold_(bits, MANTISSA - 0.5, 0.0).to(torch.int32).view(torch.float32)
        exact = exact.to(x.dtype)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return exact
    n = torch.floor(x.detach())
    pl = torch.exp2(-n) * (1.0 - (x - n) * 0.5)
    pl = torch.where(n > 126, torch.zeros_like(pl), pl)
    return exact + (pl - pl.detach())


def _edge_weight(d2: torch.Tensor) -> torch.Tensor:
    """A tap's edge-aware weight 2^-max(0, 0.02 d2 - 9) from its squared difference ``d2``
    (over sigma^2), differentiable (the pass without a gradient computes it in place)."""
    return _fast_mexp2(torch.clamp(d2 * 0.02 - 9.0, min=0.0))


# The 24 taps around the centre as (dy, dx, spline weight) in steps of the scale, in the order
# _dn_decompose sums them: each pair of opposite taps, the one ahead then the one behind.
TAPS = [(sign * (jj - 2), sign * (ii - 2), B3[ii] * B3[jj])
        for jj in range(5) for ii in range(5) if (jj, ii) > (2, 2) for sign in (1, -1)]


def _replicate(img: torch.Tensor, pad: int) -> torch.Tensor:
    """``img`` (B, C, H, W) with its edge pixels repeated ``pad`` px outward on every side."""
    h, w = img.shape[-2:]
    if pad < h and pad < w:
        return torch.nn.functional.pad(img, (pad, pad, pad, pad), mode="replicate")
    iy = torch.clamp(torch.arange(-pad, h + pad, device=img.device), 0, h - 1)
    ix = torch.clamp(torch.arange(-pad, w + pad, device=img.device), 0, w - 1)
    return img[:, :, iy][:, :, :, ix]


def _dn_decompose(img: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One edge-aware a-trous step of (B, 3, H, W) ``img`` (eaw.c's eaw_dn_decompose): the B3
    spline's 5 x 5 taps ``2^scale`` apart, edges repeated, each weighted by 2^-max(0, 0.02
    |difference|^2 / sigma^2 - 9) at the band's sigma: (coarse, detail).

    A tap's weight is symmetric: pixel p's weight for its neighbour p + d is the weight of
    p + d for its neighbour p. Each pair of opposite taps computes it once, over the pixels
    both need (the image grown by d), and reads it at two offsets: half the differences and
    powers. Without a gradient the sums accumulate in place."""
    B, C, H, W = img.shape
    mult = 1 << scale
    sigma_band = VARF ** scale
    inv_sigma2 = 1.0 / (sigma_band * sigma_band)
    pad = 2 * mult
    padded = _replicate(img, pad)
    centre = B3[2] * B3[2]                       # the centre's difference is 0: weight 2^0
    if C == 3 and cpu_kernels.available(img, differentiable=True):   # the same taps compiled: 10x faster
        coarse = cpu_kernels.eaw_coarse(padded, pad, mult, inv_sigma2, TAPS, centre)
        return coarse, img - coarse
    if unfolds(img):
        coarse = _coarse_unfolded(padded, img, mult, inv_sigma2)
        return coarse, img - coarse
    grad = torch.is_grad_enabled() and img.requires_grad
    wsum = torch.full((B, 1, H, W), centre, dtype=img.dtype, device=img.device)
    ssum = img * centre

    def at(tensor, y, x):                        # the H x W window of ``tensor`` from (y, x)
        return tensor[:, :, y:y + H, x:x + W]

    for jj in range(5):
        for ii in range(5):
            if (jj, ii) <= (2, 2):               # the centre; the other half is each pair's opposite
                continue
            dy, dx = mult * (jj - 2), mult * (ii - 2)
            # the weights at rows [pad - max(dy, 0), pad + H - min(dy, 0)), columns likewise
            y0, x0 = pad - max(dy, 0), pad - max(dx, 0)
            here = padded[:, :, y0:pad + H - min(dy, 0), x0:pad + W - min(dx, 0)]
            there = padded[:, :, y0 + dy:pad + H - min(dy, 0) + dy, x0 + dx:pad + W - min(dx, 0) + dx]
            if grad:
                diff = here - there
                d2 = (diff * diff).sum(1, keepdim=True) * inv_sigma2
                weight = _edge_weight(d2) * (B3[ii] * B3[jj])
            else:   # the same steps in place, on tensors of its own
                d2 = _squared_distance(here, there).mul_(inv_sigma2).mul_(0.02).sub_(9.0).clamp_(min=0.0)
                weight = _fast_mexp2(d2, in_place=True).mul_(B3[ii] * B3[jj])
            w_ahead, w_behind = at(weight, pad - y0, pad - x0), at(weight, pad - y0 - dy, pad - x0 - dx)
            ahead, behind = at(padded, pad + dy, pad + dx), at(padded, pad - dy, pad - dx)
            if grad:
                wsum = wsum + w_ahead + w_behind
                ssum = ssum + w_ahead * ahead + w_behind * behind
            else:
                wsum.add_(w_ahead).add_(w_behind)
                ssum.addcmul_(w_ahead, ahead).addcmul_(w_behind, behind)
    coarse = ssum / wsum
    return coarse, img - coarse


# the most memory the 25 taps of an image may take at once (:func:`_coarse_unfolded`): a
# 3.5 MP image; larger ones take the pairs of taps one after another
UNFOLDED_BYTES = 1 << 30


@functools.cache
def _spline(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The 25 taps' spline weights (1, 1, 25, 1, 1), tap (jj, ii) at jj * 5 + ii, made once per
    device (for passes with and without gradients)."""
    with torch.inference_mode(False), torch.no_grad():
        weights = [B3[jj] * B3[ii] for jj in range(5) for ii in range(5)]
        return torch.tensor(weights, dtype=torch.float64).to(dtype).view(1, 1, 25, 1, 1).to(device)


def unfolds(img: torch.Tensor) -> bool:
    """Whether an a-trous step of ``img`` takes all its taps at once (:func:`_coarse_unfolded`):
    off the CPU, where they fit in UNFOLDED_BYTES."""
    return img.device.type != "cpu" and 25 * img.numel() * img.element_size() <= UNFOLDED_BYTES


def _coarse_unfolded(padded: torch.Tensor, img: torch.Tensor, mult: int, inv_sigma2: float) -> torch.Tensor:
    """The coarse image of :func:`_dn_decompose` with all 25 taps at once (a GPU's way): the
    neighbours of every pixel gathered by one ``unfold`` (its gradient one ``fold``), each
    weight computed for both pixels of a pair (twice the arithmetic, which a GPU does not
    notice), the centre's weight 2^0 times its spline like the others. About 20 kernel
    launches a scale where the pairs take about 180, and a GPU's pass over one image is bound
    by its launches. The taps are summed in another order than darktable's (float rounding)."""
    b, c, h, w = img.shape
    near = torch.nn.functional.unfold(padded, 5, dilation=mult).view(b, c, 25, h, w)   # tap (jj, ii) at jj * 5 + ii
    diff = near - img[:, :, None]
    d2 = (diff * diff).sum(1, keepdim=True) * inv_sigma2                                # (B, 1, 25, H, W)
    weight = _edge_weight(d2) * _spline(img.dtype, img.device)
    return (weight * near).sum(2) / weight.sum(2)


def _squared_distance(here: torch.Tensor, there: torch.Tensor) -> torch.Tensor:
    """|here - there|^2 over the channels of (B, C, h, w) ``here`` and ``there``, (B, 1, h, w),
    no gradient: a channel at a time, in place into one new tensor. Half the time of the
    C-channel difference squared and summed (which writes C planes and reads them twice), as
    faithful to darktable (the same PSNR against its renders to 0.1 dB); with a gradient
    the C-channel form is the faster (0.89 against 1.02 s a 512 px pass)."""
    total = None
    for c in range(here.shape[1]):
        d = here[:, c:c + 1] - there[:, c:c + 1]
        total = d.mul_(d) if total is None else total.addcmul_(d, d)
    return total


def _conversion_matrices(wb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """White balance ``wb`` (B, 3) -> RGB to Y0U0V0 (B, 3, 3) and back, darktable's
    white-balance-adaptive matrices."""
    sum_invwb = (1.0 / wb).sum(1) * math.sqrt(3.0)             # (B,)
    row0 = sum_invwb[:, None] / wb
    sU = torch.sqrt(0.25 * wb[:, 0] ** 2 + 0.25 * wb[:, 2] ** 2)
    sV = torch.sqrt(wb[:, 0] ** 2 / 16.0 + wb[:, 1] ** 2 / 4.0 + wb[:, 2] ** 2 / 16.0)
    one = torch.ones_like(sU)
    row1 = torch.stack([0.5 * one, 0.0 * one, -0.5 * one], 1) / sU[:, None]
    row2 = torch.stack([0.25 * one, -0.5 * one, 0.25 * one], 1) / sV[:, None]
    M = torch.stack([row0, row1, row2], 1)
    return M, torch.linalg.inv(M)


def denoise_rgb(rgb: torch.Tensor, strength: torch.Tensor, shadows: torch.Tensor, scale: torch.Tensor,
                wb: torch.Tensor, max_scale: int | torch.Tensor, a: float = GENERIC_A, b: float = GENERIC_B,
                bias: float = 0.0) -> torch.Tensor:
    """darktable's profiled denoise of camera RGB ``rgb`` (B, 3, H, W), computed in its dtype (``strength``,
    ``shadows`` and the pipe ``scale`` (B,); ``wb`` (B, 3) the white-balance coefficients the
    pipe ran with; ``max_scale`` wavelet scales, :func:`max_scales`).

    ``max_scale`` is a number, for every image, or each image's (B,) on the device: then the
    pass runs the most scales the image's shape allows (darktable leaves an image whose
    largest scale does not fit as it is), and an image's bands past its own number are added
    back as they are, not thresholded. Its last coarse image is then the sum of those bands
    and the pass's last one (the same to float rounding), and no size follows a value: the
    pass can be captured as a CUDA graph (models.graphs)."""
    B, C, H, W = rgb.shape
    dt = rgb.dtype
    per_image = None
    if isinstance(max_scale, torch.Tensor):
        per_image, max_scale = max_scale.view(B, 1, 1, 1), min(MAX_MAX_SCALE, int(math.log2(min(H, W))))
        if max_scale < 1:
            return rgb
    max_mult = 1 << (max_scale - 1)
    if W < 2 * max_mult or H < 2 * max_mult:
        return rgb
    s = scale.to(dt).view(B, 1)
    wb = wb.to(dt)
    strength = strength.to(dt).view(B, 1)
    shadows = shadows.to(dt).view(B, 1)

    p = torch.clamp(shadows + 0.1 * torch.log(s / wb), min=0.0)           # (B,3)
    fulcrum = torch.full((), P_FULCRUM, dtype=dt, device=rgb.device)     # a CPU base broke the gradient
    compensate_p = P_FULCRUM / torch.pow(fulcrum, shadows)                 # (B,1)
    a_eff = a * compensate_p                                               # (B,1)

    toY, toRGB = _conversion_matrices(wb)
    k = (strength * COMPENSATE_STRENGTH * s)                               # (B,1)
    toY = toY / k[:, :, None]
    toRGB = toRGB * k[:, :, None]
    wbs = wb * k

    # precondition (generalised Anscombe, per channel) then to Y0U0V0
    expon = 1.0 - p / 2.0
    sc = 2.0 / ((2.0 - p) * torch.sqrt(a_eff))
    t = _power(torch.clamp(rgb + b, min=0.0), expon[:, :, None, None]) * sc[:, :, None, None]
    buf = torch.einsum('bij,bjhw->bihw', toY, t)

    out = torch.zeros_like(buf)
    npix = H * W
    for sidx in range(max_scale):
        coarse, detail = _dn_decompose(buf, sidx)
        sum_y2 = (detail ** 2).sum((2, 3))                                 # (B,3)
        sb = VARF ** sidx
        sb2 = sb * sb
        var_y = sum_y2 / (npix - 1.0)
        std_x = torch.sqrt(torch.clamp(var_y - sb2, min=1e-6))
        adjt = 8.0 * (0.5 * 0.5 * 4.0)   # flat force curves y = 0.5
        thrs = (adjt * sb2 / std_x)[:, :, None, None]
        shrunk = detail - torch.clamp(detail, -thrs, thrs)             # soft threshold
        if per_image is not None:
            shrunk = torch.where(sidx < per_image, shrunk, detail)
        out = out + shrunk
        buf = coarse
    out = out + buf

    # back to RGB, inverse VST
    rgbo = torch.einsum('bij,bjhw->bihw', toRGB, out)
    xx = torch.clamp(rgbo, min=0.0)
    bias_eff = bias - 0.5 * torch.log(s)                                    # (B,1)
    delta = xx * xx + (bias_eff * wbs)[:, :, None, None]
    z1 = (xx + torch.sqrt(torch.clamp(delta, min=0.0))) * \
        (torch.sqrt(a_eff) * (2.0 - p) / 4.0)[:, :, None, None]
    out = _power(z1, (1.0 / (1.0 - p / 2.0))[:, :, None, None]) - b
    if per_image is None:
        return out
    return torch.where(per_image <= max_scale, out, rgb)     # its largest scale fits in the image


def _power(x: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """x^exponent for x >= 0 and a positive exponent, 0 at 0, with a finite gradient there."""
    if not (torch.is_grad_enabled() and (x.requires_grad or exponent.requires_grad)):
        return torch.pow(x, exponent)
    positive = x > 0
    return torch.where(positive, torch.pow(torch.where(positive, x, torch.ones_like(x)), exponent), torch.zeros_like(x))
