"""Datasets of darktable tap-outs: generation (stage 1 / stage 2) and reading.

Layout of one dataset folder (``ROOT/stage_<k>/NAME``):

    manifest.csv        input,output,<sliders...>,image,sample   (complete samples only)
    dataset.json        what the dataset is: proxy, sliders, samples per image, seed, size,
                        darktable and module version, images; the layout, the sampler
                        column of a module without sliders, and (mosaic layouts) the CFA
                        pattern of every image at the tap-outs (``cfa_patterns``)
    settings.json       the settings and command line of the run that made it
    inputs/*.tif        module input tap-outs, float32, stored once per distinct content
    outputs/*.tif       module output tap-outs, float32, one per sample (a raw mosaic is a
                        1-channel (H, W) TIFF)
    parts/<I>-of-<N>.csv rows as each shard recorded them (manifest.csv is their sorted union)
    failed-<I>-of-<N>.csv  samples the shard's last run could not generate, with darktable's
                        error (after Constants.DARKTABLE_RETRIES retries); a rerun retries them

Every sample is written to temporary files, checked (finite, same size, params accepted by
darktable), renamed into place and only then appended to its part file, so an interrupted
run (even ``kill -9``) loses at most the samples in flight; rerunning the same command
finishes the dataset without regenerating or duplicating anything.

A module without sliders (colorin, ...) gets its input varied by its sampler: each sample
draws the sampler slider (column ``<proxy type>.<slider>``) and its history holds that
upstream module at the drawn value plus the module itself at its pinned defaults.

Modules on the raw mosaic (and demosaic) are rendered at full size with ``--hq true``
(:func:`render_size`): with a downscaled export darktable crops the mosaic rows it does not
need and demosaic itself downscales, so input and output would not be aligned photosites.
Their tap-outs are the raw's full (cropped) resolution whatever ``--size`` says.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from utils.atomic import write_text_atomic
from utils.darktable.files import write_tiff_atomic
from utils.darktable.runner import Darktable, Job, Render
from utils.darktable.xmp import HistoryItem
from utils.data.images import cfa_pattern, image_size
from utils.data.manifest import MANIFEST, DatasetSpec, _csv_line, _fmt, column, columns, read_rows
from utils.data.sampling import draw_settings
from utils.errors import DarktableError, StorageError, UserError
from utils.proxies.registry import get_proxy, sampler_of
from utils.proxies.schema import ProxyType, Slider, render_size
from utils.settings import DEFAULTS, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    key: str                     # "<image stem>_<index>": unique in the dataset
    image: Path
    index: int                   # position among all samples of the dataset (for sharding)
    values: dict[Slider, float]  # each drawn slider -> its value


@dataclass(frozen=True)
class Shard:
    index: int                   # 1-based
    count: int

    @classmethod
    def parse(cls, text: str | None) -> "Shard":
        if not text:
            return cls(1, 1)
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise UserError(f"--shard {text!r}: write I/N, e.g. --shard 2/8") from None
        if not 1 <= i <= n:
            raise UserError(f"--shard {text!r}: I must be between 1 and N")
        return cls(i, n)

    def holds(self, sample: Sample) -> bool:
        return sample.index % self.count == self.index - 1

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"


def plan_samples(sliders: Sequence[Slider], images: Sequence[Path], per_image: int, seed: int,
                 stage: int) -> list[Sample]:
    samples = []
    for i, image in enumerate(images):
        for k, values in enumerate(draw_settings(sliders, per_image, seed, stage, image.name)):
            samples.append(Sample(f"{image.stem}_{k:05d}", image, i * per_image + k, values))
    return samples


def drawn_sliders(proxy: ProxyType, sliders: Sequence[Slider]) -> list[Slider]:
    """The sliders drawn per sample: the proxy's own, or for a module without sliders its
    sampler's slider (owned by the upstream proxy type; manifest column ``<type>.<slider>``)."""
    sampler = sampler_of(proxy)
    if sliders or sampler is None:
        return list(sliders)
    return [sampler[1]]


def sample_history(dt: Darktable, proxy: ProxyType, values: Mapping[Slider, float]) -> tuple[HistoryItem, ...]:
    """The history of one sample: the module of each drawn slider of another proxy type (the
    sampler of a slider-less module) at its drawn value, then the module with its own sliders
    at ``values`` (the others at defaults)."""
    own: dict[str, float] = {}
    upstream: dict[str, dict[str, float]] = {}
    for slider, value in values.items():
        if slider.foreign_to(proxy.name):
            upstream.setdefault(slider.owner, {})[slider.name] = value
        else:
            own[slider.name] = value
    items = [get_proxy(owner).history_item(dt, settings) for owner, settings in upstream.items()]
    return (*items, proxy.history_item(dt, own))


