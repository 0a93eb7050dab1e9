"""Proxy types as data: darktable operation, sliders, and params struct per module version.

Adding a darktable module means adding one ``ProxyType`` entry (and a test), never code.
Struct layouts come from darktable's ``src/iop/<operation>.c``: the fields of
``dt_iop_<op>_params_t`` in order, ``f`` for float and ``i`` for int/enum/gboolean (4 bytes,
little-endian, no padding), ``<n>s`` for a ``char[n]`` (a file name, zero-filled), with the
``$DEFAULT`` of each field.

Layouts (``ProxyType.layout``): ``rgb`` maps a 3-channel tap-out to a 3-channel one;
``mosaic`` a 1-channel raw mosaic to a mosaic (modules before demosaic); ``mosaic_rgb`` a
mosaic to 3 channels (demosaic). A module without sliders names a ``sampler``: a slider of
another proxy type, drawn per sample and applied upstream, so the module sees varied input.
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
    ctype: str        # "f" float32, "i" int32 (int, enum, gboolean), "<n>s" char[n] (zero-filled)
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
        return struct.pack(self.format, *(_field_value(f, values.get(f.name, f.default))
                                          for f in self.fields))

    def unpack(self, blob: bytes) -> dict[str, float]:
        if len(blob) != self.size:
            raise ValueError(f"params v{self.version} are {self.size} bytes, got {len(blob)}")
        return dict(zip((f.name for f in self.fields), struct.unpack(self.format, blob)))


def _field_value(f: Field, value):
    if f.ctype == "i":
        return int(value)
    if f.ctype.endswith("s"):
        return value if isinstance(value, bytes) else b""   # char[n]: zero bytes unless given
    return float(value)


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


LAYOUTS = ("rgb", "mosaic", "mosaic_rgb")


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
    layout: str = "rgb"             # "rgb", "mosaic" (1ch -> 1ch) or "mosaic_rgb" (1ch -> 3ch)
    # (proxy type, slider) varied upstream for a module without sliders of its own
    sampler: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"{self.name}: layout {self.layout!r} is not one of {LAYOUTS}")
        if not self.sliders and self.sampler is None:
            raise ValueError(f"{self.name}: a module without sliders needs a sampler")

    @property
    def mosaic_input(self) -> bool:
        """Whether the module's input is a raw CFA mosaic (1 channel)."""
        return self.layout in ("mosaic", "mosaic_rgb")

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

# ---------------------------------------------------------------- raw and profile modules

TEMPERATURE = ProxyType(
    name="temperature",
    operation="temperature",
    layout="mosaic",
    model="pointwise",      # per photosite: a per-pixel net on the packed R, G1, G2, B planes
    doc="white balance on the raw mosaic: each photosite times its colour's multiplier",
    # darktable's struct has no $DEFAULT: it loads the camera's as-shot multipliers. Our
    # defaults are typical daylight values of the built-in cameras (red 1.8-2.35, blue
    # 1.4-1.9 with green 1); ranges span 1/4..2x of them, sampled in log space (a multiplier).
    sliders=(
        Slider("red", 0.5, 4.0, 2.0, scale="log", doc="red multiplier"),
        Slider("green", 0.5, 2.0, 1.0, scale="log", doc="green multiplier (both greens)"),
        Slider("blue", 0.5, 4.0, 1.6, scale="log", doc="blue multiplier"),
    ),
    # "various" is the 4th colour of 4-colour sensors (unused by Bayer); preset 2 = "user
    # modified" (preset 4 would also move colour calibration's late correction)
    fixed={"various": 1.0, "preset": 2},
    structs=(
        Struct(3, fields("red:f=2 green:f=1 blue:f=1.6 various:f=1")),
        Struct(4, fields("red:f=2 green:f=1 blue:f=1.6 various:f=1 preset:i=2")),
    ),
)

