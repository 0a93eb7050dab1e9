"""A slider: one module parameter a proxy learns and regression recovers, with its range, its
sampling space and the one mapping between its values and the networks' conditioning
``u`` in [0, 1]. The same methods serve Python floats (sampling, datasets) and torch tensors
(proxies, regression: differentiable)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, TypeVar

import torch

Value = TypeVar("Value", float, torch.Tensor)

# the log of a value at or below 0 (outside every log slider's range) is taken at this value,
# so that a stray value gives a finite position and a finite gradient instead of NaN
LOG_FLOOR = 1e-30

CHECKPOINT_KEYS = ("name", "lo", "hi", "default", "scale")   # a slider in a checkpoint
SCALES = ("linear", "log", "circular")


@dataclass(frozen=True)
class Slider:
    """A module parameter a proxy learns and regression recovers."""

    name: str          # the params struct field it sets
    lo: float          # range sampled, learned and regressed (darktable's soft slider range)
    hi: float
    default: float     # darktable's default
    # sampling space: "linear", "log" (needs lo > 0) or "circular": linear, its two ends the
    # same setting (an angle, a hue); the networks also get the sine and cosine of its position
    scale: str = "linear"
    doc: str = ""
    # the proxy type whose module the slider sets (utils.proxies.schema.ProxyType fills it in);
    # a module without sliders draws a slider of another type, which keeps its owner
    owner: str = ""

    def __post_init__(self) -> None:
        if not self.lo < self.hi or not self.lo <= self.default <= self.hi:
            raise ValueError(f"slider {self.name}: bad range {self.lo}..{self.hi} / {self.default}")
        if self.scale not in SCALES or (self.scale == "log" and self.lo <= 0):
            raise ValueError(f"slider {self.name}: bad scale {self.scale}")

    @property
    def qualified_name(self) -> str:
        """``<proxy type>.<slider>``."""
        return f"{self.owner}.{self.name}"

    def foreign_to(self, proxy: str) -> bool:
        """Whether it sets the module of another proxy type than ``proxy`` (the sampler of a
        module without sliders); a slider made outside any proxy type (no owner) is not."""
        return bool(self.owner) and self.owner != proxy

    def to_unit(self, value: Value) -> Value:
        """A slider value -> its position u in [0, 1] of the sampling space (the networks'
        conditioning): ``(v - lo) / (hi - lo)``, or ``log(v / lo) / log(hi / lo)``."""
        if self.scale == "log":
            return _log(_at_least(value, LOG_FLOOR) / self.lo) / math.log(self.hi / self.lo)
        return (value - self.lo) / (self.hi - self.lo)

    def from_unit(self, u: Value) -> Value:
        """A position u in [0, 1] of the sampling space -> the slider value:
        ``lo + u (hi - lo)``, or ``lo (hi / lo)^u``."""
        if self.scale == "log":
            return self.lo * _exp(u * math.log(self.hi / self.lo))
        return self.lo + u * (self.hi - self.lo)

    def clamp(self, value: float) -> float:
        """``value`` moved into the range (absorbs float rounding at the ends)."""
        return min(max(value, self.lo), self.hi)

    def to_dict(self) -> dict[str, Any]:
        """The slider as a checkpoint stores it (plain data: :data:`CHECKPOINT_KEYS`)."""
        return {key: getattr(self, key) for key in CHECKPOINT_KEYS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], owner: str = "") -> "Slider":
        """The slider a checkpoint stored (:meth:`to_dict`)."""
        return cls(**{key: data[key] for key in CHECKPOINT_KEYS}, owner=owner)


def conditioning(sliders: Sequence[Slider], u: torch.Tensor) -> torch.Tensor:
    """What a proxy's network is conditioned on, from the positions ``u`` (B, S) of
    ``sliders``: ``u``, then sin and cos of 2 pi u for each circular slider (B,
    :func:`conditioning_width`): a hue of 0.99 is then next to one of 0.01, as in darktable."""
    turns = [2 * math.pi * u[:, j] for j, s in enumerate(sliders) if s.scale == "circular"]
    if not turns:
        return u
    return torch.cat([u, *(torch.stack([torch.sin(a), torch.cos(a)], 1) for a in turns)], 1)


def conditioning_width(sliders: Sequence[Slider]) -> int:
    """The number of inputs :func:`conditioning` gives a network for ``sliders``."""
    return len(sliders) + 2 * sum(s.scale == "circular" for s in sliders)


def _log(x: Value) -> Value:
    return torch.log(x) if isinstance(x, torch.Tensor) else math.log(x)


def _exp(x: Value) -> Value:
    return torch.exp(x) if isinstance(x, torch.Tensor) else math.exp(x)


def _at_least(x: Value, floor: float) -> Value:
    return x.clamp_min(floor) if isinstance(x, torch.Tensor) else max(x, floor)
