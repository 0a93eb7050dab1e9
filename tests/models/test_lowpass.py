"""darktable's lowpass, exact (models.darktable.lowpass.lowpass_lab): its recursive Gaussian and curves."""
import numpy as np
import pytest
import torch

from models.darktable import lowpass as lp
from models.priors import PRIORS
from utils.data.images import image_size
from utils.data.tapouts import pixel_scale
from utils.evaluation.metrics import psnr
from utils.proxies.registry import PROXIES


def loop_gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """common/gaussian.c's zero-order filter along a 1-D signal, step by step."""
    alpha = 1.695 / sigma
    ema, ema2 = np.exp(-alpha), np.exp(-2 * alpha)
    b1, b2 = -2 * ema, ema2
    k = (1 - ema) ** 2 / (1 + 2 * alpha * ema - ema2)
    a0, a1, a2, a3 = k, k * (alpha - 1) * ema, k * (alpha + 1) * ema, -k * ema2
    coefp, coefn = (a0 + a1) / (1 + b1 + b2), (a2 + a3) / (1 + b1 + b2)
    y = np.zeros(len(x))
    xp, yb = x[0], x[0] * coefp
    yp = yb
    for j in range(len(x)):
        yc = a0 * x[j] + a1 * xp - b1 * yp - b2 * yb
        y[j], xp, yb, yp = yc, x[j], yp, yc
    xn = xa = x[-1]
    yn = ya = x[-1] * coefn
    for j in range(len(x) - 1, -1, -1):
        yc = a2 * xn + a3 * xa - b1 * yn - b2 * ya
        xa, xn, ya, yn = xn, x[j], yn, yc
        y[j] += yc
    return y


@pytest.mark.parametrize("n, sigma", [(1, 1.0), (2, 0.3), (17, 0.1), (40, 2.5), (64, 30.0)])
def test_the_blur_matrix_is_gaussian_c_run_step_by_step(n, sigma):
    x = np.random.default_rng(n).random(n)
    m = lp.deriche_matrix(n, torch.tensor(sigma, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(m @ x, loop_gaussian(x, sigma), rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)     # a constant stays itself


def test_a_narrow_blur_leaves_no_subnormal_weights_in_float32():
    """A narrow filter's far tails fall below float32's normal range; a CPU multiplies such
    numbers many times slower, and they weigh nothing: they are zero in the blur."""
    x = torch.rand(1, 3, 256, 256)
    sigma = torch.tensor([0.3], dtype=torch.float64)
    tails = lp.deriche_matrix(256, sigma[0]).float()
    assert ((tails != 0) & (tails.abs() < torch.finfo(torch.float32).tiny)).any()   # the case at hand
    blurred = lp.gaussian(x, sigma)
    expected = lp.deriche_matrix(256, sigma[0]) @ x[0].double() @ lp.deriche_matrix(256, sigma[0]).T
    torch.testing.assert_close(blurred[0].double(), expected, rtol=0, atol=1e-5)
    used = lp._normal(tails)
    assert not ((used != 0) & (used.abs() < torch.finfo(torch.float32).tiny)).any()


def test_the_curves_are_darktables_tables():
    index = torch.tensor([0.0, 16384.0, 32768.0, 65535.0], dtype=torch.float64)
    line = lp.contrast_curve(index, torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(line, 0.5 * (100 * index / 65536 - 50) + 50)
    steep = lp.contrast_curve(index, torch.tensor(2.0, dtype=torch.float64))
    assert float(steep[2]) == 50 and float(steep[0]) < 0.5 * (100 * 0 / 65536 - 50) + 50
    assert bool((steep[1:] > steep[:-1]).all())
    gamma = lp.brightness_curve(index, torch.tensor(1.0, dtype=torch.float64))   # gamma 1/2
    torch.testing.assert_close(gamma, 100 * (index / 65536) ** 0.5)
    # above L 100 a power law through the table's last entry: continuous there
    value = torch.tensor([99.9999, 100.0, 150.0], dtype=torch.float64)
    out = lp._extrapolated(lp.contrast_curve, value, torch.tensor(1.5, dtype=torch.float64))
    assert abs(float(out[0] - out[1])) < 1e-2 and float(out[2]) > float(out[1])


def test_lowpass_has_the_gradient_of_every_slider():
    lab = torch.stack([torch.rand(1, 12, 10) * 100, torch.randn(1, 12, 10) * 20, torch.randn(1, 12, 10) * 20], 1)
    sliders = {k: torch.tensor([v], dtype=torch.float64, requires_grad=True)
               for k, v in (("radius", 8.0), ("contrast", 1.4), ("brightness", -0.3), ("saturation", 1.2))}
    y = PRIORS["lowpass"](lab, sliders, torch.tensor([0.3], dtype=torch.float64))
    (y * torch.randn_like(y)).sum().backward()
    for name, value in sliders.items():
        assert torch.isfinite(value.grad).all() and float(value.grad.abs()) > 0, name


@pytest.mark.darktable
def test_darktables_lowpass_is_the_prior(dt, raw_image):
    values = {"radius": 24.0, "contrast": 1.6, "brightness": 0.4, "saturation": 0.7}
    render = dt.render(raw_image, [PROXIES["lowpass"].history_item(dt, values)], dump=["lowpass"], size=128, hq=False)
    tap_in, tap_out = (torch.from_numpy(np.ascontiguousarray(a[..., :3].transpose(2, 0, 1)))[None]
                       for a in render.io("lowpass"))
    scale = torch.tensor([pixel_scale(tap_in.shape[-2:], image_size(raw_image))], dtype=torch.float64)
    ours = PRIORS["lowpass"](tap_in, {k: torch.tensor([v], dtype=torch.float64) for k, v in values.items()}, scale)
    assert float(psnr(ours, tap_out)[0]) > 95        # measured 98-127 dB on the held-out samples
    assert float(psnr(tap_in, tap_out)[0]) < 40      # and the module did change the image
