"""Trained proxies under ROOT: loading them, and making the missing ones a pipeline needs."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import torch

from models.proxy import IncompatibleCheckpoint, Proxy, load_proxy
from utils.darktable.runner import Darktable
from utils.errors import UserError
from utils.pipeline.config import BlockLine
from utils.proxies.make import DataRequest, generate_data, train_proxy
from utils.proxies.registry import split_proxy_name
from utils.proxies.schema import ProxyType, Slider
from utils.proxies.train import default_config
from utils.runs import RunPaths
from utils.settings import Settings

log = logging.getLogger(__name__)


def load_trained(paths: RunPaths, name: str, device: torch.device) -> tuple[Proxy, dict]:
    """The trained proxy NAME under ROOT (best.pt, else last.pt), or a one-line error."""
    folder = paths.weights(name)
    for candidate in ("best.pt", "last.pt"):
        if (folder / candidate).exists():
            try:
                return load_proxy(folder / candidate, device)
            except IncompatibleCheckpoint as e:
                raise UserError(f"{e}; retrain the proxy with this version") from None
    raise UserError(f"no trained proxy {name!r}: {folder} holds no best.pt or last.pt; train it with "
                    "'python Darktable_proxies.py PROXY -n N' (and the same -p/-c), or pass --out ROOT")


def missing_proxies(lines: Sequence[BlockLine], paths: RunPaths,
                    train: bool) -> list[tuple[BlockLine, ProxyType, tuple[Slider, ...]]]:
    """The config lines whose proxy is not trained, each with its type and sliders (from its
    name); without ``train`` (no --train-missing) a missing proxy is a UserError."""
    missing = []
    for line in lines:
        if paths.is_trained(line.name):
            continue
        try:
            proxy_type, sliders = split_proxy_name(line.name)
        except UserError as e:
            raise UserError(f"line {line.lineno}: proxy {line.name} is not trained, and {e}") from None
        if not train:
            hint = f" -p {','.join(sliders)}" if sliders else ""
            raise UserError(f"line {line.lineno}: proxy {line.name} is not trained (no "
                            f"{paths.weights(line.name)}); train it with 'python "
                            f"Darktable_proxies.py {proxy_type.name} -n 50{hint} -c {line.name}' or "
                            "pass --train-missing")
        missing.append((line, proxy_type, tuple(proxy_type.slider(s) for s in sliders)))
    return missing


def train_missing(lines: Sequence[BlockLine], paths: RunPaths, settings: Settings, images: Sequence[Path],
                  eval_images: Sequence[Path], max_minutes: float | None, device: str) -> None:
    """Make, as Darktable_proxies.py would with PIPELINE_TRAIN_SAMPLES settings per image,
    every block whose proxy is not trained; ``max_minutes`` None (no --train-missing): a
    missing proxy is a UserError, before any work."""
    missing = missing_proxies(lines, paths, max_minutes is not None)
    if not missing:
        return
    dt = Darktable(settings)
    for line, proxy_type, sliders in missing:
        cfg = default_config(proxy_type, settings, device=device, max_minutes=max_minutes or None)
        request = DataRequest(proxy_type, sliders, line.name, images, eval_images,
                              settings.PIPELINE_TRAIN_SAMPLES, settings.TAPOUT_SIZE, os.cpu_count() or 1,
                              settings.SEED)
        log.info("line %d: making the missing proxy %s (%s%s, %d settings per image)", line.lineno,
                 line.name, proxy_type.name, f" -p {','.join(s.name for s in sliders)}" if sliders else "",
                 settings.PIPELINE_TRAIN_SAMPLES)
        generate_data(dt, request, paths, settings)
        train_proxy(request, paths.stage(1, line.name), paths, cfg)
