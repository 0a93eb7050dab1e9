"""darktable's own operations, where they are known exactly, for a proxy's network to start
from (``ModelSpec.prior``): the network then takes the prior's output for its input and
learns what is left (a new network is the identity, so a new proxy is the prior).

A prior's operation maps a module's input tap-out ``x`` (B, C, H, W), in the module's own
values, its slider values by name ((B,) float64 each; a slider the proxy does not take is at
darktable's default) and each image's pixel scale (B,) float64 to darktable's output;
differentiable in ``x`` and in the sliders whose effect is continuous (``steps`` name those
that act in steps: slider regression searches them, ``Proxy.steps``).

- ``shadhi``: shadows and highlights, bilateral algorithm (shadhi.c at the fields
  utils.proxies.registry.SHADHI pins): darktable's bilateral base of L (models.darktable.bilateral)
  at the radius times the pixel scale, inverted, overlaid on the image. Measured 147-158 dB
  against darktable 5.0.1 on the held-out samples (float rounding).
- ``hazeremoval``: haze removal (models.darktable.dehaze): the dark channel's ambient light as
  darktable selects it, the closed transmission map through darktable's guided filter; its
  windows are pixels of the image it gets, at any pixel scale. Measured at the 120 dB cap
  against darktable 5.0.1 on every one of 140 samples (8 images).
- ``lowpass``: darktable's recursive Gaussian of Lab at the radius times the pixel scale,
  its contrast and brightness tables on L, saturation on a and b (models.darktable.lowpass); measured
  98-127 dB against darktable 5.0.1 on its held-out samples (its tables' steps).
- ``bilat``: local contrast, darktable's local laplacian pyramid of L with its fast
  exponential (models.darktable.locallaplacian); 141-148 dB on the 140 samples of its table
  dataset.
- ``toneequal``: the tone equalizer's guided-filter mask and its radial-basis gain curve, in
  the order darktable's compiled least squares sums (models.darktable.toneequal); 122.4-160 dB
  on the 140 samples of its table dataset.
- ``censorize``: darktable's recursive Gaussian of RGB at radius_1 times the pixel scale,
  each pass reading its input clipped at 0 (models.darktable.lowpass); the proxy then
  pixelates (models.blocks.pixelate). The 120 dB cap on all 140 samples of its table dataset.
- ``sharpen``: darktable's unsharp mask of L (:func:`sharpen`); measured 142-210 dB on its
  held-out samples, 149 dB at full size where the kernel is cut at 12 px.
- ``temperature``: white balance on the raw mosaic, each photosite times its colour's
  multiplier (the greens both by ``green``); ``highlights``: its clip mode, the mosaic
  clipped at ``clip``; ``demosaic``: darktable's RCD (models.darktable.demosaic); ``colorout``:
  Lab to display sRGB (models.fixed.ColorOut). Measured on the types' held-out samples
  against darktable 5.0.1: the 120 dB cap for temperature and demosaic, 78-120 dB for
  highlights, 111-120 dB for colorout (darktable's float rounding).
- ``bloom``: the lightness over the threshold, darktable's box blur of it (8 passes at a whole
  pixel radius from the size and the pixel scale), screened over L
  (models.darktable.boxblur); the 120 dB cap on all 140 samples of its table dataset.
- ``soften``: its brightened copy (HSL saturation and lightness), box-blurred at a radius from
  the size and the full image's diagonal, mixed in (models.darktable.boxblur); 114-120 dB on
  the 140 samples of its table dataset (darktable's float32 sums at radius 1).
- ``colorbalance``: the legacy colour balance's slope, offset and power of ProPhoto RGB, with
  darktable's SSE approximations (models.darktable.colorbalance); the 120 dB cap on all 140
  samples of its table dataset.
- ``colorin``: camera RGB -> XYZ (D50) by the image's embedded matrix as darktable builds its
  profile from a DNG (models.colorspace.camera_to_xyz_d50), then Lab; 77.7-97.7 dB on the
  held-out built-in DNGs, where the best single matrix for all cameras reaches 37.4-43.5.
- ``graduatednd``: the graduated filter's linear ramp along its rotated line (darktable's
  coordinates from pixel corners across the image's extent), density through its own
  approximation of 2^x; the 120 dB cap on all 140 samples of its table dataset.
- ``denoiseprofile``: wavelets, Y0U0V0, the white-balance-adaptive transform and the generic
  profile (models.darktable.denoise), its white balance and full size from the planes; the
  120 dB cap on all 140 samples of its table dataset.
- ``vignette``: the vignette's weight from each pixel's distance to the centre (the coordinate
  planes), brightness then saturation; measured 144-167 dB on its held-out samples.

Mosaic priors take the CFA ``pattern`` of each image (models.mosaic), positional ones the
image's planes instead (its coordinates, or colorin's camera matrix); the others ignore it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from models.blocks import depthwise_conv, values_on_host
from models.colorspace import profile_to_lab
from models.darktable.bilateral import bilateral_base
from models.darktable.boxblur import bloom_lab, soften_rgb
from models.darktable.colorbalance import colorbalance_lab
from models.darktable.dehaze import hazeremoval as dehaze
from models.darktable.demosaic import rcd_demosaic
from models.darktable.denoise import denoise_rgb, max_scales
from models.darktable.locallaplacian import local_contrast_lab
from models.darktable.lowpass import gaussian, lowpass_lab
from models.darktable.toneequal import toneequal_rgb
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
def lowpass(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, pattern: object = None) -> torch.Tensor:
    """darktable's lowpass of Lab ``x`` (B, 3, H, W): its radius a length at full size."""
    return lowpass_lab(x, sliders["radius"], sliders["contrast"], sliders["brightness"], sliders["saturation"], scale)


