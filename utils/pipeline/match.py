"""Match a look: recover the darktable edit that turns a raw into a target image, and write
it as an XMP sidecar darktable opens.

The target is an sRGB export of the raw (8- or 16-bit TIFF, PNG or JPEG). One darktable
render of the raw at the chain's defaults (a probe, at the target's size) gives the chain's
input, the image's context (its colour matrix) and the conversions between blocks; the
sliders of the listed blocks are regressed through the filled-in chain to the target (the
chain's display RGB clipped to [0, 1], as an export is); the recovered sliders are written
as an XMP and rendered by darktable, which is the result that counts: ``darktable PSNR``.
Before it is written, darktable itself polishes the chain's answer (utils/pipeline/polish.py):
the chain finds the neighbourhood, darktable's own renders remove the proxies' error.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from utils.atomic import write_text_atomic
from utils.darktable.dumps import OPERATIONS, is_raw
from utils.darktable.runner import Darktable, Job, Render
from utils.darktable.xmp import HistoryItem, build_xmp
from utils.data.images import check_readable
from utils.data.tapouts import to_chw
from utils.errors import DarktableError, UserError
from utils.evaluation.metrics import psnr
from utils.evaluation.regress import freeze, regress
from utils.pipeline.chain import Chain, choose_conversions
from utils.pipeline.fill import image_context
from utils.pipeline.polish import polish
from utils.pipeline.targets import history
from utils.settings import Settings
from utils.visual import contact_sheet, save_png, to_display

log = logging.getLogger(__name__)

TARGET_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
ASPECT_TOLERANCE = 0.01   # relative; darktable rounds an export's sides to whole pixels


@dataclass
class MatchJob:
    """One (raw, target) pair and where its XMP goes."""

    raw: Path
    target: Path
    xmp: Path


def read_target(path: Path) -> np.ndarray:
    """An sRGB image file as float32 (H, W, 3) in [0, 1]; a one-line error when it is not one."""
    if not path.is_file():
        raise UserError(f"target {path} does not exist; give a TIFF, PNG or JPEG exported by darktable")
    if path.suffix.lower() not in TARGET_EXTENSIONS:
        raise UserError(f"target {path} is not a TIFF, PNG or JPEG; export the look from darktable as one")
    check_readable(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile
            image = tifffile.imread(path)
        else:
            import imageio.v3 as iio
            image = iio.imread(path)
    except Exception as e:   # any decoder error means the same thing to the user
        raise UserError(f"target {path} is unreadable ({type(e).__name__}: {e}); export it again") from None
    if image.dtype not in (np.uint8, np.uint16) or image.ndim not in (2, 3):
        raise UserError(f"target {path} is {image.dtype} with shape {image.shape}; give an 8- or 16-bit "
                        "RGB image in sRGB, as darktable exports it")
    image = image.astype(np.float32) / np.iinfo(image.dtype).max
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] not in (3, 4):
        raise UserError(f"target {path} has {image.shape[2]} channels; give an RGB image")
    return image[..., :3]


def check_aspect(target: np.ndarray, rendered: tuple[int, int], job: MatchJob) -> None:
    """The target must have the raw's aspect ratio as darktable exports it."""
    th, tw = target.shape[:2]
    rh, rw = rendered
    if abs(tw / th - rw / rh) > ASPECT_TOLERANCE * (rw / rh) + 2.0 / min(th, tw):
        turned = abs(tw / th - rh / rw) <= ASPECT_TOLERANCE * (rh / rw) + 2.0 / min(th, tw)
        raise UserError(f"target {job.target} is {tw}x{th}, but darktable exports {job.raw.name} as {rw}x{rh}"
                        f"{' (the target is turned by 90 degrees)' if turned else ''}; give an export of "
                        "this raw at its aspect ratio, uncropped")


def orientation_item(dt: Darktable) -> HistoryItem:
    """flip at its default (the orientation the raw's metadata gives), as darktable's exports
    apply it; int orientation -1 = from the file."""
    blob = (-1).to_bytes(4, "little", signed=True)
    return HistoryItem("flip", dt.module_version("flip", {2: blob}), blob)


