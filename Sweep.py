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
from tqdm import tqdm

import Constants as C
from utils.cli import add_common_args, input_image, proxy_name, root_dir
from utils.darktable.runner import Darktable, Job
from utils.data.images import cfa_pattern
from utils.errors import DarktableError, UserError, cli_main
from utils.evaluation.fidelity import chw, proxy_on_render
from utils.evaluation.metrics import psnr
from utils.proxies.registry import get_proxy
from utils.proxies.schema import render_size
from utils.proxies.train import resolve_device
from utils.proxies.trained import load_trained
from utils.settings import configure
from utils.visual import contact_sheet, save_png, to_display, write_video

log = logging.getLogger("sweep")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("proxy", metavar="PROXY", help="proxy type (see Darktable_proxies.py --list-proxies)")
    parser.add_argument("--param", required=True, metavar="SLIDER", help="the slider to sweep")
    parser.add_argument("-c", "--name", metavar="NAME", help="the proxy's name (default: <proxy>_<all sliders>)")
    parser.add_argument("--image", type=Path, required=True, help="a raw or TIFF/PNG/JPEG file")
    parser.add_argument("-n", "--frames", type=int, default=C.SWEEP_FRAMES, help=f"frames (default {C.SWEEP_FRAMES})")
    add_common_args(parser)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    configure(args.set)
    proxy_type = get_proxy(args.proxy)
    swept = proxy_type.slider(args.param)
    name = proxy_name(proxy_type.name, proxy_type.sliders, args.name)
    root = root_dir(args)
    if args.frames < 2:
        raise UserError(f"-n {args.frames}: a sweep needs 2 frames or more")
    device = resolve_device(args.device)
    proxy, payload = load_trained(root, name, device)
    if swept.name not in proxy.slider_names:
        raise UserError(f"proxy {name} was not trained on {swept.name}; its sliders are "
                        f"{', '.join(proxy.slider_names)}")
    input_image(args.image)

    settings = []
    for u in np.linspace(0.0, 1.0, args.frames):
        values = {n: proxy_type.slider(n).default for n in proxy.slider_names}
        values[swept.name] = swept.from_unit(float(u))
        settings.append(values)
    dt = Darktable()
    size, hq = render_size(proxy_type, int(payload.get("tapout_size") or 0))
    pattern = cfa_pattern(args.image, dt) if proxy_type.mosaic_input else "RGGB"
    folder = root / "sweep" / name
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{args.image.stem}_{proxy_type.name}_{swept.name}_sweep"
    frames, scores = [], []
    with tqdm(total=len(settings), unit="frame", desc="sweep") as bar:
        for start in range(0, len(settings), C.DARKTABLE_BATCH_SIZE):
            chunk = settings[start:start + C.DARKTABLE_BATCH_SIZE]
            jobs = [Job(args.image, (proxy_type.history_item(dt, v),)) for v in chunk]
            for k, (values, result) in enumerate(zip(chunk, dt.render_batch(jobs, [proxy_type.operation], size, hq))):
                if isinstance(result, DarktableError):
                    raise result
                tap_in, tap_out = result.io(proxy_type.operation)
                pred = proxy_on_render(proxy, tap_in, list(values.values()), device, pattern)
                target = chw(tap_out, proxy.layout)
                score = float(psnr(pred[None], target[None])[0])
                scores.append(score)
                tiles = [to_display(t.permute(1, 2, 0).numpy()) for t in (target, pred)]
                text = f"{swept.name}={values[swept.name]:.4g}"
                frame = contact_sheet([tiles], [[f"darktable {text}", f"proxy {score:.1f} dB"]])
                save_png(folder / f"{stem}_{start + k:04d}.png", frame)
                frames.append(frame)
                bar.update(1)
    video = write_video(folder / f"{stem}.mp4", frames, fps=C.SWEEP_FPS)
    log.info("%d frames and %s written to %s", len(frames), video.name, folder)
    print(f"PSNR: mean {np.mean(scores):.2f} dB, worst {np.min(scores):.2f} dB over {len(scores)} frames")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    cli_main(main)()
