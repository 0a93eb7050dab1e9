#!/usr/bin/env python3
"""Sweep one slider of a trained proxy across its whole range: darktable vs proxy video.

Samples the slider uniformly across its range (in its sampling space: linear, or log for
sliders whose range spans decades; the other sliders at darktable's defaults), renders every
point with darktable and with the proxy, and writes numbered frames (darktable | proxy, the
value and PSNR written on them) and an mp4 to ROOT/sweep/NAME/.

Example:
  python Sweep.py exposure --param exposure --image photo.dng -n 50
  ffmpeg -r 25 -f image2 -i photo_exposure_exposure_sweep_%04d.png -vcodec libx264 -crf 15 -pix_fmt yuv420p sweep.mp4
"""
from __future__ import annotations

import argparse
from itertools import chain
import logging
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from models.proxy import Proxy
from utils.cli import add_proxy_args, check_out, input_image, named_proxy, parse, script_parser
from utils.darktable.runner import Darktable, Job
from utils.data.budget import check_free, tapout_shape
from utils.data.images import cfa_pattern, image_size
from utils.devices import resolve_device
from utils.errors import DarktableError, UserError, cli_main
from utils.evaluation.fidelity import chw, proxy_on_render
from utils.evaluation.metrics import psnr
from utils.proxies.registry import proxy_name
from utils.proxies.schema import ProxyType, Slider, render_size
from utils.proxies.trained import load_trained
from utils.runs import RunPaths
from utils.settings import DEFAULTS, Settings
from utils.visual import contact_sheet, save_png, to_display, write_video

log = logging.getLogger("sweep")


def parse_args() -> tuple[argparse.Namespace, Settings, RunPaths]:
    parser = script_parser(__doc__)
    add_proxy_args(parser, "proxy type (see Darktable_proxies.py --list-proxies)")
    parser.add_argument("--param", required=True, metavar="SLIDER", help="the slider to sweep")
    parser.add_argument("--image", type=Path, required=True, help="a raw or TIFF/PNG/JPEG file")
    parser.add_argument("-n", "--frames", type=int, metavar="N", help=f"frames (default SWEEP_FRAMES = {DEFAULTS.SWEEP_FRAMES})")
    return parse(parser)


def sweep_proxy_name(args: argparse.Namespace, paths: RunPaths) -> tuple[ProxyType, Slider, str]:
    """The proxy type, the swept slider, and the proxy to use: -c NAME, else the one -p names,
    else the proxy trained on the swept slider alone (``<proxy>_<slider>``, as
    ``Darktable_proxies.py PROXY -p SLIDER`` names it) when there is one, else the one trained
    on all the type's sliders."""
    proxy_type, _, name = named_proxy(args)
    swept = proxy_type.slider(args.param)
    if args.name or args.params:
        return proxy_type, swept, name
    alone = proxy_name(proxy_type.name, (swept,))
    return proxy_type, swept, alone if paths.is_trained(alone) else name


def sweep_values(proxy_type: ProxyType, slider_names: list[str], swept: Slider, frames: int) -> list[dict[str, float]]:
    """``frames`` settings, the swept slider uniform across its sampling space, the others at
    darktable's defaults."""
    settings = []
    for u in np.linspace(0.0, 1.0, frames):
        values = {n: proxy_type.slider(n).default for n in slider_names}
        values[swept.name] = swept.from_unit(float(u))
        settings.append(values)
    return settings


MAX_FRAMES = 10000   # 6.7 minutes of video at 25 frames per second


def check_sweep(frames: int, image: Path, proxy_type: ProxyType, tapout_size: int, paths: RunPaths) -> None:
    """The sweep's frame count, output folder and disk need, checked before any render."""
    if not 2 <= frames <= MAX_FRAMES:
        raise UserError(f"-n {frames}: a sweep takes 2 to {MAX_FRAMES} frames")
    check_out(paths)
    w, h = tapout_shape(image_size(image) or (tapout_size or 4000,) * 2, proxy_type, tapout_size)
    frame_bytes = (h + 40) * (2 * w + 16) * 3          # a PNG is at most its raw pixels
    check_free(paths.root, frames * frame_bytes, f"a sweep of {frames} frames",
               "use fewer frames (-n), free some space, or choose another --out")


def main() -> int:
    args, settings, paths = parse_args()
    proxy_type, swept, name = sweep_proxy_name(args, paths)
    frames = settings.SWEEP_FRAMES if args.frames is None else args.frames
    device = resolve_device(args.device)
    proxy, payload = load_trained(paths, name, device)
    if swept.name not in proxy.slider_names:
        raise UserError(f"proxy {name} was not trained on {swept.name}; its sliders are "
                        f"{', '.join(proxy.slider_names)}")
    input_image(args.image)
    check_sweep(frames, args.image, proxy_type, int(payload.get("tapout_size") or 0), paths)

    dt = Darktable(settings)
    folder = paths.sweep(name)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{args.image.stem}_{proxy_type.name}_{swept.name}_sweep"
    scores: list[float] = []
    pictures = sweep_frames(dt, proxy, proxy_type, swept, frames, args.image, int(payload.get("tapout_size") or 0),
                            device, settings.DARKTABLE_BATCH_SIZE, scores)
    first = next(pictures)
    video = write_video(folder / f"{stem}.mp4", saved(chain([first], pictures), folder, stem),
                        fps=settings.SWEEP_FPS, size=first.shape[:2])
    log.info("%d frames and %s written to %s", len(scores), video.name, folder)
    print(f"proxy {name}: PSNR mean {np.mean(scores):.2f} dB, worst {np.min(scores):.2f} dB over {len(scores)} frames")
    return 0


def sweep_frames(dt: Darktable, proxy: Proxy, proxy_type: ProxyType, swept: Slider, frames: int, image: Path,
                 tapout_size: int, device, batch_size: int, scores: list[float]) -> Iterator[np.ndarray]:
    """Each frame: darktable | proxy at one setting of the sweep; its PSNR goes to ``scores``."""
    values = sweep_values(proxy_type, proxy.slider_names, swept, frames)
    size, hq = render_size(proxy_type, tapout_size)
    pattern = cfa_pattern(image, dt) if proxy_type.mosaic_input else "RGGB"
    jobs = [Job(image, (proxy_type.history_item(dt, v),)) for v in values]
    renders = dt.render_many(jobs, [proxy_type.operation], size, hq, batch_size, desc="sweep")
    for setting, result in zip(values, renders):
        if isinstance(result, DarktableError):
            raise result
        tap_in, tap_out = result.io(proxy_type.operation)
        pred = proxy_on_render(proxy, tap_in, list(setting.values()), device, pattern, image)
        target = chw(tap_out, proxy.layout)
        scores.append(float(psnr(pred[None], target[None])[0]))
        tiles = [to_display(t.permute(1, 2, 0).numpy()) for t in (target, pred)]
        text = f"{swept.name}={setting[swept.name]:.4g}"
        yield contact_sheet([tiles], [[f"darktable {text}", f"proxy {scores[-1]:.1f} dB"]])


def saved(frames: Iterable[np.ndarray], folder: Path, stem: str) -> Iterator[np.ndarray]:
    """``frames``, each also saved as a numbered PNG (the seed's names, for FFmpeg)."""
    for k, frame in enumerate(frames):
        save_png(folder / f"{stem}_{k:04d}.png", frame)
        yield frame


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    cli_main(main)()
