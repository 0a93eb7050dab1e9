"""Fidelity of a proxy against darktable: metrics over held-out tap-outs, and running a proxy
on a darktable render.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.darktable.demosaic import colour_map
from models.mosaic import even_crop
from models.proxy import Proxy, checkpoint_state_dict
from utils.data.images import image_size, required_traits
from utils.data.tapouts import TRAIT_PLANES, TapoutDataset, pixel_scale, to_chw, with_coordinates
from utils.evaluation.metrics import psnr, ssim


# What doing nothing is, per ProxyType.baseline: the line of the report that names it
BASELINES = {"identity": "the input taken as output",
             "bilinear": "the bilinear demosaic of the input",
             "none": "none: input and output are values of two colour spaces"}


def identity_psnr(data: TapoutDataset, baseline: str = "identity") -> float | None:
    """The baseline next to every fidelity figure: the mean PSNR of each sample's input taken
    as its output (:func:`input_as_output`); None where there is none."""
    if baseline == "none":
        return None
    scores = [input_as_output(x, y, data, i, baseline) for i, (x, y, _) in enumerate(data)]
    return float(np.mean(scores)) if scores else float("nan")


def input_as_output(x: torch.Tensor, y: torch.Tensor, data: TapoutDataset, i: int,
                    baseline: str = "identity") -> float | None:
    """The PSNR of sample ``i``'s input ``x`` of ``data`` (its image, the planes left out) taken
    as its output ``y``; a demosaic's ``bilinear`` baseline demosaics the mosaic bilinearly
    (:func:`bilinear_demosaic`); ``none`` (colorin's camera RGB to Lab, colorout's Lab to
    display RGB: two spaces' values, whose PSNR means nothing): None."""
    if baseline == "none":
        return None
    x = x[:x.shape[0] - data.extra_channels]
    if baseline == "bilinear":
        x = bilinear_demosaic(x, data.pattern(i))
    return float(psnr(x[None], y[None])[0])


def bilinear_demosaic(mosaic: torch.Tensor, pattern: str) -> torch.Tensor:
    """The simplest demosaic, (1, H, W) Bayer ``pattern`` mosaic -> (3, H, W): each photosite
    keeps its own colour; a missing one is the mean of its nearest photosites of that colour
    in the 3 x 3 around it (the two or four cardinal ones, else the four diagonal ones), of
    those inside the image."""
    colours = colour_map(pattern, *mosaic.shape[-2:], device=mosaic.device)
    masks = torch.stack([colours == k for k in range(3)])[:, None].to(mosaic.dtype)    # (3, 1, H, W)
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=mosaic.dtype,
                          device=mosaic.device)[None, None]
    sums, weights = (F.conv2d(t, kernel, padding=1) for t in (masks * mosaic, masks))
    return torch.where(masks > 0, mosaic, sums / weights)[:, 0]


@torch.no_grad()
def fidelity(proxy: Proxy, data: TapoutDataset, device: torch.device,
             baseline: str = "identity") -> dict[str, float | None]:
    """PSNR (project definition), SSIM and mean absolute error over every sample of ``data``,
    and the baseline's PSNR on them (:func:`input_as_output`; None without one)."""
    proxy.eval()
    scores = {"psnr": [], "ssim": [], "mae": [], "identity": []}
    for i, (x, y, u) in enumerate(data):
        scores["identity"].append(input_as_output(x, y, data, i, baseline))
        pred = proxy(x[None].to(device), u[None].to(device), data.pattern(i))
        y = y[None].to(device)
        scores["psnr"].append(float(psnr(pred, y)[0]))
        scores["ssim"].append(float(ssim(pred, y)[0]))
        scores["mae"].append(float((pred - y).abs().mean()))
    return {k: None if k == "identity" and baseline == "none" else float(np.mean(v)) for k, v in scores.items()}


@torch.no_grad()
def proxy_on_render(proxy: Proxy, tap_in: np.ndarray, values: Sequence[float],
                    device: torch.device, pattern: str = "RGGB", image: Path | None = None) -> torch.Tensor:
    """Run the proxy on a darktable input tap-out (H, W[, C]) of ``image`` at slider ``values``: (C, H, W).

    A mosaic needs its CFA ``pattern`` (utils.darktable.cfa.image_pattern); it is cropped to even size
    (compare with ``chw(tap_out, proxy.layout)``). A positional proxy gets its coordinate planes,
    in ``image``'s full size where known, and the pixel scale of the render when it takes one;
    an exact colorin or denoiseprofile proxy gets ``image``'s camera matrix or white balance
    (utils.data.tapouts.TRAIT_PLANES)."""
    x = chw(tap_in, proxy.layout)
    size = image_size(image) if image is not None else None
    scale = pixel_scale(tap_in.shape, size)
    kind = TRAIT_PLANES.get(proxy.spec.extra_channels)
    traits = required_traits(image, kind) if kind else None
    x = (with_coordinates(x, proxy.spec.extra_channels, scale, size, traits) if proxy.spec.extra_channels
         else x)[None].to(device)
    u = proxy.to_unit(torch.tensor([list(values)], dtype=torch.float64, device=device))
    return proxy(x, u, pattern)[0].cpu()


def chw(image: np.ndarray, layout: str = "rgb") -> torch.Tensor:
    """A tap-out (H, W[, C]) as a (C, H, W) tensor; cropped to even size for mosaic layouts."""
    image = torch.from_numpy(to_chw(image))
    return image if layout == "rgb" else even_crop(image)


def weights_digest(proxy: Proxy) -> str:
    """A short hash of the proxy's weights: results recorded for other weights are not reused."""
    digest = hashlib.sha1()
    for key, tensor in sorted(checkpoint_state_dict(proxy).items()):   # as the checkpoint holds them
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
