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

import Constants as C
from models.networks import FAMILIES
from utils.cli import (
    add_common_args,
    ask,
    disk_usage,
    proxy_name,
    root_dir,
    slider_names,
)
from utils.darktable.runner import Darktable
from utils.data.generate import Shard, generate
from utils.data.images import builtin_images, list_images
from utils.data.manifest import read_manifest, read_spec, save_dataset_preview
from utils.errors import UserError, cli_main
from utils.evaluation.evaluate import evaluate
from utils.evaluation.report import report_table
from utils.proxies.registry import PROXIES, describe, get_proxy
from utils.proxies.train import default_config, resolve_device, train
from utils.proxies.trained import load_trained
from utils.settings import configure

log = logging.getLogger("darktable_proxies")
PARTIAL = 3   # exit status when samples failed (user errors exit with 2)


def parse_args() -> argparse.Namespace:
    proxies = "\n".join(f"  {describe(p)}" for p in PROXIES.values())
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"proxy types and their sliders (range sampled and learned):\n{proxies}")
    parser.add_argument("proxy", nargs="?", metavar="PROXY", help="proxy type (see below)")
    parser.add_argument("--list-proxies", action="store_true", help="print every proxy type and exit")
    parser.add_argument("-n", type=int, metavar="N", help="slider settings per stage-1 image")
    parser.add_argument("-p", "--params", metavar="SLIDERS", help="comma-separated sliders to learn (default: all)")
    parser.add_argument("-c", "--name", metavar="NAME", help="proxy name (default: <proxy>_<sliders...>)")
    parser.add_argument("-d", "--dataset", metavar="DATASET",
                        help="use an existing stage-1 dataset (a name under ROOT/stage_1 or a path); no generation")
    parser.add_argument("--images", type=Path, metavar="DIR", help="stage-1 images (default: built-in training set)")
    parser.add_argument("--eval-images", type=Path, metavar="DIR", help="stage-2 images (default: built-in evaluation set)")
    parser.add_argument("--size", type=int, metavar="PX", help=f"long side of stored tap-outs, 0 = full (default {C.TAPOUT_SIZE})")
    parser.add_argument("--workers", type=int, metavar="K", help="darktable processes in parallel (default: cores)")
    parser.add_argument("--seed", type=int, metavar="S", help=f"seed of slider sampling (default {C.SEED})")
    parser.add_argument("--shard", metavar="I/N", help="generate only the I-th of N equal shares of the samples")
    parser.add_argument("--generate-only", action="store_true", help="stop after data generation")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, help=f"epochs (default PROXY_MODEL_NUM_EPOCH = {C.PROXY_MODEL_NUM_EPOCH})")
    train.add_argument("--batch-size", type=int, help=f"samples per step (default {C.PROXY_MODEL_BATCH_SIZE})")
    train.add_argument("--lr", type=float, help=f"Adam learning rate (default {C.PROXY_MODEL_LR:g})")
    train.add_argument("--model", choices=FAMILIES, dest="family",
                       help="network family (default: the proxy type's, see README)")
    train.add_argument("--max-minutes", type=float, metavar="M", help="stop training after M minutes")
    train.add_argument("--resume", action="store_true",
                       help="continue training from last.pt, even when that run completed "
                            "(an interrupted run is resumed without it)")
    train.add_argument("--save-every", type=int, metavar="K", help="also keep every K-th epoch's checkpoint")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("-r", "--regression-targets", type=int, metavar="R",
                            help=f"stage-2 targets for slider regression (default {C.REGRESSION_TARGETS})")
    evaluation.add_argument("--no-eval", action="store_true", help="stop after training")
    add_common_args(parser)
    return parser.parse_args()


def existing_dataset(root: Path, dataset: str) -> Path:
    for folder in (root / "stage_1" / dataset, Path(dataset)):
        if (folder / "manifest.csv").exists():
            return folder
    raise UserError(f"no dataset {dataset!r}: neither {root / 'stage_1' / dataset} nor {dataset} "
                    "holds a manifest.csv")


def generate_stage(dt, proxy, sliders, images, folder, per_image, stage, args) -> int:
    """Generate (or complete) one stage; the number of samples that failed."""
    if not ask(f"generate stage {stage}: {per_image} settings x {len(images)} images into {folder}?"):
        return 0
    report = generate(dt, proxy, sliders, images, folder, per_image,
                      seed=C.SEED if args.seed is None else args.seed, stage=stage,
                      size=C.TAPOUT_SIZE if args.size is None else args.size,
                      workers=args.workers or os.cpu_count() or 1, shard=Shard.parse(args.shard))
    used = disk_usage(folder)
    log.info("stage %d: %d rows in %s (%d new, %.2f samples/s, %.0f kB per sample)", stage,
             report.rows, folder / "manifest.csv", report.generated, report.samples_per_second,
             used / max(report.rows, 1) / 1024)
    if report.failed:
        log.warning("stage %d: %d samples failed (listed with darktable's message in %s; first: %s); "
                    "rerun the same command to retry them", stage, len(report.failed), report.failures,
                    next(iter(report.failed.values())))
        if not report.rows:
            raise UserError(f"stage {stage}: no sample could be generated ({len(report.failed)} failed, "
                            f"listed in {report.failures}); darktable said: {next(iter(report.failed.values()))}")
    if report.rows:
        save_dataset_preview(folder, sliders)
    return len(report.failed)


