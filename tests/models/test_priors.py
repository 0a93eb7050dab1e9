"""darktable's operations as priors (models.priors): the mosaic and profile types' and the
vignette's exact proxies, and what every prior shares with the registry."""
import json
import math

import numpy as np
import pytest
import torch

from models import priors
from models.darktable.demosaic import rcd_demosaic
from models.colorspace import D50, camera_to_xyz_d50
from models.fixed import ColorIn, ColorOut, ImageContext
from models.networks import EXACT_FAMILY, ModelSpec
from models.proxy import Proxy
from tests.data.test_mosaic_darktable import colour_mask
from utils.darktable.files import write_tiff
from utils.data.manifest import columns
from utils.data.images import builtin_images, dng_colour_matrix, image_size, list_images
from utils.data.tapouts import MATRIX_PLANES, SCALED_PLANES, TapoutDataset, coordinate_planes, with_coordinates
from utils.evaluation.fidelity import proxy_on_render
from utils.evaluation.metrics import psnr
from utils.proxies.registry import PROXIES
from utils.proxies.train import exact_proxy

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")


def test_every_prior_is_a_registry_types_exact_model_with_its_defaults():
    """A slider a proxy leaves out is at its type's default: the prior's defaults are the
    registry's, and every type with a prior defaults to the exact family."""
    with_prior = {t.network["prior"]: t for t in PROXIES.values() if t.network.get("prior")}
    assert set(with_prior) == set(priors.PRIORS)
    for name, proxy_type in with_prior.items():
        assert proxy_type.model == EXACT_FAMILY, name
        assert priors.PRIORS[name].defaults == {s.name: s.default for s in proxy_type.sliders}, name


def exact(type_name: str, planes: int = 0) -> Proxy:
    """A ``type_name`` proxy of the exact family with ``planes`` coordinate planes (with
    SCALED_PLANES, or the white balance's planes after them, it takes each image's pixel scale
    from its fifth plane, as a trained one does)."""
    return exact_proxy(PROXIES[type_name], planes, 0.25 if planes in (SCALED_PLANES, SCALED_PLANES + 3) else 0.0)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_white_balance_multiplies_each_photosite_by_its_colours_multiplier(pattern):
    x = torch.rand(1, 1, 6, 8, dtype=torch.float64) + 0.1
    sliders = {"red": torch.tensor([2.5], dtype=torch.float64), "green": torch.tensor([0.7], dtype=torch.float64),
               "blue": torch.tensor([1.3], dtype=torch.float64, requires_grad=True)}
    y = priors.PRIORS["temperature"](x, sliders, torch.ones(1), pattern)
    gains = np.zeros((6, 8))
    for colour, gain in (("R", 2.5), ("G", 0.7), ("B", 1.3)):
        gains[colour_mask(pattern, (6, 8), colour)] = gain
    np.testing.assert_allclose(y[0, 0].detach().numpy(), x[0, 0].numpy() * gains, rtol=1e-12)
    y.sum().backward()     # the blue slider's gradient: the sum of the blue photosites
    blue = colour_mask(pattern, (6, 8), "B")
    assert float(sliders["blue"].grad) == pytest.approx(float(x[0, 0][torch.from_numpy(blue)].sum()))


def test_an_exact_white_balance_proxy_takes_each_images_pattern():
    proxy = exact("temperature")
    x = torch.rand(2, 1, 4, 6) + 0.1
    u = proxy.to_unit(torch.tensor([[2.0, 1.0, 1.6], [0.5, 2.0, 4.0]], dtype=torch.float64))
    y = proxy(x, u, ["GBRG", "BGGR"])
    for i, (pattern, (r, g, b)) in enumerate(zip(["GBRG", "BGGR"], [(2.0, 1.0, 1.6), (0.5, 2.0, 4.0)])):
        expected = x[i, 0].clone()
        for colour, gain in (("R", r), ("G", g), ("B", b)):
            expected[torch.from_numpy(colour_mask(pattern, (4, 6), colour))] *= gain
        torch.testing.assert_close(y[i, 0], expected, rtol=1e-5, atol=0)
    assert not proxy.whole_image and proxy.steps == []     # per photosite: crops regress as well


