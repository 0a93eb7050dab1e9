"""Evaluation of a trained proxy: fidelity against darktable, slider regression through the
proxy, and the closed loop (re-rendering the recovered sliders with darktable).

Slider regression freezes the proxy and optimises the sliders in normalised, bounded form
(u = sigmoid(theta) in [0, 1], each slider's sampling space) so that the proxy's output
matches darktable's target, with Adam (second-moment decay 0.9: with the default 0.999 some
runs stall) from several random starts at once; the start with the lowest loss wins.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

import Constants as C
from models.proxy import Proxy
from models.transform import to_network
from utils.atomic import write_text_atomic
from utils.darktable import Darktable, Job
from utils.data import TapoutDataset
from utils.dataset import read_spec, render_size
from utils.errors import UserError
from utils.journal import Journal, run_lock
from utils.metrics import psnr, ssim
from utils.registry import ProxyType
from utils.visual import contact_sheet, save_png, to_display

log = logging.getLogger(__name__)


@torch.no_grad()
def fidelity(proxy: Proxy, data: TapoutDataset, device: torch.device) -> dict[str, float]:
    """PSNR (project definition), SSIM and mean absolute error over every sample of ``data``."""
    proxy.eval()
    scores = {"psnr": [], "ssim": [], "mae": []}
    for x, y, u in data:
        pred = proxy(x[None].to(device), u[None].to(device))
        y = y[None].to(device)
        scores["psnr"].append(float(psnr(pred, y)[0]))
        scores["ssim"].append(float(ssim(pred, y)[0]))
        scores["mae"].append(float((pred - y).abs().mean()))
    return {k: float(np.mean(v)) for k, v in scores.items()}


@dataclass
class Recovery:
    u: torch.Tensor                 # (S,) recovered normalised sliders
    loss: float
    frames: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (iter, u, output)
    start: torch.Tensor | None = None   # (S,) the winning start


def freeze(module: torch.nn.Module) -> None:
    """Evaluation mode, no gradients for the weights (slider regression moves only sliders)."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