def match_one(dt: Darktable, chain: Chain, job: MatchJob, folder: Path, device: torch.device, iterations: int,
              settings: Settings) -> dict:
    """Recover ``job``'s sliders through ``chain``, write its XMP, render it with darktable;
    the metrics (also written to ``folder/metrics.json``, with ``sheet.png``)."""
    start = time.monotonic()
    target = read_target(job.target)
    raw_items = (orientation_item(dt),) if is_raw(job.raw) else ()
    size = max(target.shape[:2])
    defaults = history(dt, chain, {}, job.raw, settings) + raw_items
    # rgb chains run at the export size (demosaic downscales); mosaic chains at full size
    probe = dt.render(job.raw, defaults, OPERATIONS, size, chain.mosaic, require=False)
    check_aspect(target, probe.tapouts[("colorout", "out")].shape[:2], job)
    chain.conversions = choose_conversions(chain.blocks, probe)
    chain.context = image_context(dt, job.raw, probe, chain.exact_colorin)
    tapout = torch.from_numpy(to_chw(probe.tapouts[(chain.blocks[0].operation, "in")]))[None]
    x = chain.input(tapout).to(device)
    goal = torch.from_numpy(to_chw(target))[None].to(device)
    extra = (goal.shape[-2] - x.shape[-2], goal.shape[-1] - x.shape[-1])
    if all(0 <= e <= 1 for e in extra):    # the chain's input was cropped to even sides
        goal = goal[..., :x.shape[-2], :x.shape[-1]]
    # random crops compare like with like only when the chain runs at the target's size; a
    # mosaic chain runs at full size, and its whole output is scaled down to the target's; a
    # block that computes on whole images only (Chain.whole_image) needs them too
    same_size = tuple(x.shape[-2:]) == tuple(goal.shape[-2:])

    def forward(inputs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return exported(chain(inputs, u), None if same_size else goal.shape[-2:])

    freeze(chain)
    rec = regress(forward, chain.n_sliders, chain.scale, x, goal, iterations, settings.PARAM_TUNING_RESTARTS,
                  torch.Generator().manual_seed(settings.SEED),
                  crop=settings.REGRESSION_CROP if same_size and not chain.whole_image else 0,
                  margin=chain.context_margin, searched=chain.steps)
    with torch.no_grad():
        found = forward(x, rec.u[None].to(device)).cpu()

    def edit(u: np.ndarray | torch.Tensor) -> tuple[dict[str, dict[str, float]], tuple[HistoryItem, ...]]:
        sliders = chain.clamped_values([float(v) for v in chain_values(chain, torch.as_tensor(u).float())])
        return sliders, history(dt, chain, sliders, job.raw, settings) + raw_items

    def render(points: Sequence[np.ndarray]) -> list[np.ndarray]:
        results = dt.render_batch([Job(job.raw, edit(p)[1]) for p in points], (), size, True, output=True)
        return [exported_file(r, target.shape[:2]) for r in results]

    polished = polish(render, rec.u.double().numpy(), target, settings.MATCH_POLISH_STEPS)
    chain_sliders = edit(rec.u)[0]
    sliders, items = edit(polished.u)
    job.xmp.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(job.xmp, build_xmp(list(items), is_raw(job.raw)))
    rendered = exported_file(dt.render(job.raw, items, (), size, True, output=True), target.shape[:2])
    darktable_psnr = float(psnr(torch.from_numpy(to_chw(rendered))[None], torch.from_numpy(to_chw(target))[None])[0])
    metrics = {"target": str(job.target), "image": str(job.raw), "xmp": str(job.xmp), "sliders": sliders,
               "proxy_psnr": float(psnr(found.float(), goal.cpu().float())[0]), "darktable_psnr": darktable_psnr,
               "chain_sliders": chain_sliders,
               "chain_edit_darktable_psnr": polished.psnr[0] if polished.psnr else None,
               "polish_psnr": polished.psnr, "polish_renders": polished.renders,
               "blocks": [b.name for b in chain.blocks], "iterations": iterations,
               "seconds": round(time.monotonic() - start, 1)}
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    error = np.abs(rendered - target) * 10
    save_png(folder / "sheet.png", contact_sheet(
        [[to_display(target, 1.0), to_display(rendered, 1.0), to_display(error, 1.0)]],
        [["target", f"darktable, recovered edit: {darktable_psnr:.2f} dB", "|error| x10"]]))
    return metrics


def chain_values(chain: Chain, u: torch.Tensor) -> list[float]:
    """Normalised recovered sliders (S,) -> their values, in u order."""
    values = chain.values(u)
    return [values[b.name][s] for b in chain.blocks for s in b.recovered]


def exported(image: torch.Tensor, size: Sequence[int] | None) -> torch.Tensor:
    """What an export of the chain's display RGB holds: clipped to [0, 1], at ``size`` (area
    averaging when the chain ran at full size)."""
    image = image.clamp(0.0, 1.0)
    if size is not None and tuple(image.shape[-2:]) != tuple(size):
        image = F.interpolate(image, size=tuple(size), mode="area")
    return image


def exported_file(result: Render | DarktableError, shape: Sequence[int]) -> np.ndarray:
    """A darktable render's exported image as the target holds it: clipped to [0, 1], at
    ``shape`` (darktable may round a side differently)."""
    if isinstance(result, DarktableError):
        raise result
    image = np.clip(result.output, 0.0, 1.0)
    return image if image.shape[:2] == tuple(shape) else resize(image, shape)


def resize(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(H, W, 3) float -> ``shape`` (bilinear; darktable may round an export's side differently)."""
    t = torch.from_numpy(to_chw(image))[None]
    return F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()


def match_jobs(target: Path, image: Path, xmp: Path | None, root: Path, force: bool) -> list[MatchJob]:
    """The (raw, target) pairs asked for: one file each, or two folders paired by file stem;
    refused before any work when a file is missing or unreadable, or an XMP exists (without
    ``force``)."""
    if target.is_dir():
        if not image.is_dir():
            raise UserError(f"--match {target} is a folder: give --image the folder of the raws (paired by name)")
        raws = {p.stem: p for p in sorted(image.iterdir()) if p.is_file() and not p.name.endswith(".xmp")}
        jobs = []
        for t in sorted(p for p in target.iterdir() if p.suffix.lower() in TARGET_EXTENSIONS):
            if t.stem not in raws:
                raise UserError(f"target {t} has no raw {t.stem}.* in {image}; name each target as its raw")
            jobs.append(MatchJob(raws[t.stem], t, (xmp or root / "match") / f"{t.stem}.xmp"))
        if not jobs:
            raise UserError(f"no TIFF, PNG or JPEG target in {target}")
    else:
        if not image.is_file():
            raise UserError(f"raw {image} does not exist; give the raw file the target was exported from")
        jobs = [MatchJob(image, target, xmp or root / "match" / f"{image.stem}.xmp")]
    for job in jobs:
        check_readable(job.raw)
        if job.xmp.is_dir():
            raise UserError(f"--xmp {job.xmp} is a folder; give a file name ending in .xmp")
        if job.xmp.exists() and not force:
            raise UserError(f"{job.xmp} exists; pass --force to overwrite it or --xmp to write elsewhere")
        read_target(job.target)
    return jobs


def check_aspects(dt: Darktable, jobs: Sequence[MatchJob]) -> None:
    """Each target's aspect ratio against its raw's export, from one quick render of the raw
    (before any training)."""
    for job in jobs:
        target = read_target(job.target)
        items = (orientation_item(dt),) if is_raw(job.raw) else ()
        export = dt.render(job.raw, items, (), max(target.shape[:2]), False, output=True).output
        check_aspect(target, export.shape[:2], job)


def summary(results: Sequence[dict]) -> str:
    scores = [r["darktable_psnr"] for r in results]
    if len(scores) == 1:
        return ""
    return (f"{len(scores)} targets: darktable PSNR mean {np.mean(scores):.2f} dB, worst {min(scores):.2f} dB"
            if all(math.isfinite(s) for s in scores) else f"{len(scores)} targets")
