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
import logging
from pathlib import Path

import numpy as np
import torch

from utils.cli import add_proxy_args, input_image, named_proxy, parse, script_parser
from utils.darktable.runner import Darktable, Job
from utils.data.images import cfa_pattern
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


def main() -> int:
    args, settings, paths = parse_args()
    proxy_type, swept, name = sweep_proxy_name(args, paths)
    frames = settings.SWEEP_FRAMES if args.frames is None else args.frames
    if frames < 2:
        raise UserError(f"-n {frames}: a sweep needs 2 frames or more")
    device = resolve_device(args.device)
    proxy, payload = load_trained(paths, name, device)
    if swept.name not in proxy.slider_names:
        raise UserError(f"proxy {name} was not trained on {swept.name}; its sliders are "
                        f"{', '.join(proxy.slider_names)}")
    input_image(args.image)

    values = sweep_values(proxy_type, proxy.slider_names, swept, frames)
    dt = Darktable(settings)
    size, hq = render_size(proxy_type, int(payload.get("tapout_size") or 0))
    pattern = cfa_pattern(args.image, dt) if proxy_type.mosaic_input else "RGGB"
    folder = paths.sweep(name)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{args.image.stem}_{proxy_type.name}_{swept.name}_sweep"
    jobs = [Job(args.image, (proxy_type.history_item(dt, v),)) for v in values]
    images, scores = [], []
    renders = dt.render_many(jobs, [proxy_type.operation], size, hq, settings.DARKTABLE_BATCH_SIZE, desc="sweep")
    for k, (setting, result) in enumerate(zip(values, renders)):
        if isinstance(result, DarktableError):
            raise result
        tap_in, tap_out = result.io(proxy_type.operation)
        pred = proxy_on_render(proxy, tap_in, list(setting.values()), device, pattern)
        target = chw(tap_out, proxy.layout)
        scores.append(float(psnr(pred[None], target[None])[0]))
        tiles = [to_display(t.permute(1, 2, 0).numpy()) for t in (target, pred)]
        text = f"{swept.name}={setting[swept.name]:.4g}"
        images.append(contact_sheet([tiles], [[f"darktable {text}", f"proxy {scores[-1]:.1f} dB"]]))
        save_png(folder / f"{stem}_{k:04d}.png", images[-1])
    video = write_video(folder / f"{stem}.mp4", images, fps=settings.SWEEP_FPS)
    log.info("%d frames and %s written to %s", len(images), video.name, folder)
    print(f"proxy {name}: PSNR mean {np.mean(scores):.2f} dB, worst {np.min(scores):.2f} dB over {len(scores)} frames")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    cli_main(main)()