def regress(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], n_sliders: int,
            scale: float, x: torch.Tensor, target: torch.Tensor, iterations: int, restarts: int,
            generator: torch.Generator, lr: float = 0.05, frame_every: int = 0,
            crop: int | None = None) -> Recovery:
    """Recover the ``n_sliders`` normalised sliders ``u`` that make ``forward(x, u)`` match
    ``target`` (x and target (1, C, H, W); forward is a proxy, or a chain of proxies).

    The loss is the mean squared error in the network domain asinh(v / ``scale``) (see
    models.transform). Each iteration fits a random ``crop`` (default
    Constants.REGRESSION_CROP, even offsets so a mosaic keeps its phase; the sliders are
    global, so any part of the image constrains them), which makes an iteration several times
    cheaper (``crop=0``: the whole image); the winning start is chosen on the whole image.
    """
    if isinstance(forward, torch.nn.Module):
        freeze(forward)
    start = torch.rand(restarts, n_sliders, generator=generator).clamp(0.02, 0.98).to(x.device)
    theta = torch.logit(start).requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=lr, betas=(0.9, 0.9))
    xs = x.expand(restarts, *x.shape[1:])
    goal = to_network(target, scale)
    h, w = x.shape[-2:]
    ch, cw = (h, w) if crop == 0 else (min(crop or C.REGRESSION_CROP, h, w) // 2 * 2,) * 2
    frames = []
    for it in range(iterations):
        if frame_every and it % frame_every == 0:
            with torch.no_grad():
                frames.append((it, torch.sigmoid(theta).cpu(), forward(xs, torch.sigmoid(theta)).cpu()))
        top = 2 * int(torch.randint(0, (h - ch) // 2 + 1, (), generator=generator))
        left = 2 * int(torch.randint(0, (w - cw) // 2 + 1, (), generator=generator))
        pred = forward(xs[..., top:top + ch, left:left + cw], torch.sigmoid(theta))
        err = to_network(pred, scale) - goal[..., top:top + ch, left:left + cw]
        optimizer.zero_grad(set_to_none=True)
        (err ** 2).mean(dim=(1, 2, 3)).sum().backward()
        # a start whose output overflowed (a proxy far outside its training data) gets no
        # NaN step: it stays where it is instead of poisoning its sliders
        theta.grad = torch.nan_to_num(theta.grad, nan=0.0, posinf=0.0, neginf=0.0)
        optimizer.step()
    with torch.no_grad():
        u = torch.sigmoid(theta)
        pred = forward(xs, u)
        losses = ((to_network(pred, scale) - goal) ** 2).mean(dim=(1, 2, 3))   # (restarts,)
        losses = torch.nan_to_num(losses, nan=math.inf)          # a start that overflowed never wins
    if frame_every:
        frames.append((iterations, u.cpu(), pred.cpu()))
    best = int(torch.argmin(losses))
    return Recovery(u[best].cpu(), float(losses[best]), [(it, fu[best], fp[best]) for it, fu, fp in frames],
                    start[best].cpu())


def _values(proxy: Proxy, u: torch.Tensor) -> list[float]:
    return [float(v) for v in proxy.from_unit(u[None])[0]]


def pick_targets(count: int, available: int, seed: int) -> list[int]:
    """``count`` distinct sample indices, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(available, size=min(count, available), replace=False).tolist())


@dataclass
class RegressionRow:
    sample: str
    image: str
    true: list[float]
    recovered: list[float]
    error: list[float]            # |recovered - true| / (hi - lo), per slider
    proxy_psnr: float
    darktable_psnr: float = float("nan")


def slider_regression(proxy: Proxy, proxy_type: ProxyType, data: TapoutDataset, targets: Sequence[int],
                      device: torch.device, iterations: int, restarts: int, seed: int,
                      animation_dir: Path | None = None, journal: Journal | None = None) -> list[RegressionRow]:
    """Regress the sliders of each target sample (and write its animation when asked).

    Each target has its own random generator, so its result does not depend on the others;
    with a ``journal``, each finished target is recorded at once and targets already in it
    are not regressed again (an interrupted evaluation continues where it stopped).
    """
    freeze(proxy)
    rows = []
    ranges = [s["hi"] - s["lo"] for s in proxy.sliders]
    frame_every = max(1, iterations // 60) if animation_dir is not None else 0
    for i in targets:
        key = data.rows[i]["sample"]
        if journal is not None and key in journal:
            rows.append(RegressionRow(**journal[key]))
            continue
        x, y, u_true = (t[None].to(device) for t in data[i])
        generator = torch.Generator().manual_seed(seed * 1000003 + i)
        rec = regress(proxy, len(proxy.sliders), proxy.scale, x, y, iterations, restarts, generator,
                      frame_every=frame_every)
        true = _values(proxy, u_true[0].cpu())
        found = _values(proxy, rec.u)
        with torch.no_grad():
            score = float(psnr(proxy(x, rec.u[None].to(device)), y)[0])
        rows.append(RegressionRow(key, data.rows[i]["image"], true, found,
                                  [abs(a - b) / r for a, b, r in zip(found, true, ranges)], score))
        if animation_dir is not None:
            write_animation(animation_dir, key, rec.frames, y[0].cpu(), slider_caption(proxy))
        if journal is not None:
            journal.record(key, **asdict(rows[-1]))
    return rows


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
        jobs.append(Job(image, (dt.history_item(proxy_type, values),)))
    size, hq = render_size(proxy_type, int(spec.get("size", C.TAPOUT_SIZE)))
    results = dt.render_batch(jobs, dump=[proxy_type.operation], size=size, hq=hq)
    for row, i, result in zip(rows, targets, results):
        if isinstance(result, Exception):
            log.warning("closed loop for %s failed: %s", row.sample, result)
            continue
        rendered = data.canonical(chw(result.io(proxy_type.operation)[1]), data.rows[i])
        target = data[i][1]
        row.darktable_psnr = float(psnr(rendered[None], target[None])[0])


def slider_caption(proxy: Proxy) -> Callable[[torch.Tensor], str]:
    """``u -> "name=value ..."`` for a proxy's sliders (animation frame captions)."""
    return lambda u: " ".join(f"{n}={v:.4g}" for n, v in zip(proxy.slider_names, _values(proxy, u)))


def write_animation(folder: Path, stem: str, frames: list, target: torch.Tensor,
                    caption: Callable[[torch.Tensor], str]) -> Path | None:
    """PNG frames (output at each iteration, captioned ``caption(u)`` | darktable target) and
    an mp4 of them."""
    if not frames:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    goal = to_display(target.permute(1, 2, 0).numpy())
    images = []
    for k, (it, u, pred) in enumerate(frames):
        tile = contact_sheet([[to_display(pred.permute(1, 2, 0).numpy()), goal]],
                             [[f"iter {it}: {caption(u)}", "darktable target"]])
        save_png(folder / f"{stem}_{k:04d}.png", tile)
        images.append(tile)
    return write_video(folder / f"{stem}.mp4", images, fps=12)


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int = 25) -> Path:
    """An H.264 mp4 through imageio's FFmpeg plugin (no system FFmpeg needed)."""
    import imageio.v2 as imageio
    h = max(f.shape[0] for f in frames) + max(f.shape[0] for f in frames) % 2
    w = max(f.shape[1] for f in frames) + max(f.shape[1] for f in frames) % 2
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                            ffmpeg_log_level="error") as writer:
        for f in frames:
            canvas = np.zeros((h, w, 3), np.uint8)
            canvas[:f.shape[0], :f.shape[1]] = f
            writer.append_data(canvas)
    return path


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


def weights_digest(proxy: Proxy) -> str:
    """A short hash of the proxy's weights: results recorded for other weights are not reused."""
    digest = hashlib.sha1()
    for key, tensor in sorted(proxy.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_trained(root: Path, name: str, device: torch.device) -> tuple[Proxy, dict]:
    """The trained proxy NAME under ROOT (best.pt, else last.pt), or a one-line error."""
    from models.proxy import IncompatibleCheckpoint, load_proxy
    folder = root / f"{name}_model_weights"
    for candidate in ("best.pt", "last.pt"):
        if (folder / candidate).exists():
            try:
                return load_proxy(folder / candidate, device)
            except IncompatibleCheckpoint as e:
                raise UserError(f"{e}; retrain the proxy with this version") from None
    raise UserError(f"no trained proxy {name!r}: {folder} holds no best.pt or last.pt; train it with "
                    "'python Darktable_proxies.py PROXY -n N' (and the same -p/-c), or pass --out ROOT")


@torch.no_grad()
def proxy_on_render(proxy: Proxy, tap_in: np.ndarray, values: Sequence[float],
                    device: torch.device, pattern: str = "RGGB") -> torch.Tensor:
    """Run the proxy on a darktable input tap-out (H, W[, C]) at slider ``values``: (C, H, W).

    A mosaic needs its CFA ``pattern`` (utils.cfa.image_pattern); it is cropped to even size
    (compare with ``chw(tap_out, proxy.layout)``). A positional proxy gets its coordinate planes."""
    from utils.data import with_coordinates
    x = chw(tap_in, proxy.layout)
    x = (with_coordinates(x) if proxy.spec.extra_channels else x)[None].to(device)
    u = proxy.to_unit(torch.tensor([list(values)], dtype=torch.float64, device=device))
    return proxy(x, u, pattern)[0].cpu()


def chw(image: np.ndarray, layout: str = "rgb") -> torch.Tensor:
    """A tap-out (H, W[, C]) as a (C, H, W) tensor; cropped to even size for mosaic layouts."""
    from models.mosaic import even_crop
    from utils.data import to_chw
    image = torch.from_numpy(to_chw(image))
    return image if layout == "rgb" else even_crop(image)
