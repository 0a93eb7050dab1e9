"""darktable's legacy colour balance, exact (models.darktable.colorbalance): slope, offset and
power of ProPhoto RGB with the SSE path's approximations."""
import numpy as np
import pytest
import torch

from models.darktable import colorbalance as cb
from models.colorspace import lab_to_xyz, xyz_to_lab
from tests.models.test_priors import exact
from utils.evaluation.fidelity import proxy_on_render
from utils.evaluation.metrics import psnr
from utils.proxies.registry import PROXIES

NEUTRAL = {"saturation": 1.0, "contrast": 1.0, "lift_0": 1.0, "gamma_0": 1.0, "gain_0": 1.0}


def lab_image(h: int = 6, w: int = 7) -> torch.Tensor:
    """Colours inside ProPhoto's gamut (darktable clips negative RGB to 0)."""
    g = torch.Generator().manual_seed(0)
    return torch.stack([torch.rand(h, w, generator=g) * 80 + 10, torch.randn(h, w, generator=g) * 8,
                        torch.randn(h, w, generator=g) * 8])[None].double()


def run(lab: torch.Tensor, values: dict) -> torch.Tensor:
    return cb.colorbalance_lab(lab, *(torch.tensor([values[k]], dtype=torch.float64) for k in NEUTRAL))


def test_the_approximations_stay_close_to_what_they_approximate():
    x = torch.logspace(-6, 2, 500, dtype=torch.float64)
    for y in (0.4, 1.0, 2.3):
        np.testing.assert_allclose(cb._pow_approx(x, torch.tensor(y, dtype=torch.float64)).numpy(), x.numpy() ** y,
                                   rtol=2e-4)
    np.testing.assert_allclose(cb._lab_f(x[x > 0.01]).numpy(), x[x > 0.01].numpy() ** (1 / 3), rtol=1e-4)


def test_neutral_sliders_leave_the_image_and_a_grey_stays_grey():
    lab = lab_image()
    assert float(psnr(run(lab, NEUTRAL), lab)[0]) > 90        # through ProPhoto and back, in float32
    grey = torch.tensor([50.0, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1)
    out = run(grey, {**NEUTRAL, "gain_0": 1.3, "gamma_0": 0.8, "contrast": 0.7, "saturation": 1.4})
    assert out[0, 1:].abs().max() < 0.05 and abs(float(out[0, 0]) - 50) > 0.1    # (the 7-digit matrices)


def test_slope_offset_power_of_prophoto_rgb_as_darktable_defines_them():
    """gain 1.2, lift 1.02, gamma 0.9: rgb -> max(1.2 rgb + 0.02, 0) ^ 1.1 on each ProPhoto
    channel; then the contrast 0.8 around 18 %: 0.18 (rgb / 0.18) ^ 1.25."""
    lab = lab_image()
    xyz_to_prophoto = torch.tensor(cb._XYZ2RGB, dtype=torch.float64)
    rgb = torch.einsum("ij,bjhw->bihw", xyz_to_prophoto, lab_to_xyz(lab))
    rgb = ((1.2 * rgb + 0.02).clamp_min(0) ** 1.1).clamp_min(0)
    rgb = 0.18 * (rgb / 0.18) ** 1.25
    expected = xyz_to_lab(torch.einsum("ij,bjhw->bihw", torch.tensor(cb._RGB2XYZ, dtype=torch.float64), rgb))
    out = run(lab, {**NEUTRAL, "gain_0": 1.2, "lift_0": 1.02, "gamma_0": 0.9, "contrast": 0.8})
    assert float(psnr(out, expected)[0]) > 70                  # the approximations and float32 apart


def test_every_slider_has_a_gradient():
    proxy = exact("colorbalance")
    u = torch.full((1, 5), 0.4, requires_grad=True)
    proxy(lab_image().float(), u).sum().backward()
    assert (u.grad != 0).all() and torch.isfinite(u.grad).all()


@pytest.mark.darktable
def test_darktables_colour_balance_is_the_exact_proxy_on_a_render(dt, raw_image):
    values = {"saturation": 1.3, "contrast": 0.7, "lift_0": 1.03, "gamma_0": 1.3, "gain_0": 0.8}
    colorbalance = PROXIES["colorbalance"]
    render = dt.render(raw_image, [colorbalance.history_item(dt, values)], dump=["colorbalance"], size=160, hq=False)
    tap_in, tap_out = render.io("colorbalance")
    y = proxy_on_render(exact("colorbalance"), tap_in, [values[s.name] for s in colorbalance.sliders],
                        torch.device("cpu"))
    chw = lambda a: torch.from_numpy(np.ascontiguousarray(a[..., :3].transpose(2, 0, 1)))[None]   # noqa: E731
    assert float(psnr(y[None], chw(tap_out))[0]) > 110         # measured 120 dB (the cap)
    assert float(psnr(chw(tap_in), chw(tap_out))[0]) < 40
