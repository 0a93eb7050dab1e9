"""Pixel lengths and darktable's pixelation (censorize): the op against a plain transcription
of darktable's loop, on crops too, its slider gradient, and the pipe's pixel scale from the
data to the conditioning (fast); against darktable's own censorize (marked ``darktable``)."""
import math

import numpy as np
import pytest
import torch

from models.blocks import pixel_indices, pixelate
from models.networks import ModelSpec
from models.proxy import Proxy
from utils.data.tapouts import SCALED_PLANES, coordinate_planes, pixel_scale, with_coordinates
from utils.proxies.registry import PROXIES
from utils.proxies.slider import Slider, conditioning, conditioning_width


def darktable_pixelate(image: np.ndarray, r: int) -> np.ndarray:
    """(H, W, C): censorize.c's pixelation loop as darktable 5.0.1 runs it (unpainted: 0)."""
    h, w, _ = image.shape
    out = np.zeros_like(image)
    for j in range(h // (2 * r) + 1):
        for i in range(w // (2 * r) + 1):
            tl = (min(2 * r * i, w - 1), min(2 * r * j, h - 1))
            cc = (min(tl[0] + r, w - 1), min(tl[1] + r, h - 1))
            br = (min(cc[0] + r, w - 1), min(cc[1] + r, h - 1))
            points = (tl, (br[0], tl[1]), cc, (tl[0], br[1]), br)
            out[tl[1]:br[1], tl[0]:br[0]] = sum(image[y, x] for x, y in points) / 5
    return out


@pytest.mark.parametrize("h, w, r", [(17, 30, 1), (24, 31, 3), (9, 40, 4), (12, 12, 7)])
def test_pixelate_is_darktables_loop_on_whole_images_and_inside_crops(h, w, r):
    image = np.random.default_rng(r).random((h, w, 3))
    expected = torch.from_numpy(darktable_pixelate(image, r)).permute(2, 0, 1)
    z, planes = torch.from_numpy(image).permute(2, 0, 1)[None], coordinate_planes(h, w)[None].double()
    torch.testing.assert_close(pixelate(z, torch.tensor([r]), planes)[0], expected)
    crop = pixelate(z[..., 3:, 5:], torch.tensor([r]), planes[..., 3:, 5:])[0]
    inside = (slice(None), slice(2 * r + 1, -1), slice(2 * r + 1, -1))   # cells wholly in the crop
    torch.testing.assert_close(crop[inside], expected[:, 3:, 5:][inside])
    assert torch.equal(pixelate(z, torch.tensor([0]), planes), z)


def test_pixel_indices_read_a_crops_place_and_its_images_size():
    planes = coordinate_planes(37, 1000)[None]
    cols, rows, width, height = pixel_indices(planes[..., 5:9, 600:700])
    assert (int(width), int(height)) == (1000, 37)
    assert torch.equal(cols[0], torch.arange(600, 700)) and torch.equal(rows[0], torch.arange(5, 9))


@pytest.mark.parametrize("full_size", [(512, 342), (512, 340), (450, 300), (4000, 2999)])
def test_pixel_indices_count_the_whole_pixels_of_an_image_whose_extent_is_not_whole(full_size):
    """rocket.dng, 512 x 342 at 128 px, is 85.5 px high in the pipe: 85 rows, the last 84
    (before, 86 rows: its last row was painted where darktable leaves it 0)."""
    w = 128
    h = int(full_size[1] * w / full_size[0])
    planes = coordinate_planes(h, w, full_size=full_size)[None]
    for crop in (planes, planes[..., h - 9:, 50:]):
        cols, rows, width, height = pixel_indices(crop)
        assert (int(width), int(height)) == (w, h)
        assert int(rows[0, -1]) == h - 1 and int(cols[0, -1]) == w - 1


def test_the_pixel_scale_rides_on_the_last_plane():
    assert pixel_scale((85, 128, 3), (450, 300)) == pytest.approx(128 / 450)
    assert pixel_scale((85, 128), None) == 0.0 and pixel_scale((600, 900), (450, 300)) == 1.0
    x = with_coordinates(torch.zeros(3, 4, 6), SCALED_PLANES, 0.3)
    assert x.shape == (8, 4, 6) and torch.equal(x[3:7], coordinate_planes(4, 6)) and (x[7] == 0.3).all()


def test_pixel_lengths_condition_as_their_length_at_the_training_scale():
    sliders = (Slider("radius", 1.0, 100.0, 10.0, scale="log", pixels=True), Slider("amount", 0.0, 2.0, 1.0))
    u = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    at_half = conditioning(sliders, u, torch.tensor([0.5], dtype=torch.float64))
    assert at_half[0, 0] == pytest.approx(0.5 + math.log(0.5) / math.log(100))   # radius 10 -> 5
    assert at_half[0, 1] == 0.25                                                  # not a length
    assert torch.equal(conditioning(sliders, u, torch.ones(1, dtype=torch.float64)), conditioning(sliders, u))
    assert Slider.from_dict({k: v for k, v in sliders[0].to_dict().items() if k != "pixels"}).pixels is False


def censorize_proxy(pixel_scale: float = 0.25) -> Proxy:
    t = PROXIES["censorize"]
    spec = ModelSpec("multiscale", "tiny", 3, 3, conditioning_width(t.sliders), extra_channels=SCALED_PLANES,
                     pixel_scale=pixel_scale, pixelate="pixelate")
    return Proxy(spec, t.sliders, t.value_scale).eval()


def test_a_proxy_pixelates_at_the_slider_times_the_pixel_scale():
    proxy = censorize_proxy()                      # a new network: the identity, then darktable's pixelation
    image = torch.rand(1, 3, 20, 30) + 0.1
    values = torch.tensor([[0.0, 13.0]], dtype=torch.float64)           # radius_1 0, pixelate 13 px at full size
    for scale, radius in ((0.0, 3), (0.25, 3), (0.32, 4)):              # 0: unknown, the training scale
        x = torch.cat([image, coordinate_planes(20, 30, SCALED_PLANES, scale)[None]], 1)
        expected = darktable_pixelate(image[0].permute(1, 2, 0).double().numpy(), radius)
        with torch.no_grad():
            out = proxy(x, proxy.to_unit(values))
        np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)


@pytest.mark.darktable
def test_darktables_censorize_is_our_pixelation_at_the_pipes_scale(dt, raw_image):
    from utils.data.images import image_size
    censorize = PROXIES["censorize"]
    render = dt.render(raw_image, [censorize.history_item(dt, {"radius_1": 0.0, "pixelate": 13.0})],
                       dump=["censorize"], size=128, hq=False)
    tap_in, tap_out = render.io("censorize")
    scale = pixel_scale(tap_in.shape, image_size(raw_image))
    radius = math.floor(13.0 * scale)
    assert radius >= 2
    np.testing.assert_allclose(tap_out[..., :3], darktable_pixelate(tap_in[..., :3].astype(np.float64), radius),
                               atol=1e-6)


@pytest.mark.darktable
def test_darktables_censorize_is_the_exact_proxy_on_a_render(dt, raw_image):
    """The blur (each pass reading its input clipped at 0) and the pixelation: measured 123.9-160
    dB on the 140 samples of its table dataset."""
    from utils.evaluation.fidelity import chw, proxy_on_render
    from utils.evaluation.metrics import psnr
    from utils.proxies.train import exact_proxy
    censorize, values = PROXIES["censorize"], {"radius_1": 6.0, "pixelate": 9.0}
    render = dt.render(raw_image, [censorize.history_item(dt, values)], dump=["censorize"], size=128, hq=False)
    tap_in, tap_out = render.io("censorize")
    proxy = exact_proxy(censorize)
    y = proxy_on_render(proxy, tap_in, [values[s.name] for s in censorize.sliders], torch.device("cpu"), image=raw_image)
    assert float(psnr(y[None], chw(tap_out)[None])[0]) > 100
    assert float(psnr(chw(tap_in)[None], chw(tap_out)[None])[0]) < 40      # the module did blur


@pytest.mark.parametrize("screened, searched", [(16, ()), (1, (1,))])
def test_regression_finds_a_pixelation_step_by_screening_or_searching(monkeypatch, screened, searched):
    """The step slider has no slope: screened starts, or a search along it, find its value
    (plain random starts do not: measured, these seeds fail with neither)."""
    import utils.evaluation.regress as regression
    monkeypatch.setattr(regression, "SCREENED", screened)
    proxy = censorize_proxy()                      # identity network, darktable's pixelation
    x = torch.cat([torch.rand(1, 3, 24, 32) + 0.1, coordinate_planes(24, 32, SCALED_PLANES, 0.25)[None]], 1)
    true = proxy.to_unit(torch.tensor([[0.0, 13.0]], dtype=torch.float64))     # radius 3 at scale 0.25
    with torch.no_grad():
        target = proxy(x, true)
    for seed in range(3):
        rec = regression.regress(proxy, 2, proxy.scale, x, target, 5, 2, torch.Generator().manual_seed(seed),
                                 crop=0, searched=searched)
        assert math.floor(float(proxy.from_unit(rec.u[None])[0, 1]) * 0.25) == 3
