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
   upsampled to full resolution on its own; the blurs of the linear channels are taken
   back to the network domain (asinh) after mixing, so they are blurs of the module's own
   values;
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
   and shifted by the sliders (FiLM).

The cost per pixel is a few thousand multiply-adds, whatever the blur size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BINOMIAL5 = (1.0, 4.0, 6.0, 4.0, 1.0)   # sigma 1 px
BINOMIAL3 = (1.0, 2.0, 1.0)             # sigma 0.71 px
# the linear map's unit, in the module's values / value scale (Lab L 0..100 at scale 1, linear
# RGB 0..1 at scale 0.01 alike; Lab types at scale 100 see 0..1, so their coefficients are 10x
# larger): its inputs are divided, its output multiplied by it, so that its offsets and
# coefficients are numbers of order one for Adam
VALUE_UNIT = 10.0
FINE_RADIUS = 6                         # taps each side of the fine blurs' kernels
FINE_SIGMA = (0.2, FINE_RADIUS / 2.5)   # their sigma's range, px (2.5 sigma inside the kernel)


def separable_blur(x: torch.Tensor, taps: tuple[float, ...], stride: int = 1) -> torch.Tensor:
    """Depthwise separable blur of (B, C, H, W) by the normalised ``taps``, edges replicated;
    with ``stride`` 2 it also keeps every second row and column (sizes rounded up)."""
    c, r = x.shape[1], len(taps) // 2
    k = torch.tensor(taps, dtype=x.dtype, device=x.device)
    k = k / k.sum()
    y = F.pad(x, (r, r, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, len(taps)), stride=(1, stride), groups=c)
    y = F.pad(y, (0, 0, r, r), mode="replicate")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, len(taps), 1), stride=(stride, 1), groups=c)


