"""Proxy types as data: darktable operation, sliders, and params struct per module version.

Adding a darktable module means adding one ``ProxyType`` entry (and a test), never code.
Struct layouts come from darktable's ``src/iop/<operation>.c``: the fields of
``dt_iop_<op>_params_t`` in order, ``f`` for float and ``i`` for int/enum/gboolean (4 bytes,
little-endian, no padding), with the ``$DEFAULT`` of each field.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Mapping

from utils.errors import UserError


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str        # "f" float32, "i" int32 (int, enum, gboolean)
    default: float


@dataclass(frozen=True)
class Struct:
    """One version of a module's params struct."""

    version: int
    fields: tuple[Field, ...]

    @property
    def format(self) -> str:
        return "<" + "".join(f.ctype for f in self.fields)

    @property
    def size(self) -> int:
        return struct.calcsize(self.format)

    def pack(self, values: Mapping[str, float]) -> bytes:
        """Pack ``values`` (field name -> value), every other field at its default."""
        unknown = set(values) - {f.name for f in self.fields}
        if unknown:
            raise KeyError(f"no field {sorted(unknown)} in params v{self.version}")
        return struct.pack(self.format, *(
            int(values.get(f.name, f.default)) if f.ctype == "i" else float(values.get(f.name, f.default))
            for f in self.fields))

    def unpack(self, blob: bytes) -> dict[str, float]:
        if len(blob) != self.size:
            raise ValueError(f"params v{self.version} are {self.size} bytes, got {len(blob)}")
        return dict(zip((f.name for f in self.fields), struct.unpack(self.format, blob)))


def fields(spec: str) -> tuple[Field, ...]:
    """Parse a compact struct spec: ``"name:f=0.0 other:i=1 ..."`` (whitespace separated)."""
    out = []
    for token in spec.split():
        name, rest = token.split(":")
        ctype, default = rest.split("=")
        out.append(Field(name, ctype, float(default)))
    return tuple(out)


@dataclass(frozen=True)
class Slider:
    """A module parameter a proxy learns and regression recovers."""

    name: str          # the params struct field it sets
    lo: float          # range sampled, learned and regressed (darktable's soft slider range)
    hi: float
    default: float     # darktable's default
    scale: str = "linear"   # sampling space: "linear" or "log" (log needs lo > 0)
    doc: str = ""

    def __post_init__(self) -> None:
        if not self.lo < self.hi or not self.lo <= self.default <= self.hi:
            raise ValueError(f"slider {self.name}: bad range {self.lo}..{self.hi} / {self.default}")
        if self.scale not in ("linear", "log") or (self.scale == "log" and self.lo <= 0):
            raise ValueError(f"slider {self.name}: bad scale {self.scale}")

    def to_unit(self, value: float) -> float:
        """A slider value -> its position u in [0, 1] of the sampling space (the networks'
        conditioning; models.proxy.Proxy.to_unit is the differentiable twin)."""
        if self.scale == "log":
            return math.log(value / self.lo) / math.log(self.hi / self.lo)
        return (value - self.lo) / (self.hi - self.lo)

    def from_unit(self, u: float) -> float:
        """A position u in [0, 1] of the sampling space -> the slider value."""
        if self.scale == "log":
            return math.exp(math.log(self.lo) + u * (math.log(self.hi) - math.log(self.lo)))
        return self.lo + u * (self.hi - self.lo)


