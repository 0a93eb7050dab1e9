"""Bayer packing, CFA patterns read from DNG tags, mosaic proxies (fast, no darktable)."""
import numpy as np
import pytest
import torch

from models.mosaic import (
    PATTERNS,
    Pack,
    Unpack,
    even_crop,
    nearest_rgb,
    network_channels,
    pack,
    to_rggb,
    unpack,
    unpack_rgb,
)
from models.networks import FAMILIES, ModelSpec
from models.proxy import Proxy
from utils.darktable.cfa import pattern_from_ratios, read_pattern, shift_pattern
from utils.data.images import TRAIN_SCENES, write_dng
from utils.errors import UserError
from utils.proxies.registry import (
    COLORIN,
    DEMOSAIC,
    HIGHLIGHTS,
    TEMPERATURE,
    sampler_of,
)
from utils.proxies.schema import ProxyType, Slider

# colour codes of a labelled mosaic: red 1, the green on red's row 2, the other green 3, blue 4
CODE = {"R": 1.0, "B": 4.0}


def labelled(pattern: str, h: int = 4, w: int = 6) -> torch.Tensor:
    """A (1, 1, h, w) mosaic of ``pattern`` whose photosites hold their colour code."""
    red_row = pattern.index("R") // 2
    m = torch.zeros(1, 1, h, w)
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        m[..., dy::2, dx::2] = CODE.get(colour, 2.0 if dy == red_row else 3.0)
    return m


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pack_gives_r_g1_g2_b_for_every_phase(pattern):
    planes = pack(labelled(pattern), pattern)
    assert planes.shape == (1, 4, 2, 3)
    for k in range(4):
        assert torch.equal(planes[0, k], torch.full((2, 3), k + 1.0))


def test_pack_hand_computed_4x4():
    m = torch.arange(16.0).reshape(1, 1, 4, 4)   # GRBG: G R / B G
    planes = pack(m, "GRBG")                      # mirrored left-right: R G / G B
    assert planes[0, 0].tolist() == [[3.0, 1.0], [11.0, 9.0]]     # red sites, mirrored
    assert planes[0, 3].tolist() == [[6.0, 4.0], [14.0, 12.0]]    # blue sites, mirrored
    assert planes[0, 1].tolist() == [[2.0, 0.0], [10.0, 8.0]]     # G1: green on red's row


def test_round_trip_is_exact_for_mixed_batches():
    x = torch.randn(4, 1, 6, 8) * 10
    names = list(PATTERNS)
    assert torch.equal(unpack(pack(x, names), names), x)
    rgb = torch.randn(4, 3, 6, 8)
    planes12 = torch.nn.functional.pixel_unshuffle(to_rggb(rgb, names), 2)
    assert torch.equal(unpack_rgb(planes12, names), rgb)
    assert torch.equal(Unpack("BGGR")(Pack("BGGR")(x)), x)


def test_gradcheck():
    x = torch.randn(2, 1, 4, 6, dtype=torch.float64, requires_grad=True)
    p12 = torch.randn(2, 12, 2, 3, dtype=torch.float64, requires_grad=True)
    names = ["GBRG", "BGGR"]
    assert torch.autograd.gradcheck(lambda t: pack(t, names), (x,))
    assert torch.autograd.gradcheck(lambda t: unpack(pack(t, names) ** 2, names), (x,))
    assert torch.autograd.gradcheck(lambda t: unpack_rgb(t, names), (p12,))
    assert torch.autograd.gradcheck(lambda t: nearest_rgb(pack(t, "GRBG")), (x,))


def test_nearest_rgb_keeps_all_planes():
    planes = pack(labelled("RGGB"), "RGGB")
    rgb = unpack_rgb(nearest_rgb(planes), "RGGB")[0]          # (3, H, W)
    assert torch.equal(rgb[0], torch.ones(4, 6)) and torch.equal(rgb[2], torch.full((4, 6), 4.0))
    assert rgb[1, 0, 1] == 2.0 and rgb[1, 1, 0] == 3.0 and rgb[1, 0, 0] == 2.5


def test_odd_sizes_are_refused_and_even_crop_keeps_the_phase():
    with pytest.raises(ValueError, match="even height and width"):
        pack(torch.zeros(1, 1, 5, 6), "RGGB")
    with pytest.raises(ValueError, match="not one of"):
        pack(torch.zeros(1, 1, 4, 6), "RGBG")
    m = labelled("GRBG", 5, 7)
    assert torch.equal(even_crop(m), labelled("GRBG", 4, 6))