def check_sample(sample: Sample, render: Render, operation: str) -> tuple[np.ndarray, np.ndarray]:
    """The sample's (in, out) tap-outs, or DarktableError if they cannot be recorded."""
    tap_in, tap_out = render.io(operation)
    if tap_in.shape[:2] != tap_out.shape[:2]:
        raise DarktableError(f"{sample.key}: {operation} input {tap_in.shape} and output "
                             f"{tap_out.shape} differ in size")
    for what, array in (("input", tap_in), ("output", tap_out)):
        if not np.isfinite(array).all():
            raise DarktableError(f"{sample.key}: {operation} {what} holds NaN or Inf")
    return tap_in, tap_out


class SampleWriter:
    """Records checked samples into a dataset folder: files first, then the part file row."""

    def __init__(self, folder: Path, sliders: Sequence[Slider], header: Sequence[str], part: Path):
        self.folder, self.sliders = folder, sliders
        (folder / "inputs").mkdir(exist_ok=True)
        (folder / "outputs").mkdir(exist_ok=True)
        if part.exists():   # drop a line that a killed writer left half-written
            text = part.read_bytes()
            if text and not text.endswith(b"\n"):
                with open(part, "r+b") as f:
                    f.truncate(text.rfind(b"\n") + 1)
        new = not part.exists() or part.stat().st_size == 0
        self.file = open(part, "a")
        self.committed = 0   # rows recorded by this run
        if new:
            self._append(header)

    def _append(self, *rows: Sequence) -> None:
        self.file.write("".join(_csv_line(values) for values in rows))
        self.file.flush()
        os.fsync(self.file.fileno())

    def record(self, sample: Sample, tap_in: np.ndarray, tap_out: np.ndarray) -> list[str]:
        """Write the sample's files; its row, for :meth:`commit` once the files are in place."""
        digest = hashlib.sha1(np.ascontiguousarray(tap_in).tobytes()).hexdigest()[:16]
        rel_in = f"inputs/{sample.image.stem}_{digest}.tif"
        if not (self.folder / rel_in).exists():
            write_tiff_atomic(self.folder / rel_in, tap_in)
        rel_out = f"outputs/{sample.key}.tif"
        write_tiff_atomic(self.folder / rel_out, tap_out)
        return [rel_in, rel_out, *(_fmt(sample.values[s]) for s in self.sliders),
                sample.image.name, sample.key]

    def commit(self, rows: Sequence[Sequence]) -> None:
        """Record ``rows`` in the part file (one fsync for a whole darktable batch)."""
        if rows:
            self._append(*rows)
            self.committed += len(rows)

    def close(self) -> None:
        self.file.close()


def failures_path(folder: Path, shard: Shard) -> Path:
    return folder / f"failed-{shard.name}.csv"


def record_failures(path: Path, failed: dict[str, str]) -> None:
    """List the samples this shard's last run could not generate (sample, error); none: no file."""
    if failed:
        write_text_atomic(path, _csv_line(["sample", "error"]) +
                          "".join(_csv_line([key, error]) for key, error in sorted(failed.items())))
    elif path.exists():
        path.unlink()


