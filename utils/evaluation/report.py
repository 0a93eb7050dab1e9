"""Result files of an evaluation: metrics.json, report.md, the recovered sliders' CSV, and
regression animations.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from utils.atomic import write_text_atomic
from utils.evaluation.regress import RegressionRow


def summarise(name: str, slider_names: Sequence[str], fid: dict, n_val: int, darktable_version: str,
              rows: Sequence[RegressionRow]) -> dict:
    """The metrics.json contract (more keys may follow the required ones)."""
    dt_scores = [r.darktable_psnr for r in rows if not math.isnan(r.darktable_psnr)]
    per_slider = {n: float(np.mean([r.error[k] for r in rows])) for k, n in enumerate(slider_names)}
    skipped = {} if slider_names else {"skipped": "the module has no sliders: nothing to regress"}
    return {
        "proxy": name,
        "params": list(slider_names),
        "val_psnr": fid["psnr"],
        "val_ssim": fid["ssim"],
        "val_samples": n_val,
        "darktable_version": darktable_version,
        "regression": {
            "param_mae": float(np.mean([e for r in rows for e in r.error])) if rows else float("nan"),
            "proxy_psnr": float(np.mean([r.proxy_psnr for r in rows])) if rows else float("nan"),
            "darktable_psnr": float(np.mean(dt_scores)) if dt_scores else float("nan"),
            "darktable_psnr_min": float(np.min(dt_scores)) if dt_scores else float("nan"),
            "targets": len(rows),
            "param_mae_per_slider": per_slider,
            "closed_loop_failures": len(rows) - len(dt_scores),
            **skipped,
        },
        "val_mae": fid["mae"],
    }


def report_table(metrics: dict) -> str:
    """The numbers of metrics.json as a Markdown table."""
    reg = metrics["regression"]
    lines = [f"# {metrics['proxy']} (darktable {metrics['darktable_version']})", "",
             "| metric | value |", "|---|---|",
             f"| fidelity: PSNR vs darktable, {metrics['val_samples']} held-out samples | {metrics['val_psnr']:.2f} dB |",
             f"| fidelity: SSIM | {metrics['val_ssim']:.5f} |",
             f"| fidelity: mean absolute error | {metrics['val_mae']:.3g} |"]
    if "skipped" in reg:
        return "\n".join(lines + [f"| regression | skipped: {reg['skipped']} |"]) + "\n"
    lines.append(f"| regression: slider error (fraction of range), {reg['targets']} targets | {reg['param_mae']:.5f} |")
    for n, v in reg["param_mae_per_slider"].items():
        lines.append(f"| regression: {n} error (fraction of range) | {v:.5f} |")
    lines += [f"| regression: proxy PSNR at recovered sliders | {reg['proxy_psnr']:.2f} dB |",
              f"| closed loop: darktable PSNR at recovered sliders (mean) | {reg['darktable_psnr']:.2f} dB |",
              f"| closed loop: darktable PSNR (worst target) | {reg['darktable_psnr_min']:.2f} dB |"]
    return "\n".join(lines) + "\n"


def write_results(root: Path, name: str, metrics: dict, rows: Sequence[RegressionRow],
                  slider_names: Sequence[str]) -> Path:
    """ROOT/eval/NAME/metrics.json + report.md, and the recovered values in ROOT/params/."""
    folder = root / "eval" / name
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    write_text_atomic(folder / "report.md", report_table(metrics))
    params = root / "params"
    params.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["sample", "image", *(f"{n}_true" for n in slider_names),
                *(f"{n}_recovered" for n in slider_names), *(f"{n}_error" for n in slider_names),
                "proxy_psnr", "darktable_psnr"])
    for r in rows:
        w.writerow([r.sample, r.image, *(f"{v:.9g}" for v in r.true), *(f"{v:.9g}" for v in r.recovered),
                    *(f"{v:.6g}" for v in r.error), f"{r.proxy_psnr:.3f}", f"{r.darktable_psnr:.3f}"])
    write_text_atomic(params / f"{name}.csv", text.getvalue())
    return folder




