"""Finding darktable-cli: the environment, the setting, PATH, or the project's own install;
version-checked once.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from utils.darktable.dumps import _tail, parse_version
from utils.errors import UserError

FIX_HINT = ("run 'make darktable' (Debian/Ubuntu, as root) or install darktable >= 4.4 and "
            "set DARKTABLE_CLI to its darktable-cli")


@dataclass(frozen=True)
class DarktableInstall:
    path: str
    version: tuple[int, ...]

    @property
    def version_string(self) -> str:
        return ".".join(map(str, self.version))


def own_install_path(cache_dir: str | Path) -> Path:
    """Where ``make`` puts the project's own darktable (Debian 12: a chroot wrapper)."""
    return Path(cache_dir) / "bin" / "darktable-cli"


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


def _check(path: str, source: str, min_version: tuple[int, ...]) -> DarktableInstall:
    exe = shutil.which(path) if os.sep not in path else path
    if not exe or not os.access(exe, os.X_OK):
        raise UserError(f"darktable-cli {path!r} (from {source}) does not exist or is not "
                        f"executable; {FIX_HINT}")
    version = probe_version(exe)
    if version[:2] < tuple(min_version):
        need = ".".join(map(str, min_version))
        raise UserError(f"darktable {'.'.join(map(str, version))} at {exe} (from {source}) is too "
                        f"old: --dump-pipe needs darktable >= {need}; {FIX_HINT}")
    return DarktableInstall(exe, version)


@functools.lru_cache(maxsize=None)
def find_darktable(setting: str, cache_dir: str, min_version: tuple[int, ...]) -> DarktableInstall:
    """Resolve darktable-cli: $DARKTABLE_CLI, the DARKTABLE_PATH ``setting``, PATH, our own
    install under ``cache_dir``; refuse one older than ``min_version``.

    An explicitly configured path (environment or setting) must work; a darktable-cli on PATH
    that is too old (Debian 12 ships 4.2) falls through to the project's own install.
    """
    min_version = tuple(min_version)
    if os.environ.get("DARKTABLE_CLI"):
        return _check(os.environ["DARKTABLE_CLI"], "the DARKTABLE_CLI environment variable", min_version)
    if setting:
        return _check(setting, "the DARKTABLE_PATH setting", min_version)
    on_path = shutil.which("darktable-cli")
    too_old = None
    if on_path:
        try:
            return _check(on_path, "PATH", min_version)
        except UserError as e:
            too_old = e
    own = own_install_path(cache_dir)
    if own.exists():
        return _check(str(own), "the project's own install", min_version)
    if too_old:
        raise too_old
    raise UserError(f"darktable-cli not found (DARKTABLE_CLI unset, none on PATH, no install in "
                    f"{own.parent.parent}); {FIX_HINT}")