def test_clip_mode_clips_at_the_slider_with_its_gradient():
    x = torch.tensor([[[[0.1, 0.5], [0.9, 0.3]]]], dtype=torch.float64)
    clip = torch.tensor([0.4], dtype=torch.float64, requires_grad=True)
    y = priors.PRIORS["highlights"](x, {"clip": clip}, torch.ones(1))
    torch.testing.assert_close(y, torch.tensor([[[[0.1, 0.4], [0.4, 0.3]]]], dtype=torch.float64))
    y.sum().backward()
    assert float(clip.grad) == 2.0      # two photosites sit at the threshold


def test_an_exact_demosaic_proxy_is_darktables_rcd_and_only_exact():
    proxy = exact("demosaic")
    x = torch.rand(2, 1, 24, 30)
    y = proxy(x, torch.zeros(2, 0), ["GRBG", "RGGB"])
    torch.testing.assert_close(y, rcd_demosaic(x, ["GRBG", "RGGB"], priors.DEMOSAIC_PROCESSED_MAXIMUM))
    assert proxy.whole_image           # its tiles and border start at the image's top left
    spec = ModelSpec("unet", "tiny", 12, 12, 0, layout="mosaic_rgb", prior="demosaic")
    with pytest.raises(ValueError, match="exact family"):
        Proxy(spec, (), 0.01)


def test_an_exact_colorout_proxy_is_the_output_profile():
    proxy = exact("colorout")
    lab = torch.stack([torch.rand(2, 5, 5) * 100, torch.randn(2, 5, 5) * 30, torch.randn(2, 5, 5) * 30], 1)
    y = proxy(lab, torch.zeros(2, 0))
    assert float(psnr(y, ColorOut()(lab, None)).min()) > 100     # through the value transform and back


def test_a_native_dataset_returns_mosaics_as_rendered_with_their_pattern(tmp_path):
    """Mirrored into the RGGB frame a mosaic suits the networks; an exact proxy needs the
    frame darktable rendered in (its tiles and borders start at the top left)."""
    mosaic = np.arange(6 * 9, dtype=np.float32).reshape(6, 9)        # an odd width: cropped to 8
    for folder in ("inputs", "outputs"):
        (tmp_path / folder).mkdir()
        write_tiff(tmp_path / folder / "m.tif", mosaic)
    (tmp_path / "manifest.csv").write_text(
        ",".join(columns("x", [])) + "\ninputs/m.tif,outputs/m.tif,m.dng,m_00000\n")
    (tmp_path / "dataset.json").write_text(json.dumps({"layout": "mosaic", "cfa_patterns": {"m.dng": "GBRG"}}))
    native = TapoutDataset(tmp_path, [], native=True)
    np.testing.assert_array_equal(native[0][0][0].numpy(), mosaic[:, :8])
    assert native.pattern(0) == "GBRG"
    mirrored = TapoutDataset(tmp_path, [])
    np.testing.assert_array_equal(mirrored[0][0][0].numpy(), mosaic[::-1, :8])   # GBRG upside down
    assert mirrored.pattern(0) == "RGGB"
    with pytest.raises(ValueError, match="whole images"):
        TapoutDataset(tmp_path, [], crop=4, native=True)


def loop_vignette(rgb: np.ndarray, full_size: tuple[int, int], values: dict) -> np.ndarray:
    """vignette.c's pass over (H, W, 3) RGB at the registry's fields, pixel by pixel: the
    distance from the centre of the image's full extent at this scale, from pixel corners."""
    h, w = rgb.shape[:2]
    ratio = max(h, w) / max(full_size)
    centre = (full_size[0] * ratio / 2, full_size[1] * ratio / 2)
    unit = 2 / (max(full_size) * ratio)
    out = rgb.copy()
    for j in range(h):
        for i in range(w):
            d = math.hypot((i - centre[0]) * unit, (j - centre[1]) * unit)
            weight = min(1.0, max(0.0, (d - values["scale"] / 100) / (values["falloff_scale"] / 100)))
            col = rgb[j, i] * (1 + weight * values["brightness"]) if values["brightness"] < 0 \
                else rgb[j, i] + weight * values["brightness"]
            out[j, i] = col - (col.mean() - col) * weight * values["saturation"]
    return out


