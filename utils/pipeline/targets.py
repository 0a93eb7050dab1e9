"""Pipeline data (``ROOT/pipeline/data``): one darktable render per target, with random values
for every listed slider, dumping every block's input and output; the chain's input is the
first block's input tap-out, the target the last block's output tap-out.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from models.fixed import ImageContext
from utils.atomic import write_text_atomic
from utils.darktable.dumps import is_raw
from utils.darktable.files import write_tiff_atomic
from utils.darktable.runner import Darktable, Job
from utils.darktable.xmp import HistoryItem
from utils.data.manifest import read_rows
from utils.data.sampling import latin_hypercube
from utils.errors import UserError
from utils.pipeline.chain import Chain, choose_conversions, read_tapout
from utils.pipeline.fill import check_order, disabled_modules, image_context, probe
from utils.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class PipelineSpec:
    """What a pipeline dataset is; a rerun into the same folder must ask for the same."""

    blocks: list[str]
    sliders: list[str]               # "<block>.<slider>" in u order
    targets: int
    seed: int
    darktable_version: str
    images: list[str]
    conversions: list[str] = field(default_factory=list)


def history(dt: Darktable, chain: Chain, values: dict[str, dict[str, float]], image: Path,
            settings: Settings) -> tuple[HistoryItem, ...]:
    """The history of one render: every proxy block at ``values`` (others at defaults; exact
    blocks run at darktable's defaults), and the PIPELINE_DISABLED_MODULES that are not blocks
    turned off."""
    items = [b.proxy_type.history_item(dt, {**{s.name: s.default for s in b.proxy.sliders},
                                            **values.get(b.name, {})}) for b in chain.blocks if not b.exact]
    return tuple(items + disabled_modules(dt, [b.operation for b in chain.blocks], image,
                                          settings.PIPELINE_DISABLED_MODULES))


def draw_targets(chain: Chain, images: Sequence[Path], count: int, seed: int) -> list[tuple[str, Path, torch.Tensor]]:
    """(key, image, u) for ``count`` targets: images in turn, sliders by Latin hypercube,
    rounded to the float32 values darktable will see."""
    rng = np.random.default_rng([seed, 3, zlib.crc32(b"pipeline")])
    points = torch.from_numpy(latin_hypercube(count, chain.n_sliders, rng)).float()
    return [(f"{images[k % len(images)].stem}_{k:04d}", images[k % len(images)],
             as_darktable_sees(chain, points[k])) for k in range(count)]


def as_darktable_sees(chain: Chain, u: torch.Tensor) -> torch.Tensor:
    """Normalised sliders (S,) moved to the nearest float32 slider values."""
    parts = []
    for k, b in enumerate(chain.blocks):
        values = b.proxy.from_unit(chain.block_u(k, u[None])).float().double()
        full = b.proxy.to_unit(values)[0]
        parts += [full[b.proxy.slider_names.index(n)] for n in b.recovered]
    return torch.stack(parts).cpu().float() if parts else torch.zeros(0)


@dataclass
class Target:
    key: str
    image: str
    u: torch.Tensor                          # true normalised sliders
    taps: dict[tuple[str, str], Path]        # (operation, in|out) -> TIFF
    context: ImageContext = field(default_factory=ImageContext)   # the image's (fixed blocks, mosaics)

    def load(self, operation: str, kind: str, chain: Chain | None = None) -> torch.Tensor:
        """A tap-out as (1, C, H, W), cropped to even sides from the top-left corner (which
        keeps a mosaic's CFA phase; mosaic proxies work on 2x2 tiles); with a ``chain``, as its
        input (Chain.input)."""
        return read_tapout(self.taps[(operation, kind)], chain)


def generate_targets(dt: Darktable, chain: Chain, images: Sequence[Path], folder: Path, count: int,
                     settings: Settings, render: bool = True) -> tuple[list[Target], list[str]]:
    """Render (or reuse) ``count`` targets; the targets and the conversions. Each config and
    setting gets its own subfolder of ``folder`` (named by a digest of what the data is), so
    changing the config never mixes or destroys renders. With ``render`` off only the targets
    already there are used. ``settings``: SEED, DARKTABLE_BATCH_SIZE, PIPELINE_DISABLED_MODULES."""
    spec = PipelineSpec([b.name for b in chain.blocks], chain.slider_labels(), count, settings.SEED,
                        dt.install.version_string, [f"{p.name}:{p.stat().st_size}" for p in images])
    folder = _data_folder(folder, spec)
    planned = draw_targets(chain, images, count, settings.SEED)
    manifest = folder / "manifest.csv"
    done = {r["target"] for r in read_rows(manifest)}
    todo = [t for t in planned if t[0] not in done] if render else []
    if todo:
        _render_targets(dt, chain, todo, folder, spec, settings)
    write_text_atomic(folder / "pipeline.json", json.dumps(asdict(spec), indent=1) + "\n")
    ops = [b.operation for b in chain.blocks]
    done_rows = {r["target"]: r for r in read_rows(manifest)}
    contexts = image_contexts(dt, chain, images, folder, settings)
    targets = [Target(key, done_rows[key]["image"], u,
                      {(op, kind): folder / f"{key}_{op}_{kind}.tif" for op in ops for kind in ("in", "out")},
                      contexts[done_rows[key]["image"]])
               for key, _, u in planned if key in done_rows]
    if not targets:
        raise UserError(f"no pipeline targets in {folder}; run without -s to render them" if not render
                        else "no pipeline target could be rendered; see the warnings above")
    return targets, spec.conversions


def image_contexts(dt: Darktable, chain: Chain, images: Sequence[Path], folder: Path,
                   settings: Settings) -> dict[str, ImageContext]:
    """Each image's context (utils.pipeline.fill.image_context), from one render of it with
    the chain at its defaults; kept in ``folder/contexts.json``."""
    path = folder / "contexts.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    lines, types = [b.line for b in chain.blocks], {b.name: b.proxy_type for b in chain.blocks}
    for image in images:
        if image.name not in known:
            render = probe(dt, lines, types, image, settings)
            known[image.name] = image_context(dt, image, render, chain.exact_colorin).to_dict()
            write_text_atomic(path, json.dumps(known, indent=1) + "\n")
    return {name: ImageContext.from_dict(d) for name, d in known.items()}


def _data_folder(parent: Path, spec: PipelineSpec) -> Path:
    """The folder of the pipeline data that ``spec`` describes; the conversions found by an
    earlier run go into ``spec``."""
    digest = hashlib.sha1(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:12]
    folder = parent / digest
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "pipeline.json"
    if spec_path.exists():
        spec.conversions = json.loads(spec_path.read_text()).get("conversions", [])
    else:
        write_text_atomic(spec_path, json.dumps(asdict(spec), indent=1) + "\n")
    return folder


def _render_targets(dt: Darktable, chain: Chain, todo: Sequence[tuple[str, Path, torch.Tensor]],
                    folder: Path, spec: PipelineSpec, settings: Settings) -> None:
    """Render ``todo`` (key, image, u) with darktable: every block's tap-outs become TIFFs and
    the target a manifest line (fsynced, so a killed run keeps what it finished). The first
    render checks the config's order and finds the conversions between blocks."""
    manifest = folder / "manifest.csv"
    jobs = [Job(image, history(dt, chain, chain.values(u), image, settings)) for _, image, u in todo]
    results = dt.render_many(jobs, [b.operation for b in chain.blocks], 0, True,
                             settings.DARKTABLE_BATCH_SIZE, desc="pipeline targets")
    new = not manifest.exists()
    with open(manifest, "a") as f:
        if new:
            f.write("target,image\n")
        for (key, image, u), result in zip(todo, results):
            if isinstance(result, Exception):
                log.warning("pipeline target %s failed: %s", key, result)
                continue
            check_order([b.line for b in chain.blocks], [b.operation for b in chain.blocks], result.order,
                        is_raw(image))
            if not spec.conversions:
                spec.conversions = choose_conversions(chain.blocks, result)
            for (op, kind), array in result.tapouts.items():
                if not np.isfinite(array).all():
                    raise UserError(f"darktable's {op} {kind} tap-out of target {key} holds NaN or Inf")
                write_tiff_atomic(folder / f"{key}_{op}_{kind}.tif", array)
            f.write(f"{key},{image.name}\n")
            f.flush()
            os.fsync(f.fileno())
