"""darktable's own operations, where they are known exactly, for a proxy's network to start
from (``ModelSpec.prior``): the network then takes the prior's output for its input and
learns what is left (a new network is the identity, so a new proxy is the prior).

A prior's operation maps a module's input tap-out ``x`` (B, C, H, W), in the module's own
values, its slider values by name ((B,) float64 each; a slider the proxy does not take is at
darktable's default) and each image's pixel scale (B,) float64 to darktable's output;
differentiable in ``x`` and in the sliders whose effect is continuous (``steps`` name those
that act in steps: slider regression searches them, ``Proxy.steps``).

- ``shadhi``: shadows and highlights, bilateral algorithm (shadhi.c at the fields
  utils.proxies.registry.SHADHI pins): darktable's bilateral base of L (models.bilateral)
  at the radius times the pixel scale, inverted, overlaid on the image. Measured 147-158 dB
  against darktable 5.0.1 on the held-out samples (float rounding).
- ``hazeremoval``: haze removal (models.dehaze): the dark channel's ambient light as
  darktable selects it, the closed transmission map through darktable's guided filter; its
  windows are pixels of the image it gets, at any pixel scale. Measured at the 120 dB cap
  against darktable 5.0.1 on every one of 140 samples (8 images).
- ``lowpass``: darktable's recursive Gaussian of Lab at the radius times the pixel scale,
  its contrast and brightness tables on L, saturation on a and b (:func:`lowpass_lab`); measured
  98-127 dB against darktable 5.0.1 on its held-out samples (its tables' steps).
- ``sharpen``: darktable's unsharp mask of L (:func:`sharpen`); measured 142-210 dB on its
  held-out samples, 149 dB at full size where the kernel is cut at 12 px.
- ``temperature``: white balance on the raw mosaic, each photosite times its colour's
  multiplier (the greens both by ``green``); ``highlights``: its clip mode, the mosaic
  clipped at ``clip``; ``demosaic``: darktable's RCD (models.demosaic_exact); ``colorout``:
  Lab to display sRGB (models.fixed.ColorOut). Measured on the types' held-out samples
  against darktable 5.0.1: the 120 dB cap for temperature and demosaic, 78-120 dB for
  highlights, 111-120 dB for colorout (darktable's float rounding).

Mosaic priors take the CFA ``pattern`` of each image (models.mosaic); the others ignore it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from models.bilateral import bilateral_base
from models.dehaze import hazeremoval as dehaze
from models.demosaic_exact import rcd_demosaic
from models.fixed import ColorOut
from models.mosaic import pack, unpack

Sliders = Mapping[str, torch.Tensor]   # each slider's values by name, (B,) float64

LOW_APPROXIMATION = 1e-6    # shadhi's low_approximation (the registry pins it)
MAX_OVERLAYS = 4            # shadhi overlays its mask (2 slider / 100)^2 times: at most 4, the last a part


def _sign(v: torch.Tensor) -> torch.Tensor:
    """darktable's sign(): -1 below 0, else 1."""
    return torch.where(v < 0, -1.0, 1.0).to(v.dtype)


def _inverse(v: torch.Tensor) -> torch.Tensor:
    """1 / v, its size at most 1 / LOW_APPROXIMATION (shadhi's lref and href)."""
    return _sign(v) / v.abs().clamp(min=LOW_APPROXIMATION)


