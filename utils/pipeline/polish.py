"""Polish a recovered edit with darktable itself in the loop.

The proxy chain finds the edit's neighbourhood: gradient descent through it is fast and
global. What it cannot do is be more exact than the proxies are, and near the ends of a
slider's range they are least exact. From the chain's answer, a few Levenberg-Marquardt steps
on darktable's own renders close that gap: each step renders the current edit and one small
move of every slider (finite differences, S + 1 renders in ONE darktable process), solves the
damped least-squares step for a few dampings, renders those candidates (one more process) and
keeps the best. A step that improves nothing ends the polish; the result is never worse than
the chain's answer, since that is the first point rendered.

The sliders are moved in the chain's normalised units (0..1 over each slider's range, log
sliders in log space), projected back into the range after each step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

DIFFERENCE_STEP = 2e-3            # normalised units; darktable renders in float, deterministically
DAMPINGS = (1e-4, 1e-2, 1.0)      # relative to the mean diagonal of J^T J; tried together


@dataclass
class Polish:
    """The polished edit: normalised sliders, the PSNR of every accepted point (the first
    is the starting edit's) and the darktable renders it took."""

    u: np.ndarray
    psnr: list[float] = field(default_factory=list)
    renders: int = 0


def psnr_of(mse: float) -> float:
    return float(10 * np.log10(1.0 / max(mse, 1e-20)))


def polish(render: Callable[[Sequence[np.ndarray]], list[np.ndarray]], u0: np.ndarray, goal: np.ndarray,
           steps: int) -> Polish:
    """Levenberg-Marquardt on ``render(points) -> images`` (one darktable process for all
    points; images comparable to ``goal``) from ``u0`` in [0, 1]^S, at most ``steps`` steps."""
    u = np.clip(np.asarray(u0, np.float64), 0.0, 1.0)
    goal = np.asarray(goal, np.float64).ravel()
    result = Polish(u.copy())
    residual = None
    for _ in range(steps):
        # forward differences, each step pointing into the range
        h = np.where(u + DIFFERENCE_STEP <= 1.0, DIFFERENCE_STEP, -DIFFERENCE_STEP)
        points = ([u] if residual is None else []) + [u + h[k] * np.eye(len(u))[k] for k in range(len(u))]
        images = render(points)
        result.renders += len(points)
        if residual is None:
            residual = np.asarray(images.pop(0), np.float64).ravel() - goal
            result.psnr.append(psnr_of(float(np.mean(residual ** 2))))
        jacobian = np.stack([(np.asarray(im, np.float64).ravel() - goal - residual) / h[k]
                             for k, im in enumerate(images)], axis=1)
        normal, gradient = jacobian.T @ jacobian, jacobian.T @ residual
        scale = max(float(np.mean(np.diag(normal))), 1e-12)
        candidates = []
        for damping in DAMPINGS:
            step = np.linalg.solve(normal + damping * scale * np.eye(len(u)), -gradient)
            candidates.append(np.clip(u + step, 0.0, 1.0))
        images = render(candidates)
        result.renders += len(candidates)
        errors = [np.asarray(im, np.float64).ravel() - goal for im in images]
        best = int(np.argmin([np.mean(e ** 2) for e in errors]))
        if np.mean(errors[best] ** 2) >= np.mean(residual ** 2):
            break
        u, residual = candidates[best], errors[best]
        result.u = u.copy()
        result.psnr.append(psnr_of(float(np.mean(residual ** 2))))
        log.info("darktable polish: %.2f dB", result.psnr[-1])
    return result