@pytest.mark.parametrize("values", [{"scale": 20.0, "falloff_scale": 30.0, "brightness": -0.7, "saturation": 0.4},
                                    {"scale": 0.0, "falloff_scale": 5.0, "brightness": 0.3, "saturation": -1.0}])
def test_the_vignette_is_vignette_c_pixel_by_pixel_and_the_same_on_a_crop(values):
    """From the coordinate planes of an image of 45 x 31 at full size, shown as 16 x 11 (its
    short side 11.02 in darktable's pipe): darktable's weight from pixel corners."""
    rgb = np.random.default_rng(0).random((11, 16, 3)) + 0.05
    proxy = exact("vignette", planes=4)
    x = torch.cat([torch.from_numpy(rgb.transpose(2, 0, 1)), coordinate_planes(11, 16, 4, full_size=(45, 31)).double()])[None]
    u = proxy.to_unit(torch.tensor([[values[s.name] for s in proxy.sliders]], dtype=torch.float64))
    y = proxy(x, u).double()
    np.testing.assert_allclose(y[0].numpy().transpose(1, 2, 0), loop_vignette(rgb, (45, 31), values), atol=2e-6)
    np.testing.assert_allclose(proxy(x[..., 3:9, 5:13], u).double().numpy(), y[..., 3:9, 5:13].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="needs the image.s planes"):
        priors.PRIORS["vignette"](x[:, :3], {}, torch.ones(1))


@pytest.mark.darktable
def test_darktables_vignette_is_the_exact_proxy_on_a_render(dt, raw_image):
    """An export of 100 px, not a whole number of pixels on its short side in darktable's pipe."""
    vignette, values = PROXIES["vignette"], {"scale": 30.0, "falloff_scale": 20.0, "brightness": -0.6, "saturation": 0.8}
    render = dt.render(raw_image, [vignette.history_item(dt, values)], dump=["vignette"], size=100, hq=False)
    tap_in, tap_out = render.io("vignette")
    assert (max(image_size(raw_image)) * min(tap_in.shape[:2]) / max(tap_in.shape[:2])) % 1     # fractional
    proxy = exact("vignette", planes=4)
    y = proxy_on_render(proxy, tap_in, [values[s.name] for s in vignette.sliders], torch.device("cpu"), image=raw_image)
    target = torch.from_numpy(np.ascontiguousarray(tap_out[..., :3].transpose(2, 0, 1)))[None]
    assert float(psnr(y[None], target)[0]) > 110                      # measured 120 dB (the cap)
    assert float(psnr(torch.from_numpy(np.ascontiguousarray(tap_in[..., :3].transpose(2, 0, 1)))[None], target)[0]) < 40


def test_colorin_from_a_dngs_matrix_maps_the_d65_white_to_d50_and_follows_its_planes(tmp_path):
    """darktable's embedded-matrix profile: the white-balanced camera's (1, 1, 1) is the D65
    white, adapted to D50; the exact proxy reads the matrix from its planes."""
    image = list_images(builtin_images("eval"))[0]
    embedded = dng_colour_matrix(image)
    matrix = camera_to_xyz_d50(embedded)
    np.testing.assert_allclose(matrix @ np.ones(3), D50, atol=1e-12)
    assert dng_colour_matrix(tmp_path / "x.tif") is None
    rgb = torch.rand(3, 5, 6, dtype=torch.float64)
    x = with_coordinates(rgb, MATRIX_PLANES, traits=matrix)[None]
    expected = ColorIn()(rgb[None], torch.zeros(1, 0), ImageContext(colorin_matrix=matrix.tolist()))
    assert float(psnr(exact("colorin", planes=MATRIX_PLANES)(x, torch.zeros(1, 0)), expected)[0]) > 100


