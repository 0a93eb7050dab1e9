"""Slider-conditioned proxy networks for darktable modules.

All families share one contract: ``forward(x, sliders)`` takes the module's input tap-out
``x`` (B, C_in, H, W), in the network domain (see ``models.transform``), and the sliders
normalised to [0, 1] (B, S); it returns (B, C_out, H, W) in the same domain, as the input
plus a learned residual (a module near identity starts near identity).

- ``unet``: a UNet in the spirit of Learning-to-See-in-the-Dark, the sliders entering as
  constant planes at the input and again after every downsampling. New full-resolution
  proxies pack 2x2 pixels into channels first (``ModelSpec.stem``): 3.6x faster, measured
  0.3-0.6 dB below the unpacked UNet in the same 10 minutes (docs/performance.md);
- ``pointwise``: a stack of 1x1 convolutions (a per-pixel MLP), as Neural Photo-Finishing uses
  for pointwise blocks: for modules that act pixel by pixel (exposure, colour). New proxies
  use smooth SiLU activations (``ModelSpec.activation``): on an exposure-like law, the same
  9000 steps reach 53.8 dB with SiLU against 41-47 dB with LeakyReLU, whose piecewise-linear
  fit of a smooth curve is what limits it; checkpoints without the field keep LeakyReLU.
  New proxies also start with a per-image affine map of the module's values whose
  coefficients the sliders give (``ModelSpec.affine``), and new positional ones get
  per-image quadratic polynomials of the pixel coordinates (``ModelSpec.fields``);
- ``neighbourhood`` (retired: older checkpoints load, new proxies cannot choose it): a stack
  of 3x3 convolutions, for modules with a small spatial support. On every type it was
  measured on, ``multiscale`` or the exact family beat it (sharpen: 46.2 dB, below the
  identity's 52.1), and it ran 3.5-4.4x darktable on a 2-core CPU, the slowest family; with
  2x2 pixels packed (3x faster) it lost 12.6 dB more on sharpen (docs/performance.md);
- ``multiscale``: fixed Gaussian blurs at two scales per octave, mixed by weights the sliders
  give, then a slider-conditioned per-pixel MLP (``models.multiscale``): for modules that
  blur at a size set by a slider (lowpass, soften, bloom, ...). New proxies also get
  Gaussian blurs of a fine sigma the sliders set (``ModelSpec.fine``: sharpen's).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.blocks import ConvBlock, ConvStack, FreshSiLU, and_one, in_pixel_slices, linear_columns, slider_planes
from models.multiscale import VALUE_UNIT, SliderMultiscale
from models.transform import asinh, sinh

# widths of the UNet levels; (width, depth) of the convolution stacks
UNET_SIZES = {"tiny": (8, 16), "small": (16, 32, 64), "base": (32, 64, 128, 256),
              "large": (32, 64, 128, 256, 512)}
STACK_SIZES = {"tiny": (8, 2), "small": (32, 3), "base": (64, 4), "large": (128, 6)}
# (hidden width, learned channels to blur, mixes, pyramid levels) of the multiscale family
MULTISCALE_SIZES = {"tiny": (8, 2, 1, 2), "small": (16, 4, 2, 6), "base": (32, 4, 2, 7),
                    "large": (64, 8, 3, 8)}
# the families new proxies are trained with
FAMILIES = ("unet", "pointwise", "multiscale")
# families older checkpoints may hold, built for them alone (see above)
RETIRED_FAMILIES = ("neighbourhood",)
# not a network: the proxy is its prior (ModelSpec.prior, darktable's own operation computed
# exactly), with nothing to learn; for the types that have one
EXACT_FAMILY = "exact"
# of the pointwise MLP, whose every activation's input is a fresh (pixels x width) table
ACTIVATIONS = {"leaky": lambda: nn.LeakyReLU(0.2, inplace=True), "silu": FreshSiLU}
# the activation new proxies of a family are trained with (older checkpoints name theirs)
NEW_ACTIVATION = {"pointwise": "silu"}
# the stem new proxies of a family are trained with on full-resolution images (the rgb layout;
# mosaic layouts are packed 2x2 already)
NEW_STEM = {"unet": 2}
# the share of its size's widths (UNET_SIZES) new proxies of a family get: 3/4 of unet's runs
# 1.7x faster (75 against 126 ms a 512 px pass on a 2-core CPU); on hazeremoval it reached
# 38.20 dB in the 5 minutes the full widths took for 50 epochs (38.05), 37.24 in 50 epochs
NEW_WIDTH = {"unet": 0.75}
# whether new proxies of a family start with a per-image affine map of the module's values
NEW_AFFINE = {"pointwise": True}
# the per-image fields of pixel position new positional proxies of a family get
NEW_FIELDS = {"pointwise": 8}
# the per-pixel weights of the affine map new positional proxies of a family get
NEW_FIELD_GATES = {"pointwise": 2}
# the Gaussian blurs of slider-set fine sigma new proxies of a family get
NEW_FINE = {"multiscale": 2}
# how new proxies of a family take a pyramid level up to the next (models.multiscale.UPSAMPLES)
NEW_UPSAMPLE = {"multiscale": "expand"}
# pixels per slice of the pointwise family's forward pass: its (pixels x width) intermediates
# then stay in a CPU core's cache; 8192 measured fastest at 512 x 512 px (78 ms, against 84-92
# at 4096 and 16384), the whole image at once 2.2x slower (docs/performance.md)
PIXEL_CHUNK = 8192
# hidden width of the pointwise family's per-pixel gates of its affine map (field_gates)
GATE_WIDTH = 16
# families whose forward passes without gradients run in bf16 autocast where the hardware
# computes it natively (utils.devices.inference_dtype): their convolutions are 3x faster on a
# CPU with AMX; the per-pixel families gain nothing there (pointwise is slower)
BF16_FAMILIES = ("unet", "neighbourhood")
# the ModelSpec fields the tables above choose
NETWORK_OPTIONS = ("activation", "stem", "width", "affine", "fields", "field_gates", "mlp", "fine", "upsample", "border",
                   "gate", "slider_outputs", "curve", "curve_gain", "pixelate", "glow", "prior")


def new_network_options(family: str, layout: str = "rgb", positional: bool = False) -> dict:
    """The NETWORK_OPTIONS a new proxy of ``family`` on tap-outs of ``layout`` is built with
    (``positional``: its type depends on pixel position, its networks get coordinate planes);
    a type's own (``ProxyType.network``) go over them."""
    return {"activation": NEW_ACTIVATION.get(family, "leaky"),
            "stem": NEW_STEM.get(family, 1) if layout == "rgb" else 1, "width": NEW_WIDTH.get(family, 1.0),
            "affine": NEW_AFFINE.get(family, False),
            "fields": NEW_FIELDS.get(family, 0) if positional else 0,
            "field_gates": NEW_FIELD_GATES.get(family, 0) if positional else 0, "mlp": True,
            "fine": NEW_FINE.get(family, 0),
            "upsample": NEW_UPSAMPLE.get(family, "bilinear"), "border": False, "gate": False,
            "slider_outputs": 0, "curve": 0, "curve_gain": False, "pixelate": "", "glow": False,
            "prior": ""}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a proxy network (stored in every checkpoint)."""

    family: str         # one of FAMILIES (or RETIRED_FAMILIES, an older checkpoint's)
    size: str           # key of UNET_SIZES / STACK_SIZES / MULTISCALE_SIZES
    in_channels: int    # channels the network sees (4 packed mosaic planes, 12 for demosaic)
    out_channels: int
    n_sliders: int
    layout: str = "rgb"  # the proxy's tap-out layout (utils.proxies.registry.LAYOUTS; models.mosaic)
    # planes after the image channels that are not image values (a positional proxy type's
    # pixel coordinates, utils.data.tapouts.coordinate_planes): network input, not part of the residual
    extra_channels: int = 0

    activation: str = "leaky"   # of the pointwise MLP: "leaky" (LeakyReLU 0.2) or "silu"
    # unet, neighbourhood: blocks of stem x stem pixels packed into channels before the first
    # convolution, unpacked after the last (1: none; checkpoints without the field); 2 runs the
    # network on a quarter of the pixels
    stem: int = 1
    # unet: the widths of its levels are its size's (UNET_SIZES) times this, rounded (1.0:
    # checkpoints without the field)
    width: float = 1.0
    # pointwise: a per-image affine map of the module's values first (False: checkpoints without the field)
    affine: bool = False
    # pointwise, with coordinate planes: per-image quadratic polynomials of them, their
    # coefficients given by the sliders, as more inputs of the MLP (0: none; checkpoints without the field)
    fields: int = 0
    # pointwise, with the affine map and fields: that many per-pixel weights, given by a small
    # MLP over the fields, each scaling an affine map of its own (0: one map, whole everywhere;
    # checkpoints without the field)
    field_gates: int = 0
    # pointwise, with the affine map: False leaves the per-pixel MLP out, the affine map is the
    # whole network (a module that is one per image, colorize; True: checkpoints without the field)
    mlp: bool = True
    # multiscale: Gaussian blurs at a fine sigma the sliders set (0: none; checkpoints without the field)
    fine: int = 0
    # multiscale: how a pyramid level is taken up to the next (models.multiscale.UPSAMPLES;
    # "bilinear": checkpoints without the field)
    upsample: str = "bilinear"
    # multiscale, positional: the module leaves a border of the image untouched whose width the
    # sliders set (sharpen's; models.multiscale.untouched_border_mask); the coordinate planes
    # then serve the border alone (False: checkpoints without the field)
    border: bool = False
    # multiscale: out of training, the network's change of the image is turned off on images
    # where a gate the sliders give, fitted to the best scale of that change, is near 0
    # (models.multiscale.gate_scale; False: checkpoints without the field)
    gate: bool = False
    # multiscale: that many more outputs of the per-pixel MLP, weighted per image by a linear
    # function of the sliders (0: none; checkpoints without the field)
    slider_outputs: int = 0
    # multiscale: the module's values times exp of a per-image curve (that many bumps, their
    # heights given by the sliders) of the guided log luminance (models.multiscale.guided_luminance),
    # as darktable's tone equalizer (0: none; checkpoints without the field)
    curve: int = 0
    # multiscale, with a curve: the curve is a gain (clamped 0.25..4, as darktable's tone
    # equalizer clamps its correction) over bumps that sum to 1, their heights a linear function
    # of the conditioning, not of the heads' MLP (False: checkpoints without the field)
    curve_gain: bool = False
    # the pixel scale of the training data (utils.data.tapouts.pixel_scale, their median): the
    # input's last extra plane then holds its own, and the sliders that are pixel lengths
    # (Slider.pixels) condition the network as the length at this scale (0: none; checkpoints
    # without the field)
    pixel_scale: float = 0.0
    # any family, rgb: the output pixelated as darktable's censorize does, the cells' radius the
    # slider of this name gives (models.proxy.Proxy._pixelate; "": none, checkpoints without the field)
    pixelate: str = ""
    # multiscale, Lab: one more input plane, the lightness darktable's bloom gathers (L times
    # 2^(min(100, strength + 1) / 100) where that passes the threshold, else 0; from the
    # sliders "threshold" and "strength"), for the network to blur (False: checkpoints without the field)
    glow: bool = False
    # darktable's own operation, computed exactly (models.priors.PRIORS, by name), that
    # the network takes the output of for its input; the whole proxy in the exact family
    # (training gives the learned families none: they learn an exact prior away,
    # docs/proxies.md; "": none, checkpoints without the field)
    prior: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class SliderUNet(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        widths, s = [max(1, round(w * spec.width)) for w in UNET_SIZES[spec.size]], spec.n_sliders
        self.stem = spec.stem
        self.down = nn.ModuleList()
        cin = (spec.in_channels + spec.extra_channels) * self.stem ** 2
        for w in widths:
            self.down.append(ConvBlock(cin + s, w))
            cin = w
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w_hi, w_lo in zip(reversed(widths[:-1]), reversed(widths[1:])):
            self.up.append(nn.ConvTranspose2d(w_lo, w_hi, 2, stride=2))
            self.merge.append(ConvBlock(2 * w_hi, w_hi))
        self.head = nn.Conv2d(widths[0], spec.out_channels * self.stem ** 2, 1)
        self.multiple = 2 ** (len(widths) - 1) * self.stem
        self.image_channels = spec.in_channels
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, sliders: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = _pack(x, self.stem, self.multiple)                          # (B, C s^2, H'/s, W'/s)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                y = F.max_pool2d(y, 2)                                  # (B, C, H/2^i, W/2^i)
            y = block(torch.cat([y, slider_planes(sliders, y)], 1))
            skips.append(y)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            y = merge(torch.cat([up(y), skip], 1))
        y = _unpack(self.head(y), self.stem, h, w)                       # (B, C_out, H, W)
        return _residual(x[:, :self.image_channels], y)


class SliderConvStack(nn.Module):
    """3x3 convolutions over [x, slider planes] (the neighbourhood family)."""

    def __init__(self, spec: ModelSpec, kernel: int):
        super().__init__()
        width, depth = STACK_SIZES[spec.size]
        self.stem = spec.stem
        self.net = ConvStack((spec.in_channels + spec.extra_channels) * self.stem ** 2 + spec.n_sliders,
                             spec.out_channels * self.stem ** 2, width, depth, kernel)
        self.image_channels = spec.in_channels
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, sliders: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = _pack(x, self.stem, self.stem)                               # (B, C s^2, H'/s, W'/s)
        y = _unpack(self.net(torch.cat([y, slider_planes(sliders, y)], 1)), self.stem, h, w)   # (B, C_out, H, W)
        return _residual(x[:, :self.image_channels], y)


class SliderPointwise(nn.Module):
    """A per-pixel MLP over [x, sliders] (1x1 convolutions), run as matrix products: the first
    layer reads each image's (channels, pixels) table as it lies (transposed, not copied), the
    sliders' share of it folded into a per-image bias rather than broadcast to planes; the
    hidden layers run pixel-major, (pixels, width), one product for every image (25 % faster
    on a CPU than on (width, pixels) tables, docs/performance.md).

    With ``spec.affine``, a per-image affine map of the module's values, its coefficients
    given by the sliders (zero at the start: the identity), comes first: ``base`` = asinh(v +
    A v + b), v = sinh(x), exact for a gain or a colour matrix (exposure, channel mixing),
    which a residual MLP in the network domain only approximates; the MLP then sees
    [x, sliders, base] and its output is added to ``base``.

    With ``spec.fields`` (a positional type), that many per-image quadratic polynomials of the
    coordinate planes, their coefficients given by the sliders, are more inputs of the MLP:
    a graduated filter's ramp along a line the sliders turn and move, a vignette's radius
    about a centre they set, are then one input each, where the MLP over the raw coordinates
    would have to build every direction and centre from its units.

    With ``spec.field_gates`` as well, the affine map is applied per pixel in that many parts,
    each weighted by its own gate g_k, a small MLP's output over the fields and the sliders:
    asinh(v + sum_k g_k (A_k v + b_k)). A vignette brightens and desaturates each pixel by a
    weight of its distance from the centre, a graduated filter darkens by one of its place
    along a line: exactly that form, which the MLP after it would otherwise approximate.

    Without ``spec.mlp``, the affine map is the whole network."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        width, depth = STACK_SIZES[spec.size]
        c, o = spec.in_channels, spec.out_channels
        self.image_channels, self.out_channels, self.affine = c, o, spec.affine
        if not (spec.mlp or spec.affine):
            raise ValueError("a pointwise network without its MLP needs the affine map")
        self.fields = spec.fields if spec.extra_channels and spec.mlp else 0
        self.gates = spec.field_gates if self.fields and spec.affine else 0
        if spec.affine:   # registered before the MLP: its last layer stays the network's last
            self.coefficients = _slider_head(spec.n_sliders, width, (c + 1) * o * max(self.gates, 1))
            nn.init.zeros_(self.coefficients[-1].weight)
            nn.init.zeros_(self.coefficients[-1].bias)
        if self.fields:   # registered before the MLP, as the affine map
            n_terms = quadratic_terms(torch.zeros(1, spec.extra_channels, 1)).shape[1]
            self.field_coefficients = _slider_head(spec.n_sliders, width, self.fields * n_terms)
            nn.init.zeros_(self.field_coefficients[-1].weight)   # at the start: fixed random polynomials
            nn.init.normal_(self.field_coefficients[-1].bias, std=n_terms ** -0.5)
        if self.gates:    # [fields, sliders] -> gates; 1 everywhere at the start
            self.gate_mlp = nn.Sequential(nn.Linear(self.fields + spec.n_sliders, GATE_WIDTH), nn.SiLU(),
                                          nn.Linear(GATE_WIDTH, GATE_WIDTH), nn.SiLU(),
                                          nn.Linear(GATE_WIDTH, self.gates))
            nn.init.zeros_(self.gate_mlp[-1].weight)
            nn.init.ones_(self.gate_mlp[-1].bias)
        sizes = ([c + spec.extra_channels + spec.n_sliders + (o if spec.affine else 0) + self.fields]
                 + [width] * (depth - 1) + [o])
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < depth - 1:
                layers.append(ACTIVATIONS[spec.activation]())
        self.mlp = nn.Sequential(*layers) if spec.mlp else None

    def forward(self, x: torch.Tensor, sliders: torch.Tensor) -> torch.Tensor:
        b, k, h, w = x.shape                                    # k: image channels, then extra planes
        sliders = sliders.to(x.dtype)
        a = self._coefficients(sliders) if self.affine else None
        if self.mlp is None:
            y = in_pixel_slices(lambda t: self._affine(t[:, :self.image_channels], a, None), x.flatten(2),
                                size=PIXEL_CHUNK)
            return y.view(b, -1, h, w)
        # the first layer's columns for [pixel, sliders, affine map, fields], each contiguous
        # once here rather than sliced (and copied) again on every slice of pixels
        first = self.mlp[0]
        w_pixel, w_sliders, w_base, w_fields = _per_image(first.weight.split(
            [k, sliders.shape[1], self.out_channels if self.affine else 0, self.fields], 1), b)
        bias = torch.addmm(first.bias, sliders, w_sliders[0].t())[:, :, None]     # (B, width, 1)
        f = self.field_coefficients(and_one(sliders)).view(b, self.fields, -1) if self.fields else None
        g = None
        if self.gates:   # the gates' first layer: its columns for the fields, the sliders' bias
            w_gate, w_gate_sliders = _per_image(self.gate_mlp[0].weight.split([self.fields, sliders.shape[1]], 1), b)
            g = (w_gate, torch.addmm(self.gate_mlp[0].bias, sliders, w_gate_sliders[0].t())[:, :, None])
        y = in_pixel_slices(lambda t: self._pixels(t, bias, (w_pixel, w_base, w_fields), a, f, g),
                            x.flatten(2), size=PIXEL_CHUNK)
        return y.view(b, -1, h, w)                                                # (B, C_out, H, W)

    def _coefficients(self, sliders: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-image affine map(s) from the sliders: A (B, G C_out, C) and b (B, G C_out, 1)."""
        a = self.coefficients(and_one(sliders)).view(len(sliders), -1, self.image_channels + 1)
        return a[:, :, :-1].contiguous(), a[:, :, -1:].contiguous()

    def _pixels(self, t: torch.Tensor, bias: torch.Tensor, weights: tuple[torch.Tensor, ...],
                a: tuple[torch.Tensor, torch.Tensor] | None, f: torch.Tensor | None,
                g: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """The network's output (B, C_out, N) on pixels ``t`` (B, K, N) given the per-image first
        layer ``bias``, its ``weights`` for the pixel, the affine map and the fields, the affine
        map ``a``, field coefficients ``f`` and gates' first layer ``g`` from the sliders."""
        w_pixel, w_base, w_fields = weights
        _, *rest = (m for m in self.mlp if isinstance(m, nn.Linear))
        y = torch.baddbmm(bias.mT, t.mT, w_pixel.mT)                              # (B, N, width)
        fields = torch.bmm(f, quadratic_terms(t[:, self.image_channels:])) if self.fields else None  # (B, F, N)
        if self.affine:
            gates = self._gates(fields, *g) if self.gates else None
            base = self._affine(t[:, :self.image_channels], a, gates)             # (B, C_out, N)
            y = torch.baddbmm(y, base.mT, w_base.mT)
        if self.fields:
            y = torch.baddbmm(y, fields.mT, w_fields.mT)
        for layer, act in zip(rest, (m for m in self.mlp if not isinstance(m, nn.Linear))):
            y = layer(act(y))                     # pixel-major: one matrix product for every image
        y = y.mT                                                                  # (B, C_out, N)
        if self.affine:
            return base + y
        return _residual(t[:, :self.image_channels], y)

    def _affine(self, t: torch.Tensor, a: tuple[torch.Tensor, torch.Tensor], gates: torch.Tensor | None) -> torch.Tensor:
        """asinh(v + A v + b) of the image's network-domain values ``t`` (B, C, N), v = sinh(t),
        with (A, b) = ``a`` ((B, C_out, C), (B, C_out, 1)) from the sliders, in VALUE_UNIT (its
        inputs divided, its output multiplied by it); with ``gates`` (B, G, N), ``a`` holds G
        maps (G C_out rows) and v + sum_k gates_k (A_k v + b_k) is taken."""
        v = sinh(t)
        lin = torch.baddbmm(a[1], a[0], v / VALUE_UNIT) * VALUE_UNIT
        if gates is not None:
            lin = (lin.view(v.shape[0], gates.shape[1], -1, v.shape[2]) * gates[:, :, None]).sum(1)
        return asinh(_residual(v, lin))

    def _gates(self, fields: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The per-pixel gates (B, G, N) of the affine map from the ``fields`` (B, F, N), given
        the gate MLP's first-layer ``weight`` for them (B, GATE_WIDTH, F) and the sliders' share
        of it as ``bias`` (B, GATE_WIDTH, 1)."""
        _, mid, last = (m for m in self.gate_mlp if isinstance(m, nn.Linear))
        h = F.silu(torch.baddbmm(bias, weight, fields))
        return linear_columns(last, F.silu(linear_columns(mid, h)))


def _slider_head(n_sliders: int, width: int, out: int) -> nn.Sequential:
    """A small SiLU MLP from [sliders, 1] to ``out`` per-image numbers (coefficients of a map
    the pointwise family applies to every pixel); its last layer is the caller's to initialise."""
    return nn.Sequential(nn.Linear(n_sliders + 1, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                         nn.Linear(width, out))


def _per_image(weights: tuple[torch.Tensor, ...], b: int) -> list[torch.Tensor]:
    """Column blocks of a layer's weight, each made contiguous and given a batch of ``b``."""
    return [w.contiguous().expand(b, -1, -1) for w in weights]


def quadratic_terms(p: torch.Tensor) -> torch.Tensor:
    """[1, every plane, every product of two planes (squares included)] of planes (B, P, N):
    (B, 1 + P + P(P+1)/2, N), the terms of a quadratic polynomial of them."""
    i, j = torch.triu_indices(p.shape[1], p.shape[1], device=p.device)
    return torch.cat([torch.ones_like(p[:, :1]), p, p[:, i] * p[:, j]], 1)


def _pack(x: torch.Tensor, stem: int, multiple: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C stem^2, H'/stem, W'/stem), channels-last: padded (edges replicated)
    to sides that are multiples of ``multiple``, then blocks of stem x stem pixels packed into
    channels (a convolution family's stem; 1: none)."""
    h, w = x.shape[-2:]
    pad = (0, -w % multiple, 0, -h % multiple)
    y = F.pad(x, pad, mode="replicate") if any(pad) else x
    return _pixel_major(F.pixel_unshuffle(y, stem) if stem > 1 else y)


def _unpack(y: torch.Tensor, stem: int, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`_pack` for a network's output: (B, C_out, H, W), contiguous."""
    return (F.pixel_shuffle(y, stem) if stem > 1 else y)[..., :h, :w].contiguous()


def _pixel_major(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory order, as the convolution families keep their weights:
    on a CPU, oneDNN's convolutions run 1.4-5x faster that way, forward and backward
    (docs/performance.md)."""
    return x.contiguous(memory_format=torch.channels_last)


def _residual(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Global residual: input plus the network's output (channels broadcast for 1 -> 3)."""
    return y + (x if x.shape[1] == y.shape[1] else x.mean(1, keepdim=True))


class Unlearned(nn.Module):
    """The exact family's network: none. The proxy's prior is the whole operation
    (models.proxy.Proxy.forward returns it); this only tells where the proxy is."""

    def __init__(self):
        super().__init__()
        self.register_buffer("anchor", torch.zeros(()))   # where the proxy is (Proxy.device)


def build_model(spec: ModelSpec) -> nn.Module:
    if spec.family == EXACT_FAMILY:
        if not spec.prior:
            raise ValueError("the exact family is a prior alone: give ModelSpec.prior")
        return Unlearned()
    if spec.family == "unet":
        return SliderUNet(spec)
    if spec.family == "pointwise":
        return SliderPointwise(spec)
    if spec.family == "neighbourhood":
        return SliderConvStack(spec, 3)
    if spec.family == "multiscale":
        return SliderMultiscale(spec.in_channels, spec.out_channels, spec.n_sliders, spec.extra_channels + spec.glow,
                                *MULTISCALE_SIZES[spec.size], fine=spec.fine, upsample=spec.upsample,
                                border=spec.border, gate=spec.gate, slider_outputs=spec.slider_outputs,
                                curve=spec.curve, curve_gain=spec.curve_gain)
    raise ValueError(f"unknown model family {spec.family!r}; choose one of {FAMILIES + (EXACT_FAMILY,)}")
