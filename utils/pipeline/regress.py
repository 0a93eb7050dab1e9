"""Joint slider regression through a chain of proxies, its closed loop through darktable,
and the pipeline's result files (``ROOT/pipeline/metrics.json``, ``report.md``,
``ROOT/params/pipeline.csv``, block outputs and animations).

Each target's result is recorded in a journal (utils/journal.py) as soon as it is known, so an
interrupted run (even ``kill -9``) continues with the targets still missing when the same
command runs again.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import Constants as C
from models.mosaic import even_crop
from utils.atomic import write_text_atomic
from utils.darktable.files import write_tiff
from utils.darktable.runner import Darktable, Job
from utils.data.tapouts import to_chw
from utils.evaluation.fidelity import weights_digest
from utils.evaluation.metrics import psnr
from utils.evaluation.regress import freeze, regress
from utils.journal import Journal
from utils.pipeline.chain import Chain
from utils.pipeline.targets import Target, history
from utils.visual import contact_sheet, save_png, to_display, write_animation

log = logging.getLogger(__name__)


@dataclass
class PipelineRow:
    target: str
    image: str
    true: list[float]                 # recovered sliders' true values, in chain order
    recovered: list[float]
    error: list[float]                # |recovered - true| / (hi - lo)
    moved: list[float]                # |u_final - u_start| per slider (the gradient reached it)
    proxy_psnr: float                 # chain output at the recovered sliders vs darktable's target
    chain_psnr: list[float]           # per block: chain at the TRUE sliders vs darktable's tap-out
    darktable_psnr: float = float("nan")


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(psnr(a.float(), b.float())[0])


@torch.no_grad()
def chain_fidelity(chain: Chain, target: Target, device: torch.device) -> list[float]:
    """Each block's output when the chain runs at the TRUE sliders from darktable's first
    input, against darktable's tap-out of that block."""
    x = target.load(chain.blocks[0].operation, "in").to(device)
    chain.pattern = target.pattern
    _, outputs = chain(x, target.u[None].to(device), keep=True)
    return [_psnr(o.cpu(), target.load(b.operation, "out")) for b, o in zip(chain.blocks, outputs)]


def regress_target(chain: Chain, target: Target, device: torch.device, iterations: int, restarts: int,
                   seed: int, frame_every: int = 0):
    x = target.load(chain.blocks[0].operation, "in").to(device)
    y = target.load(chain.blocks[-1].operation, "out").to(device)
    generator = torch.Generator().manual_seed(seed)
    chain.pattern = target.pattern
    rec = regress(chain, chain.n_sliders, chain.scale, x, y, iterations, restarts, generator,
                  frame_every=frame_every)
    with torch.no_grad():
        score = _psnr(chain(x, rec.u[None].to(device)).cpu(), y.cpu())
    ranges = chain.ranges()
    true = [v for b in chain.blocks for v in chain.values(target.u)[b.name].values()]
    found = [v for b in chain.blocks for v in chain.values(rec.u)[b.name].values()]
    row = PipelineRow(target.key, target.image, true, found,
                      [abs(a - b) / r for a, b, r in zip(found, true, ranges)],
                      [abs(float(a) - float(b)) for a, b in zip(rec.u, rec.start)], score,
                      chain_fidelity(chain, target, device))
    return row, rec


def closed_loop(dt: Darktable, chain: Chain, rows: Sequence[PipelineRow], targets: Sequence[Target],
                image_dir: Path) -> None:
    """Render every target's recovered sliders with darktable; score the last block's output."""
    last = chain.blocks[-1].operation
    jobs = []
    for row in rows:
        image = image_dir / row.image
        values = {}
        i = 0
        for b in chain.blocks:
            values[b.name] = {}
            for s in b.recovered:
                sl = next(d for d in b.proxy.sliders if d["name"] == s)
                values[b.name][s] = min(max(row.recovered[i], sl["lo"]), sl["hi"])
                i += 1
        jobs.append(Job(image, history(dt, chain, values, image)))
    results = []
    for i in range(0, len(jobs), max(1, C.DARKTABLE_BATCH_SIZE)):
        results += dt.render_batch(jobs[i:i + C.DARKTABLE_BATCH_SIZE], dump=[last], size=0, hq=True)
    by_key = {t.key: t for t in targets}
    for row, result in zip(rows, results):
        if isinstance(result, Exception):
            log.warning("closed loop for %s failed: %s", row.target, result)
            continue
        rendered = even_crop(torch.from_numpy(to_chw(result.tapouts[(last, "out")]))[None])
        row.darktable_psnr = _psnr(rendered, by_key[row.target].load(last, "out"))


def save_outputs(chain: Chain, target: Target, u: torch.Tensor, folder: Path, device: torch.device) -> None:
    """Every block's output at the recovered sliders (float32 TIFF) and a sheet comparing each
    with darktable's tap-out at the true sliders."""
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        x = target.load(chain.blocks[0].operation, "in").to(device)
        chain.pattern = target.pattern
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


