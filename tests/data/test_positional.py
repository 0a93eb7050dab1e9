"""Positional proxy types: coordinate planes from the data to the networks (fast, no darktable)."""
import numpy as np
import pytest
import torch

from models.networks import FAMILIES, ModelSpec
from models.proxy import Proxy, load_proxy, save_checkpoint
from utils.darktable.files import write_tiff
from utils.data.manifest import columns
from utils.data.tapouts import TapoutDataset, coordinate_planes
from utils.evaluation.fidelity import proxy_on_render
from utils.proxies.registry import PROXIES
from utils.proxies.schema import Slider

SLIDER = Slider("a", 0.0, 1.0, 0.5)


def test_coordinate_planes_span_the_image():
    c = coordinate_planes(4, 8, 2)                    # (2, H, W): x, then y
    assert c.shape == (2, 4, 8)
    assert torch.allclose(c[0, 0], (torch.arange(8) + 0.5) / 8 * 2 - 1)
    assert torch.allclose(c[1, :, 0], (torch.arange(4) + 0.5) / 4 * 2 - 1)
    assert torch.equal(c[0, 0], c[0, 3]) and torch.equal(c[1, :, 0], c[1, :, 7])


def test_four_planes_add_the_coordinates_in_pixels_of_the_longest_side():
    c = coordinate_planes(4, 8)                       # x, y from -1 to 1; then in the image's shape
    assert c.shape == (4, 4, 8)
    assert torch.equal(c[:2], coordinate_planes(4, 8, 2))
    torch.testing.assert_close(c[2], c[0])            # the long side keeps -1..1
    torch.testing.assert_close(c[3], c[1] / 2)        # the short side spans its share of it
    step_x, step_y = c[2, 0, 1] - c[2, 0, 0], c[3, 1, 0] - c[3, 0, 0]
    torch.testing.assert_close(step_x, step_y)        # a pixel is as wide as it is high: circles stay round
    with pytest.raises(ValueError):
        coordinate_planes(4, 8, 3)


@pytest.fixture
def position_dataset(tmp_path):
    """One sample whose input holds each pixel's column and row index in channels 0 and 1."""
    h, w = 12, 20
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    (tmp_path / "inputs").mkdir()
    (tmp_path / "outputs").mkdir()
    write_tiff(tmp_path / "inputs" / "i.tif", np.stack([cols, rows, cols * 0], -1))
    write_tiff(tmp_path / "outputs" / "o.tif", np.stack([cols, rows, cols * 0], -1))
    (tmp_path / "manifest.csv").write_text(
        ",".join(columns("x", [SLIDER])) + "\ninputs/i.tif,outputs/o.tif,0.5,i.dng,i_00000\n")
    return tmp_path, h, w


def test_crops_carry_their_place_in_the_whole_image(position_dataset):
    folder, h, w = position_dataset
    data = TapoutDataset(folder, [SLIDER], crop=6, positional=True)
    assert (data.in_channels, data.extra_channels) == (3, 4)
    seen = set()
    for _ in range(20):
        x, y, _ = data[0]
        assert x.shape == (7, 6, 6) and y.shape == (3, 6, 6)
        col, row = x[0], x[1]                          # where the crop really lies
        assert torch.allclose(x[3], (col + 0.5) / w * 2 - 1)
        assert torch.allclose(x[4], (row + 0.5) / h * 2 - 1)
        assert torch.allclose(x[6], (row + 0.5) / w * 2 - h / w)
        seen.add((int(row[0, 0]), int(col[0, 0])))
    assert len(seen) > 1                               # crops moved, coordinates followed
    whole = TapoutDataset(folder, [SLIDER], positional=True)[0][0]
    assert torch.equal(whole[3:], coordinate_planes(h, w))
    assert TapoutDataset(folder, [SLIDER])[0][0].shape[0] == 3
    older = TapoutDataset(folder, [SLIDER], positional=2)[0][0]   # a proxy trained with 2 planes
    assert torch.equal(older[3:], coordinate_planes(h, w, 2))


@pytest.mark.parametrize("family, planes, fields", [(f, 2, 0) for f in FAMILIES] + [("pointwise", 4, 3)])
def test_networks_see_the_coordinates(family, planes, fields, tmp_path):
    torch.manual_seed(0)
    proxy = Proxy(ModelSpec(family, "tiny", 3, 3, 1, extra_channels=planes, fields=fields), [SLIDER], 0.01)
    with torch.no_grad():   # off its start (multiscale starts at exactly the identity)
        for p in proxy.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.rand(1, 3, 8, 8)
    u = torch.full((1, 1), 0.3)
    here = proxy(torch.cat([x, coordinate_planes(8, 8, planes)[None]], 1), u)
    there = proxy(torch.cat([x, -coordinate_planes(8, 8, planes)[None]], 1), u)
    assert here.shape == (1, 3, 8, 8) and not torch.allclose(here, there)
    save_checkpoint(tmp_path / "p.pt", proxy)
    loaded, _ = load_proxy(tmp_path / "p.pt")
    assert (loaded.spec.extra_channels, loaded.spec.fields) == (planes, fields)
    # a whole darktable tap-out gets its coordinates appended on the way in
    tap = x[0].permute(1, 2, 0).numpy()
    assert torch.allclose(proxy_on_render(loaded, tap, [0.3], torch.device("cpu")), here[0], atol=1e-6)


def test_position_dependent_modules_are_positional():
    assert PROXIES["vignette"].positional and PROXIES["graduatednd"].positional
    assert not PROXIES["exposure"].positional


def test_a_field_is_a_quadratic_polynomial_of_the_planes_that_the_sliders_move():
    """Field k of a pointwise proxy is sum_j a_kj(sliders) term_j, the terms [1, planes, their
    products]: coefficients that say 'x - 0.5' make a straight edge, 'x^2 + y^2' a circle."""
    from models.networks import build_model, quadratic_terms
    p = coordinate_planes(6, 8)[None].flatten(2)                      # (1, 4, HW)
    terms = quadratic_terms(p)
    assert terms.shape == (1, 1 + 4 + 10, 48)
    assert torch.equal(terms[:, 0], torch.ones(1, 48)) and torch.equal(terms[:, 1:5], p)
    assert torch.allclose(terms[:, 5], p[:, 0] ** 2) and torch.allclose(terms[:, 6], p[:, 0] * p[:, 1])
    torch.manual_seed(0)
    net = build_model(ModelSpec("pointwise", "tiny", 3, 3, 1, extra_channels=4, fields=2, affine=True))
    x = torch.cat([torch.rand(2, 3, 6, 8), coordinate_planes(6, 8)[None].expand(2, -1, -1, -1)], 1)
    u = torch.tensor([[0.2], [0.9]], requires_grad=True)
    net(x, u).square().sum().backward()
    assert net.field_coefficients[-1].weight.grad.abs().sum() > 0    # the sliders learn to move them
    assert u.grad.abs().sum() > 0
