"""PyDarktable: run the real darktable-cli and read its tap-outs.

One call = one image, one history, a fresh private config, cache and dump directory, a
timeout, and every temporary file removed afterwards. Tap-outs are identified by the file
names darktable writes (``NNNN_<operation>_cpu_<in|out>_<C|M>.pfm``), never by listing order;
NNNN is darktable's processing counter, so it also gives the pipe order. darktable runs with
``-d params``, and a history item whose params darktable rejected (wrong struct size or
version: darktable then silently uses the module's defaults) is an error.
"""
from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

import Constants as C
from utils.atomic import write_text_atomic
from utils.errors import DarktableError, UserError
from utils.pfm import TapoutFormatError, read_tapout, write_tiff
from utils.registry import ProxyType
from utils.xmp import HistoryItem, build_xmp

log = logging.getLogger(__name__)

# File types darktable opens as display-referred images; everything else it decodes as raw.
DISPLAY_EXTENSIONS = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".exr", ".pfm", ".webp",
                      ".avif", ".heic", ".heif", ".jxl", ".jp2", ".j2k", ".ppm", ".pgm", ".pnm"}

FIX_HINT = ("run 'make darktable' (Debian/Ubuntu, as root) or install darktable >= 4.4 and "
            "set DARKTABLE_CLI to its darktable-cli")


def is_raw(path: str | Path) -> bool:
    return Path(path).suffix.lower() not in DISPLAY_EXTENSIONS


# ------------------------------------------------------------------ pure parsing

def parse_version(text: str) -> tuple[int, ...]:
    """``darktable 5.0.1`` / ``this is darktable 4.4.2+12~gabc`` -> (5, 0, 1) / (4, 4, 2)."""
    m = re.search(r"darktable\s+(?:release-)?(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise ValueError(f"no darktable version in {text[:80]!r}")
    return tuple(int(g) for g in m.groups() if g is not None)


@dataclass(frozen=True)
class DumpName:
    index: int        # darktable's processing counter: the pipe order
    operation: str
    device: str       # "cpu" (we disable OpenCL)
    kind: str         # "in", "out" or "diff"
    layout: str       # "C" 3 channels, "M" 1-channel mosaic


_DUMP_RE = re.compile(r"^(\d+)_([a-z0-9_]+?)_(cpu|cl|gpu)[0-9]*_(in|out|diff)_([CM])\.(pfm|ppm|pgm)$")


def parse_dump_name(name: str) -> DumpName | None:
    """Parse a tap-out file name; ``None`` for files that are not tap-outs."""
    m = _DUMP_RE.match(name)
    if not m:
        return None
    return DumpName(int(m[1]), m[2], m[3], m[4], m[5])


@dataclass(frozen=True)
class ParamsCheck:
    operation: str
    version: int
    version_ok: bool
    params_ok: bool


def parse_params_report(log_text: str) -> list[ParamsCheck]:
    """Read the per-history-item lines of darktable's ``-d params`` output.

    darktable prints ``[history] successfully loaded module <op> from history`` followed by
    ``params v. <N>:  version ok|WRONG  params ok|WRONG``: ``version ok`` means the modversion
    we wrote is the installed one, ``params ok`` that the blob has the struct's size.
    """
    checks, current = [], None
    for line in log_text.splitlines():
        m = re.search(r"\[history\] successfully loaded module (\S+) from history", line)
        if m:
            current = m[1]
            continue
        m = re.search(r"^\s*params v\. (\d+):\s*version (ok|WRONG)\s*params (ok|WRONG)", line)
        if m and current is not None:
            checks.append(ParamsCheck(current, int(m[1]), m[2] == "ok", m[3] == "ok"))
            current = None
    return checks


def check_params_accepted(history: Sequence[HistoryItem], log_text: str) -> None:
    """Raise when darktable did not load every history item with our exact params."""
    checks = parse_params_report(log_text)
    for item in history:
        if not item.enabled:
            continue
        found = [c for c in checks if c.operation == item.operation and c.version == item.version]
        if not found:
            raise DarktableError(
                f"darktable did not report loading {item.operation} v{item.version} from our "
                "history; its params may have been replaced by defaults")
        bad = [c for c in found if not (c.version_ok and c.params_ok)]
        if bad:
            what = "module version" if not bad[0].version_ok else "params size"
            raise DarktableError(
                f"darktable rejected our {item.operation} params v{item.version} ({what} WRONG, "
                f"{len(item.params)} bytes) and would silently use its defaults; the installed "
                f"darktable has another {item.operation} struct: add it to utils/registry.py")


def _tail(text: str, lines: int = 4) -> str:
    kept = [ln.strip() for ln in text.splitlines() if ln.strip() and "running darktable as root" not in ln]
    return " | ".join(kept[-lines:]) or "(no output)"


# ------------------------------------------------------------------ finding darktable

@dataclass(frozen=True)
class DarktableInstall:
    path: str
    version: tuple[int, ...]

    @property
    def version_string(self) -> str:
        return ".".join(map(str, self.version))


def own_install_path() -> Path:
    """Where ``make`` puts the project's own darktable (Debian 12: a chroot wrapper)."""
    return Path(C.CACHE_DIR) / "bin" / "darktable-cli"


def probe_version(path: str) -> tuple[int, ...]:
    """Run ``darktable-cli --version`` and parse it; UserError when it does not run."""
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"cannot run darktable-cli {path!r} ({e}); {FIX_HINT}") from None
    try:
        return parse_version(proc.stdout + proc.stderr)
    except ValueError:
        raise UserError(f"{path!r} --version printed no darktable version (exit {proc.returncode}: "
                        f"{_tail(proc.stdout + proc.stderr, 2)}); {FIX_HINT}") from None