def summarise(chain: Chain, rows: Sequence[PipelineRow], darktable_version: str,
              conversions: Sequence[str]) -> dict:
    """The pipeline metrics.json contract (more keys may follow the required ones)."""
    dt_scores = [r.darktable_psnr for r in rows if not math.isnan(r.darktable_psnr)]
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
    mean = lambda v: float(np.mean(v)) if v else float("nan")
    return {
        "blocks": [b.name for b in chain.blocks],
        "targets": len(rows),
        "param_mae": mean([e for r in rows for e in r.error]),
        "proxy_psnr": mean([r.proxy_psnr for r in rows]),
        "darktable_psnr": mean(dt_scores),
        "per_block": per_block,
        "darktable_psnr_min": float(np.min(dt_scores)) if dt_scores else float("nan"),
        "closed_loop_failures": len(rows) - len(dt_scores),
        "sliders": chain.slider_labels(),
        "conversions": list(conversions),
        "darktable_version": darktable_version,
    }


def report_table(metrics: dict) -> str:
    lines = [f"# pipeline: {' -> '.join(metrics['blocks'])} (darktable {metrics['darktable_version']})", "",
             f"Conversions between blocks: {', '.join(metrics['conversions']) or 'none'}.", "",
             "| block | sliders | slider error (fraction of range) | moved | chain PSNR at true sliders |",
             "|---|---|---|---|---|"]
    for name, b in metrics["per_block"].items():
        err = "-" if b["param_mae"] is None else f"{b['param_mae']:.4f}"
        moved = "-" if b["moved"] is None else f"{b['moved']:.3f}"
        lines.append(f"| {name} | {', '.join(b['sliders']) or '-'} | {err} | {moved} | {b['chain_psnr']:.2f} dB |")
    lines += ["", "| metric | value |", "|---|---|",
              f"| targets | {metrics['targets']} |",
              f"| slider error, all blocks (param_mae) | {metrics['param_mae']:.4f} |",
              f"| chain PSNR at recovered sliders (proxy_psnr) | {metrics['proxy_psnr']:.2f} dB |",
              f"| closed loop: darktable PSNR at recovered sliders, mean | {metrics['darktable_psnr']:.2f} dB |",
              f"| closed loop: darktable PSNR, worst target | {metrics['darktable_psnr_min']:.2f} dB |"]
    return "\n".join(lines) + "\n"


def write_results(root: Path, chain: Chain, metrics: dict, rows: Sequence[PipelineRow]) -> Path:
    folder = root / "pipeline"
    write_text_atomic(folder / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    write_text_atomic(folder / "report.md", report_table(metrics))
    labels = chain.slider_labels()
    (root / "params").mkdir(parents=True, exist_ok=True)
    with open(root / "params" / "pipeline.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["target", "image", *(f"{n}_true" for n in labels), *(f"{n}_recovered" for n in labels),
                    *(f"{n}_error" for n in labels), "proxy_psnr", "darktable_psnr"])
        for r in rows:
            w.writerow([r.target, r.image, *(f"{v:.9g}" for v in r.true), *(f"{v:.9g}" for v in r.recovered),
                        *(f"{v:.6g}" for v in r.error), f"{r.proxy_psnr:.3f}", f"{r.darktable_psnr:.3f}"])
    return folder


def run_regression(dt: Darktable, chain: Chain, targets: Sequence[Target], conversions: Sequence[str],
                   root: Path, image_dir: Path, device: torch.device, iterations: int, restarts: int,
                   seed: int) -> dict:
    """Regress every target (resuming from the journal), close the loop, write the results."""
    freeze(chain)
    folder = root / "pipeline"
    meta = {"blocks": [b.name for b in chain.blocks], "sliders": chain.slider_labels(),
            "weights": [weights_digest(b.proxy) for b in chain.blocks], "targets": [t.key for t in targets],
            "iterations": iterations, "restarts": restarts, "seed": seed, "crop": C.REGRESSION_CROP}
    with Journal(folder / "regression.jsonl", meta) as journal:
        rows = _regress_all(chain, targets, journal, folder, root, device, iterations, restarts, seed)
    log.info("closed loop: rendering the recovered sliders of %d targets with darktable", len(rows))
    closed_loop(dt, chain, rows, targets, image_dir)
    metrics = summarise(chain, rows, dt.install.version_string, conversions)
    write_results(root, chain, metrics, rows)
    return metrics


def _regress_all(chain: Chain, targets: Sequence[Target], journal: Journal, folder: Path, root: Path,
                 device: torch.device, iterations: int, restarts: int, seed: int) -> list[PipelineRow]:
    animations = root / "pipeline_animations" if C.PIPELINE_CREATE_ANIMATION else None
    rows = []
    for i, target in enumerate(targets):
        if target.key in journal:
            rows.append(PipelineRow(target=target.key, **{k: v for k, v in journal[target.key].items() if k != "u"}))
            continue
        animate = animations is not None and i < C.PIPELINE_ANIMATION_TARGETS
        row, rec = regress_target(chain, target, device, iterations, restarts, seed * 1000003 + i,
                                  frame_every=max(1, iterations // 40) if animate else 0)
        log.info("target %s: chain %.2f dB at recovered sliders, slider error %.4f", target.key,
                 row.proxy_psnr, float(np.mean(row.error)))
        if C.SAVE_ALL_OUTPUTS:
            save_outputs(chain, target, rec.u, folder / "outputs" / target.key, device)
        if animate:
            caption = lambda u: " ".join(f"{n}={v:.3g}" for b in chain.values(u).values() for n, v in b.items())
            write_animation(animations, target.key, rec.frames,
                            target.load(chain.blocks[-1].operation, "out")[0], caption)
        journal.record(target.key, **{k: v for k, v in asdict(row).items() if k != "target"}, u=rec.u.tolist())
        rows.append(row)
    return rows
