"""Pieces every user-facing script shares: flags that mean the same everywhere, start-up,
questions, and checks of what a user names (a proxy and its sliders, an image)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from utils.data.images import check_readable
from utils.devices import DEVICES
from utils.errors import UserError
from utils.proxies.registry import get_proxy, proxy_name
from utils.proxies.schema import ProxyType, Slider
from utils.runs import RunPaths
from utils.settings import DEFAULTS, Settings, configure


def add_proxy_args(parser: argparse.ArgumentParser, proxy_help: str = "proxy type (see --list-proxies)",
                   required: bool = True) -> None:
    """PROXY, -p/--params and -c/--name: which proxy a script works on, named as when it was
    trained (``Darktable_proxies.py PROXY -p SLIDERS -c NAME``)."""
    parser.add_argument("proxy", nargs=None if required else "?", metavar="PROXY", help=proxy_help)
    parser.add_argument("-p", "--params", metavar="SLIDERS",
                        help="comma-separated sliders of the proxy (default: all the type's sliders)")
    parser.add_argument("-c", "--name", metavar="NAME", help="proxy name (default: <proxy>_<sliders...>)")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """--device, --out, --set and --quiet, which every script takes."""
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where networks run (default: CUDA, else Apple MPS, else the CPU)")
    parser.add_argument("--out", type=Path, metavar="ROOT",
                        help=f"where everything goes (default: the IMAGE_ROOT_DIR setting, {DEFAULTS.IMAGE_ROOT_DIR})")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a setting of Constants.py for this run (repeatable); "
                             "environment variables DTP_<NAME> do the same")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print only warnings, errors and results (no progress bars)")


def script_parser(doc: str, **kwargs) -> argparse.ArgumentParser:
    """A script's argument parser, its docstring as the help text."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def parse(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Settings, RunPaths]:
    """Add the common flags, parse the command line, and start the run: its arguments, its
    settings (Constants, DTP_<NAME>, --set) and its paths under ROOT; messages as --quiet says."""
    add_common_args(parser)
    args = parser.parse_args()
    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    settings = configure(args.set)
    return args, settings, RunPaths(args.out or Path(settings.IMAGE_ROOT_DIR))


def slider_names(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def named_proxy(args: argparse.Namespace) -> tuple[ProxyType, tuple[Slider, ...], str]:
    """The proxy type, sliders and NAME that PROXY, -p and -c name (checked)."""
    proxy = get_proxy(args.proxy)
    sliders = proxy.select(slider_names(args.params))
    return proxy, sliders, proxy_name(proxy.name, sliders, args.name)


def ask(question: str, interactive: bool) -> bool:
    """With ``interactive`` (the INTERACTIVE setting), ask a yes/no question (default yes);
    otherwise say yes."""
    if not interactive:
        return True
    if not sys.stdin.isatty():
        raise UserError("INTERACTIVE is on but there is no terminal to ask; "
                        "use --set INTERACTIVE=false")
    answer = input(f"{question} [Y/n] ").strip().lower()
    return answer in ("", "y", "yes")


def input_image(path: Path) -> Path:
    """A user-given image file, checked to exist and to be readable."""
    if path.is_dir():
        raise UserError(f"image {path} is a folder; give one raw or TIFF/PNG/JPEG file")
    if not path.is_file():
        raise UserError(f"image {path} does not exist")
    check_readable(path)
    return path
