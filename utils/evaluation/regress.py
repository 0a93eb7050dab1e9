"""Slider regression: recover sliders by gradient descent through a frozen proxy (or chain).

The sliders are optimised in normalised, bounded form (u = sigmoid(theta) in [0, 1], each
slider's sampling space) so that the proxy's output matches darktable's target, with Adam
(second-moment decay 0.9: with the default 0.999 some runs stall) from several starts at
once, the best of SCREENED times as many random settings by the loss on the whole image; the
start with the lowest loss at the end wins.
"""
from __future__ import annotations

import functools

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from models.proxy import Proxy
from models.transform import to_network
from utils.data.tapouts import TapoutDataset
from utils.evaluation.metrics import psnr
from utils.evaluation.report import TargetResult
from utils.journal import Journal
from utils.progress import progress_over
from utils.proxies.schema import ProxyType
from utils.settings import DEFAULTS
from utils.visual import write_animation


@dataclass
class Recovery:
    u: torch.Tensor                 # (S,) recovered normalised sliders
    loss: float
    frames: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (iter, u, output)
    start: torch.Tensor | None = None   # (S,) the winning start


# random settings screened per start: the best of them by the whole image's loss start the
# descent. A slider whose effect is a step (censorize's pixelation: cells of a whole number
# of pixels) leaves no slope to descend between its steps; measured on censorize's held-out
# targets: slider error 0.182 from 4 plain random starts (see docs/evaluation.md)
SCREENED = 16
# a slider whose effect is a step (``searched``) is also set every SEARCH_EVERY iterations, and
# at the end, to the best of SEARCH_POINTS values over its range, the others held: a wrong step
# is never left by descent (measured on censorize, docs/evaluation.md)
SEARCH_EVERY = 25
SEARCH_POINTS = 32
# of the regression's method: journals of another (utils.journal) are regressed again
METHOD = 2   # 2: screened starts and searched steps


