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

CHECKPOINT_KEYS = ("name", "lo", "hi", "default", "scale", "hsl", "pixels", "ev")   # a slider in a checkpoint
OPTIONAL_KEYS = {"hsl": "", "pixels": False, "ev": False}   # absent from checkpoints written before them: their defaults
SCALES = ("linear", "log", "circular")
# the roles of sliders that make one colour the way darktable does (hsl2rgb: colorize,
# graduatednd, splittoning); a missing saturation is taken as 1, a missing lightness as 0.5
HSL_ROLES = ("hue", "saturation", "lightness")


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
    # its role ("hue", "saturation", "lightness": HSL_ROLES) in a colour the module builds
    # from sliders with darktable's hsl2rgb; the networks get that colour's R, G and B instead
    # of the sliders (:func:`conditioning`). Its range starts at 0 and ends at the
    # component's whole (1, 100 %)
    hsl: str = ""
    # a length in pixels of the image at full size (a blur's radius, a pixelation's cell):
    # darktable scales it by the pipe's scale (an export at a quarter of the full width blurs
    # a quarter as far), so a proxy that knows its input's pixel scale is conditioned on the
    # length at the scale it was trained at (:func:`conditioning`)
    pixels: bool = False
    # an exposure in EV that the module applies as the gain 2^value (toneequal's bands): the
    # networks also get that gain, of which what darktable computes is then a linear function
    ev: bool = False

    def __post_init__(self) -> None:
        if not self.lo < self.hi or not self.lo <= self.default <= self.hi:
            raise ValueError(f"slider {self.name}: bad range {self.lo}..{self.hi} / {self.default}")
        if self.scale not in SCALES or (self.scale == "log" and self.lo <= 0):
            raise ValueError(f"slider {self.name}: bad scale {self.scale}")
        if self.hsl and (self.hsl not in HSL_ROLES or self.scale == "log" or self.lo != 0):
            raise ValueError(f"slider {self.name}: hsl role {self.hsl!r} needs one of {HSL_ROLES} "
                             "and a linear or circular range from 0")

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

    def error(self, found: float, true: float) -> float:
        """How far a recovered value is from the true one, as a fraction of the range; for a
        circular slider the shorter way round (hue 0.999 is 0.001 from hue 0)."""
        d = abs(found - true) / (self.hi - self.lo)
        return min(d, 1 - d) if self.scale == "circular" else d

    def clamp(self, value: float) -> float:
        """``value`` moved into the range (absorbs float rounding at the ends)."""
        return min(max(value, self.lo), self.hi)

    def to_dict(self) -> dict[str, Any]:
        """The slider as a checkpoint stores it (plain data: :data:`CHECKPOINT_KEYS`)."""
        return {key: getattr(self, key) for key in CHECKPOINT_KEYS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], owner: str = "") -> "Slider":
        """The slider a checkpoint stored (:meth:`to_dict`)."""
        return cls(**{key: data[key] if key not in OPTIONAL_KEYS else data.get(key, OPTIONAL_KEYS[key])
                      for key in CHECKPOINT_KEYS}, owner=owner)


def conditioning(sliders: Sequence[Slider], u: torch.Tensor,
                 pixel_ratio: torch.Tensor | None = None) -> torch.Tensor:
    """What a proxy's network is conditioned on, from the positions ``u`` (B, S) of
    ``sliders``: ``u`` (a pixel length's the position of its value times ``pixel_ratio`` (B,):
    the input's pixel scale over the one the proxy was trained at), then the gain 2^value of
    each slider in EV (``Slider.ev``), then sin and cos of 2 pi u for each circular slider (a hue of 0.99 is
    then next to one of 0.01, as in darktable); (B, :func:`conditioning_width`).
    Differentiable. Sliders that make an HSL colour with a hue (:data:`HSL_ROLES`) are given
    as that colour's R, G and B instead, all the module itself uses of them: measured on
    colorize's 120 training settings, a network given its own sliders besides the colour
    generalised 10 dB worse."""
    if pixel_ratio is not None and any(s.pixels for s in sliders):
        u = torch.stack([s.to_unit(s.from_unit(u[:, j]) * pixel_ratio.to(u.dtype)) if s.pixels else u[:, j]
                         for j, s in enumerate(sliders)], 1)
    own, roles = _encoding(sliders)
    parts = [u if len(own) == len(sliders) else u[:, own]]
    parts += [torch.exp2(s.from_unit(u[:, j]))[:, None].to(u.dtype) for j, s in enumerate(sliders) if s.ev]
    parts += [torch.stack([torch.sin(2 * math.pi * u[:, j]), torch.cos(2 * math.pi * u[:, j])], 1)
              for j in own if sliders[j].scale == "circular"]
    if roles:
        def component(role: str, missing: float) -> torch.Tensor:
            return u[:, roles[role]] if role in roles else torch.full_like(u[:, 0], missing)
        parts.append(hsl_to_rgb(component("hue", 0.0), component("saturation", 1.0), component("lightness", 0.5)))
    return torch.cat(parts, 1) if len(parts) > 1 else u


def conditioning_width(sliders: Sequence[Slider]) -> int:
    """The number of inputs :func:`conditioning` gives a network for ``sliders``."""
    own, roles = _encoding(sliders)
    return (len(own) + sum(s.ev for s in sliders) + 2 * sum(sliders[j].scale == "circular" for j in own)
            + 3 * bool(roles))


def hsl_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, lightness: torch.Tensor) -> torch.Tensor:
    """darktable's hsl2rgb, all in [0, 1], differentiable (piecewise): (B,) x 3 -> (B, 3)."""
    sector = torch.remainder(hue, 1.0)[:, None] * 6 - torch.tensor([3.0, 2.0, 4.0], device=hue.device)
    pure = torch.stack([sector[:, 0].abs() - 1, 2 - sector[:, 1].abs(), 2 - sector[:, 2].abs()], 1).clamp(0, 1)
    chroma = (1 - (2 * lightness - 1).abs()) * saturation
    return lightness[:, None] + chroma[:, None] * (pure - 0.5)


def _encoding(sliders: Sequence[Slider]) -> tuple[list[int], dict[str, int]]:
    """How :func:`conditioning` gives ``sliders``: the columns given as themselves, and {HSL
    role: column} of those given as their colour (empty without a hue)."""
    roles = _hsl_columns(sliders)
    if "hue" not in roles:
        return list(range(len(sliders))), {}
    return [j for j, s in enumerate(sliders) if not s.hsl], roles


def _hsl_columns(sliders: Sequence[Slider]) -> dict[str, int]:
    """{HSL role: column} of the sliders that have one; a role given twice is refused."""
    roles: dict[str, int] = {}
    for j, s in enumerate(sliders):
        if s.hsl:
            if s.hsl in roles:
                raise ValueError(f"two sliders with hsl role {s.hsl!r}: {sliders[roles[s.hsl]].name}, {s.name}")
            roles[s.hsl] = j
    return roles


def _log(x: Value) -> Value:
    return torch.log(x) if isinstance(x, torch.Tensor) else math.log(x)


def _exp(x: Value) -> Value:
    return torch.exp(x) if isinstance(x, torch.Tensor) else math.exp(x)


def _at_least(x: Value, floor: float) -> Value:
    return x.clamp_min(floor) if isinstance(x, torch.Tensor) else max(x, floor)
