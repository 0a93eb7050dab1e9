"""Slider-conditioned proxy networks for darktable modules.

All families share one contract: ``forward(x, sliders)`` takes the module's input tap-out
``x`` (B, C_in, H, W), in the network domain (see ``models.transform``), and the sliders
normalised to [0, 1] (B, S); it returns (B, C_out, H, W) in the same domain, as the input
plus a learned residual (a module near identity starts near identity).

- ``unet``: a UNet in the spirit of Learning-to-See-in-the-Dark, the sliders entering as
  constant planes at the input and again after every downsampling;
- ``pointwise``: a stack of 1x1 convolutions (a per-pixel MLP), as Neural Photo-Finishing uses
  for pointwise blocks: for modules that act pixel by pixel (exposure, colour). New proxies
  use smooth SiLU activations (``ModelSpec.activation``): on an exposure-like law, the same
  9000 steps reach 53.8 dB with SiLU against 41-47 dB with LeakyReLU, whose piecewise-linear
  fit of a smooth curve is what limits it; checkpoints without the field keep LeakyReLU;
- ``neighbourhood``: a stack of 3x3 convolutions, for modules with a small spatial support;
- ``multiscale``: fixed Gaussian blurs at two scales per octave, mixed by weights the sliders
  give, then a slider-conditioned per-pixel MLP (``models.multiscale``): for modules that
  blur at a size set by a slider (lowpass, soften, bloom, ...).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import ConvBlock, ConvStack, slider_planes
from models.multiscale import SliderMultiscale

# widths of the UNet levels; (width, depth) of the convolution stacks
UNET_SIZES = {"tiny": (8, 16), "small": (16, 32, 64), "base": (32, 64, 128, 256),
              "large": (32, 64, 128, 256, 512)}
STACK_SIZES = {"tiny": (8, 2), "small": (32, 3), "base": (64, 4), "large": (128, 6)}
# (hidden width, learned channels to blur, mixes, pyramid levels) of the multiscale family
MULTISCALE_SIZES = {"tiny": (8, 2, 1, 2), "small": (16, 4, 2, 6), "base": (32, 4, 2, 7),
                    "large": (64, 8, 3, 8)}
FAMILIES = ("unet", "pointwise", "neighbourhood", "multiscale")
ACTIVATIONS = {"leaky": lambda: nn.LeakyReLU(0.2, inplace=True), "silu": nn.SiLU}
# the activation new proxies of a family are trained with (older checkpoints name theirs)
NEW_ACTIVATION = {"pointwise": "silu"}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a proxy network (stored in every checkpoint)."""

    family: str         # one of FAMILIES
    size: str           # key of UNET_SIZES / STACK_SIZES / MULTISCALE_SIZES
    in_channels: int    # channels the network sees (4 packed mosaic planes, 12 for demosaic)
    out_channels: int
    n_sliders: int
    layout: str = "rgb"  # the proxy's tap-out layout (utils.proxies.registry.LAYOUTS; models.mosaic)
    # planes after the image channels that are not image values (a positional proxy type's
    # pixel coordinates, utils.data.tapouts.coordinate_planes): network input, not part of the residual
    extra_channels: int = 0

    activation: str = "leaky"   # of the pointwise MLP: "leaky" (LeakyReLU 0.2) or "silu"

    def to_dict(self) -> dict:
        return asdict(self)


class SliderUNet(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        widths, s = UNET_SIZES[spec.size], spec.n_sliders
        self.down = nn.ModuleList()
        cin = spec.in_channels + spec.extra_channels
        for w in widths:
            self.down.append(ConvBlock(cin + s, w))
            cin = w
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w_hi, w_lo in zip(reversed(widths[:-1]), reversed(widths[1:])):
            self.up.append(nn.ConvTranspose2d(w_lo, w_hi, 2, stride=2))
            self.merge.append(ConvBlock(2 * w_hi, w_hi))
        self.head = nn.Conv2d(widths[0], spec.out_channels, 1)
        self.multiple = 2 ** (len(widths) - 1)
        self.image_channels = spec.in_channels

    def forward(self, x: torch.Tensor, sliders: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad = (0, -w % self.multiple, 0, -h % self.multiple)
        y = F.pad(x, pad, mode="replicate") if any(pad) else x          # (B, C, H', W')
        skips = []
        for i, block in enumerate(self.down):
            if i:
                y = F.max_pool2d(y, 2)                                  # (B, C, H/2^i, W/2^i)
            y = block(torch.cat([y, slider_planes(sliders, y)], 1))
            skips.append(y)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            y = merge(torch.cat([up(y), skip], 1))
        y = self.head(y)[..., :h, :w]                                   # (B, C_out, H, W)
        return _residual(x[:, :self.image_channels], y)


class SliderConvStack(nn.Module):
    """3x3 convolutions over [x, slider planes] (the neighbourhood family)."""

    def __init__(self, spec: ModelSpec, kernel: int):
        super().__init__()
        width, depth = STACK_SIZES[spec.size]
        self.net = ConvStack(spec.in_channels + spec.extra_channels + spec.n_sliders,
                             spec.out_channels, width, depth, kernel)
        self.image_channels = spec.in_channels

    def forward(self, x: torch.Tensor, sliders: torch.Tensor) -> torch.Tensor:
        y = self.net(torch.cat([x, slider_planes(sliders, x)], 1))      # (B, C_out, H, W)
        return _residual(x[:, :self.image_channels], y)


class SliderPointwise(nn.Module):
    """A per-pixel MLP over [x, sliders]: 1x1 convolutions, run as Linear layers on a
    (pixels, channels) table, which is several times faster on a CPU."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        width, depth = STACK_SIZES[spec.size]
        sizes = ([spec.in_channels + spec.extra_channels + spec.n_sliders] + [width] * (depth - 1)
                 + [spec.out_channels])
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < depth - 1:
                layers.append(ACTIVATIONS[spec.activation]())
        self.mlp = nn.Sequential(*layers)
        self.image_channels = spec.in_channels

    def forward(self, x: torch.Tensor, sliders: torch.Tensor) -> torch.Tensor:
        table = torch.cat([x, slider_planes(sliders, x)], 1).permute(0, 2, 3, 1)   # (B, H, W, C+S)
        y = self.mlp(table).permute(0, 3, 1, 2)                                 # (B, C_out, H, W)
        return _residual(x[:, :self.image_channels], y)


def _residual(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Global residual: input plus the network's output (channels broadcast for 1 -> 3)."""
    return y + (x if x.shape[1] == y.shape[1] else x.mean(1, keepdim=True))


def build_model(spec: ModelSpec) -> nn.Module:
    if spec.family == "unet":
        return SliderUNet(spec)
    if spec.family == "pointwise":
        return SliderPointwise(spec)
    if spec.family == "neighbourhood":
        return SliderConvStack(spec, 3)
    if spec.family == "multiscale":
        return SliderMultiscale(spec.in_channels, spec.out_channels, spec.n_sliders, spec.extra_channels,
                                *MULTISCALE_SIZES[spec.size])
    raise ValueError(f"unknown model family {spec.family!r}; choose one of {FAMILIES}")
