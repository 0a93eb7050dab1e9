"""Chained proxies: a differentiable replica of a stretch of darktable's pipe.

Blocks are trained proxies or, for modules darktable runs at their defaults (demosaic,
colorin, colorout), exact differentiable stand-ins (models/fixed.py) conditioned on the
image's context (``Chain.context``: its CFA pattern and colour matrix, never regressed; after
a white-balance block, demosaic's processed maximum follows that block's multipliers).

Between two blocks the chain applies exactly the conversion darktable's pipe applies between
those modules (identity, Lab -> linear Rec.2020 or the reverse; models/colorspace.py): it is
chosen once per pipeline by matching darktable's own tap-outs (the output of block k,
converted, must equal the input of block k+1 to within float rounding), so a module that
darktable runs in between and the config leaves out is found and reported, never learned or
skipped silently. Gradients flow through every block and every conversion.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from models.colorspace import CONVERSIONS
from models.fixed import EXACT, Fixed, ImageContext
from models.mosaic import even_crop
from models.proxy import Proxy
from utils.darktable.files import read_tiff
from utils.darktable.runner import Render
from utils.data.tapouts import coordinate_planes, to_chw
from utils.errors import UserError
from utils.evaluation.metrics import psnr
from utils.pipeline.config import BlockLine
from utils.pipeline.fill import exact_block
from utils.proxies.registry import PROXIES, get_proxy, split_proxy_name
from utils.proxies.schema import ProxyType, Slider

GLUE_MIN_PSNR = 80.0     # dB; a conversion must reproduce darktable's next input this well


@dataclass
class Block:
    """One trained proxy (or exact fixed module) in the chain, and which of its sliders are recovered."""

    line: BlockLine
    proxy: Proxy | Fixed
    proxy_type: ProxyType
    recovered: list[str]              # names, in the proxy's slider order

    @property
    def name(self) -> str:
        return self.line.name

    @property
    def operation(self) -> str:
        return self.proxy_type.operation

    @property
    def exact(self) -> bool:
        """Whether the block is computed exactly (a module at its defaults), not a proxy."""
        return isinstance(self.proxy, Fixed)

    @property
    def sliders(self) -> list[Slider]:
        """The recovered sliders, in the proxy's order."""
        return [s for s in self.proxy.sliders if s.name in self.recovered]

    def defaults(self) -> torch.Tensor:
        """(S,) normalised defaults of all the proxy's sliders."""
        values = torch.tensor([[s.default for s in self.proxy.sliders]], dtype=torch.float64)
        return self.proxy.to_unit(values)[0]


def build_blocks(lines: Sequence[BlockLine], load: Callable[[str], Proxy]) -> list[Block]:
    """The chain's blocks: each line's trained proxy (``load(name)``) or exact stand-in
    (``utils.pipeline.fill.exact_block``), and its sliders."""
    blocks = []
    for line in lines:
        if exact_block(line):
            blocks.append(Block(line, EXACT[line.name](), PROXIES[line.name], []))
            continue
        proxy = load(line.name)
        type_name = proxy.meta.get("proxy_type", "")
        proxy_type = get_proxy(type_name) if type_name in PROXIES else split_proxy_name(line.name)[0]
        names = proxy.slider_names
        wanted = names if line.sliders is None else list(line.sliders)
        unknown = [s for s in wanted if s not in names]
        if unknown:
            raise UserError(f"line {line.lineno}: proxy {line.name} was trained on sliders "
                            f"{', '.join(names) or '(none)'}, not {', '.join(unknown)}; use those, "
                            "'full', or train a proxy with them")
        blocks.append(Block(line, proxy, proxy_type, [n for n in names if n in wanted]))
    return blocks