HIGHLIGHTS = ProxyType(
    name="highlights",
    operation="highlights",
    layout="mosaic",
    model="pointwise",      # per photosite in clip mode
    doc="highlight reconstruction, mode 'clip highlights': out = min(in, clip x min(WB multipliers))",
    # Mode pinned to "clip" (0): pointwise and the same whether an image is first in a
    # darktable process or not. darktable 5's default "inpaint opposed" keeps image statistics
    # between the images of one process (batched renders then differ from single ones), and
    # its other sliders (strength, noise, iterations, scales, candidating, combine, recovery,
    # solid colour) are dead in clip mode, so only the threshold is sampled. The threshold
    # is in white-balanced units (x the smallest multiplier, about 1); darktable's default 1.0
    # clips nothing in the built-in images (their white-balanced peaks are 0.38..0.85), so
    # the range reaches down to 0.1 and is sampled in log space, where most photosites change.
    sliders=(Slider("clip", 0.1, 1.0, 1.0, scale="log", doc="clipping threshold (x white)"),),
    fixed={"mode": 0},
    structs=(
        Struct(4, fields("mode:i=5 blendL:f=1 blendC:f=0 strength:f=0 clip:f=1 noise_level:f=0 "
                         "iterations:i=30 scales:i=6 candidating:f=0.4 combine:f=2 recovery:i=0 "
                         "solid_color:f=0")),
    ),
)

DEMOSAIC = ProxyType(
    name="demosaic",
    operation="demosaic",
    layout="mosaic_rgb",
    model="unet",
    doc="demosaicing (RCD) of the white-balanced mosaic into camera RGB; no sliders",
    sliders=(),
    sampler=("temperature", "green"),
    # method 5 = RCD (darktable's default for Bayer sensors); no green equilibration, no
    # colour smoothing
    fixed={"demosaicing_method": 5},
    structs=(
        Struct(4, fields("green_eq:i=0 median_thrs:f=0 color_smoothing:i=0 demosaicing_method:i=5 "
                         "lmmse_refine:i=1 dual_thrs:f=0.2")),
    ),
)

_ICC = "512s=0"   # char filename[DT_IOP_COLOR_ICC_LEN]

COLORIN = ProxyType(
    name="colorin",
    operation="colorin",
    model="pointwise",
    # in: camera RGB (about 0..1, up to ~16 at +4 EV), out: Lab (L 0..100, a/b about -100..100).
    # asinh(x / 1): linear over the camera values and through zero, where a and b change
    # sign (with 0.01 a sign change is a jump of ~18 units), logarithmic over Lab's range
    value_scale=1.0,
    doc="input color profile: camera RGB -> Lab through the DNG's embedded colour matrix; no sliders",
    sliders=(),
    sampler=("exposure", "exposure"),
    # type 10 = embedded matrix (what darktable picks for a DNG with ColorMatrix1), perceptual
    # intent, no gamut clipping, working profile 4 = linear Rec.2020
    fixed={"type": 10, "type_work": 4},
    structs=(
        Struct(7, fields(f"type:i=10 filename:{_ICC} intent:i=0 normalize:i=0 blue_mapping:i=0 "
                         f"type_work:i=4 filename_work:{_ICC}")),
    ),
)

COLOROUT = ProxyType(
    name="colorout",
    operation="colorout",
    model="pointwise",
    # in: Lab (L 0..100, a/b about -100..100), out: display-encoded sRGB (about 0..1): as colorin
    value_scale=1.0,
    doc="output color profile: Lab -> display-encoded sRGB; no sliders",
    sliders=(),
    sampler=("colorbalancergb", "contrast"),
    fixed={"type": 1},    # 1 = sRGB, perceptual intent
    structs=(Struct(5, fields(f"type:i=1 filename:{_ICC} intent:i=0")),),
)


PROXIES: dict[str, ProxyType] = {p.name: p for p in (EXPOSURE, COLORBALANCERGB, TEMPERATURE, HIGHLIGHTS,
                                                    DEMOSAIC, COLORIN, COLOROUT)}


def get_proxy(name: str) -> ProxyType:
    try:
        return PROXIES[name]
    except KeyError:
        raise UserError(f"unknown proxy type {name!r}; choose one of: {', '.join(PROXIES)} "
                        "(see --list-proxies)") from None


def sampler_of(proxy: ProxyType) -> tuple[ProxyType, Slider] | None:
    """The upstream proxy type and slider a slider-less ``proxy`` varies, or None."""
    if proxy.sampler is None:
        return None
    upstream = get_proxy(proxy.sampler[0])
    return upstream, upstream.slider(proxy.sampler[1])


def describe(proxy: ProxyType) -> str:
    """One line: ``<name>  <slider>=<lo>..<hi> ...`` (the --list-proxies format)."""
    sliders = " ".join(f"{s.name}={s.lo:g}..{s.hi:g}" for s in proxy.sliders)
    sampler = sampler_of(proxy)
    if not sliders and sampler is not None:
        upstream, s = sampler
        sliders = f"sampler:{upstream.name}.{s.name}={s.lo:g}..{s.hi:g}"   # no sliders of its own
    return f"{proxy.name}  {sliders}".rstrip()
