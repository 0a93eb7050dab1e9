"""Atomic file writes: write a temporary file next to the target, then rename it into place,
so a reader (or a run killed mid-write) never sees a half-written file."""
from __future__ import annotations

import os
from pathlib import Path


def temp_path(path: Path) -> Path:
    """A hidden, per-process temporary name beside ``path`` (same file system, so rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_text_atomic(path: Path, text: str) -> None:
    tmp = temp_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)
