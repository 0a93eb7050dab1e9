#!/usr/bin/env python3
"""Pipeline regression: chain trained proxies as in pipeline_config.txt and recover the
sliders of all blocks at once from darktable renders.

For each target, darktable renders an evaluation image with random values of every listed
slider; the chain of proxies (with darktable's own colour conversions between blocks) starts
from the first block's darktable input and is fitted, by gradient descent on all sliders
jointly, to the last block's darktable output. The recovered sliders are rendered again with
darktable (closed loop).

Examples:
  python Pipeline_regression.py
  python Pipeline_regression.py --config my_chain.txt -n 20 --iters 500
  python Pipeline_regression.py --train-missing --max-minutes 5

Results: ROOT/pipeline/metrics.json and report.md, ROOT/params/pipeline.csv, every block's
output in ROOT/pipeline/outputs (SAVE_ALL_OUTPUTS) and animations in ROOT/pipeline_animations
(PIPELINE_CREATE_ANIMATION). Rerunning an interrupted command continues it.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from utils.cli import check_number, check_out, parse, script_parser
from utils.darktable.runner import Darktable
from utils.data.budget import check_free, pipeline_bytes
from utils.data.images import builtin_images, list_images
from utils.devices import resolve_device
from utils.errors import UserError, cli_main
from utils.journal import run_lock
from utils.darktable.dumps import is_raw
from utils.pipeline.chain import Chain, build_blocks
from utils.pipeline.chaindata import ChainData, sliders_of, train_chain_proxies
from utils.pipeline.config import parse_config
from utils.pipeline.fill import exact_block, fill_in, line_types, probe, proxy_lines
from utils.pipeline.regress import pipeline_report, run_regression
from utils.pipeline.targets import generate_targets
from utils.proxies.trained import checkpoint_path, load_trained, missing_proxies, trained_type
from utils.runs import RunPaths
from utils.settings import DEFAULTS, Settings

log = logging.getLogger("pipeline_regression")


def parse_args() -> tuple[argparse.Namespace, Settings, RunPaths]:
    parser = script_parser(__doc__)
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help=f"blocks of the chain (default Constants.PIPELINE_CONFIG = {DEFAULTS.PIPELINE_CONFIG})")
    parser.add_argument("-n", type=int, metavar="TARGETS", help=f"targets (default {DEFAULTS.PIPELINE_TARGETS})")
    parser.add_argument("--images", type=Path, metavar="DIR",
                        help="training images for --train-missing (default: built-in training set)")
    parser.add_argument("--eval-images", type=Path, metavar="DIR",
                        help="images rendered as targets (default: built-in evaluation set)")
    parser.add_argument("--iters", type=int, metavar="N",
                        help=f"regression iterations (default {DEFAULTS.PIPELINE_REGRESSION_NUM_ITERS})")
    parser.add_argument("--train-missing", action="store_true",
                        help="train every block whose proxy is not trained yet on the chain's own data "
                             "(else that is an error)")
    parser.add_argument("--fine-tune", action="store_true",
                        help="continue the training of every trained block on the chain's own data")
    parser.add_argument("--max-minutes", type=float, metavar="M", default=0,
                        help="training minutes per proxy (--train-missing, --fine-tune; 0 = no limit)")
    parser.add_argument("-s", "--skip", action="store_true",
                        help="skip data generation: reuse the pipeline data already in ROOT/pipeline/data")
    return parse(parser)


def main() -> int:
    args, settings, paths = parse_args()
    listed = proxy_lines(parse_config(args.config or Path(settings.PIPELINE_CONFIG)), paths.is_trained)
    targets = settings.PIPELINE_TARGETS if args.n is None else args.n
    iterations = settings.PIPELINE_REGRESSION_NUM_ITERS if args.iters is None else args.iters
    check_number("-n", targets, 1)
    check_number("--iters", iterations, 1)
    check_number("--max-minutes", args.max_minutes, 0)
    device = resolve_device(args.device)
    check_out(paths)
    eval_dir = args.eval_images or builtin_images("eval", settings)
    images = list_images(eval_dir)
    training = args.train_missing or args.fine_tune
    train_images = list_images(args.images or builtin_images("train", settings)) if training else []

    # the chain, checked from one darktable render before any training
    dt = Darktable(settings)
    types = line_types(listed, lambda name: trained_type(paths, name))
    lines = fill_in(listed, types, probe(dt, listed, types, images[0], settings), is_raw(images[0]))
    log.info("chain: %s", " -> ".join(line.name + ("" if line.lineno else " (filled in)") for line in lines))
    proxies = [line for line in lines if not exact_block(line)]
    missing = missing_proxies(proxies, paths, args.train_missing)
    check_free(paths.root, pipeline_bytes(images, targets, len(lines), settings.SAVE_ALL_OUTPUTS),
               f"rendering {targets} pipeline targets", "use fewer targets (-n), free some space, or choose another --out")
    if missing or args.fine_tune:
        chain_data = ChainData(lines, types, lambda line: sliders_of(line, paths), paths, settings,
                               dt.install.version_string)
        chain_data.make(dt, train_images, images, settings.PIPELINE_TRAIN_SAMPLES)
        tune = [line for line in proxies if line not in missing] if args.fine_tune else []
        train_chain_proxies(chain_data, missing, tune, lambda name: checkpoint_path(paths, name), settings,
                            args.device, args.max_minutes)

    blocks = build_blocks(lines, lambda name: load_trained(paths, name, device)[0])
    chain = Chain(blocks, ["identity"] * (len(blocks) - 1))
    if not chain.n_sliders:
        raise UserError("the config recovers no slider: give at least one block with sliders")
    paths.pipeline().mkdir(parents=True, exist_ok=True)
    with run_lock(paths.pipeline() / ".lock", "regressing the pipeline"):
        data, conversions = generate_targets(dt, chain, images, paths.pipeline("data"), targets, settings,
                                             render=not args.skip)
        chain = Chain(blocks, conversions)
        log.info("chain: %s", " -> ".join(f"{b.name}" + (f" [{c}]" if c != "identity" else "")
                                           for b, c in zip(blocks, ["identity", *conversions])))
        metrics = run_regression(dt, chain, data, conversions, paths, Path(eval_dir), device, iterations,
                                 settings)
    print(pipeline_report(metrics))
    log.info("metrics: %s; recovered sliders: %s; block outputs: %s%s", paths.pipeline() / "metrics.json",
             paths.pipeline_csv, paths.pipeline("outputs"),
             f"; animations: {paths.pipeline_animations}" if settings.PIPELINE_CREATE_ANIMATION else "")
    return 0


if __name__ == "__main__":
    cli_main(main)()