def test_shift_and_ratios():
    assert shift_pattern("RGGB", 0, 1) == "GRBG" and shift_pattern("RGGB", 1, 0) == "GBRG"
    assert shift_pattern("RGGB", 1, 1) == "BGGR" and shift_pattern("GBRG", 2, 3) == "BGGR"
    assert pattern_from_ratios(np.array([1.0, 3.0, 2.0, 1.0]), (2.0, 1.0, 3.0)) == "GBRG"
    with pytest.raises(UserError, match="matches none"):
        pattern_from_ratios(np.array([1.5, 1.0, 1.0, 3.0]), (2.0, 1.0, 3.0))


def write_test_dng(path, extra=(), size=(16, 16), pattern="RGGB"):
    """A small DNG of ``pattern`` with extra tags (ActiveArea, DefaultCropOrigin/Size)."""
    from dataclasses import replace
    camera = replace(TRAIN_SCENES[0].camera, pattern=pattern)
    counts = np.full(size, camera.black + 1000, np.uint16)
    write_dng(path, counts, camera, "test", extra_tags=extra)
    return path


def crop_tags(x, y, h, w, active=(0, 0)):
    top, left = active
    return [(50829, "I", 4, (top, left, h - top, w - left), True),
            (50719, "I", 2, (x, y), True), (50720, "I", 2, (w - 2 * left - 2, h - 2 * top - 2), True)]


@pytest.mark.parametrize("origin, active, expected", [
    ((0, 0), (0, 0), "RGGB"), ((1, 0), (0, 0), "GRBG"), ((0, 1), (0, 0), "GBRG"),
    ((1, 1), (0, 0), "BGGR"), ((0, 0), (1, 1), "RGGB"), ((1, 0), (1, 1), "GRBG")])
def test_read_pattern_from_dng_tags(tmp_path, origin, active, expected):
    path = write_test_dng(tmp_path / "t.dng", crop_tags(*origin, 16, 16, active))
    assert read_pattern(path) == expected


def test_read_pattern_refuses_non_bayer(tmp_path):
    import tifffile
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(UserError, match="no CFAPattern"):
        read_pattern(tmp_path / "rgb.tif")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout, cin, cout", [("mosaic", 1, 1), ("mosaic_rgb", 1, 3)])
def test_mosaic_proxy_shapes_and_frames(family, layout, cin, cout):
    torch.manual_seed(0)
    proxy = Proxy(ModelSpec(family, "tiny", *network_channels(layout, cin, cout), 1, layout),
                  [Slider("a", 0.0, 1.0, 0.5)], 0.01)
    x, u = torch.rand(2, 1, 8, 10), torch.rand(2, 1)
    names = ["GRBG", "BGGR"]
    out = proxy(x, u, names)
    assert out.shape == (2, cout, 8, 10)
    # the proxy on a mosaic of any pattern = the proxy on its RGGB mirror image, mirrored back
    assert torch.allclose(out, to_rggb(proxy(to_rggb(x, names), u), names), atol=1e-6)


def test_sliderless_proxy_has_no_sliders_and_trains():
    proxy = Proxy(ModelSpec("pointwise", "tiny", 3, 3, 0), [], 0.1)
    x, y = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4) * 100
    loss = (proxy(x, torch.zeros(2, 0)) - y).abs().mean()
    loss.backward()
    assert all(p.grad is not None for p in proxy.net.parameters())


def test_registry_layouts_samplers_and_sizes():
    assert TEMPERATURE.layout == HIGHLIGHTS.layout == "mosaic" and DEMOSAIC.layout == "mosaic_rgb"
    assert TEMPERATURE.struct(4).size == 20 and TEMPERATURE.struct(3).size == 16
    assert HIGHLIGHTS.struct(4).size == 48 and DEMOSAIC.struct(4).size == 24
    assert COLORIN.struct(7).size == 1044
    upstream, slider = sampler_of(DEMOSAIC)
    assert upstream is TEMPERATURE and slider.name == "green"
    assert sampler_of(COLORIN)[0].name == "exposure"
    values = COLORIN.struct(7).unpack(COLORIN.params({}, 7))
    assert values["type"] == 10 and values["filename"] == bytes(512) and values["type_work"] == 4
    with pytest.raises(ValueError, match="needs a sampler"):
        ProxyType("x", "x", (), ())
    with pytest.raises(ValueError, match="layout"):
        ProxyType("x", "x", (Slider("a", 0, 1, 0),), (), layout="bayer")
