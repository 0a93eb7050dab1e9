"""Chained proxies: a differentiable replica of a stretch of darktable's pipe, and joint
slider regression through it.

``pipeline_config.txt`` lists the blocks, one per line, in darktable's processing order:

    <proxy name> <sliders|full> <0|1>     # NAME of a trained proxy, sliders to recover, use it

Between two blocks the chain applies exactly the conversion darktable's pipe applies between
those modules (identity, Lab -> linear Rec.2020 or the reverse; utils/colorspace.py): it is
chosen once per pipeline by matching darktable's own tap-outs (the output of block k,
converted, must equal the input of block k+1 to within float rounding), so a module that
darktable runs in between and the config leaves out is found and reported, never learned or
skipped silently. Gradients flow through every block and every conversion.

Data (``ROOT/pipeline/data``): one darktable render per target, with random values for every
listed slider, dumping every block's input and output; the chain's input is the first
block's input tap-out, the target the last block's output tap-out.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

import Constants as C
from models.mosaic import even_crop
from models.proxy import Proxy
from utils.atomic import write_text_atomic
from utils.cfa import image_pattern
from utils.colorspace import CONVERSIONS
from utils.darktable import Darktable, Job, Render, is_raw
from utils.data import to_chw
from utils.dataset import read_rows
from utils.errors import UserError
from utils.metrics import psnr
from utils.pfm import read_tiff, write_tiff_atomic
from utils.registry import PROXIES, ProxyType, get_proxy
from utils.sampling import latin_hypercube
from utils.xmp import HistoryItem

log = logging.getLogger(__name__)

GLUE_MIN_PSNR = 80.0     # dB; a conversion must reproduce darktable's next input this well


# ------------------------------------------------------------------ the config file

@dataclass(frozen=True)
class BlockLine:
    """One line of pipeline_config.txt."""

    lineno: int
    name: str                         # the trained proxy's NAME
    sliders: tuple[str, ...] | None   # sliders to recover; None = "full" (all the proxy's)
    include: bool


def parse_config(path: Path) -> list[BlockLine]:
    """The included lines of a pipeline config; a malformed line is a UserError naming it."""
    if not path.is_file():
        raise UserError(f"pipeline config {path} does not exist; write one line per block: "
                        "'<proxy name> <sliders|full> <0|1>' (see pipeline_config.txt)")
    lines = []
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        where = f"{path}, line {lineno}"
        if len(parts) != 3:
            raise UserError(f"{where}: {text!r} is not '<proxy name> <sliders|full> <0|1>' "
                            f"({len(parts)} fields)")
        name, sliders, flag = parts
        if flag not in ("0", "1"):
            raise UserError(f"{where}: last field {flag!r} must be 1 (use the block) or 0 (ignore it)")
        if not re.fullmatch(r"[A-Za-z0-9_.,=+-]+", name):
            raise UserError(f"{where}: {name!r} is not a proxy name")
        names = None if sliders == "full" else tuple(s for s in sliders.split(",") if s)
        if names is not None and not names:
            raise UserError(f"{where}: list the sliders to recover, comma-separated, or write 'full'")
        lines.append(BlockLine(lineno, name, names, flag == "1"))
    used = [line for line in lines if line.include]
    if not used:
        raise UserError(f"{path} uses no block (no line ends in 1)")
    seen: dict[str, int] = {}
    for line in used:
        if line.name in seen:
            raise UserError(f"{path}, line {line.lineno}: {line.name} is already used on line {seen[line.name]}")
        seen[line.name] = line.lineno
    return used


def split_proxy_name(name: str) -> tuple[ProxyType, list[str]]:
    """A default proxy NAME (``<type>`` or ``<type>_<slider>_<slider>...``, as
    Darktable_proxies.py names proxies) -> its type and sliders (all, for a bare type)."""
    for type_name in sorted(PROXIES, key=len, reverse=True):
        if name == type_name:
            return PROXIES[type_name], [s.name for s in PROXIES[type_name].sliders]
        if name.startswith(type_name + "_"):
            rest, sliders = name[len(type_name) + 1:], []
            known = sorted((s.name for s in PROXIES[type_name].sliders), key=len, reverse=True)
            while rest:
                match = next((s for s in known if rest == s or rest.startswith(s + "_")), None)
                if match is None:
                    break
                sliders.append(match)
                rest = rest[len(match) + 1:]
            if not rest:
                return PROXIES[type_name], sliders
    raise UserError(f"cannot tell the proxy type of {name!r}: name a trained proxy, or a proxy "
                    f"type ({', '.join(PROXIES)}) optionally followed by _<slider>... ")


# ------------------------------------------------------------------ the chain

@dataclass
class Block:
    """One trained proxy in the chain, and which of its sliders are recovered."""

    line: BlockLine
    proxy: Proxy
    proxy_type: ProxyType
    recovered: list[str]              # names, in the proxy's slider order

    @property
    def name(self) -> str:
        return self.line.name

    @property
    def operation(self) -> str:
        return self.proxy_type.operation

    def defaults(self) -> torch.Tensor:
        """(S,) normalised defaults of all the proxy's sliders."""
        values = torch.tensor([[s["default"] for s in self.proxy.sliders]], dtype=torch.float64)
        return self.proxy.to_unit(values.to(self.proxy.lo.device))[0]


