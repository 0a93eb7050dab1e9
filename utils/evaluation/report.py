"""Result files of slider regression, for one proxy and for pipelines alike: the result of
each target, the summary in metrics.json, report.md, and the recovered sliders' CSV
(``ROOT/params/<NAME or pipeline>.csv``).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from utils.atomic import write_text_atomic
from utils.evaluation.fidelity import BASELINES

RESULT_FORMAT = 2   # of the rows in regression journals: bump when TargetResult changes


@dataclass
class TargetResult:
    """One regression target: its sliders, true and recovered, and how close the outputs are."""

    key: str                          # the stage-2 sample or pipeline target
    image: str                        # its image file name
    true: list[float]                 # recovered sliders' true values, in slider order
    recovered: list[float]
    error: list[float]                # |recovered - true| / (hi - lo), per slider (Slider.error)
    proxy_psnr: float                 # proxy (or chain) at the recovered sliders vs darktable's target
    darktable_psnr: float = float("nan")   # closed loop: darktable at the recovered sliders
    moved: list[float] = field(default_factory=list)       # chains: |u_final - u_start| per slider
    chain_psnr: list[float] = field(default_factory=list)  # chains: per block, at the TRUE sliders

    def journal_entry(self) -> dict[str, Any]:
        """What a regression journal records for this target (its key is the journal's)."""
        return {k: v for k, v in vars(self).items() if k != "key"}

    @classmethod
    def from_journal(cls, key: str, entry: dict[str, Any]) -> "TargetResult":
        return cls(key=key, **{k: v for k, v in entry.items() if k in cls.__dataclass_fields__})


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def regression_summary(rows: Sequence[TargetResult]) -> dict[str, Any]:
    """The regression and closed-loop figures over all targets (metrics.json keys)."""
    closed = [r.darktable_psnr for r in rows if not math.isnan(r.darktable_psnr)]
    return {
        "param_mae": _mean([e for r in rows for e in r.error]),
        "proxy_psnr": _mean([r.proxy_psnr for r in rows]),
        "darktable_psnr": _mean(closed),
        "darktable_psnr_min": float(np.min(closed)) if closed else float("nan"),
        "targets": len(rows),
        "closed_loop_failures": len(rows) - len(closed),
    }


def regression_lines(summary: dict[str, Any], what: str = "proxy") -> list[str]:
    """Markdown table rows of :func:`regression_summary`."""
    return [f"| regression: slider error (fraction of range), {summary['targets']} targets | {summary['param_mae']:.5f} |",
            f"| regression: {what} PSNR at recovered sliders | {summary['proxy_psnr']:.2f} dB |",
            f"| closed loop: darktable PSNR at recovered sliders (mean) | {summary['darktable_psnr']:.2f} dB |",
            f"| closed loop: darktable PSNR (worst target) | {summary['darktable_psnr_min']:.2f} dB |"]


def write_params_csv(path: Path, key_column: str, labels: Sequence[str], rows: Sequence[TargetResult]) -> None:
    """One line per target: its true, recovered and error value of every slider (``labels``)."""
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow([key_column, "image", *(f"{n}_true" for n in labels), *(f"{n}_recovered" for n in labels),
                *(f"{n}_error" for n in labels), "proxy_psnr", "darktable_psnr"])
    for r in rows:
        w.writerow([r.key, r.image, *(f"{v:.9g}" for v in r.true), *(f"{v:.9g}" for v in r.recovered),
                    *(f"{v:.6g}" for v in r.error), f"{r.proxy_psnr:.3f}", f"{r.darktable_psnr:.3f}"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text.getvalue())


def write_metrics(folder: Path, metrics: dict[str, Any], report: str) -> Path:
    """``folder/metrics.json`` and ``folder/report.md``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    write_text_atomic(folder / "report.md", report)
    return folder


# ---------------------------------------------------------------- one proxy

def proxy_metrics(name: str, slider_names: Sequence[str], fid: dict, n_val: int, darktable_version: str,
                  rows: Sequence[TargetResult], baseline: str = "identity") -> dict[str, Any]:
    """The metrics.json contract of one proxy (more keys may follow the required ones);
    ``baseline``: what ``val_identity_psnr`` measured (utils.evaluation.fidelity.BASELINES)."""
    per_slider = {n: _mean([r.error[k] for r in rows]) for k, n in enumerate(slider_names)}
    skipped = {} if slider_names else {"skipped": "the module has no sliders: nothing to regress"}
    return {
        "proxy": name,
        "params": list(slider_names),
        "val_psnr": fid["psnr"],
        "val_ssim": fid["ssim"],
        "val_samples": n_val,
        "darktable_version": darktable_version,
        "regression": {**regression_summary(rows), "param_mae_per_slider": per_slider, **skipped},
        "val_mae": fid["mae"],
        "val_identity_psnr": fid["identity"],
        "val_baseline": baseline,
    }


def baseline_line(metrics: dict[str, Any]) -> str:
    """The report's row of the identity baseline (utils.evaluation.fidelity.BASELINES)."""
    kind = metrics.get("val_baseline", "identity")
    if metrics["val_identity_psnr"] is None:
        return f"| fidelity: identity | {BASELINES[kind]} |"
    return f"| fidelity: identity ({BASELINES[kind]}), same samples | {metrics['val_identity_psnr']:.2f} dB |"


def proxy_report(metrics: dict[str, Any]) -> str:
    """The numbers of one proxy's metrics.json as a Markdown table."""
    reg = metrics["regression"]
    lines = [f"# {metrics['proxy']} (darktable {metrics['darktable_version']})", "",
             "| metric | value |", "|---|---|",
             f"| fidelity: PSNR vs darktable, {metrics['val_samples']} held-out samples | {metrics['val_psnr']:.2f} dB |",
             *([baseline_line(metrics)] if "val_identity_psnr" in metrics else []),  # none before it
             f"| fidelity: SSIM | {metrics['val_ssim']:.5f} |",
             f"| fidelity: mean absolute error | {metrics['val_mae']:.3g} |"]
    if "skipped" in reg:
        return "\n".join(lines + [f"| regression | skipped: {reg['skipped']} |"]) + "\n"
    lines += regression_lines(reg)[:1]
    lines += [f"| regression: {n} error (fraction of range) | {v:.5f} |" for n, v in reg["param_mae_per_slider"].items()]
    lines += regression_lines(reg)[1:]
    return "\n".join(lines) + "\n"
