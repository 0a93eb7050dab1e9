"""XMP params encoding against strings darktable itself wrote."""
import base64
import struct

import pytest

from utils.darktable.xmp import HistoryItem, build_xmp, decode_params, encode_params
from utils.errors import UserError
from utils.proxies.registry import COLORBALANCERGB, EXPOSURE

# darktable's raw default exposure, as darktable 5.0 (v6) and 5.2 (v7) write it into XMP
# sidecars: manual mode, black -2^-12, +0.7 EV, deflicker 50 / -4, compensate bias on.
DT_EXPOSURE_V6 = "00000000000080b93333333f00004842000080c001000000"
DT_EXPOSURE_V7 = "00000000000080b93333333f00004842000080c00100000001000000"
# a default blend params blob in darktable's compressed form (darktable 5.2 XMP)
DT_GZ_BLENDOP = "gz08eJxjYGBgYGFgYJBggIETTgxogBVdgIGBgRGLGANDgz0Ej1Q+dlAx68oBEMbFxwX+////H8QAAJsYJ6E="


@pytest.mark.parametrize("version, text", [(6, DT_EXPOSURE_V6), (7, DT_EXPOSURE_V7)])
def test_exposure_round_trip_against_darktable(version, text):
    values = EXPOSURE.struct(version).unpack(decode_params(text))
    assert values["mode"] == 0 and values["compensate_exposure_bias"] == 1
    assert values["black"] == -2.0 ** -12
    assert values["exposure"] == struct.unpack("<f", struct.pack("<f", 0.7))[0]
    assert (values["deflicker_percentile"], values["deflicker_target_level"]) == (50, -4)
    assert encode_params(EXPOSURE.struct(version).pack(values)) == text


def test_gz_form_matches_darktable():
    blob = decode_params(DT_GZ_BLENDOP)
    compressed = base64.b64decode(DT_GZ_BLENDOP[4:])
    assert int(DT_GZ_BLENDOP[2:4]) == len(blob) // len(compressed) + 1  # darktable's size hint
    ours = encode_params(blob, compress=True)
    assert ours.startswith("gz") and decode_params(ours) == blob


def test_large_structs_are_compressed():
    blob = COLORBALANCERGB.params({"contrast": 0.5}, 5)
    assert len(blob) == 132
    text = encode_params(blob)
    assert text.startswith("gz") and decode_params(text) == blob
    assert not encode_params(EXPOSURE.params({}, 6)).startswith("gz")


def test_bad_params_text():
    with pytest.raises(UserError):
        decode_params("gz12!!!notbase64")
    with pytest.raises(UserError):
        decode_params("abc")


@pytest.mark.parametrize("raw, order", [(True, "4"), (False, "5")])
def test_xmp_header(raw, order):
    item = HistoryItem("exposure", 6, EXPOSURE.params({"exposure": 1.0}, 6))
    text = build_xmp([item, item], is_raw=raw)
    assert f'darktable:iop_order_version="{order}"' in text
    assert 'darktable:auto_presets_applied="1"' in text
    assert 'darktable:history_end="2"' in text
    assert text.count("<rdf:li") == 2 and 'darktable:num="1"' in text
    assert f'darktable:params="{item.params.hex()}"' in text
