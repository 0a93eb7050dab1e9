"""PyDarktable: run the real darktable-cli and read its tap-outs.

One call = one or more images, each with its own history, a fresh private config, cache
and dump directory, a timeout, and every temporary file removed afterwards. Tap-outs are
identified by the file names darktable writes (``NNNN_<operation>_cpu_<in|out>_<C|M>.pfm``),
never by listing order; NNNN is darktable's processing counter, so it also gives the pipe
order. darktable runs with ``-d params``, and a history item whose params darktable rejected
(wrong struct size or version: darktable then silently uses the module's defaults) is an
error.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shlex
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager, Iterator, Mapping, Sequence

import numpy as np

from utils.darktable.dumps import (_DUMPED_RE, _tail, check_params_accepted, is_raw, parse_dump_name,
                                   split_batch_log)
from utils.darktable.files import TapoutFormatError, read_tapout
from utils.darktable.install import DarktableInstall, find_darktable
from utils.darktable.processes import Processes
from utils.darktable.versions import ModuleVersions
from utils.darktable.xmp import HistoryItem, build_xmp
from utils.errors import DarktableError, UserError
from utils.progress import progress
from utils.settings import DEFAULTS, Settings

log = logging.getLogger(__name__)


@dataclass
class Render:
    """What darktable produced for one image."""

    tapouts: dict[tuple[str, str], np.ndarray]   # (operation, "in"|"out") -> float32 array
    order: list[str]                              # dumped operations in pipe order
    log: str                                      # darktable's output for this image
    output: np.ndarray | None = None              # the exported image (float, display RGB), if asked

    def io(self, operation: str) -> tuple[np.ndarray, np.ndarray]:
        return self.tapouts[(operation, "in")], self.tapouts[(operation, "out")]


@dataclass(frozen=True)
class Job:
    """One image to process with one history."""

    image: Path
    history: tuple[HistoryItem, ...] = ()
    dump: tuple[str, ...] | None = None    # this job's tap-outs (None: the batch's ``dump``)


class Darktable:
    """A resolved, version-checked darktable-cli and the way we call it."""

    def __init__(self, settings: Settings = DEFAULTS, install: DarktableInstall | None = None):
        """``settings``: DARKTABLE_PATH, DARKTABLE_MIN_VERSION, DARKTABLE_TIMEOUT_S, CACHE_DIR;
        ``install`` skips the search (a darktable-cli already found)."""
        self.install = install or find_darktable(settings.DARKTABLE_PATH, settings.CACHE_DIR,
                                                 tuple(settings.DARKTABLE_MIN_VERSION))
        self.processes = Processes(float(settings.DARKTABLE_TIMEOUT_S))
        self.versions = ModuleVersions(self, Path(settings.CACHE_DIR) / "module_versions.json")
        remove_abandoned_work()

    @property
    def version(self) -> tuple[int, ...]:
        return self.install.version

    @property
    def timeout(self) -> float:
        """Seconds a darktable-cli call may run (DARKTABLE_TIMEOUT_S)."""
        return self.processes.timeout

    def command(self, inputs: Path, outputs: Path, work: Path, dump: Sequence[str],
                size: int, hq: bool) -> list[str]:
        cmd = [self.install.path, str(inputs), str(outputs), "--out-ext", "pfm",
               "--width", str(size), "--height", str(size), "--hq", "true" if hq else "false",
               "--apply-custom-presets", "false",
               "--core", "--configdir", str(work / "config"), "--cachedir", str(work / "cache"),
               "--library", ":memory:", "--dumpdir", str(work / "dump"), "--disable-opencl",
               "-d", "params"]
        if dump:
            cmd += ["--dump-pipe", ",".join(dump)]
        return cmd

    def stopped_on_error(self) -> ContextManager[None]:
        """Around parallel calls: an exception kills this darktable's calls in flight and starts
        no more (:meth:`Processes.stopped_on_error`)."""
        return self.processes.stopped_on_error()

    def render(self, image: str | Path, history: Sequence[HistoryItem] = (),
               dump: Sequence[str] = (), size: int = 0, hq: bool = True, output: bool = False,
               check_params: bool = True, require: bool = True) -> Render:
        """Process one image with ``history``; the tap-outs of the ``dump`` modules.

        ``size`` bounds the export (0 = full size); with ``hq`` darktable processes everything
        before ``finalscale`` at full resolution, without it demosaic already downscales.
        Without ``require``, a ``dump`` module that is not in the pipe is left out instead of
        being an error (a probe of which modules darktable runs: ``Render.order``).
        """
        result = self.render_batch([Job(Path(image), tuple(history))], dump, size, hq, output,
                                   check_params, require)[0]
        if isinstance(result, DarktableError):
            raise result
        return result

    def render_batch(self, jobs: Sequence[Job], dump: Sequence[str] = (), size: int = 0,
                     hq: bool = True, output: bool = False, check_params: bool = True,
                     require: bool = True) -> list[Render | DarktableError]:
        """Process several jobs in ONE darktable-cli process (its start-up is paid once).

        Each job's image is linked into a private folder with its own XMP sidecar and the
        folder is exported; darktable numbers its tap-outs with one counter for the whole
        process, so each image's tap-outs are attributed from the log, where they come just
        before that image's ``exported to`` line. A job's own ``dump`` replaces ``dump`` for it
        (jobs of different modules in one process). Returns, per job, its Render or the
        DarktableError that says why it has none; raises DarktableError only when darktable
        could not be started or timed out.
        """
        for job in jobs:
            if not Path(job.image).is_file():
                raise UserError(f"input image {job.image} does not exist")
        with _work_folder() as work:
            inputs, outputs = _prepare(work, jobs)
            every_dump = list(dict.fromkeys([*dump, *(op for j in jobs for op in j.dump or ())]))
            cmd = self.command(inputs, outputs, work, every_dump, size, hq)
            status, text = self.processes.run(cmd, cwd=work)
            why = (f"darktable-cli exited with status {status} running '{shlex.join(cmd)}'"
                   if status else "darktable exported nothing")
            return _read_results(jobs, work, text, why, dump, output, check_params, require)

    def render_many(self, jobs: Sequence[Job], dump: Sequence[str] = (), size: int = 0,
                    hq: bool = True, batch_size: int = 32,
                    desc: str | None = None) -> Iterator[Render | DarktableError]:
        """:meth:`render_batch` over ``jobs`` in chunks of ``batch_size`` (one darktable process
        each), yielding each job's result in order as its chunk finishes; with ``desc``, a
        progress bar."""
        with progress(len(jobs), desc or "", "render", enabled=desc is not None) as bar:
            for start in range(0, len(jobs), max(1, batch_size)):
                for result in self.render_batch(jobs[start:start + max(1, batch_size)], dump, size, hq):
                    bar.update(1)
                    yield result

    def module_version(self, operation: str, defaults: Mapping[int, bytes]) -> int:
        """The params version of ``operation`` in this darktable, among the versions of
        ``defaults`` (version -> default params blob): probed once, cached on disk."""
        return self.versions.get(operation, defaults)


WORK_PREFIX = "dtp-"   # the private folder of each darktable call, in the temporary directory


@contextmanager
def _work_folder() -> Iterator[Path]:
    """A darktable call's private folder, locked while the call runs and removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    held = open(work / ".lock", "w")   # tells remove_abandoned_work() this call is alive
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        held.close()


