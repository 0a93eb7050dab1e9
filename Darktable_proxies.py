#!/usr/bin/env python3
"""Darktable neural proxies: generate darktable ground truth for a module (proxy type).

Stage 1 renders N slider settings of every training image, stage 2 the held-out evaluation
images; each sample is the module's darktable input and output tap-out and its sliders.

Examples:
  python Darktable_proxies.py --list-proxies
  python Darktable_proxies.py exposure -n 50 --generate-only
  python Darktable_proxies.py colorbalancergb -n 20 -p saturation_global,contrast --workers 2
  python Darktable_proxies.py exposure -d exposure_exposure_black --epochs 20 --max-minutes 5
  torchrun --nproc_per_node 2 Darktable_proxies.py exposure -d exposure_exposure_black

Then it trains the proxy (unless --generate-only or TRAIN_PROXY is off): weights in
ROOT/NAME_model_weights (last.pt, best.pt, log.csv, log.png), prediction grids in
ROOT/NAME_predictions. Rerunning an interrupted command resumes it.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from models.networks import EXACT_FAMILY, FAMILIES
from utils.cli import (add_proxy_args, ask, check_name, check_number, check_out, named_proxy, parse,
                       script_parser)
from utils.darktable.runner import Darktable
from utils.data.budget import check_free, check_image_sizes, check_image_traits, dataset_bytes
from utils.data.generate import Shard
from utils.data.images import builtin_images, list_images
from utils.data.manifest import read_manifest, read_spec
from utils.devices import resolve_device
from utils.errors import PARTIAL, UserError, cli_main
from utils.evaluation.evaluate import evaluate
from utils.evaluation.report import proxy_report
from utils.proxies.make import DataRequest, disk_usage, generate_data, train_proxy
from utils.proxies.registry import PROXIES, describe, proxy_name
from utils.proxies.train import default_config
from utils.proxies.trained import load_trained
from utils.runs import RunPaths, held_out
from utils.settings import DEFAULTS, Settings

log = logging.getLogger("darktable_proxies")



def parse_args() -> tuple[argparse.Namespace, Settings, RunPaths]:
    proxies = "\n".join(f"  {describe(p)}" for p in PROXIES.values())
    parser = script_parser(__doc__, epilog=f"proxy types and their sliders (range sampled and learned):\n{proxies}")
    add_proxy_args(parser, "proxy type (see below)", required=False)
    parser.add_argument("--list-proxies", action="store_true", help="print every proxy type and exit")
    parser.add_argument("-n", type=int, metavar="N", help="slider settings per stage-1 image")
    parser.add_argument("-d", "--dataset", metavar="DATASET",
                        help="use an existing stage-1 dataset (a name under ROOT/stage_1 or a path); no generation")
    parser.add_argument("--images", type=Path, metavar="DIR", help="stage-1 images (default: built-in training set)")
    parser.add_argument("--eval-images", type=Path, metavar="DIR", help="stage-2 images (default: built-in evaluation set)")
    parser.add_argument("--size", type=int, metavar="PX", help=f"long side of stored tap-outs, 0 = full (default {DEFAULTS.TAPOUT_SIZE})")
    parser.add_argument("--workers", type=int, metavar="K", help="darktable processes in parallel (default: cores)")
    parser.add_argument("--seed", type=int, metavar="S", help=f"seed of slider sampling and training (default {DEFAULTS.SEED})")
    parser.add_argument("--shard", metavar="I/N", help="generate only the I-th of N equal shares of the samples")
    parser.add_argument("--generate-only", action="store_true", help="stop after data generation")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, help=f"epochs (default PROXY_MODEL_NUM_EPOCH = {DEFAULTS.PROXY_MODEL_NUM_EPOCH})")
    train.add_argument("--batch-size", type=int, help=f"samples per step (default {DEFAULTS.PROXY_MODEL_BATCH_SIZE})")
    train.add_argument("--lr", type=float, help=f"Adam learning rate (default {DEFAULTS.PROXY_MODEL_LR:g})")
    train.add_argument("--model", choices=FAMILIES + (EXACT_FAMILY,), dest="family",
                       help="network family (default: the proxy type's, see docs/proxies.md)")
    train.add_argument("--max-minutes", type=float, metavar="M", help="stop training after M minutes")
    train.add_argument("--resume", action="store_true",
                       help="continue training from last.pt, even when that run completed "
                            "(an interrupted run is resumed without it)")
    train.add_argument("--save-every", type=int, metavar="K", help="also keep every K-th epoch's checkpoint")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("-r", "--regression-targets", type=int, metavar="R",
                            help=f"stage-2 targets for slider regression (default {DEFAULTS.REGRESSION_TARGETS})")
    evaluation.add_argument("--no-eval", action="store_true", help="stop after training")
    return parse(parser)


def existing_dataset(paths: RunPaths, dataset: str) -> Path:
    for folder in (paths.stage(1, dataset), Path(dataset)):
        if (folder / "manifest.csv").exists():
            return folder
    raise UserError(f"no dataset {dataset!r}: neither {paths.stage(1, dataset)} nor {dataset} "
                    "holds a manifest.csv")


def check_numbers(args: argparse.Namespace) -> None:
    """Refuse numbers out of their domain before any work."""
    for flag, value, minimum in (("--size", args.size, 0), ("--workers", args.workers, 1), ("--seed", args.seed, 0),
                                 ("-r", args.regression_targets, 0), ("--epochs", args.epochs, 1),
                                 ("--batch-size", args.batch_size, 1), ("--max-minutes", args.max_minutes, 0),
                                 ("--save-every", args.save_every, 0)):
        check_number(flag, value, minimum)
    check_number("--lr", args.lr, above=0)


def check_request(args: argparse.Namespace, request: DataRequest, paths: RunPaths, settings: Settings) -> None:
    """What generation and training will need, checked before any of it starts: the proxy
    name fits the file system, --resume has a run to continue, the images are large enough,
    and the datasets fit on the disk."""
    check_name(request.name, paths)
    if args.resume and not (paths.weights(request.name) / "last.pt").exists():
        raise UserError(f"--resume: {paths.weights(request.name) / 'last.pt'} does not exist; "
                        "train without --resume first")
    if not request.images:      # an existing dataset (-d): nothing to generate
        return
    check_image_sizes([*request.images, *request.eval_images], request.proxy, request.size)
    check_image_traits([*request.images, *request.eval_images], request.proxy,
                          (args.family or request.proxy.model) == EXACT_FAMILY)
    needed = 0
    for stage, images, per_image in request.stages(settings):
        folder = paths.stage(stage, request.name)
        needed += max(0, dataset_bytes(request.proxy, images, per_image, request.size) -
                      (disk_usage(folder) if folder.is_dir() else 0))
    check_free(paths.root, needed, f"generating the {request.name} datasets",
               "lower -n or --size, free some space, or choose another --out")


def data_request(args: argparse.Namespace, settings: Settings) -> DataRequest:
    """What to generate, with every image checked."""
    if args.n is None or args.n < 1:
        raise UserError("-n N: give the number of slider settings per image (1 or more)")
    proxy, sliders, name = named_proxy(args)
    return DataRequest(proxy, sliders, name,
                       list_images(args.images or builtin_images("train", settings)),
                       list_images(args.eval_images or builtin_images("eval", settings)),
                       args.n, settings.TAPOUT_SIZE if args.size is None else args.size,
                       args.workers or os.cpu_count() or 1,
                       settings.SEED if args.seed is None else args.seed, Shard.parse(args.shard))


def from_dataset(args: argparse.Namespace, paths: RunPaths) -> tuple[DataRequest, Path]:
    """The request an existing dataset (-d) answers, and its folder; its sliders unless -p."""
    stage1 = existing_dataset(paths, args.dataset)
    proxy, sliders, name = named_proxy(args)
    if not args.params:
        sliders = proxy.select(read_spec(stage1).get("sliders", []))
        name = proxy_name(proxy.name, sliders, args.name)
    log.info("using dataset %s (%d samples)", stage1, len(read_manifest(stage1)))
    return DataRequest(proxy, sliders, name, (), (), 0, 0, 1, 0), stage1


def exit_status(failed: int) -> int:
    """0, or PARTIAL when some samples failed: the run did everything else with the rest."""
    if failed:
        log.warning("%d samples failed (see the warnings above); everything else is done and "
                    "kept: rerun the same command to retry them. Exit status %d", failed, PARTIAL)
        return PARTIAL
    return 0


def main() -> int:
    args, settings, paths = parse_args()
    if args.list_proxies:
        for proxy in PROXIES.values():
            print(describe(proxy))
        return 0
    if not args.proxy:
        raise UserError("name a proxy type (see --list-proxies), e.g. "
                        "'python Darktable_proxies.py exposure -n 50'")
    proxy, _, _ = named_proxy(args)
    check_numbers(args)
    check_out(paths)
    cfg = default_config(proxy, settings, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         family=args.family, device=args.device, max_minutes=args.max_minutes,
                         resume=args.resume or None, seed=args.seed, save_every=args.save_every)
    device = resolve_device(args.device)   # a missing device is refused before any work
    failed = 0   # samples darktable could not render, even after retries
    if args.dataset:
        request, stage1 = from_dataset(args, paths)
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("under torchrun, generate the data first (--generate-only, one process) "
                        "and train with -d DATASET")
    else:
        request = data_request(args, settings)
        stage1 = paths.stage(1, request.name)
    check_request(args, request, paths, settings)
    if not args.dataset:
        failed = generate_data(Darktable(settings), request, paths, settings,
                               lambda question: ask(question, settings.INTERACTIVE))
    if args.generate_only or not settings.TRAIN_PROXY or not ask(f"train the {request.name} proxy?",
                                                                 settings.INTERACTIVE):
        return exit_status(failed)
    train_proxy(request, stage1, paths, cfg)
    if int(os.environ.get("RANK", "0")) != 0 or args.no_eval:
        return exit_status(failed)
    evaluate_proxy(args, request, stage1, paths, settings, device)
    return exit_status(failed)


def evaluate_proxy(args: argparse.Namespace, request: DataRequest, stage1: Path, paths: RunPaths,
                   settings: Settings, device) -> None:
    """Evaluate the trained proxy on its stage-2 data and print the report."""
    stage2 = held_out(stage1)
    if not (stage2 / "manifest.csv").exists():
        raise UserError(f"no stage-2 data at {stage2} to evaluate on; generate it "
                        "(--set GENERATE_STAGE_2=true) or pass --no-eval")
    name = request.name
    targets = settings.REGRESSION_TARGETS if args.regression_targets is None else args.regression_targets
    proxy_model, _ = load_trained(paths, name, device)
    metrics = evaluate(Darktable(settings), proxy_model, request.proxy, name, paths, stage2, device, targets,
                       settings.SEED if args.seed is None else args.seed, settings)
    print(proxy_report(metrics))
    log.info("metrics: %s; recovered sliders: %s; predictions: %s%s", paths.evaluation(name) / "metrics.json",
             paths.params_csv(name), paths.predictions(name),
             f"; animations: {paths.animations(name)}" if settings.CREATE_ANIMATION else "")


if __name__ == "__main__":
    cli_main(main)()
