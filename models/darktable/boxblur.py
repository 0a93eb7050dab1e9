"""darktable's box blur (``common/box_filters.c``: ``dt_box_mean``) and the two modules built
on it, bloom (``iop/bloom.c``) and soften (``iop/soften.c``), exact.

``dt_box_mean`` runs BOX_ITERATIONS rounds of a horizontal then a vertical pass; each pass
replaces a pixel by the mean of the pixels within ``radius`` of it along the axis that lie in
the image (no padding: fewer pixels near the edges). Here each pass is a difference of
cumulative sums, in float64 (darktable sums in float32: the difference is far below the
120 dB cap), differentiable in the image. The passes along an axis are linear: up to
MATRIX_SIDE pixels their product is one matrix, and a blur is two matrix products (29 ms at
512 x 512 on one core, against 160 ms pass by pass); larger images go pass by pass, in time
linear in their size. Radii are whole pixels: a module's size slider acts on them in steps.

On a CPU, where reading a value back costs nothing, each side and radius's matrix is made
once by running the passes on the identity, and cached. Off the CPU the radii stay on the
device, and so do the matrices: one pass is a band matrix (1 / the count where |i - j| is
within the radius), and the passes are its power, made at every blur (a few matrix products,
microseconds on a GPU). No size then follows a value, and the pass can be captured as a CUDA
graph (models.graphs), up to MATRIX_SIDE px.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from models.blocks import values_on_host

BOX_ITERATIONS = 8      # box_filters.h: eight passes make the box a close Gaussian
MATRIX_SIDE = 1024      # px: up to this side an axis' passes are one (cached) matrix


def _box_pass(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """One clipped box mean of ``x`` along ``dim``: the mean over [i - radius, i + radius] ∩ image."""
    n = x.shape[dim]
    sums = torch.cumsum(x, dim)
    sums = torch.cat([torch.zeros_like(sums.narrow(dim, 0, 1)), sums], dim)     # sums[k] = x[0..k-1]
    i = torch.arange(n, device=x.device)
    high, low = (i + radius + 1).clamp(max=n), (i - radius).clamp(min=0)
    shape = [1] * x.ndim
    shape[dim] = n
    count = (high - low).to(x.dtype).view(shape)
    return (sums.index_select(dim, high) - sums.index_select(dim, low)) / count


@lru_cache(maxsize=16)
def _box_matrix(n: int, radius: int, iterations: int, device: str) -> torch.Tensor:
    """(n, n) float64 M: ``iterations`` passes along an axis of ``n`` pixels are x @ M (made
    outside inference mode even when first asked for in it: cached, it also serves passes
    with a gradient)."""
    with torch.inference_mode(False), torch.no_grad():
        m = torch.eye(n, dtype=torch.float64, device=device)
        for _ in range(iterations):
            m = _box_pass(m, radius, -1)
    return m


def box_mean(x: torch.Tensor, radii: torch.Tensor, iterations: int = BOX_ITERATIONS) -> torch.Tensor:
    """darktable's ``dt_box_mean`` of (B, C, H, W) ``x`` at each image's whole-pixel radius,
    ``radii`` (B,) (0 leaves an image as it is)."""
    h, w = x.shape[-2:]
    if not values_on_host(x) and max(h, w) <= MATRIX_SIDE:
        rows, cols = (band_power(n, radii, iterations).to(x.dtype)[:, None] for n in (h, w))
        return rows @ x @ cols.transpose(-1, -2)
    out = []
    for image, radius in zip(x, (int(r) for r in radii.tolist())):
        if radius < 1:
            out.append(image)
        elif max(h, w) <= MATRIX_SIDE:
            rows, cols = (_box_matrix(n, radius, iterations, str(x.device)).to(x.dtype) for n in (h, w))
            out.append(rows.T @ image @ cols)
        else:
            for _ in range(iterations):   # the axes' passes commute: all of one, then the other
                image = _box_pass(image, radius, -1)
            for _ in range(iterations):
                image = _box_pass(image, radius, -2)
            out.append(image)
    return torch.stack(out)


def band_power(n: int, radii: torch.Tensor, iterations: int) -> torch.Tensor:
    """(B, n, n) float64 P on the radii's device: ``iterations`` passes at each of the ``radii``
    (B,) along an axis of ``n`` pixels, as y = P x. One pass is a band matrix: the mean of the
    pixels within the radius that lie in the image."""
    i = torch.arange(n, dtype=torch.float64, device=radii.device)
    band = ((i[:, None] - i[None]).abs() <= radii.to(torch.float64).view(-1, 1, 1)).to(torch.float64)
    return torch.linalg.matrix_power(band / band.sum(-1, keepdim=True), iterations)


def _size_share(size: torch.Tensor) -> torch.Tensor:
    """min(100, ``size`` + 1) / 100 of a size slider (%), its sum in float32 as darktable's."""
    return (size.detach().float() + 1).double().clamp(max=100) / 100


