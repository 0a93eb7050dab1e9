"""Sliders: one value <-> u mapping for floats and tensors, checkpoint dicts, owners (fast)."""
import colorsys
import math
from dataclasses import replace

import pytest
import torch

from models.networks import ModelSpec
from models.proxy import Proxy, load_proxy, save_checkpoint
from utils.data.generate import drawn_sliders
from utils.data.manifest import columns
from utils.proxies.registry import COLORIN, EXPOSURE, sampler_of
from utils.proxies.slider import CHECKPOINT_KEYS, Slider, conditioning, conditioning_width

LINEAR = Slider("a", -3.0, 4.0, 0.0)
LOG = Slider("b", 0.05, 0.5, 0.18, scale="log")


@pytest.mark.parametrize("slider", [LINEAR, LOG])
def test_floats_and_tensors_agree_and_round_trip(slider):
    values = [slider.lo, slider.default, 0.3 * slider.lo + 0.7 * slider.hi, slider.hi]
    units = torch.tensor(values, dtype=torch.float64)
    as_tensor = slider.to_unit(units)
    assert as_tensor.dtype == torch.float64
    for v, u in zip(values, as_tensor.tolist()):
        assert math.isclose(slider.to_unit(v), u, rel_tol=0, abs_tol=1e-15)
        assert math.isclose(slider.from_unit(slider.to_unit(v)), v, rel_tol=1e-12, abs_tol=1e-15)
    assert slider.to_unit(slider.lo) == 0.0 and math.isclose(slider.to_unit(slider.hi), 1.0)
    torch.testing.assert_close(slider.from_unit(as_tensor), units, rtol=1e-12, atol=1e-15)
    for u, v in zip([0.0, 0.25, 1.0], slider.from_unit(torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64))):
        assert math.isclose(slider.from_unit(u), float(v), rel_tol=1e-15)


@pytest.mark.parametrize("slider", [LINEAR, LOG])
def test_gradients(slider):
    u = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(slider.from_unit, (u,))
    v = slider.from_unit(u.detach()).requires_grad_(True)
    assert torch.autograd.gradcheck(slider.to_unit, (v,))


def test_log_of_a_value_out_of_range_is_finite():
    v = torch.tensor([0.0, -1.0], dtype=torch.float64, requires_grad=True)
    u = LOG.to_unit(v)
    u.sum().backward()
    assert torch.isfinite(u).all() and torch.isfinite(v.grad).all()
    assert math.isfinite(LOG.to_unit(0.0)) and LOG.to_unit(0.0) == float(u[0].detach())


def test_checkpoint_dicts():
    d = LOG.to_dict()
    assert list(d) == list(CHECKPOINT_KEYS) == ["name", "lo", "hi", "default", "scale", "hsl", "pixels", "ev"]
    assert Slider.from_dict(d) == LOG
    assert Slider.from_dict({**d, "doc": "ignored"}, owner="x").owner == "x"


def test_proxy_units_are_the_sliders():
    proxy = Proxy(ModelSpec("pointwise", "tiny", 3, 3, 2), [LINEAR, LOG], 0.01)
    values = torch.tensor([[-3.0, 0.05], [1.0, 0.2], [4.0, 0.5]], dtype=torch.float64)
    u = proxy.to_unit(values)
    assert u.dtype == torch.float32
    torch.testing.assert_close(u, torch.stack([LINEAR.to_unit(values[:, 0]), LOG.to_unit(values[:, 1])], 1).float())
    torch.testing.assert_close(proxy.from_unit(u.double()), values, rtol=1e-6, atol=1e-6)
    empty = Proxy(ModelSpec("pointwise", "tiny", 3, 3, 0), [], 0.01)
    assert empty.to_unit(torch.zeros(2, 0)).shape == (2, 0)


def test_checkpoints_with_and_without_slider_ranges_in_the_weights_load(tmp_path):
    torch.manual_seed(0)
    proxy = Proxy(ModelSpec("pointwise", "tiny", 3, 3, 2), EXPOSURE.sliders, 0.01, {"proxy_type": "exposure"})
    save_checkpoint(tmp_path / "p.pt", proxy)
    payload = torch.load(tmp_path / "p.pt", weights_only=True)
    assert payload["sliders"] == [s.to_dict() for s in EXPOSURE.sliders]
    torch.testing.assert_close(payload["state_dict"]["lo"], torch.tensor([-3.0, -0.02], dtype=torch.float64))
    assert payload["state_dict"]["log"].tolist() == [False, False]
    loaded, _ = load_proxy(tmp_path / "p.pt")
    assert [(s.name, s.lo, s.hi, s.owner) for s in loaded.sliders] == [
        (s.name, s.lo, s.hi, "exposure") for s in EXPOSURE.sliders]
    for key in ("lo", "hi", "log"):
        del payload["state_dict"][key]
    torch.save(payload, tmp_path / "q.pt")
    x, u = torch.rand(1, 3, 4, 4), torch.rand(1, 2)
    torch.testing.assert_close(load_proxy(tmp_path / "q.pt")[0](x, u), proxy.eval()(x, u))


def test_sliders_know_their_owner_and_sampler_columns_keep_their_name():
    assert {s.owner for s in EXPOSURE.sliders} == {"exposure"}
    upstream, slider = sampler_of(COLORIN)
    assert slider.owner == upstream.name == "exposure" and slider.foreign_to("colorin")
    assert drawn_sliders(COLORIN, []) == [slider]
    assert columns("colorin", [slider]) == ["input", "output", "exposure.exposure", "image", "sample"]
    assert columns("exposure", EXPOSURE.sliders) == ["input", "output", "exposure", "black", "image", "sample"]


