"""darktable's params structs: packed C structs per module version, described as data.

Struct layouts come from darktable's ``src/iop/<operation>.c``: the fields of
``dt_iop_<op>_params_t`` in order, with the ``$DEFAULT`` of each field, written as ``struct``
format characters: ``f`` float, ``i`` int/enum/gboolean, ``I`` unsigned int, ``B`` uint8_t/char,
``x`` a padding byte (little-endian and no implicit padding: a C struct's padding is written
out), ``<n>s`` a ``char[n]`` (a file name, zero-filled). An array ``name[n]`` becomes the
fields ``name_0 .. name_<n-1>`` (a 2-D array row by row).
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str        # "f" float32, "i" int32 (int, enum, gboolean), "I" uint32, "B" uint8,
                      # "x" padding, "<n>s" char[n] (zero-filled)
    default: float

    @property
    def packed(self) -> bool:
        return self.ctype != "x"


@dataclass(frozen=True)
class Struct:
    """One version of a module's params struct."""

    version: int
    fields: tuple[Field, ...]

    @property
    def format(self) -> str:
        return "<" + "".join(f.ctype for f in self.fields)

    @property
    def size(self) -> int:
        return struct.calcsize(self.format)

    def pack(self, values: Mapping[str, float]) -> bytes:
        """Pack ``values`` (field name -> value), every other field at its default."""
        unknown = set(values) - {f.name for f in self.fields if f.packed}
        if unknown:
            raise KeyError(f"no field {sorted(unknown)} in params v{self.version}")
        return struct.pack(self.format, *(_field_value(f, values.get(f.name, f.default))
                                          for f in self.fields if f.packed))

    def unpack(self, blob: bytes) -> dict[str, float]:
        if len(blob) != self.size:
            raise ValueError(f"params v{self.version} are {self.size} bytes, got {len(blob)}")
        return dict(zip((f.name for f in self.fields if f.packed), struct.unpack(self.format, blob)))


def _field_value(f: Field, value):
    if f.ctype in ("i", "I", "B"):
        return int(value)
    if f.ctype.endswith("s"):
        return value if isinstance(value, bytes) else b""   # char[n]: zero bytes unless given
    return float(value)


def fields(spec: str) -> tuple[Field, ...]:
    """Parse a compact struct spec (whitespace separated): ``"name:f=0.0 other:i=1 ..."``.

    An array gives its length and its defaults, one value for all elements or one per element:
    ``red:f[4]=1,0,0,0`` or ``y:f[42]=0.5`` (elements ``red_0 ..``). ``pad:x[3]=0`` is 3
    padding bytes.
    """
    out = []
    for token in spec.split():
        name, rest = token.split(":")
        ctype, default = rest.split("=")
        m = re.fullmatch(r"(\d+s|[fiIBx])(?:\[(\d+)\])?", ctype)
        if not m:
            raise ValueError(f"field {name}: unknown type {ctype!r}")
        values = [float(v) for v in default.split(",")]
        if m[2] is None:
            out.append(Field(name, ctype, values[0]))
            continue
        n = int(m[2])
        if len(values) not in (1, n):
            raise ValueError(f"field {name}: {len(values)} defaults for {n} elements")
        out += [Field(f"{name}_{k}", m[1], values[k if len(values) > 1 else 0]) for k in range(n)]
    return tuple(out)
