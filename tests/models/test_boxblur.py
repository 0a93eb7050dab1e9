"""darktable's box blur and the modules built on it, exact (models.darktable.boxblur): bloom and
soften, from the coordinate planes and the pixel scale as the exact proxies get them."""
import colorsys

import numpy as np
import pytest
import torch

from models import priors
from models.darktable import boxblur
from models.darktable.boxblur import box_mean, bloom_radius, overexposed, soften_radius
from models.networks import EXACT_FAMILY
from tests.models.test_priors import exact
from utils.data.images import image_size
from utils.data.tapouts import SCALED_PLANES, coordinate_planes, pixel_scale
from utils.evaluation.fidelity import proxy_on_render
from utils.evaluation.metrics import psnr
from utils.proxies.registry import PROXIES


def loop_box_mean(image: np.ndarray, radius: int, iterations: int = 8) -> np.ndarray:
    """box_filters.c's passes over (H, W) one pixel at a time: the mean of the pixels within
    ``radius`` along a row, then along a column, that lie in the image."""
    h, w = image.shape
    for _ in range(iterations):
        across = np.array([[image[i, max(0, j - radius):j + radius + 1].mean() for j in range(w)] for i in range(h)])
        image = np.array([[across[max(0, i - radius):i + radius + 1, j].mean() for j in range(w)] for i in range(h)])
    return image


@pytest.mark.parametrize("radius", [1, 3, 40])
def test_the_box_mean_is_box_filters_c_on_every_path(radius, monkeypatch):
    x = torch.rand(1, 1, 9, 14, dtype=torch.float64)
    radii = torch.tensor([float(radius)], dtype=torch.float64)
    expected = loop_box_mean(x[0, 0].numpy(), radius)
    np.testing.assert_allclose(box_mean(x, radii)[0, 0].numpy(), expected, atol=1e-12)   # cached matrices
    monkeypatch.setattr(boxblur, "values_on_host", lambda x: False)
    np.testing.assert_allclose(box_mean(x, radii)[0, 0].numpy(), expected, atol=1e-12)   # a GPU's band matrices
    monkeypatch.undo()
    monkeypatch.setattr(boxblur, "MATRIX_SIDE", 4)
    np.testing.assert_allclose(box_mean(x, radii)[0, 0].numpy(), expected, atol=1e-12)   # pass by pass
    assert torch.equal(box_mean(x, torch.zeros(1)), x)


def test_a_gpus_band_matrices_blur_each_image_at_its_own_radius(monkeypatch):
    """Off the CPU the radii stay on the device: per image, its own matrices (a radius of 0
    leaves the image as it is, one past the image averages all of it)."""
    x = torch.rand(4, 2, 7, 10, dtype=torch.float64)
    radii = torch.tensor([0.0, 1.0, 5.0, 30.0], dtype=torch.float64)
    expected = box_mean(x, radii)
    monkeypatch.setattr(boxblur, "values_on_host", lambda x: False)
    np.testing.assert_allclose(box_mean(x, radii).numpy(), expected.numpy(), atol=1e-12)
    np.testing.assert_allclose(box_mean(x, radii)[0].numpy(), x[0].numpy(), atol=1e-15)
    for n, r in ((7, 1), (10, 5), (10, 30)):
        assert torch.allclose(boxblur.band_power(n, torch.tensor([float(r)]), 8)[0],
                              boxblur._box_matrix(n, r, 8, "cpu").T, atol=1e-15)


def test_a_box_mean_first_made_in_inference_mode_still_serves_a_gradient():
    boxblur._box_matrix.cache_clear()
    x = torch.rand(1, 1, 9, 14, dtype=torch.float64)
    with torch.inference_mode():
        box_mean(x, torch.tensor([2.0]))        # caches the axes' matrices
    y = x.clone().requires_grad_()
    box_mean(y, torch.tensor([2.0])).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