def merge_manifest(folder: Path, header: Sequence[str], order: Sequence[str]) -> int:
    """Write ``manifest.csv`` as the sorted union of all part files; the number of rows."""
    with open(folder / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rank = {key: i for i, key in enumerate(order)}
        rows: dict[str, dict[str, str]] = {}
        for part in sorted((folder / "parts").glob("*.csv")):
            for row in read_rows(part):
                rows.setdefault(row["sample"], row)
        keys = sorted(rows, key=lambda k: rank.get(k, len(rank)))
        text = _csv_line(header) + "".join(_csv_line([rows[k][c] for c in header]) for k in keys)
        write_text_atomic(folder / MANIFEST, text)
        return len(keys)


@dataclass
class GenerationReport:
    folder: Path
    planned: int                  # samples in this shard
    done_before: int              # already there when the run started
    generated: int
    failed: dict[str, str]        # sample key -> last error
    seconds: float
    rows: int                     # rows in manifest.csv afterwards
    failures: Path | None = None  # where the failed samples are listed (None: none failed)

    @property
    def samples_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0


def describe_images(spec: DatasetSpec, proxy: ProxyType, images: Sequence[Path], dt: Darktable) -> None:
    """What ``spec`` records of its images beyond their names: each one's CFA pattern at the
    tap-outs (mosaic types) and its full size (``image_sizes``, where its header tells)."""
    if proxy.mosaic_input:
        spec.cfa_patterns = {p.name: cfa_pattern(p, dt) for p in images}
    spec.image_sizes = {p.name: list(known) for p in images if (known := image_size(p))}


def generate(dt: Darktable, proxy: ProxyType, sliders: Sequence[Slider], images: Sequence[Path],
             folder: Path, per_image: int, seed: int, stage: int, size: int, workers: int,
             shard: Shard = Shard(1, 1), batch_size: int | None = None,
             settings: Settings = DEFAULTS) -> GenerationReport:
    """Generate (or complete) one dataset of ``proxy`` tap-outs in ``folder``; ``batch_size``:
    samples per darktable process (default: the DARKTABLE_BATCH_SIZE setting); a sample is
    retried DARKTABLE_RETRIES times; ``settings`` are recorded in the folder."""
    start = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "parts").mkdir(exist_ok=True)
    lock = open(folder / "parts" / f".{shard.name}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(f"another run is generating {folder} (shard {shard.index}/{shard.count}); "
                        "wait for it to finish") from None
    try:
        drawn = drawn_sliders(proxy, sliders)
        header = columns(proxy.name, drawn)
        spec = DatasetSpec(proxy.name, proxy.operation, [s.name for s in sliders], per_image, seed,
                           stage, size, dt.install.version_string, proxy.module_version(dt),
                           [f"{p.name}:{p.stat().st_size}" for p in images],
                           str(images[0].parent.resolve()) if images else "", proxy.layout,
                           column(drawn[0], proxy.name) if drawn and not sliders else None)
        spec.check_against(folder)
        describe_images(spec, proxy, images, dt)
        write_text_atomic(folder / "dataset.json", json.dumps(asdict(spec), indent=1) + "\n")
        settings.write_snapshot(folder)

        samples = plan_samples(drawn, images, per_image, seed, stage)
        done = {row["sample"] for part in (folder / "parts").glob("*.csv") for row in read_rows(part)}
        mine = [s for s in samples if shard.holds(s)]
        todo = [s for s in mine if s.key not in done]
        writer = SampleWriter(folder, drawn, header, folder / "parts" / f"{shard.name}.csv")
        try:
            failed = _run_jobs(dt, proxy, todo, writer, size, workers,
                               batch_size or settings.DARKTABLE_BATCH_SIZE, settings.DARKTABLE_RETRIES)
        except OSError as e:   # a full disk: the samples recorded stay; the same command goes on from them
            raise StorageError(e, partial=bool(done) or writer.committed > 0) from None
        finally:
            writer.close()
        record_failures(failures_path(folder, shard), failed)
        rows = merge_manifest(folder, header, [s.key for s in samples])
    finally:
        lock.close()
    return GenerationReport(folder, len(mine), len(mine) - len(todo), len(todo) - len(failed),
                            failed, time.monotonic() - start, rows,
                            failures_path(folder, shard) if failed else None)


def _batches(samples: Sequence[Sample], size: int, workers: int) -> list[list[Sample]]:
    """``samples`` in order, cut into batches of at most ``size`` (one darktable process each).

    The batches are of equal length (+-1) and their number is a multiple of ``workers``, so
    that the processes finish together (no worker idles at the end) and as few processes as
    possible pay darktable's start-up. A batch may hold several images.
    """
    if not samples:
        return []
    count = -(-len(samples) // size)                              # ceil
    count = min(-(-count // workers) * workers, len(samples))      # a multiple of workers
    bounds = [round(k * len(samples) / count) for k in range(count + 1)]
    return [list(samples[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _run_jobs(dt: Darktable, proxy: ProxyType, todo: Sequence[Sample], writer: SampleWriter,
              size: int, workers: int, batch_size: int, retries: int) -> dict[str, str]:
    """Render ``todo`` in parallel batches, retrying failures; the samples that still failed."""
    size, hq = render_size(proxy, size)
    failed: dict[str, str] = {}
    if not todo:
        return failed
    attempts: dict[str, int] = defaultdict(int)

    def render(batch: list[Sample]) -> list[Render | DarktableError]:
        jobs = [Job(s.image, sample_history(dt, proxy, s.values)) for s in batch]
        try:
            return dt.render_batch(jobs, dump=[proxy.operation], size=size, hq=hq)
        except DarktableError as e:      # the whole process failed (timeout): every sample did
            return [e] * len(batch)

    queue = _batches(todo, max(1, batch_size), max(1, workers))
    with ThreadPoolExecutor(max(1, workers)) as pool, \
            tqdm(total=len(todo), unit="sample", desc=f"{proxy.name} samples", smoothing=0.1) as bar, \
            dt.stopped_on_error():
        running = {}
        while queue or running:
            while queue and len(running) < max(1, workers):
                batch = queue.pop(0)
                running[pool.submit(render, batch)] = batch
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                batch = running.pop(future)
                retry, rows = [], []
                for sample, result in zip(batch, future.result()):
                    try:
                        if isinstance(result, DarktableError):
                            raise result
                        rows.append(writer.record(sample, *check_sample(sample, result, proxy.operation)))
                        failed.pop(sample.key, None)
                        bar.update(1)
                    except DarktableError as e:
                        attempts[sample.key] += 1
                        failed[sample.key] = str(e)
                        if attempts[sample.key] <= retries:
                            retry.append(sample)
                        else:
                            log.warning("sample %s failed: %s", sample.key, e)
                            bar.update(1)
                writer.commit(rows)
                if retry:   # one at a time: a bad sample must not take a batch down with it
                    queue.extend([s] for s in retry)
    return failed
