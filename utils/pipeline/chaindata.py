"""Chain data: each block of a chain trained on what it sees inside the chain.

darktable renders the whole chain with the sliders of all its proxy blocks drawn jointly
(one Latin hypercube over all of them), and every render dumps every block's input and
output in the same call. Each block's dataset is its own tap-outs from these renders, in the
manifest contract of a proxy's dataset (``input``, ``output``, its own sliders by name, then
the upstream blocks' sliders as ``<type>.<slider>`` columns, ``image``, ``sample``), at
``ROOT/stage_1/<NAME>.chain-<digest>`` (training images) and its stage-2 twin (held-out
images). ``Pipeline_regression.py --train-missing`` trains a missing block on it; ``--fine-tune``
trains the chain's proxies together on it (utils/pipeline/finetune.py). Each sample's display
RGB (the chain's last output) is kept in ``stage_<k>/chain-<digest>/<sample>.tif``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from utils.atomic import write_text_atomic
from utils.darktable.dumps import is_raw
from utils.darktable.files import write_tiff_atomic
from utils.darktable.runner import Darktable, Job, Render
from utils.darktable.xmp import HistoryItem
from utils.data.generate import Sample, SampleWriter, describe_images, merge_manifest
from utils.data.manifest import DatasetSpec, columns, read_rows, save_dataset_preview
from utils.data.sampling import latin_hypercube
from utils.errors import StorageError, UserError
from utils.pipeline.config import BlockLine
from utils.pipeline.fill import disabled_modules, exact_block, fill_in, line_types, probe, redundant_sliders
from utils.proxies.registry import split_proxy_name
from utils.proxies.schema import ProxyType, Slider
from utils.proxies.trained import load_trained, missing_proxies, trained_type
from utils.proxies.train import default_config, train
from utils.runs import RunPaths, held_out
from utils.settings import Settings

log = logging.getLogger(__name__)


class ChainData:
    """The chain data of a filled-in chain: which blocks are proxies, what is drawn, where it goes."""

    def __init__(self, lines: Sequence[BlockLine], types: Mapping[str, ProxyType],
                 sliders_of: Callable[[BlockLine], tuple[Slider, ...]], paths: RunPaths, settings: Settings,
                 darktable_version: str):
        self.lines = [line for line in lines if not exact_block(line)]
        self.end = types[lines[-1].name].operation if lines[-1].name in types else lines[-1].name
        self.types = {line.name: types[line.name] for line in self.lines}
        self.sliders = {line.name: tuple(sliders_of(line)) for line in self.lines}
        self.drawn = [(line.name, s) for line in self.lines for s in self.sliders[line.name]]
        self.settings, self.paths = settings, paths
        what = {"chain": [line.name for line in lines], "drawn": [f"{n}.{s.name}" for n, s in self.drawn],
                "seed": settings.SEED, "darktable": darktable_version}
        self.digest = hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:8]
        self.version = darktable_version

    def final(self, stage: int = 1) -> Path:
        """The chain's display RGB (the last block's output) of each sample: ``<sample>.tif``."""
        return self.paths.stage(stage, f"chain-{self.digest}")

    def folder(self, name: str, stage: int = 1) -> Path:
        """Block ``name``'s dataset of ``stage``."""
        return self.paths.stage(stage, f"{name}.chain-{self.digest}")

    def _upstream(self, name: str) -> list[Slider]:
        """The drawn sliders of the blocks before ``name``, each owned by its type."""
        names = [line.name for line in self.lines]
        before = names[:names.index(name)]
        return [s for n in before for s in self.sliders[n]]

    def samples(self, images: Sequence[Path], per_image: int, stage: int) -> list[Sample]:
        """``per_image`` joint slider settings per image (one Latin hypercube per stage), each
        value rounded to the float32 darktable sees."""
        rng = np.random.default_rng([self.settings.SEED, stage, zlib.crc32(b"chain")])
        count = len(images) * per_image
        points = latin_hypercube(count, len(self.drawn), rng)
        samples = []
        for k in range(count):
            image = images[k % len(images)]
            values = {s: float(np.float32(s.from_unit(float(points[k, j])))) for j, (_, s) in enumerate(self.drawn)}
            values = {s: s.clamp(v) for s, v in values.items()}
            samples.append(Sample(f"{image.stem}_{k:05d}", image, k, values))
        return samples

    def history(self, dt: Darktable, sample: Sample):
        items = []
        for line in self.lines:
            own = {s.name: sample.values[s] for s in self.sliders[line.name]}
            items.append(self.types[line.name].history_item(dt, own))
        operations = [t.operation for t in self.types.values()]
        return tuple(items + disabled_modules(dt, operations, sample.image, self.settings.PIPELINE_DISABLED_MODULES))

    def generate(self, dt: Darktable, images: Sequence[Path], per_image: int, stage: int) -> None:
        """Render (or complete) this stage's samples; every block's dataset gets its tap-outs."""
        samples = self.samples(images, per_image, stage)
        writers, headers = {}, {}
        for line in self.lines:
            folder = self.folder(line.name, stage)
            (folder / "parts").mkdir(parents=True, exist_ok=True)
            proxy_type = self.types[line.name]
            drawn = [*self.sliders[line.name], *self._upstream(line.name)]
            headers[line.name] = columns(proxy_type.name, drawn)
            spec = DatasetSpec(proxy_type.name, proxy_type.operation, [s.name for s in self.sliders[line.name]],
                               per_image, self.settings.SEED, stage, 0, self.version, proxy_type.module_version(dt),
                               [f"{p.name}:{p.stat().st_size}" for p in images], str(images[0].parent.resolve()),
                               proxy_type.layout)
            spec.check_against(folder)
            describe_images(spec, proxy_type, images, dt)
            write_text_atomic(folder / "dataset.json", json.dumps({**asdict(spec), "chain": self.digest}, indent=1) + "\n")
            writers[line.name] = (SampleWriter(folder, drawn, headers[line.name], folder / "parts" / "chain.csv"))
        done_path = self.folder(self.lines[-1].name, stage).parent / f".chain-{self.digest}-stage{stage}.done"
        done = set(done_path.read_text().split()) if done_path.exists() else set()
        todo = [s for s in samples if s.key not in done]
        operations = [self.types[line.name].operation for line in self.lines]
        self.final(stage).mkdir(parents=True, exist_ok=True)
        jobs = [Job(s.image, self.history(dt, s)) for s in todo]
        try:
            results = dt.render_many(jobs, list(dict.fromkeys([*operations, self.end])), 0, True,
                                     self.settings.DARKTABLE_BATCH_SIZE,
                                     desc=f"chain data, stage {stage}")
            for sample, result in zip(todo, results):
                if isinstance(result, Exception):
                    log.warning("chain sample %s failed: %s", sample.key, result)
                    continue
                for line, op in zip(self.lines, operations):
                    tap_in, tap_out = result.io(op)
                    if not (np.isfinite(tap_in).all() and np.isfinite(tap_out).all()):
                        raise UserError(f"darktable's {op} tap-out of chain sample {sample.key} holds NaN or Inf")
                    writer = writers[line.name]
                    writer.commit([writer.record(sample, tap_in, tap_out)])
                write_tiff_atomic(self.final(stage) / f"{sample.key}.tif", result.tapouts[(self.end, "out")])
                with open(done_path, "a") as f:
                    f.write(sample.key + "\n")
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as e:
            raise StorageError(e, partial=True) from None
        finally:
            for writer in writers.values():
                writer.close()
        order = [s.key for s in samples]
        for line in self.lines:
            folder = self.folder(line.name, stage)
            rows = merge_manifest(folder, headers[line.name], order)
            if rows:
                save_dataset_preview(folder, self.sliders[line.name])
        log.info("chain data, stage %d: %d samples in %s", stage,
                 len(read_rows(self.folder(self.lines[-1].name, stage) / "manifest.csv")),
                 ", ".join(str(self.folder(line.name, stage)) for line in self.lines))

    def make(self, dt: Darktable, images: Sequence[Path], eval_images: Sequence[Path], per_image: int) -> None:
        """Both stages: training images (stage 1) and held-out images (stage 2)."""
        self.generate(dt, images, per_image, 1)
        self.generate(dt, eval_images, self.settings.STAGE_2_SAMPLES_PER_IMAGE, 2)


