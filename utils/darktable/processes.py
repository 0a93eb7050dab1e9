"""The darktable-cli processes of one Darktable: started in their own process group, killed
with it on a timeout or an error, and stopped all at once when a run is interrupted."""
from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from utils.darktable.dumps import _tail
from utils.darktable.install import FIX_HINT
from utils.errors import DarktableError

log = logging.getLogger(__name__)


# OpenMP limits darktable must not inherit: darktable 5.0.1 splits some modules' work into one
# slice per CPU it counts, and with OMP_NUM_THREADS=1 on a 2-core machine colorin left the
# lower half of the image unconverted (measured: half the pixels 60-85 L*a*b* units off)
OMP_LIMITS = ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT", "OMP_DYNAMIC")


def darktable_environment() -> dict[str, str]:
    """The environment of a darktable process: ours less OMP_LIMITS, with passive OpenMP
    waiting (spinning OpenMP threads slow parallel calls)."""
    env = {k: v for k, v in os.environ.items() if k not in OMP_LIMITS}
    return {**env, "OMP_WAIT_POLICY": "PASSIVE"}


class Processes:
    """Runs commands with a timeout and keeps the set of those in flight, from any thread."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._running: set[subprocess.Popen] = set()
        self._guard = threading.Lock()
        self._stopped = False

    def run(self, cmd: list[str], cwd: Path) -> tuple[int, str]:
        """Run one darktable-cli command: (exit status, output); DarktableError on a timeout."""
        proc = self._start(cmd, cwd)
        try:
            out, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, _ = proc.communicate()
            raise DarktableError(f"darktable-cli timed out after {self.timeout:g} s running "
                                 f"'{shlex.join(cmd)}': {_tail(out)}") from None
        except BaseException:
            kill_group(proc)
            raise
        finally:
            with self._guard:
                self._running.discard(proc)
        return proc.returncode, out

    def _start(self, cmd: list[str], cwd: Path) -> subprocess.Popen:
        """Start ``cmd`` in a new process group and count it in flight (unless stopped)."""
        log.debug("running %s", shlex.join(cmd))
        env = darktable_environment()
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
        return proc

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
                    kill_group(proc)
            raise


def kill_group(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and every process it started (its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
