#!/usr/bin/env python3
"""Pipeline regression: chain trained proxies as in pipeline_config.txt (the modules a user
edits; the project fills in the ones darktable runs between them, up to the display RGB) and
recover the sliders of all blocks at once.

For each target, darktable renders an evaluation image with random values of every listed
slider; the chain (with darktable's own colour conversions between blocks) starts from the
first block's darktable input and is fitted, by gradient descent on all sliders jointly, to
darktable's display RGB. The recovered sliders are rendered again with darktable (closed
loop). With --match, the target is the user's own export of a raw, and the recovered edit
is written as an XMP sidecar darktable opens.

Examples:
  python Pipeline_regression.py
  python Pipeline_regression.py --config my_chain.txt -n 20 --iters 500
  python Pipeline_regression.py --train-missing --max-minutes 5
  python Pipeline_regression.py --match look.tif --image photo.dng --xmp photo.xmp

Results: ROOT/pipeline/metrics.json and report.md, ROOT/params/pipeline.csv, every block's
output in ROOT/pipeline/outputs (SAVE_ALL_OUTPUTS) and animations in ROOT/pipeline_animations
(PIPELINE_CREATE_ANIMATION); with --match, the XMP, ROOT/match/<raw stem>/metrics.json and
sheet.png. Rerunning an interrupted command continues it.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from utils.cli import check_number, check_out, parse, script_parser
from utils.darktable.dumps import is_raw
from utils.darktable.runner import Darktable
from utils.data.budget import check_free, pipeline_bytes
from utils.data.images import builtin_images, list_images
from utils.devices import resolve_device
from utils.errors import UserError, cli_main
from utils.journal import run_lock
from utils.pipeline.chain import Chain, build_blocks, choose_conversions
from utils.pipeline.chaindata import chain_lines
from utils.pipeline.config import parse_config
from utils.pipeline.fill import proxy_lines
from utils.pipeline.finetune import fine_tune_chain, fine_tune_report
from utils.pipeline.match import check_aspects, match_jobs, match_one, orientation_item, summary
from utils.pipeline.regress import pipeline_report, run_regression
from utils.pipeline.targets import generate_targets, image_contexts
from utils.proxies.trained import load_trained
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
                        help="train the chain's proxies together on the chain's own data, against each "
                             "block's and darktable's final output (--max-minutes M; default 10)")
    parser.add_argument("--max-minutes", type=float, metavar="M", default=0,
                        help="training minutes per missing proxy, and of --fine-tune (0 = no limit)")
    parser.add_argument("--match", type=Path, metavar="TARGET",
                        help="recover the edit that turns --image RAW into TARGET (an sRGB TIFF/PNG/JPEG "
                             "exported by darktable; or a folder of them, paired with --image DIR by name)")
    parser.add_argument("--image", type=Path, metavar="RAW", help="with --match: the raw (or folder of raws)")
    parser.add_argument("--xmp", type=Path, metavar="OUT",
                        help="with --match: the XMP to write (default ROOT/match/<raw stem>.xmp; a folder "
                             "for folders)")
    parser.add_argument("--force", action="store_true", help="with --match: overwrite an existing XMP")
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
    if args.match is not None:
        if args.image is None:
            raise UserError("--match TARGET needs --image RAW: the raw the target was exported from")
        jobs = match_jobs(args.match, args.image, args.xmp, paths.root, args.force)
        images = [job.raw for job in jobs]
    else:
        if args.image is not None or args.xmp is not None or args.force:
            raise UserError("--image, --xmp and --force go with --match TARGET")
        images = list_images(args.eval_images or builtin_images("eval", settings))
        check_free(paths.root, pipeline_bytes(images, targets, len(listed), settings.SAVE_ALL_OUTPUTS),
                   f"rendering {targets} pipeline targets", "use fewer targets (-n), free some space, or choose another --out")
    training = args.train_missing or args.fine_tune
    train_images = list_images(args.images or builtin_images("train", settings)) if training else []
    eval_images = list_images(args.eval_images or builtin_images("eval", settings)) if training else []

    dt = Darktable(settings)
    if args.match is not None:
        check_aspects(dt, jobs)
    extra = (orientation_item(dt),) if args.match is not None and is_raw(images[0]) else ()
    lines, probed, chain_data = chain_lines(dt, listed, images[0], paths, settings, train_images, eval_images,
                                            args.train_missing, args.fine_tune, args.device, args.max_minutes, extra)
    blocks = build_blocks(lines, lambda name: load_trained(paths, name, device)[0])
    chain = Chain(blocks, choose_conversions(blocks, probed))
    if not chain.n_sliders:
        raise UserError("the config recovers no slider: give at least one block with sliders")
    if args.fine_tune:
        contexts = image_contexts(dt, chain, train_images + eval_images, chain_data.final(1), settings)
        print(fine_tune_report(fine_tune_chain(chain, chain_data, contexts, paths.weights, args.max_minutes,
                                               device, settings)))
    if args.match is not None:
        results = []
        for job in jobs:
            metrics = match_one(dt, chain, job, paths.root / "match" / job.raw.stem, device, iterations, settings)
            print(f"{job.raw.name}: darktable PSNR: {metrics['darktable_psnr']:.2f} dB (proxy chain "
                  f"{metrics['proxy_psnr']:.2f} dB); edit written to {job.xmp}")
            results.append(metrics)
        if len(results) > 1:
            print(summary(results))
        return 0
    paths.pipeline().mkdir(parents=True, exist_ok=True)
    with run_lock(paths.pipeline() / ".lock", "regressing the pipeline"):
        data, conversions = generate_targets(dt, chain, images, paths.pipeline("data"), targets, settings,
                                             render=not args.skip)
        chain = Chain(blocks, conversions)
        log.info("chain: %s", " -> ".join(f"{b.name}" + (f" [{c}]" if c != "identity" else "")
                                           for b, c in zip(blocks, ["identity", *conversions])))
        metrics = run_regression(dt, chain, data, conversions, paths, images[0].parent, device, iterations,
                                 settings)
    print(pipeline_report(metrics))
    log.info("metrics: %s; recovered sliders: %s; block outputs: %s%s", paths.pipeline() / "metrics.json",
             paths.pipeline_csv, paths.pipeline("outputs"),
             f"; animations: {paths.pipeline_animations}" if settings.PIPELINE_CREATE_ANIMATION else "")
    return 0


if __name__ == "__main__":
    cli_main(main)()