def _check(path: str, source: str) -> DarktableInstall:
    exe = shutil.which(path) if os.sep not in path else path
    if not exe or not os.access(exe, os.X_OK):
        raise UserError(f"darktable-cli {path!r} (from {source}) does not exist or is not "
                        f"executable; {FIX_HINT}")
    version = probe_version(exe)
    if version[:2] < C.DARKTABLE_MIN_VERSION:
        need = ".".join(map(str, C.DARKTABLE_MIN_VERSION))
        raise UserError(f"darktable {'.'.join(map(str, version))} at {exe} (from {source}) is too "
                        f"old: --dump-pipe needs darktable >= {need}; {FIX_HINT}")
    return DarktableInstall(exe, version)


@functools.lru_cache(maxsize=None)
def find_darktable(setting: str | None = None) -> DarktableInstall:
    """Resolve darktable-cli: $DARKTABLE_CLI, Constants.DARKTABLE_PATH, PATH, our own install.

    An explicitly configured path (environment or setting) must work; a darktable-cli on PATH
    that is too old (Debian 12 ships 4.2) falls through to the project's own install.
    """
    setting = C.DARKTABLE_PATH if setting is None else setting
    if os.environ.get("DARKTABLE_CLI"):
        return _check(os.environ["DARKTABLE_CLI"], "the DARKTABLE_CLI environment variable")
    if setting:
        return _check(setting, "Constants.DARKTABLE_PATH")
    on_path = shutil.which("darktable-cli")
    too_old = None
    if on_path:
        try:
            return _check(on_path, "PATH")
        except UserError as e:
            too_old = e
    own = own_install_path()
    if own.exists():
        return _check(str(own), "the project's own install")
    if too_old:
        raise too_old
    raise UserError(f"darktable-cli not found (DARKTABLE_CLI unset, none on PATH, no install in "
                    f"{own.parent.parent}); {FIX_HINT}")


# ------------------------------------------------------------------ running darktable

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