def pyramid_scales(f: torch.Tensor, levels: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per level 0..``levels``: (the level, its 3-tap blur); level l is f blurred and
    decimated l times (1/2^l of the resolution, at least 1 px)."""
    out, g = [], f
    for level in range(levels + 1):
        if level:
            g = separable_blur(g, BINOMIAL5, stride=2)
        out.append((g, separable_blur(g, BINOMIAL3)))
    return out


def mix_scales(scales: list[tuple[torch.Tensor, torch.Tensor]], weights: torch.Tensor,
               mixes: int) -> torch.Tensor:
    """Per image and channel, the sum of every scale (upsampled to level 0) times its weight.

    ``scales`` from :func:`pyramid_scales` (channels q), ``weights`` (B, mixes * q, 2 *
    (levels + 1)), scale 2l the level l, 2l + 1 its 3-tap blur; returns (B, mixes * q, H, W).
    Coarse to fine: each level's weighted scales plus the bilinear upsampling of the sum so far.
    """
    acc = None
    for level in reversed(range(len(scales))):
        g, g3 = (s.repeat(1, mixes, 1, 1) for s in scales[level])       # (B, mixes * q, h, w)
        part = (weights[:, :, 2 * level, None, None] * g + weights[:, :, 2 * level + 1, None, None] * g3)
        if acc is not None:
            acc = F.interpolate(acc, size=g.shape[-2:], mode="bilinear", align_corners=False)
            part = part + acc
        acc = part
    return acc


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = FINE_RADIUS) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), one ``sigma`` (B,) per image (differentiable in
    it), taps -radius..radius normalised, edges replicated."""
    b, c, h, w = x.shape
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = (-offsets ** 2 / (2 * sigma[:, None] ** 2)).softmax(-1)              # (B, taps)
    k = k.repeat_interleave(c, 0)                                             # (B C, taps)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    return F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c).view(b, c, h, w)


def scale_weights(position: torch.Tensor, n_scales: int, width: float = 0.6) -> torch.Tensor:
    """Weights (..., n_scales) over the scales, summing to 1: a Gaussian bump of ``width``
    scale steps centred at sigmoid(``position``) of the way from the finest to the coarsest
    scale (one number per blur, so its size follows the sliders smoothly)."""
    centre = torch.sigmoid(position)[..., None] * (n_scales - 1)
    steps = torch.arange(n_scales, dtype=position.dtype, device=position.device)
    return (-(steps - centre) ** 2 / (2 * width ** 2)).softmax(-1)


class SliderMultiscale(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, n_sliders: int, extra_channels: int,
                 hidden: int, learned: int, mixes: int, levels: int, fine: int = 0, cond: int = 64):
        super().__init__()
        c, e = in_channels, extra_channels
        self.image_channels, self.out_channels = c, out_channels
        self.learned, self.mixes, self.levels, self.hidden = learned, mixes, levels, hidden
        self.fine = fine
        self.q = c + learned                                # blurred channels: sinh(t), learned
        self.n_scales = 2 * (levels + 1)
        self.n_linear = c + mixes * self.q + fine * c       # the per-image linear map's inputs
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
        self.out = nn.Linear(hidden, out_channels)          # last: start_at_mean_offset sets its bias
        nn.init.zeros_(self.out.weight)                     # with the zero heads: the identity at the start
        nn.init.zeros_(self.out.bias)

    def _head_sizes(self) -> list[int]:
        """What the sliders give: the learned channels' bias, the mix logits, the MLP's FiLM
        gain and shift, the per-image linear map and its bias."""
        return [self.learned, self.mixes * self.q, self.hidden, self.hidden,
                (self.n_linear + 1) * self.out_channels, self.fine]

    def forward(self, x: torch.Tensor, sliders: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        c, m, q = self.image_channels, self.mixes, self.q
        ones = torch.ones(b, 1, dtype=x.dtype, device=x.device)
        z = self.heads(self.cond(torch.cat([sliders.to(x.dtype), ones], 1)))   # (B, heads)
        pre_bias, position, gain, shift, linear, fine = torch.split(z, self._head_sizes(), 1)
        t, extra = x[:, :c], x[:, c:]
        v = torch.sinh(t)                                                     # the module's values / scale
        learned = F.leaky_relu(_pixels(self.pre, x) + pre_bias[:, :, None, None], 0.2)
        weights = scale_weights(position, self.n_scales)                     # (B, mixes * q, scales)
        blurred = mix_scales(pyramid_scales(torch.cat([v, learned], 1), self.levels), weights, m)
        blurred = blurred.view(b, m, q, h, w)                                 # (B, mixes, q, H, W)
        details = [(v - gaussian_blur(v, sigma)) / VALUE_UNIT for sigma in self._fine_sigmas(fine)]
        table = torch.cat([t, learned, torch.asinh(blurred[:, :, :c]).flatten(1, 2),
                           blurred[:, :, c:].flatten(1, 2), *details, extra], 1).permute(0, 2, 3, 1)
        table = table.reshape(b, h * w, self.n_features)                      # (B, HW, F)
        lin_in = torch.cat([v.flatten(2) / VALUE_UNIT, blurred[:, :, :c].flatten(1, 2).flatten(2) / VALUE_UNIT,
                            blurred[:, :, c:].flatten(1, 2).flatten(2),
                            *(d.flatten(2) for d in details)], 1)             # (B, n_linear, HW)
        a = linear.view(b, self.n_linear + 1, self.out_channels)
        lin = torch.baddbmm(a[:, -1:], lin_in.transpose(1, 2), a[:, :-1]) * VALUE_UNIT   # (B, HW, C_out)
        base = v.flatten(2).transpose(1, 2)
        lin = lin + (base if c == self.out_channels else base.mean(2, keepdim=True))
        lin = torch.asinh(lin)                                                    # network domain
        hid = self.hidden1(torch.cat([table, lin], 2))
        hid = F.leaky_relu(hid * (1 + gain[:, None]) + shift[:, None], 0.2)
        y = lin + self.out(F.leaky_relu(self.hidden2(hid), 0.2))                  # (B, HW, C_out)
        return y.view(b, h, w, self.out_channels).permute(0, 3, 1, 2)

    def _fine_sigmas(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The fine blurs' sigmas (B,) from their heads: spread over FINE_SIGMA at the start
        (the heads are zero), anywhere in it after."""
        lo, hi = FINE_SIGMA
        start = torch.linspace(-1.5, 1.5, self.fine, dtype=z.dtype, device=z.device) if self.fine > 1 else z.new_zeros(1)
        return [lo + (hi - lo) * torch.sigmoid(z[:, i] + start[i]) for i in range(self.fine)]


def _pixels(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A Linear layer applied to every pixel of (B, C, H, W) (a 1x1 convolution)."""
    return layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
