"""Pieces every user-facing script shares: flags that mean the same everywhere, start-up,
questions, and checks of what a user names (a proxy and its sliders, an image)."""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from utils.data.images import check_readable
from utils.devices import DEVICES
from utils.errors import UserError
from utils.proxies.registry import get_proxy, proxy_name
from utils.proxies.schema import ProxyType, Slider
from utils.runs import RunPaths, existing_ancestor
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


def check_number(flag: str, value: float | None, minimum: float | None = None, above: float | None = None) -> None:
    """Refuse a flag's value that is not finite or below its domain (None: not given)."""
    if value is None:
        return
    if not math.isfinite(value):
        raise UserError(f"{flag} {value}: give a finite number")
    if minimum is not None and value < minimum:
        raise UserError(f"{flag} {value:g}: use {minimum:g} or more")
    if above is not None and not value > above:
        raise UserError(f"{flag} {value:g}: use a number above {above:g}")


def check_out(paths: RunPaths) -> None:
    """ROOT must be a folder that exists or can be created, and be writable; checked before any
    work, created only when something is written."""
    root, base = paths.root, existing_ancestor(paths.root)
    if base.is_file() or (base.exists() and not base.is_dir()):
        what = root if base == root.absolute() else base
        raise UserError(f"--out {root}: {what} is a file, not a folder; choose another --out")
    if not os.access(base, os.W_OK | os.X_OK):
        why = "read-only" if _read_only(base) else "not writable for you"
        raise UserError(f"--out {root}: {base} is {why}; choose a folder you may write to")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_name(name: str, paths: RunPaths) -> None:
    """A proxy NAME must fit in the file names made from it (``NAME_model_weights``, the
    temporary ``.NAME.csv.<pid>.tmp``) on ROOT's file system."""
    try:
        limit = os.pathconf(existing_ancestor(paths.root), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    longest = max(len(paths.weights(name).name), len(f".{name}.csv.{os.getpid()}.tmp"))
    extra = longest - len(name)
    if len(name.encode()) + extra > limit:
        raise UserError(f"proxy name {name[:40]}... is {len(name.encode())} bytes; names made from it must "
                        f"fit in {limit} bytes: use a -c NAME of at most {limit - extra} bytes")
