"""Image metrics, one definition everywhere.

PSNR is in dB with the peak taken as the target image's largest absolute value
(scene-referred images are not bounded by 1):  PSNR = 10 log10(max|target|^2 / MSE),
computed per image on the module's own values (never on the network domain), then averaged
over images. An exact match is capped at 120 dB.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PSNR_CAP_DB = 120.0


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (B,) of (B, C, H, W) tensors."""
    dims = tuple(range(1, target.ndim))
    peak2 = target.abs().amax(dim=dims).double() ** 2
    mse = ((pred.double() - target.double()) ** 2).mean(dim=dims)
    floor = peak2 * 10 ** (-PSNR_CAP_DB / 10)
    return 10 * torch.log10(peak2.clamp_min(1e-30) / torch.maximum(mse, floor.clamp_min(1e-30)))


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Per-image SSIM (B,) with a uniform window, data range = the target's peak-to-peak."""
    dims = tuple(range(1, target.ndim))
    rng = (target.amax(dim=dims) - target.amin(dim=dims)).clamp_min(1e-12)[:, None, None, None]
    x, y = pred.double() / rng, target.double() / rng
    pool = lambda a: F.avg_pool2d(a, window, stride=1)  # noqa: E731
    mx, my = pool(x), pool(y)
    vx, vy, cxy = pool(x * x) - mx ** 2, pool(y * y) - my ** 2, pool(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean(dim=dims)
