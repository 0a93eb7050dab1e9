"""The ``multiscale`` family: fixed Gaussian blurs at many scales, mixed per image by the sliders.

For the spatial darktable modules (lowpass, soften, bloom, shadhi, sharpen, bilat, ...),
which blur (a function of) their input at a size set by a slider and mix the result per
pixel. Scale is built in rather than learned:

1. per pixel, channels to blur ``f`` = [sinh(t), a slider-conditioned layer of t]: the
   input in the module's own (linear) values and learned channels (a thresholded lightness
   for bloom, a brightened one for soften);
2. a Gaussian pyramid of ``f`` (5-tap binomial blur and 2x decimation per level, plus a
   3-tap blur of every level: two scales per octave, from 0 to 2^levels pixels);
3. ``mixes`` weighted sums of those scales per channel, the weights a narrow bump over the
   scales centred where the sliders say: a blur whose size follows a slider continuously.
   The sums are formed coarse to fine (upsample, add the next level), so no scale is ever
   upsampled to full resolution on its own (new proxies upsample with :func:`expand`,
   centred on the pyramid's samples; checkpoints without the field bilinearly); the blurs
   of the linear channels are taken back to the network domain (asinh) after mixing, so
   they are blurs of the module's own values;
   With ``fine`` blurs (new proxies), each image also gets that many Gaussian blurs of its
   values at a sigma the sliders set continuously (0.2-2.4 px, taps out to FINE_RADIUS),
   where the pyramid has only its two finest scales; their details (value minus blur, in
   the module's units) join the linear map and the MLP: an unsharp mask, or a threshold
   on local contrast, is then a function of one input, not a difference of two asinh
   values the MLP would have to form;
4. the output, in the network domain: asinh of [the module's values plus a per-image
   linear map of them and of the mixes, whose coefficients the sliders give] (an affine
   map of a blur, as lowpass is, is exact there; all zero at the start: the identity),
   plus a per-pixel MLP over [t, the learned channels, the mixes], its first layer scaled
   and shifted by the sliders (FiLM);
5. for the types that ask for them: outputs of the MLP weighted per image by a linear
   function of the sliders (``slider_outputs``), and the module's values multiplied first by
   exp of a per-image curve of a guided filter of their luminance (``curve``, toneequal's).

The cost per pixel is a few thousand multiply-adds, whatever the blur size. On a CPU the
blurs are sums of shifted slices (without a gradient, at stride 1, the same sums compiled:
models.darktable.cpu_kernels.separable, one pass per direction) and the per-pixel part runs
over slices of PIXEL_CHUNK pixels: both several times faster there than a depthwise
convolution and the whole image at once. On a GPU, where a pass over one image is bound by its kernel launches, the blurs and
expand are depthwise convolutions and the per-pixel part takes the whole image (:func:`sliced`):
about 130 launches a 512 px pass of size ``base``, where the slices take about 420: a pyramid
level's two blurs share their convolutions (:func:`_level_blurs`), and so do the fine blurs
(:func:`fine_details`).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import and_one, depthwise_conv, in_pixel_slices, linear_columns
from models.darktable import cpu_kernels
from models.transform import asinh, sinh

# pixels per slice of the per-pixel part of a forward pass: its intermediates (features x
# pixels) then stay in a CPU's caches, and the slices are few enough that the Python between
# operations costs little (measured at 512 x 512 px, docs/performance.md)
PIXEL_CHUNK = 16384
BINOMIAL5 = (1.0, 4.0, 6.0, 4.0, 1.0)   # sigma 1 px
BINOMIAL3 = (1.0, 2.0, 1.0)             # sigma 0.71 px
# guided_luminance: the least luminance (in the module's values / value scale), and the
# feathering at the start, softplus(0 + this) = 0.3 (toneequal's mask measured best near it)
LUMINANCE_FLOOR = 1e-6
GUIDED_FEATHERING_AT_START = math.log(math.expm1(0.3))
# where the per-image curve's bumps start, in ln of the module's values / value scale: linear
# RGB at value scale 0.01 from 2^-8 to 2 (toneequal's bands span -8..0 EV)
CURVE_RANGE = (-1.0, 5.3)
# the gain a curve_gain curve gives, at most: darktable's tone equalizer clamps its correction so
CURVE_GAIN_RANGE = (0.25, 4.0)
# the linear map's unit, in the module's values / value scale (Lab L 0..100 at scale 1, linear
# RGB 0..1 at scale 0.01 alike; Lab types at scale 100 see 0..1, so their coefficients are 10x
# larger): its inputs are divided, its output multiplied by it, so that its offsets and
# coefficients are numbers of order one for Adam
VALUE_UNIT = 10.0
FINE_RADIUS = 6                         # taps each side of the fine blurs' kernels
FINE_SIGMA = (0.2, FINE_RADIUS / 2.5)   # their sigma's range, px (2.5 sigma inside the kernel)
BORDER_UNIT = 4.0                       # px; the untouched border is this times softplus of its head


def separable_blur(x: torch.Tensor, taps: tuple[float, ...], stride: int = 1) -> torch.Tensor:
    """Depthwise separable blur of (B, C, H, W) by the normalised ``taps``, edges replicated;
    with ``stride`` 2 it also keeps every second row and column (sizes rounded up)."""
    return _separable(x, _normalised(tuple(taps)), stride)


@functools.cache
def _normalised(taps: tuple[float, ...]) -> tuple[float, ...]:
    """``taps`` over their sum, in float64, computed once."""
    k = torch.tensor(taps, dtype=torch.float64)
    return tuple((k / k.sum()).tolist())


def _separable(x: torch.Tensor, taps: Sequence, stride: int = 1) -> torch.Tensor:
    """``x`` (B, C, H, W) convolved along W, then H, with ``taps`` (numbers, or (B, 1, 1, 1)
    tensors: one kernel per image), edges replicated, every ``stride``-th output kept.

    Sums of shifted slices, not a depthwise convolution: on a CPU, oneDNN's depthwise
    convolutions of channel-first images took 5-25 ms for a 3-tap blur of 7 channels at
    512 x 512 px, where the slices take 2.5 (the pyramid: 35 -> 7 ms; the results agree to the bit)."""
    r = len(taps) // 2
    if not sliced(x):
        return _separable_conv(x, taps, stride)
    if stride == 1 and cpu_kernels.available(x) and not torch.is_grad_enabled():
        return cpu_kernels.separable(x, _tap_table(taps, len(x)))
    h, w = x.shape[-2:]
    y = _taps_sum(F.pad(x, (r, r, 0, 0), mode="replicate"), taps, 3, -(-w // stride), stride)
    return _taps_sum(F.pad(y, (0, 0, r, r), mode="replicate"), taps, 2, -(-h // stride), stride)


def _tap_table(taps: Sequence, images: int) -> torch.Tensor:
    """``taps`` (numbers, or (B, 1, 1, 1) tensors) as one row per image (B, K)."""
    if isinstance(taps[0], torch.Tensor):
        return torch.cat([t.reshape(-1, 1) for t in taps], 1)
    return torch.tensor(taps, dtype=torch.float32).expand(images, -1)


def sliced(x: torch.Tensor) -> bool:
    """Whether the blurs of ``x`` are sums of shifted slices (a CPU: several times faster there
    than depthwise convolutions) or depthwise convolutions (a GPU, where a pass over one image
    is bound by its kernel launches: 3 a blur, where the slices launch a pad and one per tap
    in each direction)."""
    return x.device.type == "cpu"


def _separable_conv(x: torch.Tensor, taps: Sequence, stride: int) -> torch.Tensor:
    """:func:`_separable` as two depthwise convolutions of ``x`` padded once (a row of the
    padding blurred along W is the blurred edge row, as the slices pad it after)."""
    if isinstance(taps[0], torch.Tensor):       # one kernel per image
        return _per_image_conv(x, _tap_table(taps, len(x))[:, None], stride)[:, :, 0]
    b, c, h, w = x.shape
    r = len(taps) // 2
    row, column = _depthwise(tuple(taps), c, x.dtype, x.device)
    y = depthwise_conv(depthwise_conv(F.pad(x, (r, r, r, r), mode="replicate"), row, (1, stride)), column, (stride, 1))
    return y.view(b, c, *y.shape[-2:])


def _per_image_conv(x: torch.Tensor, kernels: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """(B, C, H, W) ``x`` blurred along W, then H, by each of its image's ``kernels`` (B, F,
    K), edges replicated, every ``stride``-th output kept: (B, C, F, h, w). Two depthwise
    convolutions of ``x`` padded once, the images' channels as groups, each giving F."""
    b, c, h, w = x.shape
    f, k = kernels.shape[1:]
    r = k // 2
    row = kernels[:, None].expand(b, c, f, k).reshape(b * c * f, 1, 1, k).to(x.dtype)
    y = F.pad(x, (r, r, r, r), mode="replicate").reshape(1, b * c, h + 2 * r, w + 2 * r)
    y = depthwise_conv(depthwise_conv(y, row, (1, stride)), row.transpose(2, 3).contiguous(), (stride, 1))
    return y.view(b, c, f, *y.shape[-2:])


