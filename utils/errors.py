"""User-facing errors: one line saying what is wrong and how to fix it, and an exit status."""
from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import sys
from typing import Callable


class UserError(Exception):
    """A problem the user can fix (bad argument, missing file, darktable missing or failing).

    Scripts print ``error: <message>`` on one line and exit with status 2; never a traceback.
    """


class DarktableError(UserError):
    """darktable-cli failed, timed out, or silently dropped the params we gave it."""


PARTIAL = 3   # exit status: part of the work is done and kept; the same command does the rest

# what to do about an operating-system error, by errno
_OS_FIXES = {
    errno.ENOSPC: "no space left on its device: free some space (or choose another --out) and run "
                  "the same command again",
    errno.EDQUOT: "disk quota exceeded: free some space (or choose another --out) and run the same "
                  "command again",
    errno.EROFS: "its file system is read-only: choose a writable --out",
    errno.EACCES: "permission denied: choose a folder you may write to (--out) or fix its permissions",
    errno.EPERM: "operation not permitted: choose a folder you may write to (--out) or fix its permissions",
    errno.ENAMETOOLONG: "the name is too long for the file system: use a shorter -c NAME or --out",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer --workers",
    errno.ENFILE: "too many open files on the system: close other programs or use fewer --workers",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another --out",
    errno.EISDIR: "it is a folder where a file was expected",
}


def os_error_message(e: OSError) -> str:
    """One line for an operating-system error: the path, what happened, and the fix."""
    where = e.filename if e.filename is not None else "a file"
    fix = _OS_FIXES.get(e.errno, e.strerror or str(e))
    return f"{where}: {fix}"


class StorageError(UserError):
    """An operating-system error while writing results; ``partial``: work done before it is
    recorded and kept (exit status PARTIAL instead of 2)."""

    def __init__(self, error: OSError, partial: bool = False):
        super().__init__(os_error_message(error) + ("; what was finished before is kept" if partial else ""))
        self.partial = partial


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def cli_main(main: Callable[[], int | None]) -> Callable[[], None]:
    """Wrap a script's ``main`` so that user errors end as one line and a non-zero status."""

    @functools.wraps(main)
    def wrapper() -> None:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        signal.signal(signal.SIGTERM, _interrupt)   # a `kill` or a job scheduler: end as on Ctrl-C
        try:
            status = main()
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(PARTIAL if getattr(e, "partial", False) else 2)
        except BrokenPipeError:   # the reader of our output went away (``| head``): nothing to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except OSError as e:   # a full disk, a read-only folder, ... anywhere in the run
            print(f"error: {os_error_message(e)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        sys.exit(status or 0)

    return wrapper
