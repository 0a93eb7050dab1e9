"""Atomic file writes: write a temporary file next to the target, then rename it into place,
so a reader (or a run killed mid-write) never sees a half-written file, and a write that
fails (a full disk) leaves neither a partial file nor its temporary file behind."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def temp_path(path: Path) -> Path:
    """A hidden, per-process temporary name beside ``path`` (same file system, so rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` a temporary file, then rename it to ``path``; on any failure the
    temporary file is removed and the error raised."""
    tmp = temp_path(Path(path))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename in (str(tmp), tmp):
            e.filename = str(path)     # name the file the user will look for
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))
