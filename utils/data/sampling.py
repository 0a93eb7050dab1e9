"""Slider sampling: Latin hypercube draws per input image, reproducible from one seed."""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from utils.proxies.schema import Slider


def latin_hypercube(n: int, dims: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points in [0, 1)^dims, exactly one in each of the n strata of every dimension."""
    strata = np.stack([rng.permutation(n) for _ in range(dims)], axis=1) if dims else np.zeros((n, 0))
    return (strata + rng.random((n, dims))) / n


def as_float32(value: float) -> float:
    """The value darktable will see (its params are float32), as a Python float."""
    return float(np.float32(value))


def draw_settings(sliders: Sequence[Slider], n: int, seed: int, stage: int,
                  image_name: str) -> list[dict[Slider, float]]:
    """``n`` slider settings for one image, Latin hypercube in each slider's sampling space.

    The draws depend only on (seed, stage, image file name), never on worker count,
    sharding or the other images, so every way of generating a dataset gives the same one.
    """
    rng = np.random.default_rng([seed, stage, zlib.crc32(image_name.encode())])
    points = latin_hypercube(n, len(sliders), rng)
    return [{s: as_float32(s.from_unit(float(u))) for s, u in zip(sliders, row)}
            for row in points]
