"""pipeline_config.txt: the blocks of a chain, one per line, in darktable's processing order:

    <proxy name> <sliders|full> <0|1>     # NAME of a trained proxy, sliders to recover, use it
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from utils.errors import UserError


@dataclass(frozen=True)
class BlockLine:
    """One line of pipeline_config.txt."""

    lineno: int
    name: str                         # the trained proxy's NAME
    sliders: tuple[str, ...] | None   # sliders to recover; None = "full" (all the proxy's)
    include: bool


def parse_config(path: Path) -> list[BlockLine]:
    """The included lines of a pipeline config; a malformed line is a UserError naming it."""
    if path.is_dir():
        raise UserError(f"pipeline config {path} is a folder; give the config file (see pipeline_config.txt)")
    if not path.is_file():
        raise UserError(f"pipeline config {path} does not exist; write one line per block: "
                        "'<proxy name> <sliders|full> <0|1>' (see pipeline_config.txt)")
    try:
        text = path.read_text(encoding="utf-8-sig")   # an editor's byte-order mark is not a field
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"pipeline config {path} is unreadable ({e}); save it as UTF-8 text") from None
    lines = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        where = f"{path}, line {lineno}"
        if len(parts) != 3:
            raise UserError(f"{where}: {text!r} is not '<proxy name> <sliders|full> <0|1>' "
                            f"({len(parts)} fields)")
        name, sliders, flag = parts
        if flag not in ("0", "1"):
            raise UserError(f"{where}: last field {flag!r} must be 1 (use the block) or 0 (ignore it)")
        if not re.fullmatch(r"[A-Za-z0-9_.,=+-]+", name):
            raise UserError(f"{where}: {name!r} is not a proxy name")
        names = None if sliders == "full" else tuple(s for s in sliders.split(",") if s)
        if names is not None and not names:
            raise UserError(f"{where}: list the sliders to recover, comma-separated, or write 'full'")
        lines.append(BlockLine(lineno, name, names, flag == "1"))
    used = [line for line in lines if line.include]
    if not used:
        raise UserError(f"{path} uses no block (no line ends in 1)")
    seen: dict[str, int] = {}
    for line in used:
        if line.name in seen:
            raise UserError(f"{path}, line {line.lineno}: {line.name} is already used on line {seen[line.name]}")
        seen[line.name] = line.lineno
    return used
