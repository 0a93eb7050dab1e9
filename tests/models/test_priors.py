"""darktable's operations as priors (models.priors): the mosaic and profile types' exact proxies,
and what every prior shares with the registry."""
import json

import numpy as np
import pytest
import torch

from models import priors
from models.demosaic_exact import rcd_demosaic
from models.fixed import ColorOut
from models.networks import EXACT_FAMILY, ModelSpec
from models.proxy import Proxy
from tests.data.test_mosaic_darktable import colour_mask
from utils.darktable.files import write_tiff
from utils.data.manifest import columns
from utils.data.tapouts import TapoutDataset
from utils.evaluation.metrics import psnr
from utils.proxies.registry import PROXIES
from utils.proxies.slider import conditioning_width

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")


def test_every_prior_is_a_registry_types_exact_model_with_its_defaults():
    """A slider a proxy leaves out is at its type's default: the prior's defaults are the
    registry's, and every type with a prior defaults to the exact family."""
    with_prior = {t.network["prior"]: t for t in PROXIES.values() if t.network.get("prior")}
    assert set(with_prior) == set(priors.PRIORS)
    for name, proxy_type in with_prior.items():
        assert proxy_type.model == EXACT_FAMILY, name
        assert priors.PRIORS[name].defaults == {s.name: s.default for s in proxy_type.sliders}, name


def exact(type_name: str, scale_planes: int = 0) -> Proxy:
    proxy_type = PROXIES[type_name]
    channels = {"rgb": (3, 3), "mosaic": (4, 4), "mosaic_rgb": (12, 12)}[proxy_type.layout]
    spec = ModelSpec(EXACT_FAMILY, "base", *channels, conditioning_width(proxy_type.sliders),
                     layout=proxy_type.layout, prior=proxy_type.network["prior"])
    return Proxy(spec, proxy_type.sliders, proxy_type.value_scale)


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