@pytest.mark.darktable
def test_darktables_colorin_is_the_exact_proxy_from_the_dngs_matrix(dt, raw_image):
    render = dt.render(raw_image, dump=["colorin"], size=200, hq=False)
    tap_in, tap_out = render.io("colorin")
    y = proxy_on_render(exact("colorin", planes=MATRIX_PLANES), tap_in, [], torch.device("cpu"), image=raw_image)
    target = torch.from_numpy(np.ascontiguousarray(tap_out[..., :3].transpose(2, 0, 1)))[None]
    assert float(psnr(y[None], target)[0]) > 70                 # measured 85.6 dB (coffee.dng, 200 px)


def loop_graduatednd(rgb: np.ndarray, extent: tuple[float, float], values: dict) -> np.ndarray:
    """graduatednd.c's pass over (H, W, 3) RGB, pixel by pixel, from pixel corners across the
    image's extent (E_x, E_y) in darktable's pipe, with exp2 for darktable's approximation."""
    h, w = rgb.shape[:2]
    ex, ey = extent
    steep = 0.5 / (math.hypot(ex / 2, ey / 2) / (ey / 2) * (0.5 - 0.45 * values["hardness"] / 100))
    angle = -math.radians(values["rotation"])
    out = np.empty_like(rgb)
    for j in range(h):
        for i in range(w):
            x, y = i / (ex / 2) - 1, j / (ey / 2) - 1
            length = steep * (math.sin(angle) * x - math.cos(angle) * y - 1 + values["offset"] / 50)
            d = values["density"]
            if d > 0:
                out[j, i] = rgb[j, i] / (0.5 + 0.5 * 2 ** (d * min(1, max(0, 0.5 + length))))
            else:
                out[j, i] = rgb[j, i] * (0.5 + 0.5 * 2 ** (-d * min(1, max(0, 0.5 - length))))
    return np.maximum(out, 0)


@pytest.mark.parametrize("values", [{"density": 2.5, "hardness": 70.0, "rotation": 30.0, "offset": 40.0},
                                    {"density": -1.5, "hardness": 10.0, "rotation": -120.0, "offset": 65.0}])
def test_the_graduated_filter_is_graduatednd_c_pixel_by_pixel(values):
    """An image of 45 x 31 at full size shown as 16 x 11 (11.02 rows in darktable's pipe)."""
    rgb = np.random.default_rng(1).random((11, 16, 3)) + 0.05
    proxy = exact("graduatednd", planes=4)
    x = torch.cat([torch.from_numpy(rgb.transpose(2, 0, 1)), coordinate_planes(11, 16, 4, full_size=(45, 31)).double()])[None]
    u = proxy.to_unit(torch.tensor([[values[s.name] for s in proxy.sliders]], dtype=torch.float64))
    expected = loop_graduatednd(rgb, (16.0, 31 * 16 / 45), values)
    # darktable's 2^x is a Taylor series to the 8th power: up to 2e-5 off the exact one
    np.testing.assert_allclose(proxy(x, u).double()[0].numpy().transpose(1, 2, 0), expected, rtol=1e-4)


@pytest.mark.darktable
def test_darktables_graduated_filter_is_the_exact_proxy_on_a_render(dt, raw_image):
    gnd, values = PROXIES["graduatednd"], {"density": 2.0, "hardness": 60.0, "rotation": 25.0, "offset": 45.0}
    render = dt.render(raw_image, [gnd.history_item(dt, values)], dump=["graduatednd"], size=100, hq=False)
    tap_in, tap_out = render.io("graduatednd")
    y = proxy_on_render(exact("graduatednd", planes=4), tap_in, [values[s.name] for s in gnd.sliders],
                        torch.device("cpu"), image=raw_image)
    target = torch.from_numpy(np.ascontiguousarray(tap_out[..., :3].transpose(2, 0, 1)))[None]
    assert float(psnr(y[None], target)[0]) > 110                 # measured 120 dB (the cap)