class Chain(nn.Module):
    """Blocks with darktable's conversions between them: ``forward(x, u) -> output`` where u
    (B, S) holds the recovered sliders of all blocks, normalised, in block order; every other
    slider stays at its default. When a block is positional (vignette, sharpen's border, ...),
    ``x`` carries the chain's coordinate planes after its image channels (``with_planes``,
    before any crop: a crop of x then keeps where it lies), and that block gets them."""

    def __init__(self, blocks: Sequence[Block], conversions: Sequence[str]):
        super().__init__()
        if len(conversions) != len(blocks) - 1:
            raise ValueError("one conversion between each two blocks")
        self.blocks = list(blocks)
        self.conversions = list(conversions)
        self.proxies = nn.ModuleList(b.proxy for b in blocks)
        self.slices, start = [], 0
        for b in blocks:
            self.slices.append(slice(start, start + len(b.recovered)))
            start += len(b.recovered)
        self.n_sliders = start
        self.context = ImageContext()   # the current image's (CFA pattern, colour matrix, ...)

    @property
    def steps(self) -> list[int]:
        """The indices in the chain's sliders of the recovered ones whose effect is a step
        (``Proxy.steps``): slider regression searches them."""
        return [self.slices[k].start + b.recovered.index(b.proxy.slider_names[j])
                for k, b in enumerate(self.blocks) if not b.exact
                for j in b.proxy.steps if b.proxy.slider_names[j] in b.recovered]

    @property
    def mosaic(self) -> bool:
        """Whether the chain starts on a raw mosaic (before demosaic)."""
        return self.blocks[0].proxy.layout != "rgb"

    @property
    def context_margin(self) -> int:
        """Pixels of context a crop of the chain's input needs on each side for the exact blocks
        to compute on it what darktable computes on the whole image (``Fixed.context_margin``)."""
        return max((getattr(b.proxy, "context_margin", 0) for b in self.blocks), default=0)

    @property
    def whole_image(self) -> bool:
        """Whether a block computes on the whole image only (``Proxy.whole_image``): slider
        regression then fits whole images."""
        return any(getattr(b.proxy, "whole_image", False) for b in self.blocks)

    @property
    def planes(self) -> int:
        """Coordinate planes the chain's input carries after its image channels: the most a
        positional block's proxy takes (0: none)."""
        return max((b.proxy.spec.extra_channels for b in self.blocks if not b.exact), default=0)

    def with_planes(self, x: torch.Tensor) -> torch.Tensor:
        """The chain's input: a whole tap-out (B, C, H, W), before any crop, with the chain's
        coordinate planes appended (utils.data.tapouts.coordinate_planes, the pixel scale and
        full size the context's; as it is when none)."""
        if not self.planes:
            return x
        planes = coordinate_planes(*x.shape[-2:], self.planes, self.context.pixel_scale,
                                   self.context.full_size).to(x.device, x.dtype)
        return torch.cat([x, planes.expand(x.shape[0], -1, -1, -1)], 1)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """A whole tap-out of the first block's input (B, C, H, W) as the chain takes it: its
        coordinate planes appended (``with_planes``), then cropped to even sides from the
        top-left corner (which keeps a mosaic's CFA phase)."""
        return even_crop(self.with_planes(x))

    @property
    def exact_colorin(self) -> bool:
        """Whether colorin is computed exactly, so the context needs the image's matrix."""
        return any(b.exact and b.operation == "colorin" for b in self.blocks)

    @property
    def scale(self) -> float:
        return self.blocks[-1].proxy.scale

    def slider_labels(self) -> list[str]:
        return [f"{b.name}.{s}" for b in self.blocks for s in b.recovered]

    def block_u(self, k: int, u: torch.Tensor) -> torch.Tensor:
        """The full normalised slider vector of block k: recovered ones from u, others at default."""
        block = self.blocks[k]
        full = block.defaults().to(u.device, u.dtype).expand(u.shape[0], -1)
        if not block.recovered:
            return full
        cols = [u[:, self.slices[k]][:, block.recovered.index(n)] if n in block.recovered else full[:, j]
                for j, n in enumerate(block.proxy.slider_names)]
        return torch.stack(cols, dim=1)

    def forward(self, x: torch.Tensor, u: torch.Tensor, keep: bool = False):
        return self.run(x, [self.block_u(k, u) for k in range(len(self.blocks))], keep)

    def run(self, x: torch.Tensor, block_u: Sequence[torch.Tensor], keep: bool = False):
        """The chain with every block's full normalised slider vector given (``block_u[k]``
        (B, S_k)), as training on chain data needs. Downstream of a white-balance block the
        exact blocks see the processed maximum its multipliers give (as darktable's pipe)."""
        outputs = []
        context = self.context
        n = self.planes
        x, planes = (x[:, :-n], x[:, -n:]) if n else (x, None)
        for k, block in enumerate(self.blocks):
            if k:
                x = CONVERSIONS[self.conversions[k - 1]](x)
            x = self.block(k, x, block_u[k], context, planes)
            if block.operation == "temperature":
                context = replace(self.context, processed_maximum=white_balance_maximum(block, block_u[k]))
            outputs.append(x)
        return (x, outputs) if keep else x

    def block(self, k: int, x: torch.Tensor, u: torch.Tensor, context: ImageContext | None = None,
              planes: torch.Tensor | None = None) -> torch.Tensor:
        """Block k alone on its input ``x`` (in its own colour space) at sliders ``u``;
        ``context``: the image's as the pipe has it there (default ``self.context``);
        ``planes``: the coordinate planes of x's pixels, which a positional block needs."""
        block = self.blocks[k]
        if block.exact:
            return block.proxy(x, u, self.context if context is None else context)
        if block.proxy.layout == "rgb":
            extra = block.proxy.spec.extra_channels
            if extra:
                if planes is None:
                    raise ValueError(f"block {block.name} is positional: give it coordinate planes")
                x = torch.cat([x, planes[:, :extra].to(x.dtype)], 1)
            return block.proxy(x, u)
        return block.proxy(x, u, self.context.pattern)

    def values(self, u: torch.Tensor) -> dict[str, dict[str, float]]:
        """Normalised recovered sliders (S,) -> {block name: {slider: value}} (recovered only)."""
        out = {}
        for k, block in enumerate(self.blocks):
            full = block.proxy.from_unit(self.block_u(k, u[None]))[0]
            out[block.name] = {n: float(full[j]) for j, n in enumerate(block.proxy.slider_names)
                               if n in block.recovered}
        return out

    def clamped_values(self, recovered: Sequence[float]) -> dict[str, dict[str, float]]:
        """Recovered slider values (in u order) -> {block name: {slider: value}}, each within its
        range (regression keeps them inside; clamping absorbs float rounding at the ends)."""
        values, it = {}, iter(recovered)
        for b in self.blocks:
            values[b.name] = {s.name: s.clamp(next(it)) for s in b.sliders}
        return values

    def sliders(self) -> list[Slider]:
        """The recovered sliders of all blocks, in u order."""
        return [s for b in self.blocks for s in b.sliders]


