"""Trained proxies under ROOT: finding and loading them, and training the missing ones of a
pipeline.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

import Constants as C
from models.proxy import Proxy
from utils.errors import UserError
from utils.pipeline.config import BlockLine
from utils.proxies.registry import split_proxy_name


def load_trained(root: Path, name: str, device: torch.device) -> tuple[Proxy, dict]:
    """The trained proxy NAME under ROOT (best.pt, else last.pt), or a one-line error."""
    from models.proxy import IncompatibleCheckpoint, load_proxy
    folder = root / f"{name}_model_weights"
    for candidate in ("best.pt", "last.pt"):
        if (folder / candidate).exists():
            try:
                return load_proxy(folder / candidate, device)
            except IncompatibleCheckpoint as e:
                raise UserError(f"{e}; retrain the proxy with this version") from None
    raise UserError(f"no trained proxy {name!r}: {folder} holds no best.pt or last.pt; train it with "
                    "'python Darktable_proxies.py PROXY -n N' (and the same -p/-c), or pass --out ROOT")


log = logging.getLogger(__name__)


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
