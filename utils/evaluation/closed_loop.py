"""The closed loop: render recovered sliders with darktable and score them against the target.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import Constants as C
from utils.darktable.runner import Darktable, Job
from utils.data.manifest import read_spec
from utils.data.tapouts import TapoutDataset
from utils.errors import UserError
from utils.evaluation.fidelity import chw
from utils.evaluation.metrics import psnr
from utils.evaluation.regress import RegressionRow
from utils.proxies.schema import ProxyType, render_size

log = logging.getLogger(__name__)


def closed_loop(dt: Darktable, proxy_type: ProxyType, rows: list[RegressionRow], data: TapoutDataset,
                targets: Sequence[int], slider_names: Sequence[str]) -> None:
    """Render every recovered setting with darktable and score it against the target."""
    spec = read_spec(data.folder)
    source = Path(spec.get("source_dir", ""))
    jobs = []
    for row in rows:
        image = source / row.image
        if not image.is_file():
            raise UserError(f"closed loop: source image {image} of {data.folder} is gone; "
                            "put it back or regenerate the stage-2 data")
        # sigmoid keeps u inside (0, 1); clamping only absorbs float rounding at the ends
        values = {k: min(max(v, proxy_type.slider(k).lo), proxy_type.slider(k).hi)
                  for k, v in zip(slider_names, row.recovered)}
        jobs.append(Job(image, (proxy_type.history_item(dt, values),)))
    size, hq = render_size(proxy_type, int(spec.get("size", C.TAPOUT_SIZE)))
    results = dt.render_batch(jobs, dump=[proxy_type.operation], size=size, hq=hq)
    for row, i, result in zip(rows, targets, results):
        if isinstance(result, Exception):
            log.warning("closed loop for %s failed: %s", row.sample, result)
            continue
        rendered = data.canonical(chw(result.io(proxy_type.operation)[1]), data.rows[i])
        target = data[i][1]
        row.darktable_psnr = float(psnr(rendered[None], target[None])[0])
