"""Settings of darktable neural proxies: every default in one place.

Each setting is a module-level constant with a one-line comment (units, options).
"""
import os
from pathlib import Path

# ---------------------------------------------------------------- darktable
DARKTABLE_PATH = ""               # darktable-cli to use; "" = DARKTABLE_CLI env, then PATH, then our own install
DARKTABLE_MIN_VERSION = (4, 4)    # --dump-pipe appeared in darktable 4.4
DARKTABLE_TIMEOUT_S = 300         # seconds before one darktable-cli call is killed
CACHE_DIR = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "darktable-proxies")
                                  # our darktable install (Debian 12), built-in images, probe results

# ---------------------------------------------------------------- built-in images
BUILTIN_IMAGE_LONG_SIDE = 512     # pixels; long side of the built-in raw DNGs
BUILTIN_IMAGES_VERSION = 1        # bump to rebuild the cached built-in images

# ---------------------------------------------------------------- folders
IMAGE_ROOT_DIR = "runs"           # where datasets, weights, predictions and reports go
