"""Training losses, chosen per proxy type in Constants.PROXY_LOSS as sums of terms.

A loss spec is ``term[+weight*term...]``, e.g. ``l1`` or ``l1+0.5*grad``:
``mse``, ``l1``, and ``grad``: the L1 distance of horizontal and vertical finite differences
of (B, C, H, W) tensors (sharp edges matter more than their mean level).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from utils.errors import UserError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gradient_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between spatial gradients of NCHW tensors (W is the last axis, H the one before)."""
    dx = lambda a: a[..., :, 1:] - a[..., :, :-1]   # noqa: E731  (B, C, H, W-1)
    dy = lambda a: a[..., 1:, :] - a[..., :-1, :]   # noqa: E731  (B, C, H-1, W)
    return F.l1_loss(dx(pred), dx(target)) + F.l1_loss(dy(pred), dy(target))


TERMS: dict[str, Loss] = {"mse": F.mse_loss, "l1": F.l1_loss, "grad": gradient_loss}


def parse_loss(spec: str) -> Loss:
    terms = []
    for part in spec.replace(" ", "").split("+"):
        weight, _, name = part.rpartition("*")
        if name not in TERMS:
            raise UserError(f"unknown loss term {name!r} in {spec!r}; use {', '.join(TERMS)}")
        try:
            terms.append((float(weight) if weight else 1.0, TERMS[name]))
        except ValueError:
            raise UserError(f"bad loss weight {weight!r} in {spec!r}") from None

    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * term(pred, target) for w, term in terms)

    return loss