def bilat(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, pattern: object = None) -> torch.Tensor:
    """darktable's local contrast of Lab ``x`` (B, 3, H, W), local laplacian mode, on the
    buffer it gets (models.darktable.locallaplacian): the pixel scale plays no part."""
    return local_contrast_lab(x, sliders["detail"], sliders["sigma_r"], sliders["sigma_s"], sliders["midtone"])


TONEEQUAL_BANDS = ("blacks", "shadows", "midtones", "highlights", "whites")   # its sliders, in EV


def toneequal(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, pattern: object = None) -> torch.Tensor:
    """darktable's tone equalizer of linear RGB ``x`` (B, 3, H, W), whole images: its filter's
    radius follows the image's long side (models.darktable.toneequal)."""
    gains = torch.stack([sliders[name] for name in TONEEQUAL_BANDS], 1)
    return toneequal_rgb(x, gains)


def censorize(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, pattern: object = None) -> torch.Tensor:
    """darktable's censorize blur of RGB ``x`` (B, 3, H, W): its recursive Gaussian at sigma =
    radius_1 x the pixel ``scale``, each pass reading its input clipped at 0; none at radius 0.
    The pixelation that follows is the proxy's (``ModelSpec.pixelate``, models.blocks.pixelate)."""
    sigma = sliders["radius_1"] * scale
    blurs = sigma > 0          # blurred whatever it says: no value read back to the host
    blurred = gaussian(x, torch.where(blurs, sigma, torch.ones_like(sigma)), floor=0.0)
    return torch.where(blurs[:, None, None, None], blurred, x)


SHARPEN_MAX_RADIUS = 12     # px: darktable's sharpen cuts its kernel there (measured at full size)


def sharpen(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, pattern: object = None) -> torch.Tensor:
    """darktable's sharpen of Lab ``x`` (B, 3, H, W): an unsharp mask of L, its Gaussian's
    sigma the radius times the pixel ``scale``, cut at ceil(2.5 sigma) px (at most
    SHARPEN_MAX_RADIUS) and normalised; the detail over the threshold, times the amount, is
    added to L inside a border as wide as the kernel's reach, which stays as it is (the whole
    image, where the kernel is under 1 px or does not fit in it).

    Off the CPU every image's kernel spans SHARPEN_MAX_RADIUS px, zero beyond its reach, so
    that no size follows a value and the pass can be captured as a CUDA graph (models.graphs);
    on the CPU, where reading a value costs nothing, it spans the batch's longest reach (the
    convolutions' gradient took a third longer at 12 px). The zero taps read the zero
    padding, and the border they would blur wrongly stays as it is."""
    b, _, h, w = x.shape
    sigma = sliders["radius"] * scale                                          # (B,) px
    reach = torch.ceil(2.5 * sigma.detach()).clamp(max=SHARPEN_MAX_RADIUS)
    span = int(reach.max().clamp(min=0)) if values_on_host(x) else SHARPEN_MAX_RADIUS
    taps = torch.arange(-span, span + 1, dtype=torch.float64, device=x.device)
    kernel = torch.where(taps.abs() <= reach[:, None], torch.exp(-taps ** 2 / (2 * sigma[:, None] ** 2)),
                         torch.zeros_like(taps))
    kernel = (kernel / kernel.sum(1, keepdim=True)).to(x.dtype)                # (B, taps)
    L = F.pad(x[:, :1], (span,) * 4).view(1, b, h + 2 * span, -1)
    blurred = depthwise_conv(depthwise_conv(L, kernel.view(b, 1, 1, -1)), kernel.view(b, 1, -1, 1)).view(b, 1, h, w)
    diff = x[:, :1] - blurred
    detail = torch.sign(diff) * (diff.abs() - sliders["threshold"].to(x.dtype).view(-1, 1, 1, 1)).clamp_min(0)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    edge = torch.minimum(torch.minimum(rows, h - 1 - rows)[:, None], torch.minimum(cols, w - 1 - cols)[None])
    fits = (reach >= 1) & (h > 2 * reach) & (w > 2 * reach)
    inside = (edge >= reach.view(-1, 1, 1, 1)) & fits.view(-1, 1, 1, 1)       # (B, 1, H, W)
    added = torch.where(inside, detail * sliders["amount"].to(x.dtype).view(-1, 1, 1, 1), torch.zeros_like(detail))
    return torch.cat([x[:, :1] + added, x[:, 1:]], 1)


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


