"""Small building blocks shared by the proxy networks."""
from __future__ import annotations

import torch
from torch import nn


def slider_planes(sliders: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast normalised sliders (B, S) to constant planes (B, S, H, W) shaped like ``like``."""
    b, _, h, w = like.shape
    return sliders[:, :, None, None].to(like.dtype).expand(b, sliders.shape[1], h, w)


def and_one(sliders: torch.Tensor) -> torch.Tensor:
    """(B, S) -> (B, S + 1): the sliders and a 1, so that a head has an input when S is 0."""
    return torch.cat([sliders, sliders.new_ones(sliders.shape[0], 1)], 1)


def linear_columns(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A Linear layer applied to every column of (B, C, N): (B, C_out, N)."""
    return torch.baddbmm(layer.bias[None, :, None], layer.weight.expand(x.shape[0], -1, -1), x)


def in_pixel_slices(fn, *tables: torch.Tensor, size: int) -> torch.Tensor:
    """``fn`` of (B, C, N) pixel tables whose every column (a pixel) is computed alone, run on
    slices of ``size`` pixels and joined: the intermediates of a per-pixel network then stay
    in a CPU's caches, where on a whole image it is memory-bound (docs/performance.md)."""
    return torch.cat([fn(*parts) for parts in zip(*(t.split(size, -1) for t in tables))], -1)


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions with LeakyReLU, as in Learning-to-See-in-the-Dark's UNet."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.2, inplace=True))


class ConvStack(nn.Sequential):
    """``depth`` convolutions of kernel ``k`` with LeakyReLU between them, linear last layer."""

    def __init__(self, cin: int, cout: int, width: int, depth: int, k: int):
        layers: list[nn.Module] = []
        for i in range(depth - 1):
            layers += [nn.Conv2d(cin if i == 0 else width, width, k, padding=k // 2),
                       nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(width if depth > 1 else cin, cout, k, padding=k // 2))
        super().__init__(*layers)