def build_blocks(lines: Sequence[BlockLine], load: Callable[[str], Proxy]) -> list[Block]:
    """The chain's blocks: each line's trained proxy (``load(name)``) and its sliders."""
    blocks = []
    for line in lines:
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
    slider stays at its default."""

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
        self.pattern = "RGGB"   # CFA pattern of the current image's mosaic (for mosaic blocks)

    @property
    def mosaic(self) -> bool:
        """Whether the chain starts on a raw mosaic (before demosaic)."""
        return self.blocks[0].proxy.layout != "rgb"

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
        outputs = []
        for k, block in enumerate(self.blocks):
            if k:
                x = CONVERSIONS[self.conversions[k - 1]](x)
            if block.proxy.layout == "rgb":
                x = block.proxy(x, self.block_u(k, u))
            else:
                x = block.proxy(x, self.block_u(k, u), self.pattern)
            outputs.append(x)
        return (x, outputs) if keep else x

    def values(self, u: torch.Tensor) -> dict[str, dict[str, float]]:
        """Normalised recovered sliders (S,) -> {block name: {slider: value}} (recovered only)."""
        out = {}
        for k, block in enumerate(self.blocks):
            full = block.proxy.from_unit(self.block_u(k, u[None].to(block.proxy.lo.device)))[0]
            out[block.name] = {n: float(full[j]) for j, n in enumerate(block.proxy.slider_names)
                               if n in block.recovered}
        return out

    def ranges(self) -> list[float]:
        """Each recovered slider's range (hi - lo), in u order."""
        return [s["hi"] - s["lo"] for b in self.blocks for s in b.proxy.sliders if s["name"] in b.recovered]


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


def check_order(blocks: Sequence[Block], render: Render, raw: bool) -> None:
    """The config's order must be darktable's processing order for this input type."""
    order = [op for op in render.order if op in {b.operation for b in blocks}]
    mine = [b.operation for b in blocks]
    if order != mine:
        for k, (have, want) in enumerate(zip(mine, order)):
            if have != want:
                raise UserError(
                    f"line {blocks[k].line.lineno}: {blocks[k].name} ({have}) is out of darktable's "
                    f"order for {'raw' if raw else 'non-raw'} input; darktable runs "
                    f"{' -> '.join(order)}: reorder the config lines")


# ------------------------------------------------------------------ pipeline data

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


def disabled_modules(dt: Darktable, blocks: Sequence[Block], image: Path) -> list[HistoryItem]:
    """Modules turned off in pipeline renders unless they are blocks: highlight reconstruction
    (raw only) would otherwise change pixels between temperature and demosaic, and made
    renders depend on the other images of a darktable process."""
    ops = {b.operation for b in blocks}
    items = []
    for name in C.PIPELINE_DISABLED_MODULES:
        proxy_type = PROXIES.get(name)
        if proxy_type is None or proxy_type.operation in ops or not is_raw(image):
            continue
        version = dt.module_version(proxy_type)
        items.append(HistoryItem(proxy_type.operation, version, proxy_type.params({}, version), enabled=False))
    return items


def history(dt: Darktable, chain: Chain, values: dict[str, dict[str, float]], image: Path) -> tuple[HistoryItem, ...]:
    items = [dt.history_item(b.proxy_type, {**{s["name"]: s["default"] for s in b.proxy.sliders},
                                            **values.get(b.name, {})}) for b in chain.blocks]
    return tuple(items + disabled_modules(dt, chain.blocks, image))


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
        values = b.proxy.from_unit(chain.block_u(k, u[None].to(b.proxy.lo.device))).float().double()
        full = b.proxy.to_unit(values)[0]
        parts += [full[b.proxy.slider_names.index(n)] for n in b.recovered]
    return torch.stack(parts).cpu().float() if parts else torch.zeros(0)


@dataclass
class Target:
    key: str
    image: str
    u: torch.Tensor                          # true normalised sliders
    taps: dict[tuple[str, str], Path]        # (operation, in|out) -> TIFF
    pattern: str = ""                        # CFA pattern at the mosaic tap-outs (raw input)

    def load(self, operation: str, kind: str) -> torch.Tensor:
        """A tap-out as (1, C, H, W), cropped to even sides from the top-left corner (which
        keeps a mosaic's CFA phase; mosaic proxies work on 2x2 tiles)."""
        return even_crop(torch.from_numpy(to_chw(read_tiff(self.taps[(operation, kind)])))[None])


