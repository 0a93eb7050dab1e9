"""Record work as it completes, so that an interrupted run (even ``kill -9``) continues where
it stopped; and run locks, so that two runs never write the same output at once.

A journal is an append-only file of JSON lines. The first line describes the work (``meta``:
settings, checkpoint, ...); every other line is one finished item ``{"key": ..., ...}``,
flushed and fsync'ed before the caller moves on. A last line that a killed writer left
half-written is ignored (and cut off before the next append). When the meta differs from the
one on file, the old journal describes other work: it is set aside as ``<name>.old`` and the
work starts over.

    with Journal(folder / "regression.jsonl", meta={"seed": 0, "iterations": 200}) as journal:
        for target in targets:
            if target in journal:
                row = journal[target]        # done by an earlier run
            else:
                row = compute(target)
                journal.record(target, **row)
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from utils.errors import UserError

log = logging.getLogger(__name__)


@contextmanager
def run_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) or refuse with a one-line error.

    The lock is the kernel's (flock): it goes away with the process, however it ends, so a
    killed run never leaves a stale lock behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another run is {what} ({path.parent}); wait for it to finish") from None
        yield


class Journal:
    """Finished items of one piece of work, keyed by a string; see the module docstring."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = json.loads(json.dumps(meta))   # as it reads back from the file
        self.items: dict[str, dict[str, Any]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = self._read_lines()
        if lines and lines[0].get("meta") != self.meta:
            log.info("%s was written for other settings; starting over (kept as %s.old)",
                     self.path, self.path.name)
            os.replace(self.path, self.path.with_name(self.path.name + ".old"))
            lines = []
        for line in lines[1:]:
            self.items[line["key"]] = {k: v for k, v in line.items() if k != "key"}
        self._file = open(self.path, "a")
        if not lines:
            self._append({"meta": self.meta})

    def _read_lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        complete = data[:data.rfind(b"\n") + 1]
        if len(complete) < len(data):   # a killed writer's last line: drop it
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))
        lines = []
        for number, text in enumerate(complete.decode().splitlines(), 1):
            try:
                lines.append(json.loads(text))
            except ValueError:
                raise UserError(f"{self.path}, line {number}, is damaged; remove the file to "
                                "start that work over") from None
        return lines

    def _append(self, entry: dict[str, Any]) -> None:
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def __contains__(self, key: str) -> bool:
        return key in self.items

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self.items[key]

    def __len__(self) -> int:
        return len(self.items)

    def record(self, key: str, **data: Any) -> None:
        """Write one finished item to disk (durably) before returning."""
        self._append({"key": key, **data})
        self.items[key] = json.loads(json.dumps(data))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
