"""The settings of one run: ``Constants`` overridden by ``DTP_<NAME>`` and ``--set NAME=value``.

Scripts call :func:`configure` once at start-up and hand the resulting :class:`Settings` (or
the values it holds) to library code as arguments; nothing changes ``Constants`` and library
code never reads it. A value is parsed with the type of the setting's default (bool,
int, float, str, a tuple of ints such as ``4,4``, or a mapping ``key=value,key=value``
that is merged over the default); unknown names and ill-typed values are
refused with a one-line error.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import Constants
from utils.atomic import write_text_atomic
from utils.errors import UserError

ENV_PREFIX = "DTP_"

# the smallest value each numeric setting may take (every float must also be finite)
MINIMA = {"SEED": 0, "STAGE_2_SAMPLES_PER_IMAGE": 1, "TAPOUT_SIZE": 0, "DARKTABLE_BATCH_SIZE": 1,
          "DARKTABLE_RETRIES": 0, "PROXY_MODEL_BATCH_SIZE": 1, "PROXY_MODEL_NUM_EPOCH": 1,
          "SAVE_OUTPUT_FREQ": 0, "SAVE_CHECKPOINT_FREQ": 0, "PREDICTION_SAMPLES": 0, "PRELOAD_MAX_MB": 0,
          "PARAM_TUNING_NUM_ITER": 1, "PARAM_TUNING_RESTARTS": 1, "REGRESSION_TARGETS": 0,
          "REGRESSION_CROP": 0, "SWEEP_FRAMES": 2, "SWEEP_FPS": 1, "PIPELINE_TARGETS": 1,
          "PIPELINE_REGRESSION_NUM_ITERS": 1, "PIPELINE_ANIMATION_TARGETS": 0, "PIPELINE_TRAIN_SAMPLES": 1,
          "MATCH_POLISH_STEPS": 0,
          "DARKTABLE_TIMEOUT_S": 1, "BUILTIN_IMAGE_LONG_SIDE": 16, "BUILTIN_IMAGES_VERSION": 0}
POSITIVE = ("PROXY_MODEL_LR",)   # floats that must be above 0
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def defaults() -> dict[str, Any]:
    """Every setting of ``Constants``: its upper-case module-level names."""
    return {k: v for k, v in vars(Constants).items() if k.isupper() and not k.startswith("_")}


def parse_value(name: str, text: str, default: Any) -> Any:
    text = text.strip()
    try:
        if isinstance(default, bool):
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, dict):   # k=v,k=v merged over the default
            pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError
            return {**default, **{k.strip(): parse_value(name, v, next(iter(default.values()), ""))
                                  for k, v in pairs}}
        if isinstance(default, tuple):
            items = [v.strip() for v in text.replace("(", "").replace(")", "").split(",") if v.strip()]
            numeric = all(isinstance(v, int) for v in default) and bool(default)
            return tuple(int(v) for v in items) if numeric else tuple(items)
        return text
    except ValueError:
        kind = "true or false" if isinstance(default, bool) else type(default).__name__
        raise UserError(f"setting {name}={text!r} is not a valid {kind} "
                        f"(default {default!r})") from None


class Settings(Mapping[str, Any]):
    """Read-only settings of one run: ``settings.SEED`` or ``settings["SEED"]``."""

    def __init__(self, values: Mapping[str, Any]):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no setting {name!r}; see Constants.py") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("settings are read-only; override them with --set NAME=value")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def replace(self, **changes: Any) -> "Settings":
        """A copy with ``changes`` (names must exist)."""
        unknown = set(changes) - set(self._values)
        if unknown:
            raise KeyError(f"no setting {sorted(unknown)}")
        return Settings({**self._values, **changes})

    def snapshot(self) -> dict[str, Any]:
        """These settings and the command line, for ``settings.json`` files and checkpoints."""
        return {"command": [Path(sys.argv[0]).name, *sys.argv[1:]],
                "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in self._values.items()}}

    def write_snapshot(self, folder: Path, name: str = "settings.json") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / name, json.dumps(self.snapshot(), indent=1) + "\n")


def check_domain(name: str, value: Any) -> None:
    """Refuse a setting outside its domain (negative counts, NaN, infinity, a zero rate)."""
    numbers = list(value.values()) if isinstance(value, dict) else [value]
    for v in numbers:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"setting {name}={v!r} must be a finite number")
        if name in MINIMA and v < MINIMA[name]:
            raise UserError(f"setting {name}={v!r} must be {MINIMA[name]} or more")
        if name in POSITIVE and not v > 0:
            raise UserError(f"setting {name}={v!r} must be above 0")


def resolve(overrides: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then ``DTP_<NAME>`` environment variables, then ``NAME=value`` overrides."""
    environ = os.environ if environ is None else environ
    settings = defaults()
    for key, text in environ.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX):]
            if name not in settings:
                raise UserError(f"unknown setting {name!r} in environment variable {key}; "
                                "see Constants.py for the names")
            settings[name] = parse_value(name, text, settings[name])
            check_domain(name, settings[name])
    for item in overrides:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep:
            raise UserError(f"--set {item!r}: write NAME=value, e.g. --set GENERATE_STAGE_2=false")
        if name not in settings:
            raise UserError(f"unknown setting {name!r} in --set; see Constants.py for the names")
        settings[name] = parse_value(name, text, settings[name])
        check_domain(name, settings[name])
    return Settings(settings)


def configure(overrides: Sequence[str] = ()) -> Settings:
    """The settings of this run (defaults, environment, ``overrides``); a UserError names a
    bad override."""
    return resolve(overrides)


DEFAULTS = Settings(defaults())   # Constants as written, for tests and tools without overrides
