"""Pieces every user-facing script shares: common flags, naming, questions, disk usage."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import Constants as C
from utils.errors import UserError
from utils.proxies.schema import Slider


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """--device, --out and --set, which every script takes."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where networks run (default: CUDA when present)")
    parser.add_argument("--out", type=Path, metavar="ROOT",
                        help=f"where everything goes (default: Constants.IMAGE_ROOT_DIR = {C.IMAGE_ROOT_DIR})")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a setting of Constants.py for this run (repeatable); "
                             "environment variables DTP_<NAME> do the same")


def root_dir(args: argparse.Namespace) -> Path:
    return Path(args.out or C.IMAGE_ROOT_DIR)


def slider_names(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def proxy_name(proxy: str, sliders: Sequence[Slider], custom: str | None) -> str:
    """The proxy's NAME: ``-c`` if given, else ``<proxy>_<slider1>_<slider2>...``."""
    if custom:
        if "/" in custom or custom.startswith("."):
            raise UserError(f"-c {custom!r}: a proxy name must not contain '/' or start with '.'")
        return custom
    return "_".join([proxy, *(s.name for s in sliders)])


def ask(question: str) -> bool:
    """With INTERACTIVE on, ask a yes/no question (default yes); otherwise say yes."""
    if not C.INTERACTIVE:
        return True
    if not sys.stdin.isatty():
        raise UserError("INTERACTIVE is on but there is no terminal to ask; "
                        "use --set INTERACTIVE=false")
    answer = input(f"{question} [Y/n] ").strip().lower()
    return answer in ("", "y", "yes")


def disk_usage(folder: Path) -> int:
    """Bytes used by the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def input_image(path: Path) -> Path:
    """A user-given image file, checked to exist and to be readable."""
    from utils.data.images import check_readable
    if not path.is_file():
        raise UserError(f"image {path} does not exist")
    check_readable(path)
    return path
