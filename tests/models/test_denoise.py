"""darktable's profiled denoise, exact (models.darktable.denoise): wavelets, Y0U0V0, the
white-balance-adaptive transform, from the planes that carry each image's white balance."""
import numpy as np
import pytest
import torch

from models.darktable import denoise
from tests.models.test_priors import exact
from utils.data.images import dng_white_balance
from utils.data.tapouts import SCALED_PLANES, WB_PLANES, coordinate_planes, with_coordinates
from utils.evaluation.fidelity import proxy_on_render
from utils.evaluation.metrics import psnr
from utils.proxies.registry import PROXIES


def test_darktables_fast_power_of_two_is_piecewise_linear_through_the_powers():
    x = torch.tensor([0.0, 1.0, 2.0, 5.0, 0.5, 2.25], dtype=torch.float64)
    y = denoise._fast_mexp2(x)
    np.testing.assert_allclose(y[:4].numpy(), 2.0 ** -x[:4].numpy(), rtol=1e-7)
    np.testing.assert_allclose(y[4:].numpy(), [0.75, 0.21875], rtol=1e-6)     # linear between them


def test_the_colour_matrices_invert_and_the_scales_follow_the_size():
    wb = torch.tensor([[2.05, 1.0, 1.65]], dtype=torch.float64)
    to_y, to_rgb = denoise._conversion_matrices(wb)
    np.testing.assert_allclose((to_rgb @ to_y)[0].numpy(), np.eye(3), atol=1e-12)
    assert denoise.max_scale_for(450, 300, 128 / 450) == 4            # the table's images
    assert denoise.max_scale_for(6000, 4000, 1.0) > denoise.max_scale_for(6000, 4000, 0.05)


def test_white_balance_planes_follow_the_scaled_coordinates():
    x = with_coordinates(torch.zeros(3, 4, 6), WB_PLANES, 0.25, (24, 16), np.array([2.0, 1.0, 1.5]))
    assert x.shape == (3 + WB_PLANES, 4, 6)
    assert torch.equal(x[3:3 + SCALED_PLANES], coordinate_planes(4, 6, SCALED_PLANES, 0.25, (24, 16)))
    assert torch.equal(x[-3:, 0, 0], torch.tensor([2.0, 1.0, 1.5]))
    with pytest.raises(ValueError, match="white_balance"):
        with_coordinates(torch.zeros(3, 4, 6), WB_PLANES, 0.25)


@pytest.mark.darktable
def test_darktables_profiled_denoise_is_the_exact_proxy_on_a_render(dt, raw_image):
    """From the DNG's as-shot white balance; with a white balance of 1 it measured 45.8 dB."""
    values = {"strength": 3.0, "shadows": 0.5}
    denoiseprofile = PROXIES["denoiseprofile"]
    render = dt.render(raw_image, [denoiseprofile.history_item(dt, values)], dump=["denoiseprofile"], size=128,
                       hq=False)
    tap_in, tap_out = render.io("denoiseprofile")
    assert dng_white_balance(raw_image) is not None
    proxy = exact("denoiseprofile", planes=WB_PLANES)
    y = proxy_on_render(proxy, tap_in, [values[s.name] for s in denoiseprofile.sliders], torch.device("cpu"),
                        image=raw_image)
    chw = lambda a: torch.from_numpy(np.ascontiguousarray(a[..., :3].transpose(2, 0, 1)))[None]   # noqa: E731
    assert float(psnr(y[None], chw(tap_out))[0]) > 100       # measured 120 dB (the cap)
    assert float(psnr(chw(tap_in), chw(tap_out))[0]) < 60    # 44.07: the module did denoise