def freeze(module: torch.nn.Module) -> None:
    """Evaluation mode, no gradients for the weights (slider regression moves only sliders)."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


def regress(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], n_sliders: int,
            scale: float, x: torch.Tensor, target: torch.Tensor, iterations: int, restarts: int,
            generator: torch.Generator, lr: float = 0.05, frame_every: int = 0,
            crop: int = DEFAULTS.REGRESSION_CROP, margin: int = 0, searched: Sequence[int] = ()) -> Recovery:
    """Recover the ``n_sliders`` normalised sliders ``u`` that make ``forward(x, u)`` match
    ``target`` (x and target (1, C, H, W); forward is a proxy, or a chain of proxies).

    The loss is the mean squared error in the network domain asinh(v / ``scale``) (see
    models.transform). Each iteration fits a random ``crop`` (default
    REGRESSION_CROP setting, even offsets so a mosaic keeps its phase; the sliders are
    global, so any part of the image constrains them), which makes an iteration several times
    cheaper (``crop=0``: the whole image); the winning start is chosen on the whole image.
    ``forward`` runs on the crop widened by ``margin`` (even) px of context where the image
    has them (a chain's ``context_margin``), and the loss is taken on the crop. The sliders
    ``searched`` (indices) are steps, without slope: :func:`line_search` sets them.
    """
    if isinstance(forward, torch.nn.Module):
        freeze(forward)
    goal = to_network(target, scale)
    candidates = torch.rand(restarts * SCREENED, n_sliders, generator=generator).clamp(0.02, 0.98).to(x.device)
    with torch.no_grad():
        screened = torch.cat([whole_losses(forward, x, goal, scale, c) for c in candidates.split(restarts)])
    start = candidates[screened.argsort()[:restarts]]
    theta = torch.logit(start).requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=lr, betas=(0.9, 0.9))
    xs = x.expand(restarts, *x.shape[1:])
    h, w = x.shape[-2:]
    ch, cw = (h, w) if crop == 0 else (min(crop, h, w) // 2 * 2,) * 2
    frames = []
    for it in range(iterations):
        if frame_every and it % frame_every == 0:
            with torch.no_grad():
                frames.append((it, torch.sigmoid(theta).cpu(), forward(xs, torch.sigmoid(theta)).cpu()))
        top = 2 * int(torch.randint(0, (h - ch) // 2 + 1, (), generator=generator))
        left = 2 * int(torch.randint(0, (w - cw) // 2 + 1, (), generator=generator))
        (rows, inner_rows), (cols, inner_cols) = with_margin(top, ch, h, margin), with_margin(left, cw, w, margin)
        if searched and it % SEARCH_EVERY == 0:
            with torch.no_grad():
                line_search(lambda u: whole_losses(lambda a, b: forward(a, b)[..., inner_rows, inner_cols],
                                                   x[..., rows, cols], goal[..., top:top + ch, left:left + cw],
                                                   scale, u), theta, searched)
        pred = forward(xs[..., rows, cols], torch.sigmoid(theta))[..., inner_rows, inner_cols]
        err = to_network(pred, scale) - goal[..., top:top + ch, left:left + cw]
        optimizer.zero_grad(set_to_none=True)
        (err ** 2).mean(dim=(1, 2, 3)).sum().backward()
        # a start whose output overflowed (a proxy far outside its training data) gets no
        # NaN step: it stays where it is instead of poisoning its sliders
        theta.grad = torch.nan_to_num(theta.grad, nan=0.0, posinf=0.0, neginf=0.0)
        optimizer.step()
    with torch.no_grad():
        if searched:
            line_search(lambda u: whole_losses(forward, x, goal, scale, u), theta, searched)
        u = torch.sigmoid(theta)
        pred = forward(xs, u) if frame_every else None
        losses = whole_losses(forward, x, goal, scale, u, pred)
    if frame_every:
        frames.append((iterations, u.cpu(), pred.cpu()))
    best = int(torch.argmin(losses))
    return Recovery(u[best].cpu(), float(losses[best]), [(it, fu[best], fp[best]) for it, fu, fp in frames],
                    start[best].cpu())


def whole_losses(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                 goal: torch.Tensor, scale: float, u: torch.Tensor, pred: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of each setting of ``u`` (N, S) on the whole image x (1, C, H, W) against
    ``goal`` (network domain), (N,); ``pred``: forward's output there, when already computed.
    A setting whose output overflowed (NaN) gets inf: it never wins."""
    pred = forward(x.expand(len(u), *x.shape[1:]), u) if pred is None else pred
    losses = ((to_network(pred, scale) - goal) ** 2).mean(dim=(1, 2, 3))
    return torch.nan_to_num(losses, nan=math.inf)


def line_search(losses: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, searched: Sequence[int]) -> None:
    """Set each slider of ``searched`` in every start (rows of ``theta``, logits of u) to the
    best of SEARCH_POINTS values over its range by ``losses`` (u (N, S) -> (N,)), the other
    sliders held, where that is better than where it is."""
    grid = torch.linspace(0.02, 0.98, SEARCH_POINTS, device=theta.device)
    for j in searched:
        u = torch.sigmoid(theta)
        trials = u.repeat_interleave(SEARCH_POINTS, 0)
        trials[:, j] = grid.repeat(len(u))
        scores = torch.cat([losses(t) for t in trials.split(len(u))]).view(len(u), SEARCH_POINTS)
        best, at = scores.min(1)
        better = best < losses(u)
        theta[better, j] = torch.logit(grid[at[better]])


def with_margin(start: int, length: int, size: int, margin: int) -> tuple[slice, slice]:
    """The window [start, start + length) of an axis of ``size`` widened by ``margin`` on
    both sides as far as the axis goes, and the slice that takes the window back out of it."""
    lo, hi = max(0, start - margin), min(size, start + length + margin)
    return slice(lo, hi), slice(start - lo, start - lo + length)


def _values(proxy: Proxy, u: torch.Tensor) -> list[float]:
    return [float(v) for v in proxy.from_unit(u[None])[0]]


def pick_targets(count: int, available: int, seed: int) -> list[int]:
    """``count`` distinct sample indices, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(available, size=min(count, available), replace=False).tolist())


def slider_regression(proxy: Proxy, proxy_type: ProxyType, data: TapoutDataset, targets: Sequence[int],
                      device: torch.device, iterations: int, restarts: int, seed: int,
                      animation_dir: Path | None = None, journal: Journal | None = None,
                      crop: int = DEFAULTS.REGRESSION_CROP) -> list[TargetResult]:
    """Regress the sliders of each target sample (and write its animation when asked).

    Each target has its own random generator, so its result does not depend on the others;
    with a ``journal``, each finished target is recorded at once and targets already in it
    are not regressed again (an interrupted evaluation continues where it stopped).
    """
    freeze(proxy)
    rows = []
    frame_every = max(1, iterations // 60) if animation_dir is not None else 0
    for i in progress_over(targets, "slider regression", "target"):
        key = data.rows[i]["sample"]
        if journal is not None and key in journal:
            rows.append(TargetResult.from_journal(key, journal[key]))
            continue
        x, y, u_true = (t[None].to(device) for t in data[i])
        generator = torch.Generator().manual_seed(seed * 1000003 + i)
        pattern = data.pattern(i)     # of a mosaic (crops at even offsets keep it)
        forward = functools.partial(proxy, pattern=pattern)
        rec = regress(forward, len(proxy.sliders), proxy.scale, x, y, iterations, restarts, generator,
                      frame_every=frame_every, crop=0 if proxy.whole_image else crop, searched=proxy.steps)
        true = _values(proxy, u_true[0].cpu())
        found = _values(proxy, rec.u)
        with torch.no_grad():
            score = float(psnr(forward(x, rec.u[None].to(device)), y)[0])
        rows.append(TargetResult(key, data.rows[i]["image"], true, found,
                                  [s.error(a, b) for s, a, b in zip(proxy.sliders, found, true)], score))
        if animation_dir is not None:
            write_animation(animation_dir, key, rec.frames, y[0].cpu(), slider_caption(proxy))
        if journal is not None:
            journal.record(key, **rows[-1].journal_entry())
    return rows


def slider_caption(proxy: Proxy) -> Callable[[torch.Tensor], str]:
    """``u -> "name=value ..."`` for a proxy's sliders (animation frame captions)."""
    return lambda u: " ".join(f"{n}={v:.4g}" for n, v in zip(proxy.slider_names, _values(proxy, u)))
