"""Joint slider regression through a chain of proxies, its closed loop through darktable
(utils/evaluation/closed_loop.py), and the pipeline's result files (``ROOT/pipeline/metrics.json``, ``report.md``,
``ROOT/params/pipeline.csv``, block outputs and animations).

Each target's result is recorded in a journal (utils/journal.py) as soon as it is known, so an
interrupted run (even ``kill -9``) continues with the targets still missing when the same
command runs again.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from models.mosaic import even_crop
from utils.darktable.files import write_tiff
from utils.darktable.runner import Darktable, Job
from utils.data.tapouts import to_chw
from utils.evaluation.closed_loop import closed_loop
from utils.evaluation.fidelity import weights_digest
from utils.evaluation.metrics import psnr
from utils.evaluation.regress import METHOD, Recovery, freeze, regress
from utils.evaluation.report import (RESULT_FORMAT, TargetResult, regression_lines, regression_summary,
                                     write_metrics, write_params_csv)
from utils.journal import Journal
from utils.pipeline.chain import Chain
from utils.pipeline.targets import Target, history
from utils.progress import progress_over
from utils.runs import RunPaths
from utils.settings import DEFAULTS, Settings
from utils.visual import contact_sheet, save_png, to_display, write_animation

log = logging.getLogger(__name__)




def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(psnr(a.float(), b.float())[0])


@torch.no_grad()
def chain_fidelity(chain: Chain, target: Target, device: torch.device) -> list[float]:
    """Each block's output when the chain runs at the TRUE sliders from darktable's first
    input, against darktable's tap-out of that block."""
    chain.context = target.context     # first: the input's planes carry its pixel scale
    x = target.load(chain.blocks[0].operation, "in", chain).to(device)
    _, outputs = chain(x, target.u[None].to(device), keep=True)
    return [_psnr(o.cpu(), target.load(b.operation, "out")) for b, o in zip(chain.blocks, outputs)]


def regress_target(chain: Chain, target: Target, device: torch.device, iterations: int, restarts: int,
                   seed: int, frame_every: int = 0, crop: int = DEFAULTS.REGRESSION_CROP) -> tuple[TargetResult, Recovery]:
    """Recover all of ``target``'s sliders jointly through the chain."""
    chain.context = target.context     # first: the input's planes carry its pixel scale
    x = target.load(chain.blocks[0].operation, "in", chain).to(device)
    y = target.load(chain.blocks[-1].operation, "out").to(device)
    generator = torch.Generator().manual_seed(seed)
    rec = regress(chain, chain.n_sliders, chain.scale, x, y, iterations, restarts, generator,
                  frame_every=frame_every, crop=0 if chain.whole_image else crop, margin=chain.context_margin,
                  searched=chain.steps)
    with torch.no_grad():
        score = _psnr(chain(x, rec.u[None].to(device)).cpu(), y.cpu())
    true = [v for b in chain.blocks for v in chain.values(target.u)[b.name].values()]
    found = [v for b in chain.blocks for v in chain.values(rec.u)[b.name].values()]
    row = TargetResult(target.key, target.image, true, found,
                       [s.error(a, b) for s, a, b in zip(chain.sliders(), found, true)], score,
                       moved=[abs(float(a) - float(b)) for a, b in zip(rec.u, rec.start)],
                       chain_psnr=chain_fidelity(chain, target, device))
    return row, rec




def save_outputs(chain: Chain, target: Target, u: torch.Tensor, folder: Path, device: torch.device) -> None:
    """Every block's output at the recovered sliders (float32 TIFF) and a sheet comparing each
    with darktable's tap-out at the true sliders."""
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        x = target.load(chain.blocks[0].operation, "in", chain).to(device)
        chain.context = target.context
        _, outputs = chain(x, u[None].to(device), keep=True)
    tiles, labels = [], []
    for k, (block, out) in enumerate(zip(chain.blocks, outputs)):
        image = out[0].cpu().permute(1, 2, 0).numpy()
        write_tiff(folder / f"{k + 1}_{block.name}.tif", image[..., 0] if image.shape[2] == 1 else image)
        truth = target.load(block.operation, "out")[0].permute(1, 2, 0).numpy()
        tiles.append([_viewable(image, block), _viewable(truth, block)])
        labels.append([f"{k + 1} {block.name}: chain at recovered sliders", "darktable at true sliders"])
    save_png(folder / "blocks.png", contact_sheet(tiles, labels))


def _viewable(image: np.ndarray, block) -> np.ndarray:
    """A block's output as a picture: Lab shown by its lightness, mosaics as grey."""
    if image.shape[2] == 1:
        return to_display(image[..., 0])
    if block.proxy_type.operation == "colorin":   # Lab output
        return to_display(np.repeat(image[..., :1] / 100.0, 3, axis=2), gamma=1.0)
    return to_display(image)


def pipeline_closed_loop(dt: Darktable, chain: Chain, rows: Sequence[TargetResult], targets: Sequence[Target],
                         image_dir: Path, settings: Settings) -> None:
    """Render every target's recovered sliders with darktable; score the last block's output."""
    last = chain.blocks[-1].operation
    by_key = {t.key: t for t in targets}
    jobs = []
    for row in rows:
        image = image_dir / row.image
        jobs.append(Job(image, history(dt, chain, chain.clamped_values(row.recovered), image, settings)))

    def score(k: int, tap_out: np.ndarray) -> float:
        rendered = even_crop(torch.from_numpy(to_chw(tap_out))[None])
        return _psnr(rendered, by_key[rows[k].key].load(last, "out"))

    closed_loop(dt, rows, jobs, last, score, 0, True, settings.DARKTABLE_BATCH_SIZE)


