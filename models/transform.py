"""The network domain: a range-keeping transform of scene-referred values.

darktable's tap-outs are unclamped floats: exposure +4 EV or white-balance multipliers push
values far above 1, and a black-level correction makes some negative. Networks see

    t(x) = asinh(x / s)          and produce   x = s * sinh(t)

with ``s`` = ``scale`` (per proxy type; 0.01 for [0, 1]-ish data): linear near zero (so
negative values and noise pass unharmed), logarithmic for x >> s (so a gain is a near-constant
shift and 100x the range costs ~4.6 units, not 100), smooth, monotonic and exactly invertible,
with no clamping anywhere. Metrics are always computed on the inverse-transformed values.
"""
from __future__ import annotations

import torch


def to_network(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.asinh(x / scale)


def from_network(t: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.sinh(t) * scale