BLOOM_DEFAULTS = {"size": 20.0, "threshold": 90.0, "strength": 25.0}


def bloom(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, pattern: object = None) -> torch.Tensor:
    """darktable's bloom of Lab ``x`` (B, 3, H, W): the lightness over the threshold,
    box-blurred at a radius that follows the size and the pixel ``scale``, screened over L
    (models.darktable.boxblur)."""
    return bloom_lab(x, sliders["size"], sliders["threshold"], sliders["strength"], scale)


SOFTEN_DEFAULTS = {"size": 50.0, "saturation": 100.0, "brightness": 0.33, "amount": 50.0}


def full_sizes(planes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Each whole image's full size (B, 2) (W, H), whole numbers in float64 on the planes'
    device, from its coordinate planes (B, >= 4, H, W) and pixel ``scale`` (B,): the long side
    its pixels over the scale, the other by the image's shape the planes span
    (utils.data.tapouts.coordinate_planes); nothing is read back to the host."""
    h, w = planes.shape[-2:]
    p = planes[:, :4].double().flatten(2)                                 # (B, 4, N)
    # x then y: the planes in half the longest side over those in half this side, where largest
    at = p[:, :2].abs().argmax(2, keepdim=True)                           # (B, 2, 1)
    shape = (p[:, 2:4].gather(2, at) / p[:, :2].gather(2, at))[..., 0]   # (B, 2)
    return torch.round(max(h, w) / scale.double()[:, None] * shape)


def soften(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """darktable's soften of linear RGB ``x`` (B, 3, H, W), a whole image with its coordinate
    planes: a brightened copy, box-blurred at a share of the full image's diagonal, mixed in
    (models.darktable.boxblur)."""
    return soften_rgb(x, sliders["size"], sliders["saturation"], sliders["brightness"], sliders["amount"], scale,
                      full_sizes(planes, scale))


COLORBALANCE_DEFAULTS = {"saturation": 1.0, "contrast": 1.0, "lift_0": 1.0, "gamma_0": 1.0, "gain_0": 1.0}


def colorbalance(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, pattern: object = None) -> torch.Tensor:
    """darktable's colour balance of Lab ``x`` (B, 3, H, W): slope, offset and power
    (models.darktable.colorbalance)."""
    return colorbalance_lab(x, *(sliders[k] for k in ("saturation", "contrast", "lift_0", "gamma_0", "gain_0")))


def colorin(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """darktable's input colour profile of white-balanced camera RGB ``x`` (B, 3, H, W) by
    each image's embedded matrix, which its planes carry (utils.data.tapouts.MATRIX_PLANES):
    to XYZ (D50), then Lab."""
    return profile_to_lab(planes[:, :9, 0, 0].view(-1, 3, 3), x.double()).to(x.dtype)


def pixel_corners(px: torch.Tensor, py: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair of coordinate planes (B, H, W) (utils.data.tapouts.coordinate_planes: pixel
    centres) moved half a pixel back along their axes, float64: where darktable's vignette and
    graduated filter measure each pixel, at its corner (an axis of one pixel stays)."""
    px, py = px.double(), py.double()
    step_x = px[:, :1, 1:2] - px[:, :1, :1] if px.shape[-1] > 1 else torch.zeros_like(px[:, :1, :1])
    step_y = py[:, 1:2, :1] - py[:, :1, :1] if py.shape[-2] > 1 else torch.zeros_like(py[:, :1, :1])
    return px - step_x / 2, py - step_y / 2


GRADUATEDND_DEFAULTS = {"density": 1.0, "hardness": 0.0, "rotation": 0.0, "offset": 50.0}
LN2_FLOAT32 = 0.693147182464599609375       # darktable's DT_M_LN2f
THIRD_FLOAT32 = 0.3333333134651184082031     # its 0.333333333f


def _graduatednd_exp2(e: torch.Tensor) -> torch.Tensor:
    """graduatednd's 2^e: the 4th-order Taylor series of exp(ln 2 e / 8), to the 8th power."""
    t = LN2_FLOAT32 * (e / 8)
    d1 = t * t * 0.5
    d2 = d1 * t * THIRD_FLOAT32
    d = 1 + t + d1 + d2 + d2 * t * 0.25
    return ((d * d) ** 2) ** 2


def graduatednd(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """darktable's graduated density of RGB ``x`` (B, 3, H, W), a whole image with its
    coordinate planes, neutral (hue and saturation 0: the filter's grey is 0.5): along the
    rotated line, a linear ramp L whose slope grows with the hardness; density d > 0 divides
    by 0.5 + 0.5 2^(d clip(0.5 + L, 0, 1)), d <= 0 multiplies by 0.5 + 0.5 2^(-d clip(0.5 - L,
    0, 1)), then negatives go to 0. darktable measures pixels from their corners, its
    coordinates -1..1 across the image's extent (E_x, E_y: the planes' steps are 2 / E)."""
    cx, cy = pixel_corners(planes[:, 0], planes[:, 1])
    steps = planes[:, :2, 1, 1].double() - planes[:, :2, 0, 0].double()   # 2 / E_x, 2 / E_y
    ratio = torch.sqrt(1 + (steps[:, 1] / steps[:, 0]) ** 2).view(-1, 1, 1)   # half the diagonal over half the height
    density, hardness, rotation, offset = (sliders[k].view(-1, 1, 1) for k in GRADUATEDND_DEFAULTS)
    steepness = 0.5 / (ratio * (0.5 - 0.45 * hardness / 100))
    angle = -rotation / 180 * math.pi
    length = steepness * (torch.sin(angle) * cx - torch.cos(angle) * cy - 1 + offset / 50)
    darker = 0.5 + 0.5 * _graduatednd_exp2(density * (0.5 + length).clamp(0, 1))
    lighter = 0.5 + 0.5 * _graduatednd_exp2(-density * (0.5 - length).clamp(0, 1))
    v = x.double()
    out = torch.where((density > 0)[:, None], v / darker[:, None], v * lighter[:, None])
    return out.clamp_min(0).to(x.dtype)


DENOISEPROFILE_DEFAULTS = {"strength": 1.0, "shadows": 1.0}


def denoiseprofile(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """darktable's profiled denoise of camera RGB ``x`` (B, 3, H, W), a whole image whose
    planes carry its coordinates and scale (its full size: the number of wavelet scales) and
    then its white balance (utils.data.tapouts.WB_PLANES) (models.darktable.denoise). On a
    CPU, where reading a value back costs nothing, each image runs its own number of scales;
    elsewhere the batch runs as one pass, each image's number on the device (capturable)."""
    scales, wb = max_scales(full_sizes(planes[:, :4], scale), scale), planes[:, 5:8, 0, 0]
    if not values_on_host(x):
        return denoise_rgb(x, sliders["strength"], sliders["shadows"], scale, wb, scales)
    return torch.cat([denoise_rgb(x[k:k + 1], sliders["strength"][k:k + 1], sliders["shadows"][k:k + 1],
                                  scale[k:k + 1], wb[k:k + 1], n) for k, n in enumerate(scales.tolist())])


VIGNETTE_DEFAULTS = {"scale": 80.0, "falloff_scale": 50.0, "brightness": -0.5, "saturation": -0.5}


def vignette(x: torch.Tensor, sliders: Sliders, scale: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """darktable's vignetting of RGB ``x`` (B, 3, H, W) at the fields the registry pins
    (centred, a circle, no dithering, unbounded), where ``planes`` (B, >= 4, H, W) are the
    image's coordinate planes (utils.data.tapouts.coordinate_planes, spanning its full size):
    darktable measures from pixel corners, half a pixel before their centres. The weight
    rises linearly from 0 at ``scale`` % to 1 at ``scale + falloff_scale`` % of half the
    longest side; brightness below 0 darkens (x (1 + w b)), above 0 lifts (x + w b), then
    saturation moves each channel from the pixel's mean (x - (mean - x) w s). (darktable's
    least fall-off, 100 / the short side in pixels, is below the slider's range for images
    over 20 px.)"""
    distance = torch.hypot(*pixel_corners(planes[:, 2], planes[:, 3]))[:, None]   # (B, 1, H, W)
    start, width = (sliders[k][:, None, None, None] / 100 for k in ("scale", "falloff_scale"))
    weight = ((distance - start) / width).clamp(0, 1)
    brightness, saturation = (sliders[k][:, None, None, None] for k in ("brightness", "saturation"))
    v = x.double()
    v = torch.where(brightness < 0, v * (1 + weight * brightness), v + weight * brightness)
    v = v - (v.mean(1, keepdim=True) - v) * weight * saturation
    return v.to(x.dtype)


@dataclass(frozen=True)
class Prior:
    operation: Callable[[torch.Tensor, Sliders, torch.Tensor, object], torch.Tensor]
    defaults: Mapping[str, float] = field(default_factory=dict)   # darktable's, of the sliders a proxy may leave out
    steps: tuple[str, ...] = ()     # the sliders whose effect is a step function
    # computed on the whole image only (darktable's operation depends on all of it, or on
    # the image's edges), or fitted on it (a crop says too little: the vignette's centre
    # does not move with its sliders); False: pixel by pixel, the same on a crop
    whole_image: bool = True
    # depends on where a pixel lies in its image, or on more of the image than its pixels:
    # the operation takes the image's planes (coordinates, or colorin's camera matrix) where
    # the others take the CFA pattern
    positional: bool = False

    def __call__(self, x: torch.Tensor, sliders: Sliders, scale: torch.Tensor,
                 pattern: str | Sequence[str] = "RGGB", planes: torch.Tensor | None = None) -> torch.Tensor:
        """The operation on ``x`` at ``sliders``, a slider not given at its default."""
        given = {name: torch.full((len(x),), value, dtype=torch.float64, device=x.device)
                 for name, value in self.defaults.items()}
        if self.positional and (planes is None or planes.shape[1] < 4):
            raise ValueError("a positional prior needs the image's planes (4 coordinates, or a camera matrix's 9)")
        return self.operation(x, {**given, **sliders}, scale, planes if self.positional else pattern)


PRIORS = {"shadhi": Prior(shadhi, SHADHI_DEFAULTS, steps=("radius",)),
          "hazeremoval": Prior(hazeremoval, HAZEREMOVAL_DEFAULTS),
          "sharpen": Prior(sharpen, {"radius": 2.0, "amount": 0.5, "threshold": 0.5}),
          "bilat": Prior(bilat, {"detail": 0.25, "sigma_r": 0.5, "sigma_s": 0.5, "midtone": 0.5}),
          "toneequal": Prior(toneequal, dict.fromkeys(TONEEQUAL_BANDS, 0.0)),
          "censorize": Prior(censorize, {"radius_1": 0.0, "pixelate": 0.0}),
          "lowpass": Prior(lowpass, {"radius": 10.0, "contrast": 1.0, "brightness": 0.0, "saturation": 1.0}),
          "temperature": Prior(temperature, TEMPERATURE_DEFAULTS, whole_image=False),
          "highlights": Prior(highlights, {"clip": 1.0}, whole_image=False),
          "demosaic": Prior(demosaic),
          "colorout": Prior(colorout, whole_image=False),
          "bloom": Prior(bloom, BLOOM_DEFAULTS, steps=("size", "threshold")),
          "soften": Prior(soften, SOFTEN_DEFAULTS, steps=("size",), positional=True),
          "colorbalance": Prior(colorbalance, COLORBALANCE_DEFAULTS, whole_image=False),
          "colorin": Prior(colorin, whole_image=False, positional=True),
          "graduatednd": Prior(graduatednd, GRADUATEDND_DEFAULTS, positional=True),
          "denoiseprofile": Prior(denoiseprofile, DENOISEPROFILE_DEFAULTS, positional=True),
          "vignette": Prior(vignette, VIGNETTE_DEFAULTS, whole_image=True, positional=True)}