def generate_targets(dt: Darktable, chain: Chain, images: Sequence[Path], folder: Path, count: int,
                     seed: int, render: bool = True) -> tuple[list[Target], list[str]]:
    """Render (or reuse) ``count`` targets; the targets and the conversions. Each config and
    setting gets its own subfolder of ``folder`` (named by a digest of what the data is), so
    changing the config never mixes or destroys renders. With ``render`` off only the targets
    already there are used."""
    spec = PipelineSpec([b.name for b in chain.blocks], chain.slider_labels(), count, seed,
                        dt.install.version_string, [f"{p.name}:{p.stat().st_size}" for p in images])
    digest = hashlib.sha1(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:12]
    folder = folder / digest
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "pipeline.json"
    if spec_path.exists():
        spec.conversions = json.loads(spec_path.read_text()).get("conversions", [])
    else:
        write_text_atomic(spec_path, json.dumps(asdict(spec), indent=1) + "\n")
    planned = draw_targets(chain, images, count, seed)
    manifest = folder / "manifest.csv"
    done = {r["target"] for r in read_rows(manifest)}
    todo = [t for t in planned if t[0] not in done] if render else []
    ops = [b.operation for b in chain.blocks]
    if todo:
        log.info("rendering %d pipeline targets with darktable", len(todo))
        jobs = [Job(image, history(dt, chain, chain.values(u), image)) for _, image, u in todo]
        results = []
        for i in range(0, len(jobs), max(1, C.DARKTABLE_BATCH_SIZE)):
            results += dt.render_batch(jobs[i:i + C.DARKTABLE_BATCH_SIZE], dump=ops, size=0, hq=True)
        new = not manifest.exists()
        with open(manifest, "a") as f:
            if new:
                f.write("target,image,pattern\n")
            for (key, image, u), result in zip(todo, results):
                if isinstance(result, Exception):
                    log.warning("pipeline target %s failed: %s", key, result)
                    continue
                check_order(chain.blocks, result, is_raw(image))
                if not spec.conversions:
                    spec.conversions = choose_conversions(chain.blocks, result)
                for (op, kind), array in result.tapouts.items():
                    if not np.isfinite(array).all():
                        raise UserError(f"darktable's {op} {kind} tap-out of target {key} holds NaN or Inf")
                    write_tiff_atomic(folder / f"{key}_{op}_{kind}.tif", array)
                pattern = image_pattern(image, dt) if is_raw(image) else ""
                f.write(f"{key},{image.name},{pattern}\n")
                f.flush()
                os.fsync(f.fileno())
    write_text_atomic(spec_path, json.dumps(asdict(spec), indent=1) + "\n")
    done = {r["target"]: r for r in read_rows(manifest)}
    targets = [Target(key, done[key]["image"], u,
                      {(op, kind): folder / f"{key}_{op}_{kind}.tif" for op in ops for kind in ("in", "out")},
                      done[key]["pattern"])
               for key, _, u in planned if key in done]
    if not targets:
        raise UserError(f"no pipeline targets in {folder}; run without -s to render them" if not render
                        else "no pipeline target could be rendered; see the warnings above")
    return targets, spec.conversions


# ------------------------------------------------------------------ missing proxies

def is_trained(root: Path, name: str) -> bool:
    folder = root / f"{name}_model_weights"
    return (folder / "best.pt").exists() or (folder / "last.pt").exists()


def train_missing(lines: Sequence[BlockLine], root: Path, max_minutes: float | None,
                  extra_args: Sequence[str]) -> None:
    """Train, with Darktable_proxies.py's defaults, every block whose proxy is not trained;
    without ``--train-missing`` (``max_minutes`` None) a missing proxy is a UserError."""
    import subprocess
    import sys
    script = Path(__file__).resolve().parent.parent / "Darktable_proxies.py"
    for line in lines:
        if is_trained(root, line.name):
            continue
        try:
            proxy_type, sliders = split_proxy_name(line.name)
        except UserError as e:
            raise UserError(f"line {line.lineno}: proxy {line.name} is not trained, and {e}") from None
        if max_minutes is None:
            hint = f" -p {','.join(sliders)}" if sliders else ""
            raise UserError(f"line {line.lineno}: proxy {line.name} is not trained (no "
                            f"{root / (line.name + '_model_weights')}); train it with 'python "
                            f"Darktable_proxies.py {proxy_type.name} -n 50{hint} -c {line.name}' or "
                            "pass --train-missing")
        cmd = [sys.executable, str(script), proxy_type.name, "-c", line.name, "-n",
               str(C.PIPELINE_TRAIN_SAMPLES), "--no-eval", "--out", str(root), *extra_args]
        if sliders:
            cmd += ["-p", ",".join(sliders)]
        if max_minutes > 0:
            cmd += ["--max-minutes", f"{max_minutes:g}"]
        log.info("line %d: training the missing proxy %s (%s)", line.lineno, line.name, " ".join(cmd[1:]))
        if subprocess.run(cmd).returncode != 0:
            raise UserError(f"line {line.lineno}: training the proxy {line.name} failed (see above)")
