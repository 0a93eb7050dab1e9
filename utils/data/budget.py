"""What a run will write, estimated before it starts: tap-out sizes, disk space, and images
too small for a proxy. A request that cannot fit is refused in seconds, not after hours."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from utils.data.images import image_size, required_traits
from utils.errors import UserError
from utils.proxies.schema import ProxyType, render_size
from utils.runs import existing_ancestor

MIN_TAPOUT_SIDE = 16      # pixels; smaller tap-outs are too small for the networks and for SSIM
TIFF_OVERHEAD = 4096      # bytes per TIFF beyond its pixels (header, tags), rounded up


def tapout_shape(size_wh: tuple[int, int], proxy: ProxyType, size: int) -> tuple[int, int]:
    """(width, height) of ``proxy``'s tap-outs of an image of ``size_wh`` exported at ``size``
    (the long side; 0 = full size; mosaic modules are always at full size)."""
    export, _ = render_size(proxy, size)
    w, h = size_wh
    scale = min(1.0, export / max(w, h)) if export else 1.0
    return max(1, round(w * scale)), max(1, round(h * scale))


def check_image_traits(images: Sequence[Path], proxy: ProxyType, exact: bool) -> None:
    """Refuse an image without what an ``exact`` proxy of ``proxy`` takes of it beyond its
    pixels (``ProxyType.traits``: colorin's camera matrix, denoiseprofile's white balance, from
    a DNG), before any rendering."""
    if not (proxy.traits and exact):
        return
    for image in images:
        required_traits(image, proxy.traits, f"an exact {proxy.name} proxy",
                        f"--model {proxy.learned}")


def check_image_sizes(images: Sequence[Path], proxy: ProxyType, size: int) -> None:
    """Refuse an image whose tap-outs would be smaller than MIN_TAPOUT_SIDE on a side, and one
    whose full size is unknown (a raw format only darktable reads) when ``proxy`` takes the pipe
    scale (a slider is a pixel length, ...) and the tap-outs are downscaled: it would be unknown."""
    for image in images:
        known = image_size(image)
        if known is None:
            if size and proxy.takes_pixel_scale:
                raise UserError(f"image {image}: its size cannot be read, and {proxy.name} needs it at "
                                f"--size {size} (it follows the pipe's pixel scale); convert it to DNG "
                                "or TIFF, or use --size 0")
            continue
        w, h = tapout_shape(known, proxy, size)
        if min(w, h) < MIN_TAPOUT_SIDE:
            raise UserError(f"image {image} ({known[0]}x{known[1]}) gives {w}x{h} tap-outs at --size {size}; "
                            f"a proxy needs at least {MIN_TAPOUT_SIDE} px on each side: use a larger image "
                            "or a larger --size")


def dataset_bytes(proxy: ProxyType, images: Sequence[Path], per_image: int, size: int) -> int:
    """Disk that a dataset of ``per_image`` samples of each image takes: one output TIFF per
    sample, one input per distinct input (per image, or per sample when a sampler varies the
    input). Images of unknown size count as ``size`` x ``size`` (or 4000 x 3000 at full size)."""
    c_in = 1 if proxy.mosaic_input else 3
    c_out = 1 if proxy.layout == "mosaic" else 3
    total = 0
    for image in images:
        w, h = tapout_shape(image_size(image) or (size or 4000, size or 3000), proxy, size)
        inputs = per_image if not proxy.sliders else 1
        total += per_image * (w * h * c_out * 4 + TIFF_OVERHEAD) + inputs * (w * h * c_in * 4 + TIFF_OVERHEAD)
    return total


def pipeline_bytes(images: Sequence[Path], targets: int, blocks: int, save_outputs: bool) -> int:
    """Disk of ``targets`` pipeline renders (every block's input and output tap-out at full
    size, three channels) and, with ``save_outputs``, every block's output per target."""
    sizes = [image_size(p) or (4000, 3000) for p in images]
    per_target = max(w * h for w, h in sizes) * 3 * 4 + TIFF_OVERHEAD
    return targets * blocks * per_target * (3 if save_outputs else 2)


def human(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def check_free(folder: Path, needed: int, what: str, fix: str) -> None:
    """Refuse ``what`` when it needs more than the free space where ``folder`` is (or would be)."""
    base = existing_ancestor(folder)
    free = shutil.disk_usage(base).free
    if needed > free:
        raise UserError(f"{what} needs about {human(needed)} of disk, but {human(free)} are free at "
                        f"{base}: {fix}")
