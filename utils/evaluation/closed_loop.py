"""The closed loop: darktable renders the recovered sliders, and each render is scored against
darktable's target. One function for single proxies and pipelines: the caller says what to
render (a job per target) and how to score a render."""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

from utils.darktable.runner import Darktable, Job
from utils.evaluation.report import TargetResult

log = logging.getLogger(__name__)


def closed_loop(dt: Darktable, rows: Sequence[TargetResult], jobs: Sequence[Job], operation: str,
                score: Callable[[int, np.ndarray], float], size: int = 0, hq: bool = True,
                batch_size: int = 32) -> None:
    """Render ``jobs[k]`` (target ``rows[k]`` at its recovered sliders) and set its
    ``darktable_psnr`` to ``score(k, <operation's output tap-out>)``; a render that fails is
    reported and leaves NaN (counted as a closed-loop failure)."""
    results = dt.render_many(jobs, [operation], size, hq, batch_size, desc="closed loop")
    for k, (row, result) in enumerate(zip(rows, results)):
        if isinstance(result, Exception):
            log.warning("closed loop for %s failed: %s", row.key, result)
            continue
        row.darktable_psnr = score(k, result.tapouts[(operation, "out")])
