"""Benchmark of look matching (``Pipeline_regression.py --match``) on darktable's own exports.

``python -m tools.match_bench --config CHAIN [-n N] [--size S] [--out ROOT]`` draws ``N``
random settings (Latin hypercube) of the chain's recovered sliders, exports each evaluation
raw with darktable at those settings (display RGB at ``S`` px, quantised to 16 bits as
darktable's TIFF writer does), recovers the edit of every export exactly as ``--match``
does, and reports the darktable PSNR of the written XMPs (mean, worst) and each slider's
recovery error, with the wall time. Writes ``ROOT/match_bench/results.json``. The proxies
must be trained (``Pipeline_regression.py --config CHAIN --train-missing`` trains them).
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
import zlib
from pathlib import Path

import numpy as np
import tifffile
import torch

from utils.atomic import write_text_atomic
from utils.darktable.runner import Darktable
from utils.data.images import builtin_images, list_images
from utils.data.sampling import latin_hypercube
from utils.errors import cli_main
from utils.pipeline.chain import Chain, build_blocks
from utils.pipeline.chaindata import chain_lines
from utils.pipeline.config import parse_config
from utils.pipeline.fill import proxy_lines
from utils.pipeline.match import MatchJob, chain_values, match_one, orientation_item
from utils.pipeline.targets import history
from utils.proxies.trained import load_trained
from utils.runs import RunPaths
from utils.settings import configure

log = logging.getLogger("match_bench")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("-n", type=int, default=10, help="targets (default 10)")
    parser.add_argument("--size", type=int, default=512, help="long side of the exports (default 512)")
    parser.add_argument("--iters", type=int, help="regression iterations (default PIPELINE_REGRESSION_NUM_ITERS)")
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = configure()
    paths = RunPaths(args.out)
    device = torch.device("cpu")
    dt = Darktable(settings)
    raws = list_images(builtin_images("eval", settings))
    listed = proxy_lines(parse_config(args.config), paths.is_trained)
    lines = chain_lines(dt, listed, raws[0], paths, settings, [], [], False, False, "cpu", 0,
                        (orientation_item(dt),))[0]
    chain = Chain(build_blocks(lines, lambda name: load_trained(paths, name, device)[0]),
                  ["identity"] * (len(lines) - 1))
    iterations = args.iters or settings.PIPELINE_REGRESSION_NUM_ITERS
    folder = paths.root / "match_bench"
    (folder / "targets").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([settings.SEED, zlib.crc32(b"match")])
    points = latin_hypercube(args.n, chain.n_sliders, rng)
    rows, start = [], time.monotonic()
    for k in range(args.n):
        raw = raws[k % len(raws)]
        true = chain.clamped_values([float(v) for v in
                                     chain_values(chain, torch.from_numpy(points[k]).float())])
        items = history(dt, chain, true, raw, settings) + (orientation_item(dt),)
        export = np.clip(dt.render(raw, items, (), args.size, True, output=True).output, 0.0, 1.0)
        target = folder / "targets" / f"{raw.stem}_{k:03d}.tif"
        tifffile.imwrite(target, np.round(export * 65535).astype(np.uint16), photometric="rgb")
        job = MatchJob(raw, target, folder / f"{raw.stem}_{k:03d}.xmp")
        t0 = time.monotonic()
        metrics = match_one(dt, chain, job, folder / target.stem, device, iterations, settings)
        errors, chain_errors = (
            {f"{b}.{s}": abs(found[b][s] - v) for b, sl in true.items() for s, v in sl.items()}
            for found in (metrics["sliders"], metrics["chain_sliders"]))
        rows.append({"target": target.name, "true": true, "found": metrics["sliders"], "errors": errors,
                     "chain_errors": chain_errors, "darktable_psnr": metrics["darktable_psnr"],
                     "chain_edit_darktable_psnr": metrics["chain_edit_darktable_psnr"],
                     "proxy_psnr": metrics["proxy_psnr"], "seconds": round(time.monotonic() - t0, 1)})
        log.info("%s: darktable PSNR %.2f dB (chain's edit %s dB), errors %s", target.name,
                 metrics["darktable_psnr"], _dB(metrics["chain_edit_darktable_psnr"]),
                 ", ".join(f"{n} {e:.4f}" for n, e in errors.items()))
    scores = [r["darktable_psnr"] for r in rows]
    names = list(rows[0]["errors"])
    chain_scores = [r["chain_edit_darktable_psnr"] for r in rows if r["chain_edit_darktable_psnr"] is not None]
    result = {"config": args.config.read_text(), "targets": args.n, "size": args.size, "iterations": iterations,
              "polish_steps": settings.MATCH_POLISH_STEPS,
              "darktable_psnr_mean": float(np.mean(scores)), "darktable_psnr_min": float(np.min(scores)),
              "chain_edit_psnr_mean": float(np.mean(chain_scores)) if chain_scores else None,
              "chain_edit_psnr_min": float(np.min(chain_scores)) if chain_scores else None,
              "slider_error_mean": {n: float(np.mean([r["errors"][n] for r in rows])) for n in names},
              "slider_error_max": {n: float(np.max([r["errors"][n] for r in rows])) for n in names},
              "chain_slider_error_mean": {n: float(np.mean([r["chain_errors"][n] for r in rows])) for n in names},
              "seconds_per_target": float(np.mean([r["seconds"] for r in rows])),
              "wall_seconds": round(time.monotonic() - start, 1), "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "rows": rows}
    write_text_atomic(folder / "results.json", json.dumps(result, indent=1) + "\n")
    print(f"darktable PSNR of the written XMPs: mean {result['darktable_psnr_mean']:.2f} dB, worst "
          f"{result['darktable_psnr_min']:.2f} dB over {args.n} targets; {result['seconds_per_target']:.0f} s "
          "per target")
    if chain_scores:
        print(f"the proxy chain's edits before the darktable polish: mean {result['chain_edit_psnr_mean']:.2f} dB, "
              f"worst {result['chain_edit_psnr_min']:.2f} dB")
    for n in names:
        print(f"  {n}: error mean {result['slider_error_mean'][n]:.4f}, max {result['slider_error_max'][n]:.4f} "
              f"(chain's edit: mean {result['chain_slider_error_mean'][n]:.4f})")
    return 0


def _dB(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    cli_main(main)()
