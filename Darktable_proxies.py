#!/usr/bin/env python3
"""Darktable neural proxies: generate darktable ground truth for one module (proxy type).

Examples:
  python Darktable_proxies.py --list-proxies
  python Darktable_proxies.py exposure --preview 3
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import Constants as C
from utils.darktable import Darktable
from utils.errors import UserError, cli_main
from utils.images import builtin_images, list_images
from utils.preview import render_preview
from utils.registry import PROXIES, describe, get_proxy

log = logging.getLogger("darktable_proxies")


def parse_args() -> argparse.Namespace:
    proxies = "\n".join(f"  {describe(p)}" for p in PROXIES.values())
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"proxy types and their sliders (range sampled and learned):\n{proxies}")
    parser.add_argument("proxy", nargs="?", metavar="PROXY", help="proxy type (see below)")
    parser.add_argument("--list-proxies", action="store_true", help="print every proxy type and exit")
    parser.add_argument("-p", "--params", default="", help="comma-separated sliders (default: all)")
    parser.add_argument("--images", type=Path, help="input images (default: the built-in training set)")
    parser.add_argument("--preview", type=int, metavar="K", default=0,
                        help="render K settings per image and save the tap-outs and a contact sheet")
    parser.add_argument("--size", type=int, default=256, help="long side of the tap-outs, pixels (0 = full)")
    parser.add_argument("--out", type=Path, default=Path(C.IMAGE_ROOT_DIR), help="output root")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.list_proxies:
        for proxy in PROXIES.values():
            print(describe(proxy))
        return 0
    if not args.proxy:
        raise UserError("name a proxy type (see --list-proxies), e.g. 'python Darktable_proxies.py exposure --preview 3'")
    proxy = get_proxy(args.proxy)
    sliders = proxy.select([s for s in args.params.split(",") if s])
    if args.preview < 1:
        raise UserError("nothing to do: pass --preview K (K >= 1) to render K settings per image")
    images = list_images(args.images or builtin_images("train"))
    name = "_".join([proxy.name, *(s.name for s in sliders)])
    sheet = render_preview(Darktable(), proxy, sliders, images, args.preview,
                           args.out / "preview" / name, args.size)
    log.info("tap-outs and contact sheet written to %s", sheet.parent)
    return 0


if __name__ == "__main__":
    cli_main(main)()
