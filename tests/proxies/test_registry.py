"""Module registry: struct layouts, slider ranges, the --list-proxies line format."""
import math
import re

import pytest

from utils.errors import UserError
from utils.proxies.registry import (
    COLORBALANCE,
    COLORBALANCERGB,
    EXPOSURE,
    PROXIES,
    describe,
    get_proxy,
    nearest_types,
    see_also,
)
from utils.proxies.schema import Slider


def test_struct_sizes_match_darktable():
    # sizes darktable 5.0 (exposure v6, colorbalancergb v5) and 5.2 (exposure v7) expect
    assert EXPOSURE.struct(6).size == 24
    assert EXPOSURE.struct(7).size == 28
    assert COLORBALANCERGB.struct(5).size == 132
    assert COLORBALANCE.struct(3).size == 68     # mode, lift/gamma/gain[4], 4 floats


def test_sliders_land_in_their_fields_and_pins_hold():
    values = EXPOSURE.struct(7).unpack(EXPOSURE.params({"exposure": 2.5, "black": 0.01}, 7))
    assert values["exposure"] == 2.5 and math.isclose(values["black"], 0.01, rel_tol=1e-6)
    assert values["compensate_exposure_bias"] == 0 and values["compensate_hilite_pres"] == 0
    cb = COLORBALANCERGB.struct(5).unpack(COLORBALANCERGB.params({"vibrance": -0.5}, 5))
    assert cb["vibrance"] == -0.5 and cb["saturation_formula"] == 1
    assert math.isclose(cb["grey_fulcrum"], 0.1845, rel_tol=1e-6) and cb["shadows_weight"] == 1
    old = COLORBALANCE.struct(3).unpack(COLORBALANCE.params({"gain_0": 1.25, "contrast": 0.75}, 3))
    assert old["gain_0"] == 1.25 and old["contrast"] == 0.75 and old["mode"] == 1   # slope/offset/power
    assert old["gain_1"] == old["lift_3"] == old["saturation_out"] == 1 and old["grey"] == 18


def test_every_slider_is_a_struct_field():
    for proxy in PROXIES.values():
        for struct_ in proxy.structs:
            names = {f.name for f in struct_.fields}
            assert {s.name for s in proxy.sliders} <= names, proxy.name


@pytest.mark.parametrize("values", [{"exposure": 9.0}, {"black": -1.0}, {"exposure": float("nan")}])
def test_out_of_range_is_refused(values):
    with pytest.raises(UserError, match="out of range"):
        EXPOSURE.params(values, 6)


def test_unknown_names():
    with pytest.raises(UserError, match="unknown proxy type 'expo'"):
        get_proxy("expo")
    with pytest.raises(UserError, match="no slider 'gain'"):
        EXPOSURE.select(["gain"])
    with pytest.raises(UserError, match="knows versions 6, 7"):
        EXPOSURE.struct(99)


def test_select_keeps_proxy_order():
    assert [s.name for s in EXPOSURE.select(["black", "exposure"])] == ["exposure", "black"]
    assert EXPOSURE.select([]) == EXPOSURE.sliders


def test_log_sampling_space():
    s = Slider("radius", 0.01, 100.0, 1.0, scale="log")
    assert math.isclose(s.from_unit(0.5), 1.0) and math.isclose(s.from_unit(1.0), 100.0)
    with pytest.raises(ValueError):
        Slider("bad", 0.0, 1.0, 0.5, scale="log")


def test_describe_format():
    for proxy in PROXIES.values():
        assert proxy.gui_name, proxy.name
        assert re.fullmatch(r"[a-z0-9_]+ +([a-zA-Z0-9_:.]+=-?[\d.e+-]+\.\.-?[\d.e+-]+(\((log|circular)\))? ?)+"
                            r" # [a-z() ]+(; see also [a-z0-9_, ]+)?", describe(proxy))
    assert describe(EXPOSURE) == "exposure         exposure=-3..4 black=-0.02..0.02  # exposure"
    assert "grey_fulcrum=0.05..0.5(log)" in describe(COLORBALANCERGB)


@pytest.mark.parametrize("typed, nearest", [
    ("colourbalance", ["colorbalance", "colorbalancergb"]),     # misspelt
    ("colorbal", ["colorbalance", "colorbalancergb"]),          # a prefix of both
    ("ColorBalance", ["colorbalance", "colorbalancergb"]),      # case
    ("colorbalanceRGB", ["colorbalancergb", "colorbalance"]),
    ("color balance", ["colorbalance", "colorbalancergb"]),     # darktable's GUI name
    ("colorbalancergb_contrast", ["colorbalancergb"]),          # a proxy NAME, not a type
    ("expo", ["exposure"]),
    ("local contrast", ["bilat"]),                              # GUI name of another operation
    ("white balance", ["temperature"]),
])
def test_nearest_types_come_first(typed, nearest):
    assert nearest_types(typed)[:len(nearest)] == nearest
    with pytest.raises(UserError) as refused:
        get_proxy(typed)
    message = str(refused.value)
    assert "\n" not in message and f"unknown proxy type {typed!r}; nearest: {nearest[0]} (" in message


@pytest.mark.parametrize("typed", ["nosuch", "", "x"])
def test_no_nearest_type_for_unrelated_names(typed):
    assert nearest_types(typed) == []
    with pytest.raises(UserError, match=f"unknown proxy type {typed!r}; all types: exposure, "):
        get_proxy(typed)


def test_see_also_pairs_names_that_prefix_each_other():
    assert see_also(COLORBALANCE) == ["colorbalancergb"]
    assert see_also(COLORBALANCERGB) == ["colorbalance"]
    assert see_also(EXPOSURE) == []
    assert describe(COLORBALANCE).endswith("  # color balance; see also colorbalancergb")


def test_network_options_of_a_type_are_network_options():
    from models.networks import NETWORK_OPTIONS
    for proxy in PROXIES.values():
        assert set(proxy.network) <= set(NETWORK_OPTIONS), proxy.name


def test_every_type_names_a_learned_family_and_a_default_one_can_build():
    """The learned family a refusal points to (``ProxyType.learned``) and every default exist."""
    from models.networks import EXACT_FAMILY, FAMILIES
    for t in PROXIES.values():
        assert t.learned in FAMILIES, t.name
        assert t.model in FAMILIES + (EXACT_FAMILY,), t.name
        assert (t.model == EXACT_FAMILY) == bool(t.network.get("prior")), t.name
