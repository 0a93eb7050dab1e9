"""A trained proxy: network + slider ranges + value transform, loadable from its checkpoint alone.

``Proxy.forward(x, u)`` maps a module's input tap-out ``x`` (B, C_in, H, W), in the module's
own values, and normalised sliders ``u`` (B, S) in [0, 1] to the module's output
(B, C_out, H, W): differentiable in both, so it serves training, slider regression and
pipelines alike. By layout (``spec.layout``):

- ``rgb``: (B, 3, H, W) -> (B, 3, H, W);
- ``mosaic``: (B, 1, H, W) raw mosaic -> (B, 1, H, W), ``pattern`` naming its CFA phase
  (``forward(x, u, pattern)``; one name or one per image; H, W even); the network runs on
  the 4 packed planes (models.mosaic.pack);
- ``mosaic_rgb`` (demosaic): (B, 1, H, W) mosaic -> (B, 3, H, W) camera RGB, likewise. ``u`` is each slider's position in its sampling space (linear, or log for
sliders whose range spans decades): ``Slider.to_unit`` / ``Slider.from_unit``
(utils/proxies/slider.py).
"""
from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from models.blocks import pixelate
from models.graphs import GraphedPasses
from models.mosaic import nearest_rgb, pack, unpack, unpack_rgb
from models.networks import EXACT_FAMILY, ModelSpec, build_model
from models.priors import PRIORS
from models.transform import from_network, to_network
from utils.atomic import write_atomic
from utils.data.tapouts import SCALED_PLANES
from utils.proxies.slider import Slider, conditioning

CHECKPOINT_FORMAT = 1   # bump when the checkpoint layout changes incompatibly
RANGE_KEYS = ("lo", "hi", "log")   # the slider ranges a format-1 state_dict also holds


class IncompatibleCheckpoint(Exception):
    """A checkpoint this code cannot load (another format version or a broken file)."""


SCALE_PLANE = SCALED_PLANES - 1     # the extra plane that holds the pixel scale (utils.data.tapouts.coordinate_planes)

