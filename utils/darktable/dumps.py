"""Pure parsers of what darktable-cli prints and writes: its version, tap-out file names,
the ``-d params`` report and the log of a batch run. No process is started here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from utils.darktable.xmp import HistoryItem
from utils.errors import DarktableError

# File types darktable opens as display-referred images; everything else it decodes as raw.
DISPLAY_EXTENSIONS = {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".exr", ".pfm", ".webp",
                      ".avif", ".heic", ".heif", ".jxl", ".jp2", ".j2k", ".ppm", ".pgm", ".pnm"}

# darktable 5.0's image operations (its iop plugin names, less mask_manager): dumping all of
# them shows which modules a pipe runs and in which order (a probe render's ``Render.order``).
OPERATIONS = tuple("""
    ashift atrous basecurve basicadj bilat bilateral bloom blurs borders cacorrect cacorrectrgb
    censorize channelmixer channelmixerrgb clahe clipping colisa colorbalance colorbalancergb
    colorchecker colorcontrast colorcorrection colorequal colorin colorize colormapping colorout
    colorreconstruct colortransfer colorzones crop defringe demosaic denoiseprofile diffuse
    dither enlargecanvas equalizer exposure filmic filmicrgb finalscale flip gamma globaltonemap
    graduatednd grain hazeremoval highlights highpass hotpixels invert lens levels liquify
    lowlight lowpass lut3d monochrome negadoctor nlmeans overexposed overlay primaries
    profile_gamma rawdenoise rawoverexposed rawprepare relight retouch rgbcurve rgblevels
    rotatepixels scalepixels shadhi sharpen sigmoid soften splittoning spots temperature
    tonecurve toneequal tonemap velvia vibrance vignette watermark zonesystem
""".split())


def is_raw(path: str | Path) -> bool:
    return Path(path).suffix.lower() not in DISPLAY_EXTENSIONS


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
                f"darktable has another {item.operation} struct: add it to utils/proxies/registry.py")


def _tail(text: str, lines: int = 4) -> str:
    kept = [ln.strip() for ln in text.splitlines() if ln.strip() and "running darktable as root" not in ln]
    return " | ".join(kept[-lines:]) or "(no output)"


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