def test_radii_follow_darktables_rounding():
    """bloom: 256 px x min(100, size + 1) %, truncated, times the scale, rounded up, at most 256;
    soften: 1 % of the diagonal, truncated, times min(100, size + 1) %, truncated, times the
    scale, rounded up."""
    size, scale = torch.tensor([20.0, 99.5, 4.0]), torch.tensor([0.25, 1.0, 0.5])
    assert bloom_radius(size, scale).tolist() == [14, 256, 6]          # 53.76 -> 53 x 0.25; 256; 12.8 -> 12 x 0.5
    full = torch.tensor([(4000.0, 3000.0), (450.0, 300.0)])
    assert soften_radius(torch.tensor([50.0, 50.0]), full, torch.tensor([0.032, 0.25])).tolist() == [1, 1]
    assert soften_radius(torch.tensor([100.0]), full[:1], torch.tensor([1.0])).tolist() == [50]    # at most 1 %
    assert soften_radius(torch.tensor([100.0, 0.0]), full, torch.tensor([0.25, 0.25])).tolist() == [13, 0]


def test_the_brightened_copy_is_hsl_there_and_back():
    rgb = torch.rand(1, 3, 4, 5, dtype=torch.float64)
    rgb[0, :, 0, 0] = 0.3                                        # a grey pixel
    out = overexposed(rgb, torch.tensor([0.7], dtype=torch.float64), torch.tensor([1.6], dtype=torch.float64))
    for i in range(4):
        for j in range(5):
            h, l, s = colorsys.rgb_to_hls(*rgb[0, :, i, j].tolist())
            expected = colorsys.hls_to_rgb(h, min(1.0, l * 1.6), min(1.0, s * 0.7))
            np.testing.assert_allclose(out[0, :, i, j].numpy(), expected, atol=1e-12)


def test_full_sizes_come_back_from_the_planes_and_the_scale():
    for full, (h, w) in (((450, 300), (85, 128)), ((300, 451), (128, 85)), ((4000, 3000), (96, 128))):
        scale = pixel_scale((h, w), full)
        planes = coordinate_planes(h, w, SCALED_PLANES, scale, full)[None]
        assert priors.full_sizes(planes, torch.tensor([scale], dtype=torch.float64)).tolist() == [list(full)]


@pytest.mark.parametrize("name, values", [("bloom", {"size": 30.0, "threshold": 60.0, "strength": 70.0}),
                                          ("soften", {"size": 80.0, "saturation": 60.0, "brightness": 1.0,
                                                      "amount": 70.0})])
def test_an_exact_proxy_takes_its_sliders_and_steps(name, values):
    proxy = exact(name, planes=SCALED_PLANES)
    assert proxy.spec.family == EXACT_FAMILY and proxy.whole_image
    assert {proxy.slider_names[j] for j in proxy.steps} == set(priors.PRIORS[name].steps)
    x = torch.rand(1, 3, 20, 30) * (100 if name == "bloom" else 1)
    x = torch.cat([x, coordinate_planes(20, 30, SCALED_PLANES, 0.2, (150, 100))[None]], 1)
    u = proxy.to_unit(torch.tensor([[values[s.name] for s in proxy.sliders]], dtype=torch.float64)).requires_grad_()
    y = proxy(x, u)
    y.sum().backward()
    continuous = [j for j in range(len(values)) if j not in proxy.steps]
    assert (u.grad[0, continuous] != 0).all() and (u.grad[0, proxy.steps] == 0).all()


@pytest.mark.darktable
@pytest.mark.parametrize("name, values", [("bloom", {"size": 40.0, "threshold": 55.0, "strength": 60.0}),
                                          ("soften", {"size": 100.0, "saturation": 70.0, "brightness": 0.8,
                                                      "amount": 60.0})])
def test_darktables_box_blur_modules_are_the_exact_proxies_on_a_render(dt, raw_image, name, values):
    """An export of 300 px, where soften's radius is 1 % of the full diagonal, and bloom's glow
    reaches across the image."""
    proxy_type = PROXIES[name]
    render = dt.render(raw_image, [proxy_type.history_item(dt, values)], dump=[name], size=300, hq=False)
    tap_in, tap_out = render.io(name)
    assert pixel_scale(tap_in.shape, image_size(raw_image)) < 1
    y = proxy_on_render(exact(name, planes=SCALED_PLANES), tap_in, [values[s.name] for s in proxy_type.sliders],
                        torch.device("cpu"), image=raw_image)
    chw = lambda a: torch.from_numpy(np.ascontiguousarray(a[..., :3].transpose(2, 0, 1)))[None]   # noqa: E731
    assert float(psnr(y[None], chw(tap_out))[0]) > 100       # measured 120 dB (the cap) for both
    assert float(psnr(chw(tap_in), chw(tap_out))[0]) < 40
