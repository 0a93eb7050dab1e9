#!/usr/bin/env python3
"""The proxy types table of docs/proxies.md: one markdown row per proxy type.

    python tools/proxy_table.py TYPE [TYPE ...] [--run [--jobs N]] [--out ROOT]

With --run, first trains each type with the table's command (below), N at a time (default
1; each run then gets its share of the cores, ``OMP_NUM_THREADS``, as the tables' figures
were measured two at a time on 2 cores; its output goes to ROOT/table-logs/<type>.log);
then prints, per type, what its run wrote: the validation PSNR of the training (best and
last epoch of ROOT/<name>_model_weights/log.csv, <name> = <type>_<sliders...>), the network
family of its checkpoint, and for scale the PSNR of doing nothing (the module's input taken
for its output) on the same held-out samples (ROOT/stage_2/<name>). A type without a
finished run gets empty cells.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT_DIR))

import Constants as C  # noqa: E402
from models.proxy import IncompatibleCheckpoint, read_checkpoint  # noqa: E402
from utils.data.tapouts import TapoutDataset  # noqa: E402
from utils.errors import UserError, cli_main  # noqa: E402
from utils.evaluation.fidelity import identity_psnr  # noqa: E402
from utils.proxies.registry import PROXIES, get_proxy, proxy_name  # noqa: E402
from utils.proxies.schema import ProxyType  # noqa: E402
from utils.runs import RunPaths  # noqa: E402

COMMAND = "python Darktable_proxies.py {type} -n 20 --size 128 --max-minutes 10 --epochs 1000 --no-eval"
HEADER = ("| type | darktable operation | sliders (range, scale) | model | val_psnr dB best (last), epochs "
          "| identity dB |\n|---|---|---|---|---|---|")


def sliders_cell(proxy: ProxyType) -> str:
    return ", ".join(f"`{s.name}` {s.lo:g}..{s.hi:g}{'' if s.scale == 'linear' else ' ' + s.scale}"
                     for s in proxy.sliders) or "none"


def identity_cell(stage2: Path, proxy: ProxyType) -> str:
    """The identity's mean PSNR over a stage-2 dataset (utils.evaluation.fidelity.identity_psnr):
    a demosaic's the bilinear demosaic's; "none" for a change of colour space."""
    try:
        value = identity_psnr(TapoutDataset(stage2, proxy.sliders, native=True), proxy.baseline)
    except UserError:
        return ""
    return "none" if value is None else f"{value:.2f}" + (" (bilinear)" if proxy.baseline == "bilinear" else "")


def measured(root: Path, proxy: ProxyType) -> tuple[str, str]:
    """(model family, PSNR cell) from the run's checkpoint and log.csv; family '' if no run."""
    weights = RunPaths(root).weights(proxy_name(proxy.name, proxy.sliders))
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
    family, val = measured(root, proxy)
    identity = identity_cell(RunPaths(root).stage(2, proxy_name(proxy.name, proxy.sliders)), proxy)
    return (f"| {proxy.name} | {proxy.operation} | {sliders_cell(proxy)} | {family or proxy.model} "
            f"| {val} | {identity} |")


def run_all(proxies: list[ProxyType], root: Path, jobs: int) -> list[str]:
    """Train every type with the table's command, ``jobs`` at a time (one at a time: its output
    shown; more: each to its log in ROOT/table-logs and a share of the cores); the names of
    the types whose runs failed."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    logs = root / "table-logs"
    if jobs > 1:
        logs.mkdir(parents=True, exist_ok=True)

    def train(proxy: ProxyType) -> str | None:
        cmd = [sys.executable, *COMMAND.format(type=proxy.name).split()[1:], "--out", str(root)]
        if jobs == 1:
            code = subprocess.run(cmd, cwd=ROOT_DIR).returncode
        else:
            with open(logs / f"{proxy.name}.log", "w") as log:
                code = subprocess.run(cmd, cwd=ROOT_DIR, stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "OMP_NUM_THREADS": str(threads)}).returncode
            print(f"{proxy.name}: {'done' if code == 0 else 'failed'}", flush=True)
        return None if code == 0 else proxy.name

    with ThreadPoolExecutor(jobs) as pool:
        return [name for name in pool.map(train, proxies) if name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("types", nargs="*", metavar="TYPE", help="proxy types (default: all)")
    parser.add_argument("--run", action="store_true", help="train each type first: " + COMMAND)
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="with --run: types trained at once")
    parser.add_argument("--out", type=Path, default=Path(C.IMAGE_ROOT_DIR), metavar="ROOT",
                        help=f"where the runs are (default {C.IMAGE_ROOT_DIR})")
    args = parser.parse_args()
    proxies = [get_proxy(t) for t in args.types] or list(PROXIES.values())
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: give 1 or more")
    failed = run_all(proxies, args.out, args.jobs) if args.run else []
    print(f"command: {COMMAND.format(type='TYPE')}\n")
    print(HEADER)
    for proxy in proxies:
        print(row(args.out, proxy))
    if failed:
        where = "its output above" if args.jobs == 1 else f"{args.out}/table-logs/<type>.log"
        raise UserError(f"training {', '.join(failed)} failed (see {where}); their rows show what an "
                        "earlier run left, if any")


if __name__ == "__main__":
    cli_main(main)()
