"""Evaluation of one trained proxy: fidelity on the held-out stage-2 data, slider regression
through the proxy, and the closed loop through darktable, written to ``ROOT/eval/NAME``
(metrics.json, report.md) and ``ROOT/params/NAME.csv``.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, Sequence

import torch

from models.networks import EXACT_FAMILY
from models.proxy import Proxy
from utils.darktable.runner import Darktable, Job
from utils.data.manifest import read_spec
from utils.data.tapouts import TapoutDataset
from utils.errors import UserError
from utils.evaluation.closed_loop import closed_loop
from utils.evaluation.fidelity import chw, fidelity, weights_digest
from utils.evaluation.metrics import psnr
from utils.evaluation.regress import METHOD, pick_targets, slider_regression
from utils.evaluation.report import (RESULT_FORMAT, TargetResult, proxy_metrics, proxy_report, write_metrics,
                                     write_params_csv)
from utils.journal import Journal, run_lock
from utils.proxies.schema import ProxyType, Slider, render_size
from utils.runs import RunPaths
from utils.settings import DEFAULTS, Settings

log = logging.getLogger(__name__)


def evaluate(dt: Darktable, proxy: Proxy, proxy_type: ProxyType, name: str, paths: RunPaths, stage2: Path,
             device: torch.device, n_targets: int, seed: int, settings: Settings = DEFAULTS,
             progress: Callable[[str], None] = log.info) -> dict:
    """Everything above for one trained proxy; returns metrics.json's content. ``settings``:
    PARAM_TUNING_NUM_ITER, PARAM_TUNING_RESTARTS, REGRESSION_CROP, CREATE_ANIMATION,
    DARKTABLE_BATCH_SIZE, PRELOAD_MAX_MB."""
    s = settings
    slider_names = proxy.slider_names
    data = TapoutDataset(stage2, proxy.sliders, positional=proxy.spec.extra_channels, preload_mb=s.PRELOAD_MAX_MB,
                         native=proxy.spec.family == EXACT_FAMILY)
    progress(f"fidelity on {len(data)} held-out samples")
    fid = fidelity(proxy, data, device, proxy_type.baseline)
    targets = pick_targets(n_targets, len(data), seed) if proxy.sliders else []
    animations = paths.animations(name) if s.CREATE_ANIMATION else None
    folder = paths.evaluation(name)
    with run_lock(folder / ".lock", f"evaluating {name}"):
        progress(f"slider regression on {len(targets)} targets, {s.PARAM_TUNING_NUM_ITER} iterations")
        meta = {"weights": weights_digest(proxy), "dataset": str(stage2),
                "manifest": hashlib.sha1((stage2 / "manifest.csv").read_bytes()).hexdigest()[:16], "seed": seed,
                "iterations": s.PARAM_TUNING_NUM_ITER, "restarts": s.PARAM_TUNING_RESTARTS,
                "crop": s.REGRESSION_CROP, "animations": animations is not None, "format": RESULT_FORMAT,
                "method": METHOD}
        with Journal(folder / "regression.jsonl", meta) as journal:
            if len(journal):
                progress(f"{len(journal)} targets regressed by an earlier run are kept")
            rows = slider_regression(proxy, proxy_type, data, targets, device, s.PARAM_TUNING_NUM_ITER,
                                     s.PARAM_TUNING_RESTARTS, seed, animations, journal, s.REGRESSION_CROP)
        if rows:
            proxy_closed_loop(dt, proxy_type, rows, data, targets, proxy.sliders, s.DARKTABLE_BATCH_SIZE)
        metrics = proxy_metrics(name, slider_names, fid, len(data), dt.install.version_string, rows,
                                proxy_type.baseline)
        write_metrics(folder, metrics, proxy_report(metrics))
        write_params_csv(paths.params_csv(name), "sample", slider_names, rows)
    return metrics


def proxy_closed_loop(dt: Darktable, proxy_type: ProxyType, rows: Sequence[TargetResult], data: TapoutDataset,
                      targets: Sequence[int], sliders: Sequence[Slider], batch_size: int) -> None:
    """Render every target's recovered sliders with darktable, as its stage-2 sample was
    rendered, and score the module's output against the sample's."""
    spec = read_spec(data.folder)
    source = Path(spec.get("source_dir", ""))
    jobs = []
    for row in rows:
        image = source / row.image
        if not image.is_file():
            raise UserError(f"closed loop: source image {image} of {data.folder} is gone; "
                            "put it back or regenerate the stage-2 data")
        # sigmoid keeps u inside (0, 1); clamping only absorbs float rounding at the ends
        values = {s.name: s.clamp(v) for s, v in zip(sliders, row.recovered)}
        jobs.append(Job(image, (proxy_type.history_item(dt, values),)))

    def score(k: int, tap_out) -> float:
        i = targets[k]
        rendered = data.canonical(chw(tap_out), data.rows[i])
        return float(psnr(rendered[None], data[i][1][None])[0])

    size, hq = render_size(proxy_type, int(spec.get("size", 0)))
    closed_loop(dt, rows, jobs, proxy_type.operation, score, size, hq, batch_size)