def _overlay(lab: tuple[torch.Tensor, ...], mask: torch.Tensor, amount: torch.Tensor, opacity: torch.Tensor,
             direction: torch.Tensor, chroma_weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """shadhi's overlay of ``mask`` on (L, a, b) (all scaled to 0..1 and -1..1), ``amount``
    (B, 1, 1) times in whole and partial steps, each at ``opacity``."""
    L, a, b = lab
    for k in range(MAX_OVERLAYS):
        step = (amount - k).clamp(0, 1) * opacity
        lb = ((mask - 0.5) * direction * _sign(1 - L) + 0.5).clamp(0, 1)
        lref, href = _inverse(L), _inverse(1 - L)
        L = L * (1 - step) + torch.where(L > 0.5, 1 - (1 - 2 * (L - 0.5)) * (1 - lb), 2 * L * lb) * step
        chroma = L * lref * chroma_weight + (1 - L) * href * (1 - chroma_weight)
        a, b = a * (1 - step) + a * chroma * step, b * (1 - step) + b * chroma * step
    return L, a, b


SHADHI_DEFAULTS = {"shadows": 50.0, "highlights": -50.0, "whitepoint": 0.0, "radius": 100.0, "compress": 50.0}


def shadhi(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, pattern: object = None) -> torch.Tensor:
    """darktable's shadows and highlights of Lab ``x`` (B, 3, H, W)."""
    def per_image(name: str) -> torch.Tensor:
        return sliders[name].view(-1, 1, 1).to(x.dtype)
    shadows, highlights = (2 * (per_image(name) / 100).clamp(-1, 1) for name in ("shadows", "highlights"))
    whitepoint = (1 - per_image("whitepoint") / 100).clamp(min=0.01)
    compress = (per_image("compress") / 100).clamp(0, 0.99)
    radius = sliders["radius"].detach().clamp(min=0.1) * scale
    base = torch.stack([bilateral_base(x[i, 0], float(radius[i])) for i in range(len(x))])
    mask = (100 - base) / 100
    L, a, b = x[:, 0] / 100, x[:, 1] / 128, x[:, 2] / 128
    L = torch.where(L > 0, L / whitepoint, L)
    mask = torch.where(mask > 0, mask / whitepoint, mask)
    # colour corrections at the pinned 100 % (shadows) and 50 % (highlights), signed as darktable does
    shadows_chroma = (_sign(shadows) + 1) / 2
    lab = _overlay((L, a, b), mask, highlights ** 2, (1 - mask / (1 - compress)).clamp(0, 1), _sign(-highlights),
                   torch.full_like(highlights, 0.5))
    lab = _overlay(lab, mask, shadows ** 2, (mask / (1 - compress) - compress / (1 - compress)).clamp(0, 1),
                   _sign(shadows), shadows_chroma)
    return torch.stack([lab[0] * 100, lab[1] * 128, lab[2] * 128], 1)


HAZEREMOVAL_DEFAULTS = {"strength": 0.2, "distance": 0.2}


def hazeremoval(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, pattern: object = None) -> torch.Tensor:
    """darktable's haze removal of linear RGB ``x`` (B, 3, H, W); its windows do not follow
    the pixel ``scale``."""
    return dehaze(x, sliders["strength"], sliders["distance"])


# darktable's lowpass (gaussian algorithm, unbounded), computed exactly and differentiably.
#
# darktable blurs the Lab image with its recursive Gaussian (``common/gaussian.c``: Deriche's
# zero-order filter, alpha = 1.695 / sigma, a causal and an anti-causal pass per axis started
# at their steady state on the edge pixel) at sigma = radius x the pipe's pixel scale, then
# maps L through a contrast curve and a brightness curve (65536-entry tables below 100, a power
# law fitted to them above) and scales a and b by the saturation, clipped to +-128.
#
# Here each axis' filter is a matrix: the two passes are a convolution of the signal extended
# by its edge values with their impulse responses, known in closed form (a double pole at
# exp(-alpha)), and the edge columns gather the responses' tails. A blur is then two matrix
# products, differentiable in the image and in sigma; the curves are read where darktable
# reads its tables, with the slopes of the continuous functions it tabulates. Measured against darktable 5.0.1's tap-outs: 130-180
# dB on a and b, 106-134 dB on L (the tables' steps).

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


def gaussian(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """darktable's recursive Gaussian of (B, C, H, W) ``x`` at each image's ``sigma`` (B,),
    unbounded (no clipping of the values)."""
    h, w = x.shape[-2:]
    out = []
    for image, s in zip(x, sigma):
        rows, cols = deriche_matrix(h, s).to(x.dtype), deriche_matrix(w, s).to(x.dtype)
        out.append(rows @ image @ cols.T)
    return torch.stack(out)


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


def lowpass(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, pattern: object = None) -> torch.Tensor:
    """darktable's lowpass of Lab ``x`` (B, 3, H, W): its radius a length at full size."""
    return lowpass_lab(x, sliders["radius"], sliders["contrast"], sliders["brightness"], sliders["saturation"], scale)


SHARPEN_MAX_RADIUS = 12     # px: darktable's sharpen cuts its kernel there (measured at full size)


def sharpen(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, pattern: object = None) -> torch.Tensor:
    """darktable's sharpen of Lab ``x`` (B, 3, H, W): an unsharp mask of L, its Gaussian's
    sigma the radius times the pixel ``scale``, cut at ceil(2.5 sigma) px (at most
    SHARPEN_MAX_RADIUS) and normalised; the detail over the threshold, times the amount, is
    added to L inside a border as wide as the kernel's reach, which stays as it is."""
    out = []
    for image, sigma, amount, threshold in zip(x, sliders["radius"] * scale, sliders["amount"], sliders["threshold"]):
        reach = min(SHARPEN_MAX_RADIUS, math.ceil(2.5 * float(sigma.detach())))
        h, w = image.shape[-2:]
        if reach < 1 or h <= 2 * reach or w <= 2 * reach:
            out.append(image)
            continue
        taps = torch.arange(-reach, reach + 1, dtype=torch.float64, device=x.device)
        kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
        kernel = (kernel / kernel.sum()).to(x.dtype)
        L = image[:1][None]                                                   # (1, 1, H, W)
        blurred = F.conv2d(F.conv2d(L, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
        inner = L[..., reach:h - reach, reach:w - reach]
        diff = inner - blurred
        detail = torch.sign(diff) * (diff.abs() - threshold.to(x.dtype)).clamp_min(0)
        sharpened = L + F.pad(detail * amount.to(x.dtype), (reach, reach, reach, reach))
        out.append(torch.cat([sharpened[0], image[1:]]))
    return torch.stack(out)


TEMPERATURE_DEFAULTS = {"red": 2.0, "green": 1.0, "blue": 1.6}


def temperature(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor,
                pattern: str | Sequence[str] = "RGGB") -> torch.Tensor:
    """darktable's white balance of the raw mosaic ``x`` (B, 1, H, W): each photosite times
    its colour's multiplier."""
    gains = torch.stack([sliders["red"], sliders["green"], sliders["green"], sliders["blue"]], 1)   # R G1 G2 B
    return unpack(pack(x, pattern) * gains.to(x.dtype)[:, :, None, None], pattern)


def highlights(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, pattern: object = None) -> torch.Tensor:
    """darktable's highlight reconstruction in clip mode: the mosaic clipped at ``clip``
    (white-balanced units: times the smallest multiplier, 1 at the type's white balance)."""
    return torch.minimum(x, sliders["clip"].to(x.dtype).view(-1, 1, 1, 1))


# darktable's processed maximum at the demosaic type's renders: the largest of the white
# balance multipliers its samples hold, the temperature type's defaults (red 2) with the
# sampled green (0.5..2); it sets RCD's epsilons (measured: the 120 dB cap with it, 92-120
# dB with 1)
DEMOSAIC_PROCESSED_MAXIMUM = 2.0


def demosaic(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, pattern: str | Sequence[str] = "RGGB"
             ) -> torch.Tensor:
    """darktable's RCD demosaic of the white-balanced mosaic ``x`` (B, 1, H, W) -> camera RGB."""
    return rcd_demosaic(x, pattern, DEMOSAIC_PROCESSED_MAXIMUM)


def colorout(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, pattern: object = None) -> torch.Tensor:
    """darktable's output colour profile (sRGB) of Lab ``x`` (B, 3, H, W)."""
    return ColorOut()(x, sliders)


@dataclass(frozen=True)
class Prior:
    operation: Callable[[torch.Tensor, Sliders, torch.Tensor, object], torch.Tensor]
    defaults: Mapping[str, float] = field(default_factory=dict)   # darktable's, of the sliders a proxy may leave out
    steps: tuple[str, ...] = ()     # the sliders whose effect is a step function
    # computed on the whole image only (darktable's operation depends on all of it, or on
    # the image's edges); False: pixel by pixel, the same on a crop
    whole_image: bool = True

    def __call__(self, x: torch.Tensor, sliders: Sliders, scale: torch.Tensor,
                 pattern: str | Sequence[str] = "RGGB") -> torch.Tensor:
        """The operation on ``x`` at ``sliders``, a slider not given at its default."""
        given = {name: torch.full((len(x),), value, dtype=torch.float64, device=x.device)
                 for name, value in self.defaults.items()}
        return self.operation(x, {**given, **sliders}, scale, pattern)


PRIORS = {"shadhi": Prior(shadhi, SHADHI_DEFAULTS, steps=("radius",)),
          "hazeremoval": Prior(hazeremoval, HAZEREMOVAL_DEFAULTS),
          "sharpen": Prior(sharpen, {"radius": 2.0, "amount": 0.5, "threshold": 0.5}),
          "lowpass": Prior(lowpass, {"radius": 10.0, "contrast": 1.0, "brightness": 0.0, "saturation": 1.0}),
          "temperature": Prior(temperature, TEMPERATURE_DEFAULTS, whole_image=False),
          "highlights": Prior(highlights, {"clip": 1.0}, whole_image=False),
          "demosaic": Prior(demosaic),
          "colorout": Prior(colorout, whole_image=False)}