_EXPORTED_RE = re.compile(r"\[export_job\] exported to `(.+)'")
_DUMPED_RE = re.compile(r"\[dt_dump_pipe_\w+\]\s+(\S+?),")


def split_batch_log(text: str) -> tuple[dict[str, str], str]:
    """Split the output of a folder run into one part per exported image.

    darktable processes the images one after another and prints each image's history, its
    tap-out lines and finally ``[export_job] exported to `<file>'``. Returns the part of every
    exported image, keyed by the exported file's stem, and the trailing part (after the last
    export: output about an image that failed, or nothing).
    """
    parts, current = {}, []
    for line in text.splitlines(keepends=True):
        current.append(line)
        m = _EXPORTED_RE.search(line)
        if m:
            parts[Path(m[1]).stem] = "".join(current)
            current = []
    return parts, "".join(current)


class Darktable:
    """A resolved, version-checked darktable-cli and the way we call it."""

    def __init__(self, install: DarktableInstall | None = None, timeout: float | None = None):
        self.install = install or find_darktable()
        self.timeout = C.DARKTABLE_TIMEOUT_S if timeout is None else timeout
        self._versions: dict[str, int] = {}
        self._running: set[subprocess.Popen] = set()   # calls in flight, from any thread
        self._guard = threading.Lock()
        self._stopped = False
        remove_abandoned_work()

    @property
    def version(self) -> tuple[int, ...]:
        return self.install.version

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

    def run(self, cmd: list[str], cwd: Path) -> tuple[int, str]:
        """Run one darktable-cli command: (exit status, output); DarktableError on a timeout."""
        log.debug("running %s", shlex.join(cmd))
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # spinning OpenMP threads slow parallel calls
        with self._guard:
            if self._stopped:
                raise DarktableError("darktable calls were stopped")
            try:
                proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        errors="replace", start_new_session=True)
            except OSError as e:
                raise DarktableError(f"cannot start {shlex.join(cmd[:1])}: {e}; {FIX_HINT}") from None
            self._running.add(proc)
        try:
            out, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, _ = proc.communicate()
            raise DarktableError(f"darktable-cli timed out after {self.timeout:g} s running "
                                 f"'{shlex.join(cmd)}': {_tail(out)}") from None
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            with self._guard:
                self._running.discard(proc)
        return proc.returncode, out

    @contextmanager
    def stopped_on_error(self) -> Iterator[None]:
        """Around parallel calls: an exception (Ctrl-C, SIGTERM) kills every call in flight, in
        every thread, and starts no more, so that the run ends now instead of when they end."""
        try:
            yield
        except BaseException:
            with self._guard:
                self._stopped = True
                for proc in self._running:
                    _kill_group(proc)
            raise

    def render(self, image: str | Path, history: Sequence[HistoryItem] = (),
               dump: Sequence[str] = (), size: int = 0, hq: bool = True, output: bool = False,
               check_params: bool = True) -> Render:
        """Process one image with ``history``; the tap-outs of the ``dump`` modules.

        ``size`` bounds the export (0 = full size); with ``hq`` darktable processes everything
        before ``finalscale`` at full resolution, without it demosaic already downscales.
        """
        result = self.render_batch([Job(Path(image), tuple(history))], dump, size, hq, output,
                                   check_params)[0]
        if isinstance(result, DarktableError):
            raise result
        return result

    def render_batch(self, jobs: Sequence[Job], dump: Sequence[str] = (), size: int = 0,
                     hq: bool = True, output: bool = False,
                     check_params: bool = True) -> list[Render | DarktableError]:
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
        work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
        held = open(work / ".lock", "w")   # tells remove_abandoned_work() this call is alive
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            inputs, outputs = work / "in", work / "out"
            for sub in (inputs, outputs, work / "config", work / "cache", work / "dump"):
                sub.mkdir()
            for k, job in enumerate(jobs):
                link = inputs / f"{k:05d}{Path(job.image).suffix}"
                _link_or_copy(Path(job.image).resolve(), link)
                link.with_name(link.name + ".xmp").write_text(build_xmp(list(job.history), is_raw(job.image)))
            every_dump = list(dict.fromkeys([*dump, *(op for j in jobs for op in j.dump or ())]))
            cmd = self.command(inputs, outputs, work, every_dump, size, hq)
            status, text = self.run(cmd, cwd=work)
            parts, rest = split_batch_log(text)
            results: list[Render | DarktableError] = []
            for k, job in enumerate(jobs):
                part = parts.get(f"{k:05d}")
                if part is None:
                    why = (f"darktable-cli exited with status {status} running '{shlex.join(cmd)}'"
                           if status else "darktable exported nothing")
                    results.append(DarktableError(f"{job.image}: {why}: {_tail(rest or text)}"))
                    continue
                try:
                    if check_params:
                        check_params_accepted(job.history, part)
                    wanted = dump if job.dump is None else job.dump
                    render = self._collect(work / "dump" / "export", wanted, part)
                    if output:
                        render.output = read_tapout(outputs / f"{k:05d}.pfm")
                    results.append(render)
                except DarktableError as e:
                    results.append(DarktableError(f"{job.image}: {e}"))
            return results
        finally:
            shutil.rmtree(work, ignore_errors=True)
            held.close()

    @staticmethod
    def _collect(dump_dir: Path, wanted: Sequence[str], part: str) -> Render:
        """Read the tap-outs of ``wanted`` modules that ``part`` of the log says were written."""
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
        for op in wanted:
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

    def module_version(self, proxy: ProxyType) -> int:
        """The params version of ``proxy``'s module in this darktable (probed once, cached)."""
        op = proxy.operation
        known = {s.version for s in proxy.structs}
        if self._versions.get(op) in known:
            return self._versions[op]
        cache_file = Path(C.CACHE_DIR) / "module_versions.json"
        key = f"{self.install.path}|{self.install.version_string}|{op}"
        cached = _read_json(cache_file)
        if cached.get(key) in known:        # else the registry changed since: probe again
            self._versions[op] = cached[key]
            return cached[key]
        version = self._probe_module_version(proxy)
        cached = _read_json(cache_file)   # re-read: another process may have written meanwhile
        cached[key] = version
        _write_json_atomic(cache_file, cached)
        self._versions[op] = version
        return version

    def _probe_module_version(self, proxy: ProxyType) -> int:
        with tempfile.TemporaryDirectory(prefix="dtp-probe-") as tmp:
            probe = Path(tmp) / "probe.tif"
            write_tiff(probe, np.full((8, 8, 3), 0.5, np.float32))
            for struct in sorted(proxy.structs, key=lambda s: -s.version):
                item = HistoryItem(proxy.operation, struct.version, proxy.params({}, struct.version))
                text = self.render(probe, [item], check_params=False).log
                if any(c.operation == proxy.operation and c.version_ok and c.params_ok
                       for c in parse_params_report(text)):
                    return struct.version
        known = ", ".join(str(s.version) for s in proxy.structs)
        raise UserError(f"darktable {self.install.version_string} accepts none of the {proxy.operation} "
                        f"params versions this project knows ({known}); add its struct to "
                        "utils/registry.py")

    def history_item(self, proxy: ProxyType, values: dict[str, float]) -> HistoryItem:
        """A history item setting ``proxy``'s sliders to ``values`` (others at defaults)."""
        version = self.module_version(proxy)
        return HistoryItem(proxy.operation, version, proxy.params(values, version))


WORK_PREFIX = "dtp-"   # the private folder of each darktable call, in the temporary directory


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


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def main() -> None:
    """``python -m utils.darktable``: print the darktable-cli in use, or why there is none."""
    dt = find_darktable()
    print(f"darktable-cli: {dt.path} (darktable {dt.version_string})")


if __name__ == "__main__":
    from utils.errors import cli_main
    cli_main(main)()