def _prepare(work: Path, jobs: Sequence[Job]) -> tuple[Path, Path]:
    """The call's folders in ``work``, and each job's image linked into ``in`` with its own XMP
    sidecar (``NNNNN.<ext>``, NNNNN its position); (input folder, output folder)."""
    inputs, outputs = work / "in", work / "out"
    for sub in (inputs, outputs, work / "config", work / "cache", work / "dump"):
        sub.mkdir()
    for k, job in enumerate(jobs):
        link = inputs / f"{k:05d}{Path(job.image).suffix}"
        _link_or_copy(Path(job.image).resolve(), link)
        link.with_name(link.name + ".xmp").write_text(build_xmp(list(job.history), is_raw(job.image)))
    return inputs, outputs


def _read_results(jobs: Sequence[Job], work: Path, text: str, why: str, dump: Sequence[str],
                  output: bool, check_params: bool, require: bool = True) -> list[Render | DarktableError]:
    """Per job, its Render from its part of darktable's log ``text`` and the files in ``work``,
    or the DarktableError that says why it has none (``why``, for a job darktable did not export)."""
    parts, rest = split_batch_log(text)
    results: list[Render | DarktableError] = []
    for k, job in enumerate(jobs):
        part = parts.get(f"{k:05d}")
        try:
            if part is None:
                raise DarktableError(f"{why}: {_tail(rest or text)}")
            if check_params:
                check_params_accepted(job.history, part)
            render = _collect(work / "dump" / "export", dump if job.dump is None else job.dump, part, require)
            if output:
                render.output = read_tapout(work / "out" / f"{k:05d}.pfm")
            results.append(render)
        except DarktableError as e:
            results.append(DarktableError(f"{job.image}: {e}"))
    return results


def _collect(dump_dir: Path, wanted: Sequence[str], part: str, require: bool = True) -> Render:
    """Read the tap-outs of ``wanted`` modules that ``part`` of the log says were written
    (with ``require``, a wanted module without them is an error)."""
    found: dict[tuple[str, str], tuple[int, Path]] = {}
    for m in _DUMPED_RE.finditer(part):
        name = parse_dump_name(Path(m[1]).name)
        if name is None or name.kind == "diff":
            continue
        key = (name.operation, name.kind)
        if key in found:
            raise DarktableError(f"darktable dumped {name.operation} {name.kind} twice "
                                 "(several instances of one module are not supported)")
        found[key] = (name.index, dump_dir / Path(m[1]).name)
    for op in wanted if require else ():
        for kind in ("in", "out"):
            if (op, kind) not in found:
                raise DarktableError(
                    f"darktable wrote no '{kind}' tap-out for {op}: the module is not in the "
                    f"pipe for this input (e.g. a raw-only module on a TIFF)")
    first = {}
    for (op, _), (index, _) in found.items():
        first[op] = min(first.get(op, index), index)
    tapouts = {}
    for key, (_, path) in found.items():
        if key[0] in wanted:
            try:
                tapouts[key] = read_tapout(path)
            except (OSError, TapoutFormatError) as e:   # e.g. cut short by a crash or a full disk
                raise DarktableError(f"darktable wrote an unreadable tap-out: {e}") from None
    return Render(tapouts=tapouts, order=sorted(first, key=first.get), log=part)


def remove_abandoned_work(min_age_s: float = 60) -> int:
    """Remove the folders of darktable calls whose process was killed (``kill -9`` leaves them).

    A live call holds the flock of its folder's ``.lock``; a folder whose lock can be taken
    lost its owner. Folders younger than ``min_age_s`` are left alone (one being created may
    not hold its lock yet). Returns how many were removed.
    """
    removed = 0
    for work in Path(tempfile.gettempdir()).glob(WORK_PREFIX + "*"):
        try:
            if time.time() - work.stat().st_mtime < min_age_s:
                continue
            with open(work / ".lock") as lock:   # no .lock: not a call's folder
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(work, ignore_errors=True)
                removed += 1
        except OSError:   # BlockingIOError included: its call is still running
            continue
    if removed:
        log.info("removed %d folders of darktable calls that were killed", removed)
    return removed


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (free), or copy it across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