class Proxy(nn.Module):
    def __init__(self, spec: ModelSpec, sliders: Sequence[Slider], scale: float,
                 meta: Mapping[str, Any] | None = None):
        super().__init__()
        self.spec, self.scale = spec, float(scale)
        self.sliders = tuple(sliders)
        self.meta = dict(meta or {})
        if spec.prior and spec.layout == "mosaic_rgb" and spec.family != EXACT_FAMILY:
            raise ValueError("a mosaic_rgb proxy's prior is the whole proxy: the exact family")
        self.net = build_model(spec)
        # autocast dtype of forward passes without gradients (None: fp32, as in training);
        # utils.devices.inference_dtype chooses it for a loaded proxy
        self.inference_dtype: torch.dtype | None = None
        # CUDA graphs of forward passes without gradients (None: plain passes);
        # utils.devices.for_inference sets them for a proxy loaded onto a CUDA device
        self.graphs: GraphedPasses | None = None

    @property
    def slider_names(self) -> list[str]:
        return [s.name for s in self.sliders]

    @property
    def steps(self) -> list[int]:
        """The indices of the sliders whose effect is a step function (``spec.pixelate``'s, the
        glow's threshold, the prior's steps): slider regression searches them
        (utils.evaluation.regress.line_search)."""
        names = [self.spec.pixelate, "threshold" if self.spec.glow else "",
                 *(PRIORS[self.spec.prior].steps if self.spec.prior else ())]
        return [self.slider_names.index(name) for name in dict.fromkeys(names) if name in self.slider_names]

    @property
    def whole_image(self) -> bool:
        """Whether the proxy computes on the whole image only (its prior, as darktable's
        operation, depends on all of it: on a crop it would compute something else), so that
        slider regression fits whole images rather than crops."""
        return bool(self.spec.prior) and PRIORS[self.spec.prior].whole_image

    @property
    def device(self) -> torch.device:
        return next(itertools.chain(self.net.parameters(), self.net.buffers())).device

    @property
    def layout(self) -> str:
        return self.spec.layout

    def forward(self, x: torch.Tensor, u: torch.Tensor, pattern: str | Sequence[str] = "RGGB") -> torch.Tensor:
        """For the ``rgb`` layout ``x`` holds the image channels, then ``spec.extra_channels``
        planes (coordinates, the fifth its pixel scale when ``spec.pixel_scale``; or an image's
        traits: utils.data.tapouts.TRAIT_PLANES); mosaic layouts
        take the mosaic and its CFA ``pattern``. With ``graphs``, a pass out of training,
        without a gradient or autocast, on the graphs' device, given CFA pattern names (not a
        chain's image context, whose values a graph would keep) is a replayed CUDA graph."""
        if (self.graphs is not None and x.device.type == self.graphs.device_type and not self.training
                and not torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type)):
            names = (pattern,) if isinstance(pattern, str) else tuple(pattern) if isinstance(pattern, (list, tuple)) else ()
            if names and all(isinstance(n, str) for n in names):
                return self.graphs(lambda x, u: self._forward(x, u, pattern), x, u, extra=names)
        return self._forward(x, u, pattern)

    def _apply(self, fn, *args, **kwargs):
        """``Module._apply`` (``to``, ``cuda``, ``half``...), dropping the graphs, which read the
        tensors they were captured with."""
        if getattr(self, "graphs", None) is not None:
            self.graphs.clear()
        return super()._apply(fn, *args, **kwargs)

    def _forward(self, x: torch.Tensor, u: torch.Tensor, pattern: str | Sequence[str]) -> torch.Tensor:
        scale = self._pixel_scale(x)
        c = self._conditioning(u, scale)
        if self.spec.layout == "rgb":
            k = self.spec.in_channels
            image = self._prior(x[:, :k], u, scale, planes=x[:, k:]) if self.spec.prior else x[:, :k]
            y = image if self.spec.family == EXACT_FAMILY else self._refine(image, x[:, k:], u, c)
            return self._pixelate(y, u, scale, x[:, k:]) if self.spec.pixelate else y
        if self.spec.prior:
            x = self._prior(x, u, scale, pattern)
            if self.spec.family == EXACT_FAMILY:    # the prior is the whole proxy
                return x
        planes = pack(to_network(x, self.scale), pattern)  # (B, 4, H/2, W/2): R, G1, G2, B
        if self.spec.layout == "mosaic":
            return from_network(unpack(self._net(planes, c), pattern), self.scale)   # (B, 1, H, W)
        rgb = self._net(nearest_rgb(planes), c)             # (B, 12, H/2, W/2)
        return from_network(unpack_rgb(rgb, pattern), self.scale)                   # (B, 3, H, W)

    def _refine(self, image: torch.Tensor, planes: torch.Tensor, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The network's output for RGB-layout ``image`` (B, C_in, H, W), the prior's output if
        there is one, given its extra ``planes`` (and the glow it gathers) in the network domain."""
        t = to_network(image, self.scale)
        if self.spec.extra_channels:
            t = torch.cat([t, planes[:, :self.spec.extra_channels].to(t.dtype)], 1)
        if self.spec.glow:
            t = torch.cat([t, self._glow(image[:, :1], u).to(t.dtype) / self.scale], 1)
        return from_network(self._net(t, c), self.scale)                # (B, C_out, H, W)

    def _glow(self, lightness: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W): the lightness darktable's bloom gathers from Lab ``lightness``
        (``spec.glow``): L k where L k passes the threshold, else 0, k = 2^(min(100, strength +
        1) / 100); a step at the threshold (searched by slider regression, ``steps``)."""
        threshold, strength = (self.sliders[j].from_unit(u[:, j].double())
                               for j in (self.slider_names.index("threshold"), self.slider_names.index("strength")))
        gathered = lightness.double() * torch.exp2((strength + 1).clamp(max=100) / 100)[:, None, None, None]
        return torch.where(gathered > threshold.detach()[:, None, None, None], gathered, torch.zeros_like(gathered)).float()

    def _prior(self, image: torch.Tensor, u: torch.Tensor, scale: torch.Tensor | None,
               pattern: str | Sequence[str] = "RGGB", planes: torch.Tensor | None = None) -> torch.Tensor:
        """darktable's own operation on ``image`` at sliders ``u`` (``spec.prior``,
        models.priors), at each image's pixel scale (1 where the proxy knows none: it was
        trained at full size), for a mosaic of CFA ``pattern``, at the coordinate ``planes``
        of a positional type."""
        values = self.from_unit(u)
        scale = torch.ones(len(image), dtype=torch.float64, device=image.device) if scale is None else scale
        return PRIORS[self.spec.prior](image, {s.name: values[:, j] for j, s in enumerate(self.sliders)},
                                       scale, pattern, planes)

    def _conditioning(self, u: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """What the network is conditioned on (utils.proxies.slider.conditioning), the pixel
        lengths at the scale the proxy was trained at when it knows the input's ``scale``."""
        return conditioning(self.sliders, u, None if scale is None else scale / self.spec.pixel_scale)

    def _pixel_scale(self, x: torch.Tensor) -> torch.Tensor | None:
        """Each image's pixel scale (B,), float64, from its fifth extra plane (SCALE_PLANE; where it is 0,
        unknown, the one the proxy was trained at; a proxy without coordinate planes always takes
        that one); None when the proxy does not take it."""
        if not self.spec.pixel_scale:
            return None
        if not self.spec.extra_channels:
            return torch.full((len(x),), self.spec.pixel_scale, dtype=torch.float64, device=x.device)
        if self.spec.extra_channels <= SCALE_PLANE:
            return torch.full((len(x),), self.spec.pixel_scale, dtype=torch.float64, device=x.device)
        given = x[:, self.spec.in_channels + SCALE_PLANE, 0, 0].double()
        return torch.where(given > 0, given, torch.full_like(given, self.spec.pixel_scale))

    def _pixelate(self, y: torch.Tensor, u: torch.Tensor, scale: torch.Tensor | None,
                  planes: torch.Tensor) -> torch.Tensor:
        """``y`` pixelated as darktable does (models.blocks.pixelate) into cells of the radius
        the ``spec.pixelate`` slider gives at full size, times the pixel scale, rounded down: a
        step function of the slider, without slope between its steps (slider regression
        searches it, utils.evaluation.regress.line_search)."""
        j = self.slider_names.index(self.spec.pixelate)
        value = self.sliders[j].from_unit(u[:, j].detach().double()).float()
        length = value * (1.0 if scale is None else scale.float())     # darktable's float32 product
        return pixelate(y, length.floor().double(), planes)

    def auxiliary_loss(self, x: torch.Tensor, y: torch.Tensor, u: torch.Tensor,
                       pred: torch.Tensor) -> torch.Tensor:
        """What training adds to the loss of ``pred = forward(x, u)`` (training mode) against
        ``y`` beyond comparing them: the fits of an untouched border's width
        (``ModelSpec.border``) and of a gate (``ModelSpec.gate``), else 0."""
        if not (self.spec.border or self.spec.gate):
            return x.new_zeros(())
        k, c = self.spec.in_channels, self._conditioning(u, self._pixel_scale(x))
        t, target = to_network(x[:, :k], self.scale), to_network(y, self.scale)
        return (self.net.border_loss(t, x[:, k:k + self.spec.extra_channels], target, c)
                + self.net.gate_loss(t, target, to_network(pred, self.scale), c))

    def _net(self, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The network on (t, c), in ``inference_dtype`` autocast when no gradient is taken
        (otherwise under the caller's autocast, if any); float32."""
        if self.inference_dtype is None or torch.is_grad_enabled():
            return self.net(t, c).float()
        with torch.autocast(t.device.type, dtype=self.inference_dtype):
            return self.net(t, c).float()

    def to_unit(self, values: torch.Tensor) -> torch.Tensor:
        """Slider values (B, S) -> normalised positions in [0, 1], float32 (differentiable)."""
        return self._per_slider(Slider.to_unit, values.double()).float()

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        """Normalised positions (B, S) -> slider values, float64 (differentiable)."""
        return self._per_slider(Slider.from_unit, u.double())

    def _per_slider(self, method: Callable[[Slider, torch.Tensor], torch.Tensor],
                    t: torch.Tensor) -> torch.Tensor:
        """``method`` of each slider on its column of ``t`` (B, S)."""
        if not self.sliders:
            return t
        return torch.stack([method(s, t[:, j]) for j, s in enumerate(self.sliders)], dim=1)

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a checkpoint's ``state_dict`` (strict), less the slider ranges it also holds."""
        self.load_state_dict({k: v for k, v in state_dict.items() if k not in RANGE_KEYS})

    def describe(self) -> dict[str, Any]:
        """Everything but the weights: what a checkpoint needs to rebuild this proxy."""
        return {"format": CHECKPOINT_FORMAT, "model": self.spec.to_dict(),
                "sliders": [s.to_dict() for s in self.sliders],
                "transform_scale": self.scale, **self.meta}


def checkpoint_state_dict(proxy: Proxy) -> dict[str, torch.Tensor]:
    """The weights as a format-1 checkpoint holds them: the slider ranges first, as the tensors
    ``lo``, ``hi`` (float64) and ``log`` (bool) that readers of the format expect (derived from
    the sliders; never read back, :meth:`Proxy.load_weights`), then the network's."""
    ranges = {"lo": [s.lo for s in proxy.sliders], "hi": [s.hi for s in proxy.sliders],
              "log": [s.scale == "log" for s in proxy.sliders]}
    return {**{k: torch.tensor(v, dtype=torch.bool if k == "log" else torch.float64, device=proxy.device)
               for k, v in ranges.items()}, **proxy.state_dict()}


def save_checkpoint(path: Path, proxy: Proxy, **state: Any) -> None:
    """Write ``path`` atomically: the proxy's description, its weights and ``state``."""
    payload = {**proxy.describe(), "state_dict": checkpoint_state_dict(proxy), **state}
    buffer = io.BytesIO()        # serialised first: a failed write is then an OSError with its errno
    torch.save(payload, buffer)
    write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:   # torch raises many types for a damaged or foreign file
        raise IncompatibleCheckpoint(f"{path} is not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise IncompatibleCheckpoint(f"{path} has checkpoint format {found}, this version reads "
                                     f"format {CHECKPOINT_FORMAT}")
    return payload


def load_proxy(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Proxy, dict[str, Any]]:
    """Rebuild a proxy from a checkpoint file alone; returns (proxy in eval mode, checkpoint)."""
    payload = read_checkpoint(path, map_location)
    meta = {k: v for k, v in payload.items()
            if k not in ("format", "model", "sliders", "transform_scale", "state_dict", "optimizer")}
    try:
        sliders = [Slider.from_dict(d, owner=meta.get("proxy_type", "")) for d in payload["sliders"]]
        proxy = Proxy(ModelSpec(**payload["model"]), sliders, payload["transform_scale"], meta)
        proxy.load_weights(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:   # written by another version
        raise IncompatibleCheckpoint(f"{path} does not fit this version's proxies "
                                     f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return proxy.to(map_location).eval(), payload

