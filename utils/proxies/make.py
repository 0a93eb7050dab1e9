"""Making a proxy: its darktable data (stage 1 for training, stage 2 held out), then its
training. ``Darktable_proxies.py`` and the pipeline's ``--train-missing`` both make proxies
this way."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from utils.darktable.runner import Darktable
from utils.data.generate import Shard, generate
from utils.data.manifest import save_dataset_preview
from utils.errors import UserError
from utils.proxies.schema import ProxyType, Slider
from utils.proxies.train import TrainConfig, TrainResult, train
from utils.runs import RunPaths, held_out
from utils.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataRequest:
    """The data of one proxy: which renders, of which images, how."""

    proxy: ProxyType
    sliders: tuple[Slider, ...]
    name: str
    images: Sequence[Path]          # stage 1 (training)
    eval_images: Sequence[Path]     # stage 2 (held out)
    per_image: int                  # slider settings per stage-1 image
    size: int                       # long side of stored tap-outs (0 = full size)
    workers: int                    # darktable processes in parallel
    seed: int
    shard: Shard = Shard(1, 1)

    def stages(self, settings: Settings) -> list[tuple[int, Sequence[Path], int]]:
        """(stage, images, settings per image) of each stage the GENERATE_STAGE_1/2 settings ask for."""
        return [(stage, images, per_image) for stage, wanted, images, per_image in (
            (1, settings.GENERATE_STAGE_1, self.images, self.per_image),
            (2, settings.GENERATE_STAGE_2, self.eval_images, settings.STAGE_2_SAMPLES_PER_IMAGE)) if wanted]


def disk_usage(folder: Path) -> int:
    """Bytes used by the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def generate_stage(dt: Darktable, request: DataRequest, stage: int, images: Sequence[Path], per_image: int,
                   paths: RunPaths, settings: Settings) -> int:
    """Generate (or complete) stage 1 or 2 of ``request``; the number of samples that failed."""
    folder = paths.stage(stage, request.name)
    report = generate(dt, request.proxy, request.sliders, images, folder, per_image, request.seed, stage,
                      request.size, request.workers, request.shard, settings=settings)
    log.info("stage %d: %d rows in %s (%d new, %.2f samples/s, %.0f kB per sample)", stage,
             report.rows, folder / "manifest.csv", report.generated, report.samples_per_second,
             disk_usage(folder) / max(report.rows, 1) / 1024)
    if report.failed:
        first = next(iter(report.failed.values()))
        log.warning("stage %d: %d samples failed (listed with darktable's message in %s; first: %s); "
                    "rerun the same command to retry them", stage, len(report.failed), report.failures, first)
        if not report.rows:
            raise UserError(f"stage {stage}: no sample could be generated ({len(report.failed)} failed, "
                            f"listed in {report.failures}); darktable said: {first}")
    if report.rows:
        save_dataset_preview(folder, request.sliders)
    return len(report.failed)


def generate_data(dt: Darktable, request: DataRequest, paths: RunPaths, settings: Settings,
                  ask: Callable[[str], bool] = lambda question: True) -> int:
    """The stages the GENERATE_STAGE_1/2 settings ask for (each confirmed by ``ask``); the
    number of samples that failed."""
    failed = 0
    for stage, images, per_image in request.stages(settings):
        if ask(f"generate stage {stage}: {per_image} settings x {len(images)} images "
               f"into {paths.stage(stage, request.name)}?"):
            failed += generate_stage(dt, request, stage, images, per_image, paths, settings)
    return failed


def train_proxy(request: DataRequest, stage1: Path, paths: RunPaths, cfg: TrainConfig) -> TrainResult:
    """Train ``request``'s proxy on ``stage1``, validated on its stage-2 twin."""
    stage2 = held_out(stage1)
    result = train(request.proxy, request.sliders, request.name, stage1, stage2, paths, cfg)
    if os.environ.get("RANK", "0") == "0":   # under torchrun, rank 0 speaks
        log.info("trained %s: %d epochs, %.1f s/epoch, validation PSNR %.2f dB (best %.2f dB); weights in %s",
                 request.name, result.epochs_done, result.seconds_per_epoch, result.last_psnr,
                 result.best_psnr, result.weights)
    return result