def test_a_circular_slider_conditions_networks_on_its_angle_too(tmp_path):
    hue = Slider("hue", 0.0, 1.0, 0.0, scale="circular")
    gain = Slider("gain", 0.5, 4.0, 1.0, scale="log")
    assert hue.to_unit(0.25) == 0.25 and hue.from_unit(0.75) == 0.75     # sampled linearly
    assert conditioning_width([gain, hue]) == 4 and conditioning_width([gain]) == 1
    u = torch.tensor([[0.3, 0.0], [0.3, 1.0], [0.3, 0.25]], requires_grad=True)
    c = conditioning([gain, hue], u)
    torch.testing.assert_close(c[:, :2], u)
    torch.testing.assert_close(c[0, 2:], c[1, 2:], atol=1e-6, rtol=0)    # its two ends: one angle
    torch.testing.assert_close(c[2, 2:], torch.tensor([math.sin(math.pi / 2), math.cos(math.pi / 2)]))
    c.sum().backward()
    assert u.grad[:, 1].abs().sum() > 0                                   # regression moves it
    proxy = Proxy(ModelSpec("pointwise", "tiny", 3, 3, conditioning_width([gain, hue])), [gain, hue], 0.01)
    x = torch.rand(3, 3, 4, 4)
    out = proxy(x, u.detach())
    assert out.shape == (3, 3, 4, 4)
    save_checkpoint(tmp_path / "p.pt", proxy)
    loaded, _ = load_proxy(tmp_path / "p.pt")
    assert loaded.sliders[1].scale == "circular"
    torch.testing.assert_close(loaded(x, u.detach()), out)


def test_hsl_sliders_condition_networks_on_their_colour_too(tmp_path):
    hue = Slider("hue", 0.0, 1.0, 0.0, scale="circular", hsl="hue")
    sat = Slider("saturation", 0.0, 1.0, 0.5, hsl="saturation")
    light = Slider("lightness", 0.0, 100.0, 50.0, hsl="lightness")
    mix = Slider("mix", 0.0, 100.0, 50.0)
    sliders = [hue, sat, mix, light]
    assert conditioning_width(sliders) == 1 + 3                           # mix, then the colour
    assert conditioning_width([sat, light, mix]) == 3                     # no hue: no colour
    u = torch.tensor([[0.1, 0.6, 0.3, 0.8], [1 / 3, 1.0, 0.3, 0.5]], requires_grad=True)
    c = conditioning(sliders, u)
    expected = [colorsys.hls_to_rgb(0.1, 0.8, 0.6), (0.0, 1.0, 0.0)]     # darktable's hsl2rgb: HSL
    torch.testing.assert_close(c[:, 0], u[:, 2])
    torch.testing.assert_close(c[:, 1:], torch.tensor(expected), atol=1e-6, rtol=0)
    c[:, 1:].sum().backward()
    assert u.grad[0, [0, 1, 3]].abs().min() > 0                           # regression moves them
    pure = conditioning([hue], torch.tensor([[0.5]]))                     # missing: s 1, l 0.5
    torch.testing.assert_close(pure, torch.tensor([[0.0, 1.0, 1.0]]))
    with pytest.raises(ValueError):
        Slider("lightness", 10.0, 100.0, 50.0, hsl="lightness")           # not from 0
    with pytest.raises(ValueError):
        conditioning_width([hue, replace(sat, hsl="hue")])
    proxy = Proxy(ModelSpec("pointwise", "tiny", 3, 3, conditioning_width(sliders)), sliders, 0.01)
    save_checkpoint(tmp_path / "p.pt", proxy)
    loaded, _ = load_proxy(tmp_path / "p.pt")
    assert [s.hsl for s in loaded.sliders] == ["hue", "saturation", "", "lightness"]
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(loaded(x, u.detach()), proxy(x, u.detach()))


def test_a_checkpoint_slider_from_before_hsl_roles_reads_without_one():
    data = {k: v for k, v in Slider("gain", 0.5, 4.0, 1.0).to_dict().items() if k != "hsl"}
    assert Slider.from_dict(data).hsl == ""


def test_a_circular_sliders_error_goes_the_shorter_way_round():
    hue = Slider("hue", 0.0, 1.0, 0.0, scale="circular")
    rotation = Slider("rotation", -180.0, 180.0, 0.0, scale="circular")
    assert hue.error(0.9997, 0.0006) == pytest.approx(0.0009)
    assert rotation.error(170.0, -170.0) == pytest.approx(20 / 360)
    assert LOG.error(LOG.hi, LOG.lo) == 1.0 and Slider("x", 0.0, 2.0, 1.0).error(0.5, 1.5) == 0.5


def test_a_slider_in_ev_also_conditions_networks_on_its_gain():
    sliders = (Slider("shadows", -2.0, 2.0, 0.0, ev=True), Slider("mix", 0.0, 1.0, 0.5))
    u = torch.tensor([[0.75, 0.3]], dtype=torch.float64)                # shadows +1 EV
    c = conditioning(sliders, u)
    assert conditioning_width(sliders) == c.shape[1] == 3
    torch.testing.assert_close(c, torch.tensor([[0.75, 0.3, 2.0]], dtype=torch.float64))
    assert Slider.from_dict({k: v for k, v in sliders[0].to_dict().items() if k != "ev"}).ev is False
