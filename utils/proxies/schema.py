"""What a proxy type is: a darktable module, the sliders a proxy learns, its params structs.

Layouts (``ProxyType.layout``): ``rgb`` maps a 3-channel tap-out to a 3-channel one;
``mosaic`` a 1-channel raw mosaic to a mosaic (modules before demosaic); ``mosaic_rgb`` a
mosaic to 3 channels (demosaic). A module without sliders names a ``sampler``: a slider of
another proxy type, drawn per sample and applied upstream, so the module sees varied input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping

from utils.darktable.params import Struct
from utils.darktable.runner import Darktable
from utils.darktable.xmp import HistoryItem
from utils.errors import UserError
from utils.proxies.slider import Slider


LAYOUTS = ("rgb", "mosaic", "mosaic_rgb")
# what a type's fidelity is set against (utils.evaluation.fidelity.BASELINES): the input taken
# as output; for a demosaic the bilinear one; none where input and output are two colour spaces' values
BASELINES = ("identity", "bilinear", "none")


@dataclass(frozen=True)
class ProxyType:
    """A darktable module a proxy stands in for."""

    name: str                       # proxy type name on the command line
    operation: str                  # darktable operation (the iop's library name)
    sliders: tuple[Slider, ...]
    structs: tuple[Struct, ...]     # params struct per module version we know
    gui_name: str = ""              # the module's name in darktable's GUI ("color balance rgb")
    fixed: Mapping[str, float] = field(default_factory=dict)  # non-slider fields we pin
    model: str = "unet"             # default network family (models.networks.FAMILIES)
    value_scale: float = 0.01       # s of the network domain asinh(x / s) (models.transform)
    doc: str = ""
    # the output depends on where a pixel is in the whole image (vignette, graduated filter):
    # the networks also get its coordinates (utils.data.tapouts.coordinate_planes)
    positional: bool = False
    # the output depends on the pipe's pixel scale beyond its sliders' pixel lengths
    # (``Slider.pixels``): soften's radius is a share of the full image's diagonal, rounded
    # there; a positional type's planes then carry the scale (``takes_pixel_scale``)
    scaled: bool = False
    # what its exact proxy takes of its image beyond the pixels (utils.data.images.TRAITS):
    # "camera_matrix" (colorin), "white_balance" (denoiseprofile); "": nothing
    traits: str = ""
    # for a type whose default is exact: the learned family that measured best, the one to name
    # where the exact proxy cannot serve (an image without its traits)
    learned: str = "pointwise"
    layout: str = "rgb"             # "rgb", "mosaic" (1ch -> 1ch) or "mosaic_rgb" (1ch -> 3ch)
    # (proxy type, slider) varied upstream for a module without sliders of its own
    sampler: tuple[str, str] | None = None
    # options of its new networks that differ from what its family's new proxies get
    # (models.networks.new_network_options), where the type measured better with them
    network: Mapping[str, object] = field(default_factory=dict)
    baseline: str = "identity"      # BASELINES

    def __post_init__(self) -> None:
        # each slider knows its owner: a sampler's slider drawn for another type keeps it
        object.__setattr__(self, "sliders", tuple(replace(s, owner=self.name) for s in self.sliders))
        if self.layout not in LAYOUTS:
            raise ValueError(f"{self.name}: layout {self.layout!r} is not one of {LAYOUTS}")
        if self.baseline not in BASELINES:
            raise ValueError(f"{self.name}: baseline {self.baseline!r} is not one of {BASELINES}")
        if not self.sliders and self.sampler is None:
            raise ValueError(f"{self.name}: a module without sliders needs a sampler")

    @property
    def takes_pixel_scale(self) -> bool:
        """Whether its proxies need each image's pipe scale (utils.data.tapouts.pixel_scale): a
        slider is a length at full size, or the operation depends on the scale (``scaled``)."""
        return self.scaled or any(s.pixels for s in self.sliders)

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
                        "or add the struct to utils/proxies/registry.py")

    def check_values(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            s = self.slider(name)
            if not (s.lo <= value <= s.hi) or math.isnan(value):
                raise UserError(f"{self.name}.{name}={value:g} is out of range; "
                                f"use a value in {s.lo:g}..{s.hi:g}")

    def default_params(self) -> dict[int, bytes]:
        """Version -> the packed params with every slider at its default."""
        return {s.version: self.params({}, s.version) for s in self.structs}

    def module_version(self, dt: Darktable) -> int:
        """The params version of this module in ``dt``'s darktable."""
        return dt.module_version(self.operation, self.default_params())

    def history_item(self, dt: Darktable, values: Mapping[str, float], enabled: bool = True) -> HistoryItem:
        """A history item setting the sliders to ``values`` (the others at defaults)."""
        version = self.module_version(dt)
        return HistoryItem(self.operation, version, self.params(values, version), enabled=enabled)

    def params(self, values: Mapping[str, float], version: int) -> bytes:
        """The packed params for ``values`` (slider -> value), everything else at defaults."""
        self.check_values(values)
        struct_ = self.struct(version)
        names = {f.name for f in struct_.fields}
        # a pinned field may not exist in every version (e.g. exposure v6 has no hilite_pres)
        return struct_.pack({**{k: v for k, v in self.fixed.items() if k in names}, **values})


def render_size(proxy: ProxyType, size: int) -> tuple[int, bool]:
    """(export size, hq) to render ``proxy``'s tap-outs: full size for raw mosaic modules."""
    if proxy.mosaic_input:
        return 0, True
    return size, size == 0