def exit_status(failed: int) -> int:
    """0, or PARTIAL when some samples failed: the run did everything else with the rest."""
    if failed:
        log.warning("%d samples failed (see the warnings above); everything else is done and "
                    "kept: rerun the same command to retry them. Exit status %d", failed, PARTIAL)
        return PARTIAL
    return 0


def main() -> int:
    args = parse_args()
    configure(args.set)
    if args.list_proxies:
        for proxy in PROXIES.values():
            print(describe(proxy))
        return 0
    if not args.proxy:
        raise UserError("name a proxy type (see --list-proxies), e.g. "
                        "'python Darktable_proxies.py exposure -n 50'")
    proxy = get_proxy(args.proxy)
    sliders = proxy.select(slider_names(args.params))
    name = proxy_name(proxy.name, sliders, args.name)
    root = root_dir(args)
    if args.size is not None and args.size < 0:
        raise UserError(f"--size {args.size}: use a positive long side in pixels, or 0 for full size")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers}: use 1 or more")
    targets = C.REGRESSION_TARGETS if args.regression_targets is None else args.regression_targets
    if targets < 0:
        raise UserError(f"-r {targets}: use 0 or more regression targets")

    cfg = default_config(proxy, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         family=args.family, device=args.device, max_minutes=args.max_minutes,
                         resume=args.resume or None, seed=args.seed, save_every=args.save_every)
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    failed = 0   # samples darktable could not render, even after retries
    if args.dataset:
        stage1 = existing_dataset(root, args.dataset)
        spec = read_spec(stage1)
        if not args.params:
            sliders = proxy.select(spec.get("sliders", []))
            name = proxy_name(proxy.name, sliders, args.name)
        log.info("using dataset %s (%d samples)", stage1, len(read_manifest(stage1)))
    elif torchrun:
        raise UserError("under torchrun, generate the data first (--generate-only, one process) "
                        "and train with -d DATASET")
    else:
        if args.n is None or args.n < 1:
            raise UserError("-n N: give the number of slider settings per image (1 or more)")
        images = list_images(args.images or builtin_images("train"))
        eval_images = list_images(args.eval_images or builtin_images("eval"))
        dt = Darktable()
        stage1 = root / "stage_1" / name
        if C.GENERATE_STAGE_1:
            failed += generate_stage(dt, proxy, sliders, images, stage1, args.n, 1, args)
        if C.GENERATE_STAGE_2:
            failed += generate_stage(dt, proxy, sliders, eval_images, root / "stage_2" / name,
                                     C.STAGE_2_SAMPLES_PER_IMAGE, 2, args)
    if args.generate_only or not C.TRAIN_PROXY or not ask(f"train the {name} proxy?"):
        return exit_status(failed)
    stage2 = stage1.parent.parent / "stage_2" / stage1.name
    result = train(proxy, sliders, name, stage1, stage2, root, cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    log.info("trained %s: %d epochs, %.1f s/epoch, validation PSNR %.2f dB (best %.2f dB); weights in %s",
             name, result.epochs_done, result.seconds_per_epoch, result.last_psnr, result.best_psnr,
             result.weights)
    if args.no_eval:
        return exit_status(failed)
    if not (stage2 / "manifest.csv").exists():
        raise UserError(f"no stage-2 data at {stage2} to evaluate on; generate it "
                        "(--set GENERATE_STAGE_2=true) or pass --no-eval")
    device = resolve_device(args.device)
    proxy_model, _ = load_trained(root, name, device)
    metrics = evaluate(Darktable(), proxy_model, proxy, name, root, stage2, device, targets,
                       C.SEED if args.seed is None else args.seed)
    print(report_table(metrics))
    log.info("metrics: %s; recovered sliders: %s; predictions: %s%s", root / "eval" / name / "metrics.json",
             root / "params" / f"{name}.csv", root / f"{name}_predictions",
             f"; animations: {root / f'{name}_animations'}" if C.CREATE_ANIMATION else "")
    return exit_status(failed)


if __name__ == "__main__":
    cli_main(main)()
