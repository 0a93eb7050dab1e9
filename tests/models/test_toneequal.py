"""darktable's tone equalizer, exact (models.darktable.toneequal): the compiled summation
order, the fitted gain curve, gradients, and the exact proxy against darktable's render."""
import numpy as np
import pytest
import torch

from models.darktable import toneequal as te
from utils.evaluation.fidelity import chw, proxy_on_render
from utils.evaluation.metrics import psnr
from utils.proxies.registry import PROXIES
from utils.proxies.train import exact_proxy


def test_sums_run_in_four_lanes_as_the_compiler_vectorised_them():
    terms = [float(k) for k in range(1, 11)]     # lanes 1+5+9, 2+6+10, 3+7, 4+8; then nothing left
    lanes = [1 + 5 + 9, 2 + 6 + 10, 3 + 7, 4 + 8]
    assert te._vec_sum(terms) == (lanes[0] + lanes[2]) + (lanes[1] + lanes[3])
    assert te._vec_sum([1.0, 2.0, 3.0]) == 6.0
    third = np.float32(1 / 3)
    parts = [np.float32(1e8), third, np.float32(-1e8), third, third]   # order shows in float32
    assert te._vec_sum(parts) == np.float32((parts[0] + parts[2]) + (parts[1] + parts[3])) + parts[4]


def test_the_gain_curve_fits_the_sliders_and_is_flat_without_them():
    flat = te._rbf_weights(torch.zeros(1, 5))
    exposures = torch.linspace(-8, 0, 17).view(1, 1, 1, -1)
    np.testing.assert_allclose(te._curve(exposures, flat).numpy(), 1.0, atol=0.02)   # the fit ripples 1.7 %
    lifted = te._rbf_weights(torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]]))          # midtones +1 EV at -3 EV
    at = te._curve(torch.tensor([-3.0, -8.0]).view(1, 1, 1, 2), lifted)[0, 0, 0]
    assert 1.6 < float(at[0]) < 2.4 and abs(float(at[1]) - 1) < 0.1


def test_the_output_is_differentiable_in_the_image_and_the_sliders():
    rgb = (torch.rand(2, 3, 24, 40) * 0.8 + 0.01).requires_grad_()
    sliders = torch.tensor([[0.5, -1.0, 0.3, 1.2, -0.4], [0.0, 0.0, 1.0, 0.0, 0.0]], requires_grad=True)
    out = te.toneequal_rgb(rgb, sliders)
    assert out.shape == rgb.shape
    (g_rgb, g_sliders) = torch.autograd.grad(out.sum(), [rgb, sliders])
    assert torch.isfinite(g_rgb).all() and torch.isfinite(g_sliders).all() and g_sliders.abs().sum() > 0
    with torch.no_grad():
        alone = te.toneequal_rgb(rgb[1:], sliders[1:])
    torch.testing.assert_close(out[1:].detach(), alone, rtol=0, atol=0)          # batched as alone


@pytest.mark.darktable
def test_darktables_tone_equalizer_is_the_exact_proxy_on_a_render(dt, raw_image):
    """A plain float32 transcription matched its table dataset at 78.9 dB; measured 122.4-160
    dB on its 140 samples (102.3 and up from the proxy's float32 slider positions)."""
    toneequal = PROXIES["toneequal"]
    values = {"blacks": 1.2, "shadows": -0.8, "midtones": 0.6, "highlights": -1.5, "whites": 0.9}
    render = dt.render(raw_image, [toneequal.history_item(dt, values)], dump=["toneequal"], size=128, hq=False)
    tap_in, tap_out = render.io("toneequal")
    y = proxy_on_render(exact_proxy(toneequal), tap_in, [values[s.name] for s in toneequal.sliders],
                        torch.device("cpu"), image=raw_image)
    assert float(psnr(y[None], chw(tap_out)[None])[0]) > 95
    assert float(psnr(chw(tap_in)[None], chw(tap_out)[None])[0]) < 50     # the module did act
