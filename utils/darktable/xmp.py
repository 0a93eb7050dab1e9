"""darktable XMP sidecars: a history of modules with packed params, as darktable reads them.

Facts relied on (darktable 4.4 to 5.x):

- ``darktable:auto_presets_applied="1"`` keeps darktable from adding its workflow defaults, so
  the pipe holds exactly the mandatory modules plus our history;
- ``darktable:iop_order_version`` must be given: 4 (v3.0 order) for raw input, 5 (v3.0 JPEG
  order) for TIFF/PNG/JPEG; without it darktable uses the legacy order, where exposure runs
  before colorin on display-encoded values;
- ``darktable:params`` is the module's little-endian C params struct, as lowercase hex, or
  ``gz`` + two digits + base64(zlib(struct)); darktable uses the gz form above 100 bytes.
"""
from __future__ import annotations

import base64
import binascii
import zlib
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from utils.errors import UserError

RAW_IOP_ORDER_VERSION = 4       # "v3.0" order, darktable's default for raw files
DISPLAY_IOP_ORDER_VERSION = 5   # "v3.0 for JPEG/non-raw input"
BLENDOP_VERSION = 13            # darktable 4.4 to 5.x; an empty blob means default blending
GZ_THRESHOLD = 100              # bytes; darktable compresses params blobs above this


def encode_params(blob: bytes, compress: bool | None = None) -> str:
    """Encode a packed params struct as darktable writes it (hex, or gz for large blobs)."""
    if compress is None:
        compress = len(blob) > GZ_THRESHOLD
    if not compress:
        return blob.hex()
    packed = zlib.compress(blob, 9)
    factor = min(len(blob) // len(packed) + 1, 99)   # darktable's buffer-size hint
    return f"gz{factor:02d}" + base64.b64encode(packed).decode("ascii")


def decode_params(text: str) -> bytes:
    """Decode a ``darktable:params`` (or ``blendop_params``) attribute to the raw struct bytes."""
    try:
        if text.startswith("gz"):
            return zlib.decompress(base64.b64decode(text[4:], validate=True))
        return bytes.fromhex(text)
    except (ValueError, zlib.error, binascii.Error) as e:
        raise UserError(f"cannot decode darktable params {text[:24]!r}...: {e}") from None


@dataclass(frozen=True)
class HistoryItem:
    """One module instance in a darktable history stack."""

    operation: str            # darktable operation name, e.g. "exposure"
    version: int              # the module's params version (DT_MODULE_INTROSPECTION)
    params: bytes             # the packed params struct for that version
    enabled: bool = True
    multi_priority: int = 0
    multi_name: str = ""
    blendop_params: bytes = b""


def iop_order_version(is_raw: bool) -> int:
    return RAW_IOP_ORDER_VERSION if is_raw else DISPLAY_IOP_ORDER_VERSION


def build_xmp(history: list[HistoryItem] | tuple[HistoryItem, ...], is_raw: bool) -> str:
    """Return the text of an XMP sidecar that applies ``history`` and nothing else."""
    items = []
    for num, item in enumerate(history):
        attrs = {
            "darktable:num": str(num),
            "darktable:operation": item.operation,
            "darktable:enabled": "1" if item.enabled else "0",
            "darktable:modversion": str(item.version),
            "darktable:params": encode_params(item.params),
            "darktable:multi_name": item.multi_name,
            "darktable:multi_name_hand_edited": "0",
            "darktable:multi_priority": str(item.multi_priority),
            "darktable:blendop_version": str(BLENDOP_VERSION),
            "darktable:blendop_params": encode_params(item.blendop_params) if item.blendop_params else "",
        }
        body = "\n".join(f"      {k}={quoteattr(v)}" for k, v in attrs.items())
        items.append(f"     <rdf:li\n{body}/>")
    history_xml = "\n".join(items)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:darktable="http://darktable.sf.net/"
   darktable:xmp_version="5"
   darktable:auto_presets_applied="1"
   darktable:iop_order_version="{iop_order_version(is_raw)}"
   darktable:history_end="{len(history)}">
   <darktable:history>
    <rdf:Seq>
{history_xml}
    </rdf:Seq>
   </darktable:history>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""
