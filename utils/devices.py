"""Where networks run: ``--device auto|cpu|cuda|mps``, resolved once per script."""
from __future__ import annotations

import os

import torch

from utils.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(choice: str) -> torch.device:
    """``auto``: CUDA, else Apple's MPS, else the CPU; a device that is not there is a
    UserError. Under torchrun each process takes the CUDA device of its LOCAL_RANK."""
    if choice not in DEVICES:
        raise UserError(f"--device {choice!r}: use one of {', '.join(DEVICES)}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu or auto")
    if choice == "mps" and not mps_available():
        raise UserError("--device mps: no Apple MPS device is available; use --device cpu or auto")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if choice == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(choice)
