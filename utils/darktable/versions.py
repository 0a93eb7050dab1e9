"""Which params version of a module the installed darktable has: probed once per darktable
and module (one tiny render per known version, newest first), cached on disk."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from utils.atomic import write_text_atomic
from utils.darktable.dumps import parse_params_report
from utils.darktable.files import write_tiff
from utils.darktable.xmp import HistoryItem
from utils.errors import UserError

if TYPE_CHECKING:
    from utils.darktable.runner import Darktable


class ModuleVersions:
    """Module versions of one darktable install, cached in ``cache_file``."""

    def __init__(self, dt: "Darktable", cache_file: Path):
        self.dt, self.cache_file = dt, cache_file
        self._known: dict[str, int] = {}

    def get(self, operation: str, defaults: Mapping[int, bytes]) -> int:
        """The version of ``operation`` darktable accepts, among those of ``defaults``."""
        if self._known.get(operation) in defaults:
            return self._known[operation]
        key = f"{self.dt.install.path}|{self.dt.install.version_string}|{operation}"
        cached = _read_json(self.cache_file)
        if cached.get(key) in defaults:        # else the registry changed since: probe again
            self._known[operation] = cached[key]
            return cached[key]
        version = self._probe(operation, defaults)
        cached = _read_json(self.cache_file)   # re-read: another process may have written meanwhile
        cached[key] = version
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.cache_file, json.dumps(cached, indent=1, sort_keys=True))
        self._known[operation] = version
        return version

    def _probe(self, operation: str, defaults: Mapping[int, bytes]) -> int:
        with tempfile.TemporaryDirectory(prefix="dtp-probe-") as tmp:
            probe = Path(tmp) / "probe.tif"
            write_tiff(probe, np.full((8, 8, 3), 0.5, np.float32))
            for version in sorted(defaults, reverse=True):
                item = HistoryItem(operation, version, defaults[version])
                text = self.dt.render(probe, [item], check_params=False).log
                if any(c.operation == operation and c.version_ok and c.params_ok
                       for c in parse_params_report(text)):
                    return version
        known = ", ".join(str(v) for v in sorted(defaults))
        raise UserError(f"darktable {self.dt.install.version_string} accepts none of the {operation} "
                        f"params versions this project knows ({known}); add its struct to "
                        "utils/proxies/registry.py")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
