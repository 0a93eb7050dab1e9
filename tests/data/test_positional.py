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
    c = coordinate_planes(4, 8)                       # (2, H, W): x, then y
    assert c.shape == (2, 4, 8)
    assert torch.allclose(c[0, 0], (torch.arange(8) + 0.5) / 8 * 2 - 1)
    assert torch.allclose(c[1, :, 0], (torch.arange(4) + 0.5) / 4 * 2 - 1)
    assert torch.equal(c[0, 0], c[0, 3]) and torch.equal(c[1, :, 0], c[1, :, 7])


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
    assert (data.in_channels, data.extra_channels) == (3, 2)
    seen = set()
    for _ in range(20):
        x, y, _ = data[0]
        assert x.shape == (5, 6, 6) and y.shape == (3, 6, 6)
        col, row = x[0], x[1]                          # where the crop really lies
        assert torch.allclose(x[3], (col + 0.5) / w * 2 - 1)
        assert torch.allclose(x[4], (row + 0.5) / h * 2 - 1)
        seen.add((int(row[0, 0]), int(col[0, 0])))
    assert len(seen) > 1                               # crops moved, coordinates followed
    whole = TapoutDataset(folder, [SLIDER], positional=True)[0][0]
    assert torch.equal(whole[3:], coordinate_planes(h, w))
    assert TapoutDataset(folder, [SLIDER])[0][0].shape[0] == 3


@pytest.mark.parametrize("family", FAMILIES)
def test_networks_see_the_coordinates(family, tmp_path):
    torch.manual_seed(0)
    proxy = Proxy(ModelSpec(family, "tiny", 3, 3, 1, extra_channels=2), [SLIDER], 0.01)
    with torch.no_grad():   # off its start (multiscale starts at exactly the identity)
        for p in proxy.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.rand(1, 3, 8, 8)
    u = torch.full((1, 1), 0.3)
    here = proxy(torch.cat([x, coordinate_planes(8, 8)[None]], 1), u)
    there = proxy(torch.cat([x, -coordinate_planes(8, 8)[None]], 1), u)
    assert here.shape == (1, 3, 8, 8) and not torch.allclose(here, there)
    save_checkpoint(tmp_path / "p.pt", proxy)
    loaded, _ = load_proxy(tmp_path / "p.pt")
    assert loaded.spec.extra_channels == 2
    # a whole darktable tap-out gets its coordinates appended on the way in
    tap = x[0].permute(1, 2, 0).numpy()
    assert torch.allclose(proxy_on_render(loaded, tap, [0.3], torch.device("cpu")), here[0], atol=1e-6)


def test_position_dependent_modules_are_positional():
    assert PROXIES["vignette"].positional and PROXIES["graduatednd"].positional
    assert not PROXIES["exposure"].positional