def pipeline_metrics(chain: Chain, rows: Sequence[TargetResult], darktable_version: str,
                     conversions: Sequence[str]) -> dict:
    """The pipeline metrics.json contract (more keys may follow the required ones)."""
    per_block = {}
    for k, b in enumerate(chain.blocks):
        sl = chain.slices[k]
        errors = [e for r in rows for e in r.error[sl]]
        moved = [m for r in rows for m in r.moved[sl]]
        per_block[b.name] = {
            "param_mae": float(np.mean(errors)) if errors else None,
            "moved": float(np.mean(moved)) if moved else None,
            "sliders": list(b.recovered),
            "chain_psnr": float(np.mean([r.chain_psnr[k] for r in rows])),
            "operation": b.operation,
        }
    summary = regression_summary(rows)
    return {
        "blocks": [b.name for b in chain.blocks],
        "targets": summary["targets"],
        "param_mae": summary["param_mae"],
        "proxy_psnr": summary["proxy_psnr"],
        "darktable_psnr": summary["darktable_psnr"],
        "per_block": per_block,
        "darktable_psnr_min": summary["darktable_psnr_min"],
        "closed_loop_failures": summary["closed_loop_failures"],
        "sliders": chain.slider_labels(),
        "conversions": list(conversions),
        "darktable_version": darktable_version,
    }


def pipeline_report(metrics: dict) -> str:
    """The numbers of the pipeline's metrics.json as Markdown tables."""
    lines = [f"# pipeline: {' -> '.join(metrics['blocks'])} (darktable {metrics['darktable_version']})", "",
             f"Conversions between blocks: {', '.join(metrics['conversions']) or 'none'}.", "",
             "| block | sliders | slider error (fraction of range) | moved | chain PSNR at true sliders |",
             "|---|---|---|---|---|"]
    for name, b in metrics["per_block"].items():
        err = "-" if b["param_mae"] is None else f"{b['param_mae']:.4f}"
        moved = "-" if b["moved"] is None else f"{b['moved']:.3f}"
        lines.append(f"| {name} | {', '.join(b['sliders']) or '-'} | {err} | {moved} | {b['chain_psnr']:.2f} dB |")
    lines += ["", "| metric | value |", "|---|---|", *regression_lines(metrics, "chain")]
    return "\n".join(lines) + "\n"


def run_regression(dt: Darktable, chain: Chain, targets: Sequence[Target], conversions: Sequence[str],
                   paths: RunPaths, image_dir: Path, device: torch.device, iterations: int,
                   settings: Settings) -> dict:
    """Regress every target (resuming from the journal), close the loop, write the results.
    ``settings``: PARAM_TUNING_RESTARTS, REGRESSION_CROP, SEED, SAVE_ALL_OUTPUTS,
    PIPELINE_CREATE_ANIMATION, PIPELINE_ANIMATION_TARGETS, DARKTABLE_BATCH_SIZE."""
    freeze(chain)
    s = settings
    meta = {"blocks": [b.name for b in chain.blocks], "sliders": chain.slider_labels(),
            "weights": ["exact" if b.exact else weights_digest(b.proxy) for b in chain.blocks], "targets": [t.key for t in targets],
            "iterations": iterations, "restarts": s.PARAM_TUNING_RESTARTS, "seed": s.SEED,
            "crop": s.REGRESSION_CROP, "format": RESULT_FORMAT, "method": METHOD}
    with Journal(paths.pipeline() / "regression.jsonl", meta) as journal:
        rows = [_regress_one(chain, target, i, journal, paths, device, iterations, s)
                for i, target in enumerate(progress_over(targets, "pipeline regression", "target"))]
    pipeline_closed_loop(dt, chain, rows, targets, image_dir, s)
    metrics = pipeline_metrics(chain, rows, dt.install.version_string, conversions)
    write_metrics(paths.pipeline(), metrics, pipeline_report(metrics))
    write_params_csv(paths.pipeline_csv, "target", chain.slider_labels(), rows)
    return metrics


def _regress_one(chain: Chain, target: Target, i: int, journal: Journal, paths: RunPaths,
                 device: torch.device, iterations: int, s: Settings) -> TargetResult:
    """Target ``i``'s result: from the journal, or regressed now (with its block outputs and
    animation when the settings ask for them) and recorded."""
    if target.key in journal:
        return TargetResult.from_journal(target.key, journal[target.key])
    animate = s.PIPELINE_CREATE_ANIMATION and i < s.PIPELINE_ANIMATION_TARGETS
    row, rec = regress_target(chain, target, device, iterations, s.PARAM_TUNING_RESTARTS,
                              s.SEED * 1000003 + i, max(1, iterations // 40) if animate else 0,
                              s.REGRESSION_CROP)
    log.info("target %s: chain %.2f dB at recovered sliders, slider error %.4f", target.key,
             row.proxy_psnr, float(np.mean(row.error)))
    if s.SAVE_ALL_OUTPUTS:
        save_outputs(chain, target, rec.u, paths.pipeline("outputs") / target.key, device)
    if animate:
        caption = lambda u: " ".join(f"{n}={v:.3g}" for b in chain.values(u).values() for n, v in b.items())
        write_animation(paths.pipeline_animations, target.key, rec.frames,
                        target.load(chain.blocks[-1].operation, "out")[0], caption)
    journal.record(target.key, **row.journal_entry(), u=rec.u.tolist())
    return row
