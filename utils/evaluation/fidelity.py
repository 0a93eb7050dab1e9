"""Fidelity of a proxy against darktable: metrics over held-out tap-outs, and running a proxy
on a darktable render.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from models.mosaic import even_crop
from models.proxy import Proxy, checkpoint_state_dict
from utils.data.images import image_size, required_traits
from utils.data.tapouts import TRAIT_PLANES, TapoutDataset, pixel_scale, to_chw, with_coordinates
from utils.evaluation.metrics import psnr, ssim


def identity_psnr(data: TapoutDataset) -> float:
    """The baseline next to every fidelity figure: the mean PSNR of each sample's input taken
    as its output (:func:`input_as_output`)."""
    scores = [input_as_output(x, y, data) for x, y, _ in data]
    return float(np.mean(scores)) if scores else float("nan")


def input_as_output(x: torch.Tensor, y: torch.Tensor, data: TapoutDataset) -> float:
    """The PSNR of a sample's input ``x`` of ``data`` (its image, the planes left out) taken
    as its output ``y``: for a mosaic, the mosaic in every channel; for a change of colour
    space, colorin's and colorout's, two spaces' values: no baseline there."""
    return float(psnr(x[None, :x.shape[0] - data.extra_channels], y[None])[0])


@torch.no_grad()
def fidelity(proxy: Proxy, data: TapoutDataset, device: torch.device) -> dict[str, float]:
    """PSNR (project definition), SSIM and mean absolute error over every sample of ``data``,
    and the identity's PSNR on them (:func:`input_as_output`)."""
    proxy.eval()
    scores = {"psnr": [], "ssim": [], "mae": [], "identity": []}
    for i, (x, y, u) in enumerate(data):
        scores["identity"].append(input_as_output(x, y, data))
        pred = proxy(x[None].to(device), u[None].to(device), data.pattern(i))
        y = y[None].to(device)
        scores["psnr"].append(float(psnr(pred, y)[0]))
        scores["ssim"].append(float(ssim(pred, y)[0]))
        scores["mae"].append(float((pred - y).abs().mean()))
    return {k: float(np.mean(v)) for k, v in scores.items()}


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