@functools.cache
def _depthwise(taps: tuple[float, ...], channels: int, dtype: torch.dtype,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights (channels, 1, 1, K) and (channels, 1, K, 1) of a depthwise blur by ``taps``
    along W and along H, made once per device (a constant copied from the host at every pass
    could not be captured in a CUDA graph), for passes with and without gradients."""
    with torch.inference_mode(False), torch.no_grad():
        row = torch.tensor(taps, dtype=dtype, device=device).view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
        return row, row.transpose(2, 3).contiguous()


def _taps_sum(y: torch.Tensor, taps: Sequence, dim: int, n: int, stride: int) -> torch.Tensor:
    """sum_i taps[i] * (``y`` from i along ``dim``, every ``stride``-th of ``n``)."""
    out = None
    for i, k in enumerate(taps):
        part = y.narrow(dim, i, (n - 1) * stride + 1)
        if stride > 1:
            part = part[..., ::stride] if dim == 3 else part[..., ::stride, :]
        if out is None:
            out = part * k
        elif isinstance(k, torch.Tensor):
            out = out.addcmul_(part, k)
        else:
            out = out.add_(part, alpha=k)
    return out


def pyramid_scales(f: torch.Tensor, levels: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per level 0..``levels``: (the level, its 3-tap blur); level l is f blurred and
    decimated l times (1/2^l of the resolution, at least 1 px)."""
    out, g = [], f
    for level in range(levels + 1):
        if level < levels and not sliced(g):
            blurred, below = _level_blurs(g)
        else:
            blurred = separable_blur(g, BINOMIAL3)
            below = separable_blur(g, BINOMIAL5, stride=2) if level < levels else None
        out.append((g, blurred))
        g = below
    return out


def _level_blurs(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A pyramid level's 3-tap blur and the level below it (its 5-tap blur at every second
    pixel) in one pad and one pair of depthwise convolutions (a GPU's way, :func:`sliced`),
    where each takes a pad and two: every channel gives both blurs, the 3-tap one as five taps
    with zeros at the ends, and the 5-tap one is taken at stride 1 and sampled (the same sums
    at the pixels it keeps)."""
    b, c, h, w = g.shape
    row, column = _level_weights(c, g.dtype, g.device)
    y = depthwise_conv(depthwise_conv(F.pad(g, (2, 2, 2, 2), mode="replicate"), row), column)
    y = y.view(b, c, 2, h, w)
    return y[:, :, 0], y[:, :, 1, ::2, ::2]


@functools.cache
def _level_weights(channels: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights (2 channels, 1, 1, 5) and (2 channels, 1, 5, 1) of :func:`_level_blurs`:
    per channel the 3-tap blur's then the 5-tap one's, along W and along H, made once per
    device as :func:`_depthwise`'s."""
    with torch.inference_mode(False), torch.no_grad():
        three = torch.tensor((0.0, *BINOMIAL3, 0.0), dtype=torch.float64)
        five = torch.tensor(BINOMIAL5, dtype=torch.float64)
        taps = torch.stack([three / three.sum(), five / five.sum()]).to(dtype).repeat(channels, 1)
        row = taps.view(2 * channels, 1, 1, 5).to(device)
        return row, row.transpose(2, 3).contiguous()


def mix_scales(scales: list[tuple[torch.Tensor, torch.Tensor]], weights: torch.Tensor,
               mixes: int, upsample: str = "bilinear") -> torch.Tensor:
    """Per image and channel, the sum of every scale (upsampled to level 0) times its weight.

    ``scales`` from :func:`pyramid_scales` (channels q), ``weights`` (B, mixes * q, 2 *
    (levels + 1)), scale 2l the level l, 2l + 1 its 3-tap blur; returns (B, mixes * q, H, W).
    Coarse to fine: each level's weighted scales plus the upsampling of the sum so far, by
    ``upsample`` (UPSAMPLES).
    """
    b = weights.shape[0]
    w = weights.view(b, mixes, -1, weights.shape[-1])[..., None, None]        # (B, mixes, q, scales, 1, 1)
    acc = None
    for level in reversed(range(len(scales))):
        g, g3 = scales[level]                                                  # (B, q, h, w)
        part = torch.addcmul(g[:, None] * w[:, :, :, 2 * level], g3[:, None], w[:, :, :, 2 * level + 1])
        part = part.flatten(1, 2)                                              # (B, mixes * q, h, w)
        if acc is not None:
            part = part.add_(UPSAMPLES[upsample](acc, g.shape[-2:]))
        acc = part
    return acc


def expand(g: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A pyramid level (B, C, h, w) back on the grid of the level above it, ``size`` (H, W):
    Burt and Adelson's expand with the 5-tap binomial. The level's samples sit on the even
    pixels, where :func:`pyramid_scales` took them; odd pixels get the mean of their two
    neighbours, even ones [1, 6, 1] / 8 of theirs (edges replicated). A linear ramp comes back
    exactly, where a bilinear interpolation that takes the samples for the centres of 2 x 2
    blocks (``F.interpolate``) shifts (at odd sizes, stretches) every level by up to half a
    pixel of the one above it, (2^l - 1) / 2 px at level l: that cost the lowpass mix 4.6 dB
    of its best fit (docs/proxies.md)."""
    if not sliced(g):
        return _expand_conv(g, size)
    return _expand_along(_expand_along(g, size[0], 2), size[1], 3)


def _expand_along(g: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """:func:`expand` along one dimension, to ``n`` samples: the fast hand-written pass and
    its adjoint, or under ``torch.compile`` (which cannot trace their ``out=`` writes) the
    same sums as plain operations for the compiler to fuse."""
    if torch.compiler.is_compiling():
        return _expand_plain(g, n, dim)
    return _ExpandAlong.apply(g, n, dim)


def _expand_conv(g: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """:func:`expand` as one depthwise convolution of ``g`` padded once (a GPU's way, as
    :func:`sliced` says): per input pixel, the 2 x 2 output pixels it is the even or odd
    sample of, from its 3 x 3 neighbourhood (an even sample's taps [1, 6, 1] / 8, an odd one's
    [0, 4, 4] / 8 along each axis), then interleaved (``pixel_shuffle``)."""
    b, c, h, w = g.shape
    y = depthwise_conv(F.pad(g, (1, 1, 1, 1), mode="replicate"), _expand_weight(c, g.dtype, g.device))
    return F.pixel_shuffle(y, 2)[..., :size[0], :size[1]]


@functools.cache
def _expand_weight(channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(4 channels, 1, 3, 3): for each channel the even-even, even-odd, odd-even and odd-odd
    output's taps (:func:`_expand_conv`), made once per device as :func:`_depthwise`'s."""
    with torch.inference_mode(False), torch.no_grad():
        phases = torch.tensor([[1.0, 6.0, 1.0], [0.0, 4.0, 4.0]], dtype=torch.float64) / 8
        taps = torch.stack([torch.outer(phases[i], phases[j]) for i in (0, 1) for j in (0, 1)])
        return taps.to(dtype).repeat(channels, 1, 1)[:, None].to(device)


def _expand_plain(g: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    m = g.shape[dim]
    after = torch.cat([g.narrow(dim, 1, m - 1), g.narrow(dim, m - 1, 1)], dim)
    before = torch.cat([g.narrow(dim, 0, 1), g.narrow(dim, 0, m - 1)], dim)
    even, odd = (6 * g + before + after) / 8, (g + after) / 2
    return torch.stack([even, odd], dim + 1).flatten(dim, dim + 1).narrow(dim, 0, n)


class _ExpandAlong(torch.autograd.Function):
    """odd_j = (g_j + g_j+1) / 2 and even_j = g_j / 2 + (odd_j-1 + odd_j) / 4 (= [1, 6, 1] / 8),
    written straight into the interleaved output, and its adjoint as the backward pass: 5x
    faster than forming both halves and stacking them, and a multiscale training step 10 %
    faster than with autograd through the same slices (228 -> 205 ms, 8 x 128 px, one thread)."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, n: int, dim: int) -> torch.Tensor:
        ctx.n, ctx.dim = n, dim
        m = g.shape[dim]
        shape = list(g.shape)
        shape.insert(dim + 1, 2)
        out = g.new_empty(shape)                                   # (..., m, 2, ...): even, odd
        even, odd = out.select(dim + 1, 0), out.select(dim + 1, 1)
        torch.add(g.narrow(dim, 0, m - 1), g.narrow(dim, 1, m - 1), out=odd.narrow(dim, 0, m - 1)).mul_(0.5)
        odd.narrow(dim, m - 1, 1).copy_(g.narrow(dim, m - 1, 1))                   # edge replicated
        torch.add(odd.narrow(dim, 0, m - 1), odd.narrow(dim, 1, m - 1), out=even.narrow(dim, 1, m - 1))
        torch.add(g.narrow(dim, 0, 1), odd.narrow(dim, 0, 1), out=even.narrow(dim, 0, 1))   # odd_-1 = g_0
        even.mul_(0.25).add_(g, alpha=0.5)
        return out.flatten(dim, dim + 1).narrow(dim, 0, n)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        n, dim = ctx.n, ctx.dim
        m = -(-n // 2)
        if n < 2 * m:                                              # the cut last odd sample: no gradient
            shape = list(grad.shape)
            shape[dim] = 1
            grad = torch.cat([grad, grad.new_zeros(shape)], dim)
        pairs = grad.unflatten(dim, (m, 2))
        de, do = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
        out = de * 0.75 + do * 0.5                                 # even_j's own 6/8, odd_j's 1/2
        out.narrow(dim, 1, m - 1).add_(de.narrow(dim, 0, m - 1), alpha=0.125).add_(do.narrow(dim, 0, m - 1), alpha=0.5)
        out.narrow(dim, 0, m - 1).add_(de.narrow(dim, 1, m - 1), alpha=0.125)
        out.narrow(dim, 0, 1).add_(de.narrow(dim, 0, 1), alpha=0.125)            # replicated edges
        out.narrow(dim, m - 1, 1).add_(de.narrow(dim, m - 1, 1), alpha=0.125).add_(do.narrow(dim, m - 1, 1), alpha=0.5)
        return out, None, None


def _bilinear(g: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(g, size=size, mode="bilinear", align_corners=False)


# how mix_scales takes a level's sum up a level: "bilinear" (checkpoints without the field),
# "expand" (new proxies)
UPSAMPLES = {"bilinear": _bilinear, "expand": expand}


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = FINE_RADIUS) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), one ``sigma`` (B,) per image (differentiable in
    it), taps -radius..radius normalised, edges replicated."""
    k = _gaussian_taps(sigma[:, None], radius, x.dtype)[:, 0]                  # (B, taps)
    return _separable(x, list(k[:, :, None, None, None].unbind(1)))


def _gaussian_taps(sigmas: torch.Tensor, radius: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, F, 2 radius + 1): the normalised taps -radius..radius of a Gaussian at each of
    ``sigmas`` (B, F)."""
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=sigmas.device)
    return (-offsets ** 2 / (2 * sigmas[..., None].to(dtype) ** 2)).softmax(-1)


def fine_details(v: torch.Tensor, sigmas: torch.Tensor) -> list[torch.Tensor]:
    """Per column of ``sigmas`` (B, F), the details of (B, C, H, W) ``v`` in VALUE_UNITs: v
    minus its :func:`gaussian_blur` at that sigma, as (B, C, H x W) tables. On a GPU
    (:func:`sliced`) all F blurs take one pad and one pair of depthwise convolutions, each
    channel of each image giving F blurred ones, where a blur on its own takes three."""
    if sliced(v):
        return [((v - gaussian_blur(v, sigma)) / VALUE_UNIT).flatten(2) for sigma in sigmas.unbind(1)]
    details = (v[:, :, None] - _per_image_conv(v, _gaussian_taps(sigmas, FINE_RADIUS, v.dtype))) / VALUE_UNIT
    return [details[:, :, i].flatten(2) for i in range(sigmas.shape[1])]


def scale_weights(position: torch.Tensor, n_scales: int, width: float = 0.6) -> torch.Tensor:
    """Weights (..., n_scales) over the scales, summing to 1: a Gaussian bump of ``width``
    scale steps centred at sigmoid(``position``) of the way from the finest to the coarsest
    scale (one number per blur, so its size follows the sliders smoothly)."""
    centre = torch.sigmoid(position)[..., None] * (n_scales - 1)
    steps = torch.arange(n_scales, dtype=position.dtype, device=position.device)
    return (-(steps - centre) ** 2 / (2 * width ** 2)).softmax(-1)


def edge_distance(planes: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W): each pixel's distance in pixels to the nearest edge of its whole image
    (0 on the outermost rows and columns), from the first two coordinate planes of
    ``utils.data.tapouts.coordinate_planes`` (x and y of the pixel centres, -1 to 1 across the
    image), so a crop knows it too. Needs 2 px or more on each axis."""
    d = []
    for axis, plane in ((-1, planes[:, 0:1]), (-2, planes[:, 1:2])):
        step = plane.narrow(axis, 1, 1) - plane.narrow(axis, 0, 1)          # 2 / the image's size
        index = (plane + 1) / step - 0.5                                     # pixels from the low edge
        d.append(torch.minimum(index, 2 / step - 1 - index))
    return torch.minimum(*d).round()


class Heads(NamedTuple):
    """What the sliders give a multiscale network per image, in the order of the heads' layer."""

    pre_bias: torch.Tensor      # the learned channels' bias
    position: torch.Tensor      # the mix logits over the scales
    gain: torch.Tensor          # the MLP's FiLM gain
    shift: torch.Tensor         # and shift
    linear: torch.Tensor        # the per-image linear map and its bias
    fine: torch.Tensor          # the fine blurs' sigmas
    border: torch.Tensor        # the untouched border's width
    gate: torch.Tensor          # the gate
    curve: torch.Tensor         # the curve's bump heights
    feathering: torch.Tensor    # the guided luminance's feathering


class SliderMultiscale(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, n_sliders: int, extra_channels: int,
                 hidden: int, learned: int, mixes: int, levels: int, fine: int = 0, cond: int = 64,
                 upsample: str = "bilinear", border: bool = False, gate: bool = False, slider_outputs: int = 0,
                 curve: int = 0, curve_gain: bool = False):
        super().__init__()
        if upsample not in UPSAMPLES:
            raise ValueError(f"unknown upsampling {upsample!r}; choose one of {tuple(UPSAMPLES)}")
        if border and (extra_channels < 2 or in_channels != out_channels):
            raise ValueError("a border needs coordinate planes (a positional type) and as many "
                             "output channels as input channels")
        self.border, self.gate = border, gate
        # with a border the coordinate planes serve it alone: the per-pixel network does not see them
        c, e = in_channels, 0 if border else extra_channels
        self.image_channels, self.out_channels = c, out_channels
        self.learned, self.mixes, self.levels, self.hidden = learned, mixes, levels, hidden
        self.fine, self.upsample = fine, upsample
        self.q = c + learned                                # blurred channels: sinh(t), learned
        self.n_scales = 2 * (levels + 1)
        self.n_linear = c + mixes * self.q + fine * c       # the per-image linear map's inputs
        self.curve = curve          # bumps of a per-image curve of the guided log luminance
        self.curve_gain = bool(curve and curve_gain)   # the curve a gain linear in the sliders
        self.n_features = c + learned + mixes * self.q + fine * c + e   # per pixel: what the linear map's result joins
        # the per-pixel MLP sees those features and the linear map's result
        self.cond = nn.Sequential(nn.Linear(n_sliders + 1, cond), nn.LeakyReLU(0.2),
                                  nn.Linear(cond, cond), nn.LeakyReLU(0.2))
        self.heads = nn.Linear(cond, sum(self._head_sizes()))
        nn.init.zeros_(self.heads.weight)
        nn.init.zeros_(self.heads.bias)
        self.pre = nn.Linear(c + e, learned)
        self.hidden1 = nn.Linear(self.n_features + out_channels, hidden)
        self.hidden2 = nn.Linear(hidden, hidden)
        self.slider_outputs = slider_outputs
        if slider_outputs:   # registered before out, which stays the last layer
            self.out_weights = nn.Linear(n_sliders + 1, slider_outputs)
            self.out_sliders = nn.Linear(hidden, out_channels * slider_outputs)
            nn.init.zeros_(self.out_sliders.weight)
            nn.init.zeros_(self.out_sliders.bias)
        if curve:   # the bumps' centres, in ln of the module's values / value scale
            self.curve_centres = nn.Parameter(torch.linspace(*CURVE_RANGE, curve))
        if self.curve_gain:   # the bump heights, a linear function of the sliders: gain 1 at the start
            self.curve_heights = nn.Linear(n_sliders + 1, curve)
            nn.init.zeros_(self.curve_heights.weight)
            nn.init.ones_(self.curve_heights.bias)
        self.out = nn.Linear(hidden, out_channels)          # last: start_at_mean_offset sets its bias
        nn.init.zeros_(self.out.weight)                     # with the zero heads: the identity at the start
        nn.init.zeros_(self.out.bias)

    def _head_sizes(self) -> list[int]:
        """The sizes of the :class:`Heads`, in their order."""
        return [self.learned, self.mixes * self.q, self.hidden, self.hidden,
                (self.n_linear + 1) * self.out_channels, self.fine, int(self.border), int(self.gate),
                0 if self.curve_gain else self.curve, int(bool(self.curve))]

    def forward(self, x: torch.Tensor, sliders: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        c, m, q = self.image_channels, self.mixes, self.q
        pre_bias, position, gain, shift, linear, fine, border, gate, curve, feathering = self._heads(sliders.to(x.dtype))
        t, extra = x[:, :c], x[:, c:]
        if self.border:
            x, planes, extra = t, extra, extra[:, :0]
        v = sinh(t)                                                     # the module's values / scale
        learned = F.leaky_relu(_pixels(self.pre, x) + pre_bias[:, :, None, None], 0.2)
        weights = scale_weights(position, self.n_scales)                     # (B, mixes * q, scales)
        blurred = mix_scales(pyramid_scales(torch.cat([v, learned], 1), self.levels), weights, m,
                             self.upsample)
        blurred = blurred.view(b, m, q, h * w)                                # (B, mixes, q, HW)
        details = fine_details(v, self._fine_sigmas(fine)) if self.fine else []
        per_pixel = (t.flatten(2), v.flatten(2), learned.flatten(2), blurred, *details, extra.flatten(2))
        if self.curve:   # the guided log luminance, the last table
            per_pixel += (torch.log(guided_luminance(v, F.softplus(feathering + GUIDED_FEATHERING_AT_START))).flatten(2),)
        a = linear.view(b, self.n_linear + 1, self.out_channels).transpose(1, 2)   # (B, C_out, n_linear + 1)
        mix = self.out_weights(and_one(sliders.to(x.dtype))) if self.slider_outputs else None   # (B, slider_outputs)
        if self.curve_gain:
            curve = self.curve_heights(and_one(sliders.to(x.dtype)))                       # (B, bumps)
        y = in_pixel_slices(lambda *part: self._pixels(*part, a=a, gain=gain, shift=shift, mix=mix,
                                                       curve=curve if self.curve else None),
                            *per_pixel, size=PIXEL_CHUNK)
        y = y.view(b, self.out_channels, h, w)                                   # (B, C_out, H, W)
        if self.gate and not self.training:   # fitted by gate_loss alone (see there)
            y = t + gate_scale(gate)[:, :, None, None] * (y - t)
        if self.border:   # the width is fitted by border_loss alone (see there)
            y = t + untouched_border_mask(edge_distance(planes), border.detach()) * (y - t)
        return y

    def border_loss(self, t: torch.Tensor, planes: torch.Tensor, target: torch.Tensor,
                    sliders: torch.Tensor) -> torch.Tensor:
        """The untouched border's width fitted to the data: on each image whose crop reaches an
        edge of the image, the distance to it of the nearest pixel the module changed (``target``
        differs from the input ``t`` there, both in the network domain) is the width; smooth L1
        in pixels, 0 without a border. Fitted through the output instead, the width grows while
        the network is still worse than the identity and keeps the network from ever learning
        the rim (measured: the whole image covered)."""
        if not self.border:
            return t.new_zeros(())
        width = BORDER_UNIT * F.softplus(self._heads(sliders.to(t.dtype)).border[:, 0])
        d = edge_distance(planes)                                                # (B, 1, H, W)
        changed = (target != t).any(1, keepdim=True)
        seen = changed.flatten(1).any(1) & (d.flatten(1).amin(1) == 0)
        if not seen.any():
            return t.new_zeros(())
        observed = torch.where(changed, d, torch.full_like(d, math.inf)).flatten(1).amin(1)
        return F.smooth_l1_loss(width[seen], observed[seen])

    def gate_loss(self, t: torch.Tensor, target: torch.Tensor, pred: torch.Tensor,
                  sliders: torch.Tensor) -> torch.Tensor:
        """The gate fitted to the best scale of each image's change in training (where the
        network runs ungated), <pred - t, target - t> / |pred - t|^2 clipped to 0..1 (squared
        error; 0 without a gate). Where a module barely changes the image (sharpen at radius
        1) the network's change is mostly its own noise and the gate goes to 0. Trained through
        the output instead, the gate closed while the network was worse than the identity, for
        good (measured); applied as it is fitted, its errors near 1 cost the images the module
        changes most as much as it gained (gate_scale's dead zones)."""
        if not self.gate:
            return t.new_zeros(())
        change, wanted = (pred - t).detach(), target - t
        best = (change * wanted).sum((1, 2, 3)) / change.square().sum((1, 2, 3)).clamp_min(1e-20)
        return F.mse_loss(torch.sigmoid(self._heads(sliders.to(t.dtype)).gate[:, 0]), best.clamp(0, 1))

    def _heads(self, sliders: torch.Tensor) -> "Heads":
        """What the sliders give (B, S) -> the :class:`Heads`, each (B, size)."""
        return Heads(*torch.split(self.heads(self.cond(and_one(sliders))), self._head_sizes(), 1))

    def _pixels(self, t: torch.Tensor, v: torch.Tensor, learned: torch.Tensor, blurred: torch.Tensor,
                *rest: torch.Tensor, a: torch.Tensor, gain: torch.Tensor, shift: torch.Tensor,
                mix: torch.Tensor | None, curve: torch.Tensor | None) -> torch.Tensor:
        """The output (B, C_out, N) on N pixels: their network-domain values ``t``, values ``v``
        and ``learned`` channels (B, C, N), mixes ``blurred`` (B, mixes, q, N), then the fine
        blurs' details and the extra planes; the per-image linear map ``a`` and FiLM ``gain``
        and ``shift`` from the sliders, and the weights ``mix`` (B, slider_outputs) of the
        slider-weighted outputs, and the curve's bump heights ``curve`` (B, bumps), the guided
        log luminance then the last table."""
        b, c = t.shape[:2]
        if curve is not None:
            *rest, log_lum = rest
        *details, extra = rest
        mixed_values = blurred[:, :, :c].flatten(1, 2)                        # (B, mixes * C, N)
        mixed_learned = blurred[:, :, c:].flatten(1, 2)
        lin_in = torch.cat([v / VALUE_UNIT, mixed_values / VALUE_UNIT, mixed_learned, *details], 1)
        lin = torch.baddbmm(a[:, :, -1:], a[:, :, :-1], lin_in) * VALUE_UNIT   # (B, C_out, N)
        v_out = v if c == self.out_channels else v.mean(1, keepdim=True)
        if curve is not None:   # the module's values times exp(the curve at the guided log luminance)
            width = (CURVE_RANGE[1] - CURVE_RANGE[0]) / max(self.curve - 1, 1)
            at = log_lum.clamp(*CURVE_RANGE)        # constant beyond the range, as darktable clamps its EV
            bumps = torch.exp(-0.5 * ((at - self.curve_centres[None, :, None]) / width) ** 2)   # (B, bumps, N)
            if self.curve_gain:   # a gain, the bumps normalised to sum to 1, clamped as darktable's correction
                bumps = bumps / bumps.sum(1, keepdim=True).clamp_min(1e-6)
                v_out = v_out * torch.bmm(curve[:, None, :], bumps).clamp(*CURVE_GAIN_RANGE)
            else:
                v_out = v_out * torch.exp(torch.bmm(curve[:, None, :], bumps))
        lin = asinh(lin + v_out)                                                  # network domain
        table = torch.cat([t, learned, asinh(mixed_values), mixed_learned, *details, extra, lin], 1)
        hid = linear_columns(self.hidden1, table)
        hid = F.leaky_relu(hid * (1 + gain[:, :, None]) + shift[:, :, None], 0.2)
        hid = F.leaky_relu(linear_columns(self.hidden2, hid), 0.2)
        y = lin + linear_columns(self.out, hid)
        if mix is None:
            return y
        weighted = linear_columns(self.out_sliders, hid).view(b, self.slider_outputs, -1, hid.shape[2])
        return y + (weighted * mix[:, :, None, None]).sum(1)

    def _fine_sigmas(self, z: torch.Tensor) -> torch.Tensor:
        """The fine blurs' sigmas (B, fine) from their heads: spread over FINE_SIGMA at the start
        (the heads are zero), anywhere in it after."""
        lo, hi = FINE_SIGMA
        start = torch.linspace(-1.5, 1.5, self.fine, dtype=z.dtype, device=z.device) if self.fine > 1 else z.new_zeros(1)
        return lo + (hi - lo) * torch.sigmoid(z + start)


def guided_luminance(v: torch.Tensor, feathering: torch.Tensor) -> torch.Tensor:
    """An exposure-independent guided filter of each pixel's luminance (the norm of its values
    ``v`` (B, C, H, W)) at pyramid levels 1..L, L = ``feathering.shape[1]`` (B, L): (B, L, H, W).

    As darktable's tone equalizer builds its mask (``common/eigf.h``): the luminance's local
    mean and variance are taken on a decimated copy (a pyramid level, then its 5-tap blur) and
    brought back to full size; per pixel, a = n / (n + feathering) with n the variance over
    (mean x the pixel's luminance), and the result is a l + (1 - a) mean: smooth where the
    neighbourhood is flat against the pixel, the pixel itself across strong edges. Measured on
    toneequal's held-out samples, the best function of level 1's result fits darktable's gain
    at 48.9 dB mean, that of the pixel's own luminance at 32.0 (docs/proxies.md)."""
    squares = v[:, :1] * v[:, :1]
    for c in range(1, v.shape[1]):   # channel by channel: torch's norm over channels took 52 ms at 512x512
        squares = squares + v[:, c:c + 1] * v[:, c:c + 1]
    lum = squares.sqrt().clamp_min(LUMINANCE_FLOOR)
    sizes, g, out = [tuple(lum.shape[-2:])], lum, []
    for level in range(feathering.shape[1]):
        g = separable_blur(g, BINOMIAL5, stride=2)
        sizes.append(tuple(g.shape[-2:]))
        mean = separable_blur(g, BINOMIAL5)
        stats = torch.cat([mean, separable_blur(g * g, BINOMIAL5) - mean * mean], 1)
        for size in reversed(sizes[:-1]):
            stats = expand(stats, size)
        mean, variance = stats[:, :1], stats[:, 1:].clamp_min(0)
        n = variance / (mean * lum).clamp_min(LUMINANCE_FLOOR ** 2)
        a = n / (n + feathering[:, level, None, None, None])
        out.append((a * lum + (1 - a) * mean).clamp_min(LUMINANCE_FLOOR))
    return torch.cat(out, 1)


def gate_scale(z: torch.Tensor) -> torch.Tensor:
    """The scale of the network's change out of training from the gate's head ``z``: 0 where the
    fitted gate is under 0.1, 1 over 0.5, linear between."""
    return ((torch.sigmoid(z) - 0.1) / 0.4).clamp(0, 1)


def untouched_border_mask(distance: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) from each pixel's ``distance`` to the image's edge: 0 on the border the
    module leaves as it is, 1 inside, a one-pixel ramp between that ends at the border's width,
    BORDER_UNIT * softplus(``z``) px (``z`` (B, 1) from the sliders). darktable's sharpen
    leaves its blur's radius, ceil(2.5 sigma) px (docs/proxies.md)."""
    width = BORDER_UNIT * F.softplus(z)[:, :, None, None]
    return (distance + 1 - width).clamp(0, 1)


def _pixels(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A Linear layer applied to every pixel of (B, C, H, W) (a 1x1 convolution)."""
    return layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
