"""Progress bars for the loops a user waits on: rate and ETA, silent under ``--quiet``."""
from __future__ import annotations

import logging
from typing import Iterator, Sequence, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(total: int, desc: str, unit: str, enabled: bool = True) -> tqdm:
    """A tqdm bar, shown unless ``enabled`` is off or messages are off (``--quiet`` sets the
    log level above INFO)."""
    quiet = logging.getLogger().getEffectiveLevel() > logging.INFO
    return tqdm(total=total, desc=desc, unit=unit, smoothing=0.1, dynamic_ncols=True,
                disable=quiet or not enabled)


def progress_over(items: Sequence[T], desc: str, unit: str) -> Iterator[T]:
    """``items`` one by one, with a bar (see :func:`progress`)."""
    with progress(len(items), desc, unit) as bar:
        for item in items:
            yield item
            bar.update(1)