def bloom_radius(size: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """bloom's box radius in pixels of the pipe (B,) for each image's ``size`` (%) and pixel
    ``scale``: 256 px x min(100, size + 1) / 100 at full size, truncated, then times the
    scale, rounded up, at most 256 (darktable's float32 steps); on the sliders' device."""
    full = torch.trunc(256.0 * _size_share(size))
    return torch.ceil(full.float() * scale.detach().float()).clamp(max=256).double()


def bloom_lab(lab: torch.Tensor, size: torch.Tensor, threshold: torch.Tensor, strength: torch.Tensor,
              scale: torch.Tensor) -> torch.Tensor:
    """darktable's bloom of Lab ``lab`` (B, 3, H, W) (the sliders and pixel ``scale`` (B,)
    float64): L times 2^(min(100, strength + 1) / 100) where that passes the threshold, else 0,
    box-blurred, screened over L (100 - (100 - L)(100 - glow) / 100); a and b unchanged."""
    L = lab[:, :1].double()
    gathered = L * torch.exp2((strength + 1).clamp(max=100) / 100).view(-1, 1, 1, 1)
    gathered = torch.where(gathered > threshold.detach().view(-1, 1, 1, 1), gathered, torch.zeros_like(gathered))
    glow = box_mean(gathered, bloom_radius(size, scale))
    screened = 100 - (100 - L) * (100 - glow) / 100
    return torch.cat([screened.to(lab.dtype), lab[:, 1:]], 1)


def soften_radius(size: torch.Tensor, full_sizes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """soften's box radius in pixels of the pipe (B,) for each image's ``size`` (%), full size
    ``full_sizes`` (B, 2) (W, H) and pixel ``scale``: 1 % of the full image's diagonal,
    truncated (the most), times min(100, size + 1) %, truncated, then times the scale, rounded
    up (darktable's float32 steps); on the sliders' device."""
    diagonal = full_sizes.to(torch.float64).square().sum(1).sqrt().float()
    most = torch.trunc(diagonal * torch.tensor(0.01, dtype=torch.float32)).double()
    rad = torch.trunc(most * _size_share(size))
    return torch.minimum(most, torch.ceil(rad.float() * scale.detach().float()).double())


def overexposed(rgb: torch.Tensor, saturation: torch.Tensor, brightness: torch.Tensor) -> torch.Tensor:
    """soften's brightened copy of RGB ``rgb`` (B, 3, H, W): in HSL, saturation x ``saturation``
    and lightness x ``brightness`` (both (B,), factors), each clipped to [0, 1], the hue kept.
    With the hue kept, HSL -> RGB is each channel's place between the pixel's min and max
    carried to the new lightness' m1 and m2; rgb2hsl's denominators stop at 2^-16."""
    high, low = rgb.amax(1, keepdim=True), rgb.amin(1, keepdim=True)
    spread, total = high - low, high + low
    light = total / 2
    grey = spread == 0
    floor = 2.0 ** -16
    sat = torch.where(light < 0.5, spread / total.clamp_min(floor), spread / (2 - total).clamp_min(floor))
    sat = torch.where(grey, torch.zeros_like(sat), sat)
    sat = (sat * saturation.view(-1, 1, 1, 1)).clamp(0, 1)
    light = (light * brightness.view(-1, 1, 1, 1)).clamp(0, 1)
    m2 = torch.where(light < 0.5, light * (1 + sat), light + sat - light * sat)
    m1 = 2 * light - m2
    place = torch.where(grey, torch.zeros_like(rgb), (rgb - low) / torch.where(grey, torch.ones_like(spread), spread))
    return m1 + (m2 - m1) * place


def soften_rgb(rgb: torch.Tensor, size: torch.Tensor, saturation: torch.Tensor, brightness: torch.Tensor,
               amount: torch.Tensor, scale: torch.Tensor, full_sizes: torch.Tensor) -> torch.Tensor:
    """darktable's soften of linear RGB ``rgb`` (B, 3, H, W) (the sliders and pixel ``scale``
    (B,) float64; each image's ``full_sizes`` (B, 2) (W, H)): the brightened copy (saturation %,
    brightness EV), box-blurred, mixed in by ``amount`` % (no clip)."""
    v = rgb.double()
    bright = overexposed(v, saturation / 100, torch.exp2(brightness))
    blurred = box_mean(bright, soften_radius(size, full_sizes, scale))
    mix = (amount / 100).view(-1, 1, 1, 1)
    return (v * (1 - mix) + blurred * mix).to(rgb.dtype)
