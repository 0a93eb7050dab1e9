"""The config lists the modules a user edits; the project fills in the rest.

One darktable render (a *probe*: the listed modules at their defaults, every operation
dumped) shows which modules darktable runs and in which order. The chain is every module it
runs from the first listed block to the end of the pipe, colorout's display RGB (what an
export writes):

- listed blocks run as given;
- demosaic, colorin and colorout run at darktable's defaults, computed exactly
  (models/fixed.py) from the image's context (:func:`image_context`);
- a module whose output equals its input in the probe (finalscale at full size) is left out;
- a slider-less module with a proxy type but no exact stand-in would be a trained proxy at
  its defaults, with no slider recovered (there is none today);
- anything else is an error naming the module, before any training.

The seed's format, which lists demosaic, colorin, colorout and the others explicitly, still
works: a listed slider-less module that has an exact stand-in uses it. A trained demosaic
proxy (``Darktable_proxies.py demosaic -c NAME``) is used where the config lists its NAME.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from models.colorspace import lab_to_xyz, xyz_to_lab
from models.darktable.demosaic import colour_map
from models.fixed import EXACT, ImageContext, srgb_decode
from utils.darktable.dumps import OPERATIONS, is_raw
from utils.darktable.runner import Darktable, Render
from utils.darktable.xmp import HistoryItem
from utils.data.images import cfa_pattern, image_size
from utils.data.tapouts import pixel_scale, to_chw
from utils.errors import UserError
from utils.evaluation.metrics import psnr
from utils.pipeline.config import BlockLine
from utils.proxies.registry import PROXIES, proxy_name, split_proxy_name
from utils.proxies.schema import ProxyType
from utils.settings import Settings

log = logging.getLogger(__name__)

END = "colorout"              # the chain ends with the pipe's display RGB
EXACT_MIN_PSNR = 60.0         # dB; an exact block must reproduce darktable's tap-out this well
NO_OP_TOLERANCE = 1e-6        # a module whose output is its input this closely is left out


def exact_block(line: BlockLine) -> bool:
    """Whether a config line is a module computed exactly: a bare type name of a slider-less
    module with an exact stand-in (demosaic, colorin, colorout)."""
    return line.name in EXACT and not PROXIES[line.name].sliders


def proxy_lines(lines: Sequence[BlockLine], is_trained: Callable[[str], bool]) -> list[BlockLine]:
    """Lines naming a bare type with some of its sliders (``colorbalancergb saturation_global,
    contrast 1``) name the proxy of exactly those sliders (``colorbalancergb_saturation_global_
    contrast``, as Darktable_proxies.py names it), unless a proxy of the bare name is trained:
    a proxy that learns only the sliders a chain moves is more faithful for the same training."""
    out = []
    for line in lines:
        proxy_type = PROXIES.get(line.name)
        if proxy_type is not None and line.sliders is not None and not is_trained(line.name):
            chosen = proxy_type.select(list(line.sliders))
            if 0 < len(chosen) < len(proxy_type.sliders):
                line = replace(line, name=proxy_name(proxy_type.name, chosen))
        out.append(line)
    return out


def line_types(lines: Sequence[BlockLine], trained_type: Callable[[str], str | None]) -> dict[str, ProxyType]:
    """Each line's proxy type: a trained proxy's own (``trained_type(name)``: the type its
    checkpoint names, None when it is not trained), else the one its name spells; a name that
    spells none is a UserError naming the line."""
    types = {}
    for line in lines:
        known = trained_type(line.name)
        try:
            types[line.name] = PROXIES[known] if known in PROXIES else split_proxy_name(line.name)[0]
        except UserError as e:
            raise UserError(f"line {line.lineno}: proxy {line.name} is not trained, and {e}") from None
    return types


def disabled_modules(dt: Darktable, operations: Sequence[str], image: Path,
                     names: Sequence[str]) -> list[HistoryItem]:
    """Modules turned off in pipeline renders unless they are blocks (PIPELINE_DISABLED_MODULES):
    highlight reconstruction (raw only) would otherwise change pixels between temperature and
    demosaic, and made renders depend on the other images of a darktable process."""
    items = []
    for name in names:
        proxy_type = PROXIES.get(name)
        if proxy_type is None or proxy_type.operation in operations or not is_raw(image):
            continue
        items.append(proxy_type.history_item(dt, {}, enabled=False))
    return items


def probe(dt: Darktable, lines: Sequence[BlockLine], types: Mapping[str, ProxyType], image: Path,
          settings: Settings, extra: Sequence[HistoryItem] = ()) -> Render:
    """One render of ``image`` with the lines' modules at their defaults (and ``extra``),
    every operation dumped."""
    operations = [types[line.name].operation for line in lines]
    items = [types[line.name].history_item(dt, {}) for line in lines if not exact_block(line)]
    items += [*disabled_modules(dt, operations, image, settings.PIPELINE_DISABLED_MODULES), *extra]
    return dt.render(image, items, OPERATIONS, 0, True, require=False)


def fill_in(lines: Sequence[BlockLine], types: dict[str, ProxyType], render: Render,
            raw: bool) -> list[BlockLine]:
    """The chain's lines: the listed ones and, in darktable's order, the modules it runs
    between them up to colorout (``render``: a :func:`probe`). Filled-in lines have line
    number 0 and recover no slider; ``types`` gets their types."""
    by_op = {types[line.name].operation: line for line in lines}
    kind = "raw" if raw else "non-raw"
    order = render.order
    for op, line in by_op.items():
        if types[line.name].mosaic_input and not raw:
            raise UserError(f"line {line.lineno}: {line.name} works on a raw mosaic, and the input is not raw; "
                            "remove the line or use raw images")
        if op not in order:
            raise UserError(f"line {line.lineno}: darktable does not run {op} on {kind} input "
                            f"(it runs {' -> '.join(order)}); remove the line or use other images")
    mine = list(by_op)
    check_order(list(by_op.values()), mine, order, raw)
    if END not in order:
        raise UserError(f"darktable ran no {END} on {kind} input; the chain ends at its display RGB")
    span = order[order.index(mine[0]):order.index(END) + 1]
    chain: list[BlockLine] = []
    for op in span:
        if op in by_op:
            chain.append(by_op[op])
        elif _no_op(render, op):
            continue
        elif op in EXACT or (op in PROXIES and not PROXIES[op].sliders):
            chain.append(BlockLine(0, op, (), True))
            types[op] = PROXIES[op]
        else:
            before = [line.name for line in chain]
            raise UserError(f"darktable runs {op} after {before[-1]} on {kind} input, and this project "
                            f"has no stand-in for it at its defaults; add '{op} <sliders> 1' to the config "
                            "if it is a proxy type, or turn the module off")
    return chain


def check_order(lines: Sequence[BlockLine], operations: Sequence[str], order: Sequence[str], raw: bool) -> None:
    """The lines (of ``operations``) must come in darktable's processing ``order`` for this
    input type; the first out of place is a UserError naming its line."""
    theirs = [op for op in order if op in set(operations)]
    for line, have, want in zip(lines, operations, theirs):
        if have != want:
            raise UserError(f"line {line.lineno}: {line.name} ({have}) is out of darktable's order for "
                            f"{'raw' if raw else 'non-raw'} input; darktable runs {' -> '.join(theirs)}: "
                            "reorder the config lines")


def _no_op(render: Render, op: str) -> bool:
    a, b = render.tapouts.get((op, "in")), render.tapouts.get((op, "out"))
    return a is not None and b is not None and a.shape == b.shape and \
        float(np.abs(a.astype(np.float64) - b).max(initial=0.0)) <= NO_OP_TOLERANCE


def measured_processed_maximum(mosaic_in: np.ndarray, mosaic_out: np.ndarray, pattern: str) -> float:
    """darktable's processed maximum after white balance, from its tap-outs: the largest of
    its per-colour multipliers (least squares over each colour's photosites), at least 1."""
    colours = colour_map(pattern, *mosaic_in.shape[:2]).numpy()
    a, b = mosaic_in.astype(np.float64), mosaic_out.astype(np.float64)
    gains = [float((a[colours == k] * b[colours == k]).sum() / max((a[colours == k] ** 2).sum(), 1e-30))
             for k in range(3)]
    return max(1.0, *gains)


def image_context(dt: Darktable, image: Path, render: Render, colorin: bool = True) -> ImageContext:
    """What the fixed blocks need to know about ``image``, from a render that dumped colorin:
    the CFA pattern and the processed maximum at demosaic (raw), the pipe's pixel scale and, with ``colorin``,
    colorin's matrix, fitted by least squares from colorin's input to its output in XYZ
    (checked to reproduce darktable's Lab to EXACT_MIN_PSNR)."""
    context = ImageContext(pattern=cfa_pattern(image, dt) if is_raw(image) else "")
    if ("colorin", "in") in render.tapouts:
        context.full_size = image_size(image)
        context.pixel_scale = pixel_scale(render.tapouts[("colorin", "in")].shape, context.full_size)
    if context.pattern and ("temperature", "out") in render.tapouts:
        context.processed_maximum = measured_processed_maximum(*render.io("temperature"), context.pattern)
    if not colorin or ("colorin", "in") not in render.tapouts:
        return context
    rgb = torch.from_numpy(to_chw(render.tapouts[("colorin", "in")])).double()
    lab = torch.from_numpy(to_chw(render.tapouts[("colorin", "out")])).double()
    xyz = lab_to_xyz(lab).reshape(3, -1).T.numpy()
    best = None
    for encoded in (False, True):
        source = (srgb_decode(rgb) if encoded else rgb).reshape(3, -1).T.numpy()
        matrix = np.linalg.lstsq(source, xyz, rcond=None)[0].T
        fit = xyz_to_lab(torch.einsum("ij,jhw->ihw", torch.from_numpy(matrix),
                                      torch.from_numpy(source.T.reshape(rgb.shape))))
        score = float(psnr((fit / 100).float()[None], (lab / 100).float()[None])[0])
        if best is None or score > best[0]:
            best = score, matrix, encoded
    score, matrix, encoded = best
    if score < EXACT_MIN_PSNR:
        raise UserError(f"{image.name}: darktable's input colour profile is not a matrix profile this "
                        f"project can compute exactly ({score:.1f} dB); use a camera or file with one")
    context.colorin_matrix, context.colorin_encoded = matrix.tolist(), encoded
    return context


# Sliders that darktable's maths makes interchangeable: a chain recovering all of them cannot
# tell the truth from an equivalent edit, so their errors measure a choice, not a fault.
# Scaling all white-balance multipliers by k renders exactly as exposure - log2(k) (with
# exposure's black level times k): byte-identical renders, tests/pipeline/test_fill.py.
REDUNDANT = (
    (("temperature.red", "temperature.green", "temperature.blue"), "exposure.exposure",
     "scaling all white-balance multipliers by k renders exactly as exposure - log2(k)",
     "recover 'temperature red,blue' (green stays 1, as darktable's white balance keeps it)"),
)


def redundant_sliders(recovered: Mapping[str, Sequence[str]]) -> list[str]:
    """Warnings for the REDUNDANT groups a chain recovers entirely; ``recovered`` maps each
    block's operation to the sliders it recovers."""
    have = {f"{op}.{s}" for op, names in recovered.items() for s in names}
    return [f"{', '.join(group)} and {other} are interchangeable ({why}): recovered values are one of "
            f"many equivalent edits; to recover a unique one, {fix}"
            for group, other, why, fix in REDUNDANT if have.issuperset((*group, other))]