def read_tapout(path: Path, chain: Chain | None = None) -> torch.Tensor:
    """A tap-out TIFF as (1, C, H, W), cropped to even sides from the top-left corner; with a
    ``chain``, as that chain's input (``Chain.input``)."""
    x = torch.from_numpy(to_chw(read_tiff(path)))[None]
    return chain.input(x) if chain is not None else even_crop(x)


def white_balance_maximum(block: Block, u: torch.Tensor) -> torch.Tensor:
    """(B,) darktable's processed maximum after a white-balance block at normalised sliders
    ``u`` (B, S): its largest multiplier (a slider the proxy lacks is at its type's default).
    A constant of the pipe, not differentiated."""
    values = block.proxy.from_unit(u.detach())
    names = block.proxy.slider_names
    columns = [values[:, names.index(n)] if n in names else
               torch.full_like(values[:, 0], block.proxy_type.slider(n).default) for n in ("red", "green", "blue")]
    return torch.stack(columns, 1).amax(1).float()


def choose_conversions(blocks: Sequence[Block], render: Render) -> list[str]:
    """For each two consecutive blocks, the conversion that turns block k's output tap-out
    into block k+1's input tap-out (darktable's own). UserError when none does: darktable runs
    a module in between that the config does not list."""
    chosen = []
    for a, b in zip(blocks, blocks[1:]):
        out_a = torch.from_numpy(to_chw(render.tapouts[(a.operation, "out")]))[None].double()
        in_b = torch.from_numpy(to_chw(render.tapouts[(b.operation, "in")]))[None].double()
        scores = {}
        if out_a.shape == in_b.shape:
            for name, fn in CONVERSIONS.items():
                if name != "identity" and out_a.shape[1] != 3:
                    continue
                scores[name] = float(psnr(fn(out_a).float(), in_b.float())[0])
        best = max(scores, key=scores.get) if scores else None
        if best is None or scores[best] < GLUE_MIN_PSNR:
            between = [op for op in render.order
                       if render.order.index(a.operation) < render.order.index(op) < render.order.index(b.operation)]
            hint = f" (darktable runs {', '.join(between)} in between)" if between else ""
            raise UserError(f"line {b.line.lineno}: darktable changes the image between {a.name} "
                            f"({a.operation}) and {b.name} ({b.operation}) beyond a colour-space "
                            f"conversion{hint}; add the module(s) in between as blocks")
        chosen.append(best)
    return chosen
