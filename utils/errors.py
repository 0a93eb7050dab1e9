"""User-facing errors: one line saying what is wrong and how to fix it, and an exit status."""
from __future__ import annotations

import functools
import logging
import signal
import sys
from typing import Callable


class UserError(Exception):
    """A problem the user can fix (bad argument, missing file, darktable missing or failing).

    Scripts print ``error: <message>`` on one line and exit with status 2; never a traceback.
    """


class DarktableError(UserError):
    """darktable-cli failed, timed out, or silently dropped the params we gave it."""


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
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        sys.exit(status or 0)

    return wrapper
