#!/usr/bin/env python3
"""Evaluate one trained proxy on an image of your choice at chosen slider values.

Renders the image with darktable at those values, runs the proxy on darktable's input
tap-out, writes input, darktable output, proxy output and error image (TIFF and PNG) to
ROOT/eval/NAME/<image>_<values>/ and prints the proxy's PSNR against darktable.

Example:
  python Eval.py exposure --image photo.dng -v 1.5,0.01
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from utils.cli import add_proxy_args, check_out, input_image, named_proxy, parse, script_parser
from utils.darktable.files import write_tiff
from utils.darktable.runner import Darktable
from utils.data.images import cfa_pattern, required_traits
from utils.data.tapouts import TRAIT_PLANES
from utils.devices import resolve_device
from utils.errors import UserError, cli_main
from utils.evaluation.fidelity import chw, proxy_on_render
from utils.evaluation.metrics import psnr
from utils.proxies.schema import render_size
from utils.proxies.trained import load_trained
from utils.runs import RunPaths
from utils.settings import Settings
from utils.visual import save_png, to_display

log = logging.getLogger("eval")


def parse_args() -> tuple[argparse.Namespace, Settings, RunPaths]:
    parser = script_parser(__doc__)
    add_proxy_args(parser, "proxy type (see Darktable_proxies.py --list-proxies)")
    parser.add_argument("--image", type=Path, required=True, help="a raw or TIFF/PNG/JPEG file")
    parser.add_argument("-v", "--values", default="", metavar="V1,V2,...",
                        help="one value per slider of the proxy, in its order (none for a proxy without "
                             "sliders: demosaic, colorin, colorout)")
    return parse(parser)


def main() -> int:
    args, settings, paths = parse_args()
    proxy_type, _, name = named_proxy(args)
    device = resolve_device(args.device)
    proxy, payload = load_trained(paths, name, device)
    try:
        values = [float(v) for v in args.values.split(",")] if args.values.strip() else []
    except ValueError:
        raise UserError(f"-v {args.values!r}: give numbers separated by commas") from None
    if len(values) != len(proxy.slider_names):
        raise UserError(f"proxy {name} has {len(proxy.slider_names)} slider(s) "
                        f"({', '.join(proxy.slider_names)}); -v gave {len(values)} value(s)")
    chosen = dict(zip(proxy.slider_names, values))
    proxy_type.check_values(chosen)
    input_image(args.image)
    if proxy.spec.extra_channels in TRAIT_PLANES:   # exact colorin, denoiseprofile: refused now, not after rendering
        required_traits(args.image, TRAIT_PLANES[proxy.spec.extra_channels])
    check_out(paths)

    dt = Darktable(settings)
    size, hq = render_size(proxy_type, int(payload.get("tapout_size") or 0))
    render = dt.render(args.image, [proxy_type.history_item(dt, chosen)], dump=[proxy_type.operation],
                       size=size, hq=hq)
    tap_in, tap_out = render.io(proxy_type.operation)
    pattern = cfa_pattern(args.image, dt) if proxy_type.mosaic_input else "RGGB"
    pred = proxy_on_render(proxy, tap_in, values, device, pattern, args.image)
    target = chw(tap_out, proxy.layout)
    score = float(psnr(pred[None], target[None])[0])

    folder = paths.evaluation(name) / "_".join([args.image.stem, *(f"{v:g}" for v in values)])
    folder.mkdir(parents=True, exist_ok=True)
    images = {"input": chw(tap_in, proxy.layout), "darktable": target, "proxy": pred, "error": (pred - target).abs()}
    for key, image in images.items():
        hwc = image.permute(1, 2, 0).numpy()
        write_tiff(folder / f"{key}.tif", hwc)
        save_png(folder / f"{key}.png", to_display(hwc * (10 if key == "error" else 1)))
    log.info("input, darktable, proxy and error (x10 in the PNG) written to %s", folder)
    print(f"PSNR: {score:.2f} dB")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    cli_main(main)()
