"""Trained proxies under ROOT: loading them, and finding the ones a pipeline lacks."""
from __future__ import annotations

import logging
from typing import Sequence

import torch

from models.proxy import IncompatibleCheckpoint, Proxy, load_proxy, read_checkpoint
from utils.devices import for_inference
from utils.errors import UserError
from utils.pipeline.config import BlockLine
from utils.proxies.registry import split_proxy_name
from utils.runs import RunPaths

log = logging.getLogger(__name__)


def load_trained(paths: RunPaths, name: str, device: torch.device) -> tuple[Proxy, dict]:
    """The trained proxy NAME under ROOT (best.pt, else last.pt), its forward passes without
    gradients run as utils.devices.for_inference sets them for ``device``, or a one-line error."""
    folder = paths.weights(name)
    for candidate in ("best.pt", "last.pt"):
        if (folder / candidate).exists():
            try:
                proxy, checkpoint = load_proxy(folder / candidate, device)
            except IncompatibleCheckpoint as e:
                raise UserError(f"{e}; retrain the proxy with this version") from None
            return for_inference(proxy, device), checkpoint
    raise UserError(f"no trained proxy {name!r}: {folder} holds no best.pt or last.pt; train it with "
                    "'python Darktable_proxies.py PROXY -n N' (and the same -p/-c), or pass --out ROOT")


def trained_type(paths: RunPaths, name: str) -> str | None:
    """The proxy type the trained proxy NAME's checkpoint names; None when it is not trained."""
    folder = paths.weights(name)
    for candidate in ("best.pt", "last.pt"):
        if (folder / candidate).exists():
            try:
                return str(read_checkpoint(folder / candidate).get("proxy_type", ""))
            except IncompatibleCheckpoint as e:
                raise UserError(f"{e}; retrain the proxy with this version") from None
    return None


def missing_proxies(lines: Sequence[BlockLine], paths: RunPaths, train: bool) -> list[BlockLine]:
    """The config lines whose proxy is not trained; without ``train`` (no --train-missing) a
    missing proxy is a UserError."""
    missing = []
    for line in lines:
        if paths.is_trained(line.name):
            continue
        if not train:
            proxy_type, sliders = split_proxy_name(line.name)
            hint = f" -p {','.join(sliders)}" if sliders and len(sliders) < len(proxy_type.sliders) else ""
            raise UserError(f"line {line.lineno}: proxy {line.name} is not trained (no "
                            f"{paths.weights(line.name)}); train it with 'python "
                            f"Darktable_proxies.py {proxy_type.name} -n 50{hint} -c {line.name}' or "
                            "pass --train-missing (which trains it on the chain's own data)")
        missing.append(line)
    return missing
