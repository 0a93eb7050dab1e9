"""Evaluation of one trained proxy: fidelity, slider regression and closed loop, written to
``ROOT/eval/NAME`` and ``ROOT/params/NAME.csv``.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import torch

import Constants as C
from models.proxy import Proxy
from utils.darktable.runner import Darktable
from utils.data.tapouts import TapoutDataset
from utils.evaluation.closed_loop import closed_loop
from utils.evaluation.fidelity import fidelity, weights_digest
from utils.evaluation.regress import pick_targets, slider_regression
from utils.evaluation.report import summarise, write_results
from utils.journal import Journal, run_lock
from utils.proxies.schema import ProxyType

log = logging.getLogger(__name__)


def evaluate(dt: Darktable, proxy: Proxy, proxy_type: ProxyType, name: str, root: Path, stage2: Path,
             device: torch.device, n_targets: int, seed: int,
             progress: Callable[[str], None] = log.info) -> dict:
    """Everything above for one trained proxy; returns metrics.json's content."""
    slider_names = proxy.slider_names
    sliders = [proxy_type.slider(n) for n in slider_names]
    data = TapoutDataset(stage2, sliders, positional=proxy.spec.extra_channels > 0)
    progress(f"fidelity on {len(data)} held-out samples")
    fid = fidelity(proxy, data, device)
    targets = pick_targets(n_targets, len(data), seed) if sliders else []
    animations = root / f"{name}_animations" if C.CREATE_ANIMATION else None
    folder = root / "eval" / name
    with run_lock(folder / ".lock", f"evaluating {name}"):
        progress(f"slider regression on {len(targets)} targets, {C.PARAM_TUNING_NUM_ITER} iterations")
        meta = {"weights": weights_digest(proxy), "dataset": str(stage2),
                "manifest": hashlib.sha1((stage2 / "manifest.csv").read_bytes()).hexdigest()[:16], "seed": seed,
                "iterations": C.PARAM_TUNING_NUM_ITER, "restarts": C.PARAM_TUNING_RESTARTS,
                "crop": C.REGRESSION_CROP, "animations": animations is not None}
        with Journal(folder / "regression.jsonl", meta) as journal:
            if len(journal):
                progress(f"{len(journal)} targets regressed by an earlier run are kept")
            rows = slider_regression(proxy, proxy_type, data, targets, device, C.PARAM_TUNING_NUM_ITER,
                                     C.PARAM_TUNING_RESTARTS, seed, animations, journal)
        if rows:
            progress("closed loop: rendering the recovered sliders with darktable")
            closed_loop(dt, proxy_type, rows, data, targets, slider_names)
        metrics = summarise(name, slider_names, fid, len(data), dt.install.version_string, rows)
        write_results(root, name, metrics, rows, slider_names)
    return metrics