@dataclass(frozen=True)
class ProxyType:
    """A darktable module a proxy stands in for."""

    name: str                       # proxy type name on the command line
    operation: str                  # darktable operation (the iop's library name)
    sliders: tuple[Slider, ...]
    structs: tuple[Struct, ...]     # params struct per module version we know
    fixed: Mapping[str, float] = field(default_factory=dict)  # non-slider fields we pin
    model: str = "unet"             # default network family (models.proxies.FAMILIES)
    value_scale: float = 0.01       # s of the network domain asinh(x / s) (models.transform)
    doc: str = ""

    def slider(self, name: str) -> Slider:
        for s in self.sliders:
            if s.name == name:
                return s
        raise UserError(f"{self.name} has no slider {name!r}; its sliders are "
                        f"{', '.join(s.name for s in self.sliders) or 'none'}")

    def select(self, names: list[str] | None) -> tuple[Slider, ...]:
        """The sliders named (all when ``names`` is empty), in the proxy's order."""
        if not names:
            return self.sliders
        wanted = {self.slider(n).name for n in names}
        return tuple(s for s in self.sliders if s.name in wanted)

    def struct(self, version: int) -> Struct:
        for s in self.structs:
            if s.version == version:
                return s
        known = ", ".join(str(s.version) for s in self.structs)
        raise UserError(f"darktable's {self.operation} module has params version {version}, "
                        f"but this project knows versions {known}; use darktable 4.4 to 5.x "
                        "or add the struct to utils/registry.py")

    def check_values(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            s = self.slider(name)
            if not (s.lo <= value <= s.hi) or math.isnan(value):
                raise UserError(f"{self.name}.{name}={value:g} is out of range; "
                                f"use a value in {s.lo:g}..{s.hi:g}")

    def params(self, values: Mapping[str, float], version: int) -> bytes:
        """The packed params for ``values`` (slider -> value), everything else at defaults."""
        self.check_values(values)
        struct_ = self.struct(version)
        names = {f.name for f in struct_.fields}
        # a pinned field may not exist in every version (e.g. exposure v6 has no hilite_pres)
        return struct_.pack({**{k: v for k, v in self.fixed.items() if k in names}, **values})


EXPOSURE = ProxyType(
    name="exposure",
    operation="exposure",
    model="pointwise",
    doc="exposure and black level: out = (in - black) / (2^-exposure - black), per pixel",
    sliders=(
        Slider("exposure", -3.0, 4.0, 0.0, doc="EV"),
        # wider black ranges let black pass 2^-exposure, which inverts the image
        Slider("black", -0.02, 0.02, 0.0, doc="black level correction"),
    ),
    # manual mode; no exposure-bias or highlight-preservation compensation, so that the output
    # depends on the sliders alone, not on the camera's EXIF.
    fixed={"mode": 0, "compensate_exposure_bias": 0, "compensate_hilite_pres": 0},
    structs=(
        Struct(6, fields("mode:i=0 black:f=0 exposure:f=0 deflicker_percentile:f=50 "
                         "deflicker_target_level:f=-4 compensate_exposure_bias:i=0")),
        Struct(7, fields("mode:i=0 black:f=0 exposure:f=0 deflicker_percentile:f=50 "
                         "deflicker_target_level:f=-4 compensate_exposure_bias:i=0 "
                         "compensate_hilite_pres:i=1")),
    ),
)

_COLORBALANCERGB_V5 = fields(
    "shadows_Y:f=0 shadows_C:f=0 shadows_H:f=0 midtones_Y:f=0 midtones_C:f=0 midtones_H:f=0 "
    "highlights_Y:f=0 highlights_C:f=0 highlights_H:f=0 global_Y:f=0 global_C:f=0 global_H:f=0 "
    "shadows_weight:f=1 white_fulcrum:f=0 highlights_weight:f=1 chroma_shadows:f=0 "
    "chroma_highlights:f=0 chroma_global:f=0 chroma_midtones:f=0 saturation_global:f=0 "
    "saturation_highlights:f=0 saturation_midtones:f=0 saturation_shadows:f=0 hue_angle:f=0 "
    "brilliance_global:f=0 brilliance_highlights:f=0 brilliance_midtones:f=0 "
    "brilliance_shadows:f=0 mask_grey_fulcrum:f=0.1845 vibrance:f=0 grey_fulcrum:f=0.1845 "
    "contrast:f=0 saturation_formula:i=1")

COLORBALANCERGB = ProxyType(
    name="colorbalancergb",
    operation="colorbalancergb",
    model="pointwise",
    doc="color balance rgb: global saturation, vibrance and contrast around a grey fulcrum",
    sliders=(
        Slider("saturation_global", -1.0, 1.0, 0.0),
        Slider("vibrance", -1.0, 1.0, 0.0),
        Slider("grey_fulcrum", 0.05, 0.5, 0.1845, scale="log", doc="contrast grey fulcrum"),
        Slider("contrast", -1.0, 1.0, 0.0),
    ),
    structs=(Struct(5, _COLORBALANCERGB_V5),),
)

PROXIES: dict[str, ProxyType] = {p.name: p for p in (EXPOSURE, COLORBALANCERGB)}


def get_proxy(name: str) -> ProxyType:
    try:
        return PROXIES[name]
    except KeyError:
        raise UserError(f"unknown proxy type {name!r}; choose one of: {', '.join(PROXIES)} "
                        "(see --list-proxies)") from None


def describe(proxy: ProxyType) -> str:
    """One line: ``<name>  <slider>=<lo>..<hi> ...`` (the --list-proxies format)."""
    sliders = " ".join(f"{s.name}={s.lo:g}..{s.hi:g}" for s in proxy.sliders)
    return f"{proxy.name}  {sliders}".rstrip()