def chain_lines(dt: Darktable, listed: Sequence[BlockLine], probe_image: Path, paths: RunPaths,
                settings: Settings, train_images: Sequence[Path], eval_images: Sequence[Path],
                train_missing: bool, fine_tune: bool, device: str, max_minutes: float,
                extra: Sequence[HistoryItem] = ()) -> tuple[list[BlockLine], Render, ChainData | None]:
    """The filled-in chain of the config lines ``listed``, checked from one render of
    ``probe_image`` (with ``extra`` history items; returned) before any training; its missing
    proxies trained on the chain's data (``train_missing``, else an error). With
    ``train_missing`` or ``fine_tune``, the chain data (else None)."""
    types = line_types(listed, lambda name: trained_type(paths, name))
    render = probe(dt, listed, types, probe_image, settings, extra)
    lines = fill_in(listed, types, render, is_raw(probe_image))
    log.info("chain: %s", " -> ".join(line.name + ("" if line.lineno else " (filled in)") for line in lines))
    for warning in redundant_sliders({types[line.name].operation: [s.name for s in sliders_of(line, paths)]
                                      if line.sliders is None else line.sliders for line in listed}):
        log.warning(warning)
    missing = missing_proxies([line for line in lines if not exact_block(line)], paths, train_missing)
    if not (missing or fine_tune):
        return lines, render, None
    data = ChainData(lines, types, lambda line: sliders_of(line, paths), paths, settings, dt.install.version_string)
    data.make(dt, train_images, eval_images, settings.PIPELINE_TRAIN_SAMPLES)
    for line in missing:
        proxy_type = data.types[line.name]
        log.info("training the missing proxy %s (%s: %s) on chain data", line.name, proxy_type.name,
                 ", ".join(s.name for s in data.sliders[line.name]) or "no sliders")
        stage1 = data.folder(line.name)
        train(proxy_type, data.sliders[line.name], line.name, stage1, held_out(stage1), paths,
              default_config(proxy_type, settings, device=device, max_minutes=max_minutes or None))
    return lines, render, data


def sliders_of(line: BlockLine, paths: RunPaths) -> tuple[Slider, ...]:
    """The sliders a block's proxy is (or will be) trained on: a trained proxy's own, else
    those its name spells (all of its type's for a bare type name)."""
    if paths.is_trained(line.name):
        return tuple(load_trained(paths, line.name, torch.device("cpu"))[0].sliders)
    proxy_type, names = split_proxy_name(line.name)
    return tuple(proxy_type.slider(n) for n in names)
