"""Training losses, chosen per proxy type in Constants.PROXY_LOSS as sums of terms.

A loss spec is ``term[+weight*term...]``, e.g. ``l1`` or ``l1+0.5*grad``:
``mse``, ``l1``, ``grad``: the L1 distance of horizontal and vertical finite differences
of (B, C, H, W) tensors (sharp edges matter more than their mean level), and ``logmse``: the
mean over images of their MSE in dB.
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


def log_mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean over images of 10 log10 of each image's MSE (a floor of 1e-12 keeps an exact
    image finite): minus the mean PSNR the proxies are measured by, less its peaks, so an
    image the module barely changes weighs as much as one it changes a lot, where ``mse``
    would have the proxy's small errors there go unseen."""
    mse = (pred - target).square().flatten(1).mean(1)
    return 10 * torch.log10(mse + 1e-12).mean()


TERMS: dict[str, Loss] = {"mse": F.mse_loss, "l1": F.l1_loss, "grad": gradient_loss, "logmse": log_mse_loss}


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
