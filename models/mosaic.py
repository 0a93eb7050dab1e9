"""Bayer mosaic packing: differentiable, exact, for any of the four CFA phases.

A 2x2 Bayer pattern is named by its top-left tile, row by row: ``RGGB``, ``BGGR``, ``GRBG``
or ``GBRG``. Every one of them is RGGB seen mirrored (GRBG flipped left-right, GBRG flipped
up-down, BGGR both), so packing first mirrors the mosaic into the RGGB frame and then takes
the four photosites of every 2x2 tile as four half-resolution planes, in the canonical order

    R, G1 (the green on red's row), G2 (the green on blue's row), B.

Networks therefore always see one geometry, whatever the sensor. Unpacking undoes both steps
exactly (mirroring is its own inverse). All functions are index shuffles: exact, and
differentiable with unit gradients. Height and width must be even (crop an odd row or column
off the end first: :func:`even_crop`, which keeps the phase).

Shapes: mosaic (N, 1, H, W) <-> planes (N, 4, H/2, W/2); a demosaiced image (N, 3, H, W) <->
(N, 12, H/2, W/2) planes (pixel-shuffle order: colour major, then the 2x2 position).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# pattern -> (flip rows?, flip columns?) that turn it into RGGB
_TO_RGGB = {"RGGB": (False, False), "GRBG": (False, True), "GBRG": (True, False), "BGGR": (True, True)}
PATTERNS = tuple(_TO_RGGB)


def _patterns(pattern: str | Sequence[str], n: int) -> list[str]:
    names = [pattern] * n if isinstance(pattern, str) else list(pattern)
    if len(names) != n:
        raise ValueError(f"{len(names)} CFA patterns for a batch of {n}")
    for p in names:
        if p not in _TO_RGGB:
            raise ValueError(f"CFA pattern {p!r} is not one of {', '.join(PATTERNS)}")
    return names


def _check_even(x: torch.Tensor) -> None:
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"a mosaic needs even height and width, got {tuple(x.shape[-2:])}; "
                         "crop with even_crop first")


def to_rggb(x: torch.Tensor, pattern: str | Sequence[str]) -> torch.Tensor:
    """Mirror (N, C, H, W) images so that a ``pattern`` mosaic becomes RGGB (its own inverse).

    ``pattern``: one name for the whole batch or one per image.
    """
    _check_even(x)
    names = _patterns(pattern, x.shape[0])
    if len(set(names)) == 1:       # one pattern: one flip of the whole batch
        dims = [d for d, f in zip((-2, -1), _TO_RGGB[names[0]]) if f]
        return torch.flip(x, dims) if dims else x
    return torch.cat([to_rggb(x[i:i + 1], p) for i, p in enumerate(names)])


def pack(mosaic: torch.Tensor, pattern: str | Sequence[str]) -> torch.Tensor:
    """(N, 1, H, W) mosaic -> (N, 4, H/2, W/2) planes R, G1, G2, B (in the RGGB frame)."""
    if mosaic.shape[1] != 1:
        raise ValueError(f"pack takes a 1-channel mosaic (N, 1, H, W), got {tuple(mosaic.shape)}")
    return F.pixel_unshuffle(to_rggb(mosaic, pattern), 2)


def unpack(planes: torch.Tensor, pattern: str | Sequence[str]) -> torch.Tensor:
    """(N, 4, h, w) planes R, G1, G2, B -> (N, 1, 2h, 2w) mosaic of ``pattern``."""
    if planes.shape[1] != 4:
        raise ValueError(f"unpack takes 4 planes (N, 4, h, w), got {tuple(planes.shape)}")
    return to_rggb(F.pixel_shuffle(planes, 2), pattern)


def unpack_rgb(planes: torch.Tensor, pattern: str | Sequence[str]) -> torch.Tensor:
    """(N, 12, h, w) RGB values of each 2x2 position -> (N, 3, 2h, 2w) image, in the frame
    of the ``pattern`` mosaic the planes were packed from."""
    if planes.shape[1] != 12:
        raise ValueError(f"unpack_rgb takes 12 planes (N, 12, h, w), got {tuple(planes.shape)}")
    return to_rggb(F.pixel_shuffle(planes, 2), pattern)


def nearest_rgb(planes: torch.Tensor) -> torch.Tensor:
    """(N, 4, h, w) R, G1, G2, B -> (N, 12, h, w): a nearest-neighbour demosaic in the layout
    of :func:`unpack_rgb` (every position of a tile takes its tile's R and B; the green sites
    keep their own green, the red and blue sites the mean of both). It keeps all four planes,
    so a network refining it sees everything, and it is a good start for a residual."""
    r, g1, g2, b = planes.unbind(1)
    g = (g1 + g2) / 2
    # positions of the RGGB tile, row-major: (0,0) red, (0,1) G1, (1,0) G2, (1,1) blue
    return torch.stack([r, r, r, r, g, g1, g2, g, b, b, b, b], 1)


def even_crop(x: torch.Tensor) -> torch.Tensor:
    """Drop a last odd row and column of (..., H, W): the CFA phase at (0, 0) is kept."""
    h, w = x.shape[-2:]
    return x[..., :h // 2 * 2, :w // 2 * 2]


class Pack(nn.Module):
    """:func:`pack` as a module (pattern fixed at construction)."""

    def __init__(self, pattern: str):
        super().__init__()
        _patterns(pattern, 1)
        self.pattern = pattern

    def forward(self, mosaic: torch.Tensor) -> torch.Tensor:
        return pack(mosaic, self.pattern)


class Unpack(Pack):
    """:func:`unpack` (4 planes) or :func:`unpack_rgb` (12 planes) as a module."""

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        return (unpack_rgb if planes.shape[1] == 12 else unpack)(planes, self.pattern)


def network_channels(layout: str, in_channels: int, out_channels: int) -> tuple[int, int]:
    """Channels the network itself sees and makes for a proxy of ``layout``: mosaics are
    packed to 4 planes; demosaicing refines the 12 planes of :func:`nearest_rgb`."""
    return {"rgb": (in_channels, out_channels), "mosaic": (4, 4), "mosaic_rgb": (12, 12)}[layout]
