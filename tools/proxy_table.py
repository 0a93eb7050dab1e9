#!/usr/bin/env python3
"""The README's "Proxy types" table: one markdown row per proxy type.

    python tools/proxy_table.py TYPE [TYPE ...] [--run] [--out ROOT]

With --run, first trains each type, one after the other, with the table's command (below);
then prints, per type, what its run wrote: the validation PSNR of the training (best and
last epoch of ROOT/<name>_model_weights/log.csv, <name> = <type>_<sliders...>) and the
network family of its checkpoint. A type without a finished run gets an empty PSNR cell.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

ROOT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT_DIR))

import Constants as C  # noqa: E402
from models.proxy import IncompatibleCheckpoint, read_checkpoint  # noqa: E402
from utils.cli import proxy_name  # noqa: E402
from utils.errors import UserError, cli_main  # noqa: E402
from utils.registry import PROXIES, ProxyType, get_proxy  # noqa: E402

COMMAND = "python Darktable_proxies.py {type} -n 20 --size 128 --max-minutes 2 --no-eval"
HEADER = ("| type | darktable operation | sliders (range, scale) | model | val_psnr dB best (last), epochs |\n"
          "|---|---|---|---|---|")


def sliders_cell(proxy: ProxyType) -> str:
    return ", ".join(f"`{s.name}` {s.lo:g}..{s.hi:g}{' log' if s.scale == 'log' else ''}"
                     for s in proxy.sliders) or "none"


def measured(root: Path, proxy: ProxyType) -> tuple[str, str]:
    """(model family, PSNR cell) from the run's checkpoint and log.csv; family '' if no run."""
    weights = root / f"{proxy_name(proxy.name, proxy.sliders, None)}_model_weights"
    try:
        with open(weights / "log.csv", newline="") as f:
            history = list(csv.DictReader(f))
    except OSError:
        return "", ""
    if not history:
        return "", ""
    psnrs = [float(h["val_psnr"]) for h in history]
    family = ""
    for checkpoint in ("best.pt", "last.pt"):
        try:
            family = read_checkpoint(weights / checkpoint)["model"]["family"]
            break
        except (IncompatibleCheckpoint, KeyError):
            continue
    return family, f"{max(psnrs):.2f} ({psnrs[-1]:.2f}), {len(history)}"


def row(root: Path, proxy: ProxyType) -> str:
    family, psnr = measured(root, proxy)
    return (f"| {proxy.name} | {proxy.operation} | {sliders_cell(proxy)} | {family or proxy.model} "
            f"| {psnr} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("types", nargs="*", metavar="TYPE", help="proxy types (default: all)")
    parser.add_argument("--run", action="store_true", help="train each type first: " + COMMAND)
    parser.add_argument("--out", type=Path, default=Path(C.IMAGE_ROOT_DIR), metavar="ROOT",
                        help=f"where the runs are (default {C.IMAGE_ROOT_DIR})")
    args = parser.parse_args()
    proxies = [get_proxy(t) for t in args.types] or list(PROXIES.values())
    if args.run:
        for proxy in proxies:
            cmd = COMMAND.format(type=proxy.name).split()[1:] + ["--out", str(args.out)]
            if subprocess.run([sys.executable, *cmd], cwd=ROOT_DIR).returncode:
                raise UserError(f"training {proxy.name} failed: '{' '.join(cmd)}' (see its output above)")
    print(f"command: {COMMAND.format(type='TYPE')}\n")
    print(HEADER)
    for proxy in proxies:
        print(row(args.out, proxy))


if __name__ == "__main__":
    cli_main(main)()
