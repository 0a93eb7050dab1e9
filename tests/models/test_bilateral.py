"""darktable's bilateral grid (models.darktable.bilateral) and shadows and highlights (models.priors,
the exact family): the grid against a plain loop over pixels and cells as bilateral.c runs
it, its sizes, its gradient; the prior against a transcription of shadhi.c's overlay, the
exact proxy and its searched step (fast); the prior against darktable's own shadhi (marked
``darktable``)."""
import csv
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from models import priors
from models.darktable.bilateral import bilateral_base, grid_geometry
from models.networks import EXACT_FAMILY, ModelSpec
from models.proxy import Proxy
from tests.conftest import ROOT
from utils.data.images import image_size
from utils.data.tapouts import SCALED_PLANES, coordinate_planes, pixel_scale
from utils.errors import UserError
from utils.proxies.registry import PROXIES
from utils.proxies.slider import conditioning_width
from utils.proxies.train import default_config


def loop_bilateral(lightness: np.ndarray, sigma_s: float, sigma_r: float = 100.0) -> np.ndarray:
    """(H, W): bilateral.c's splat, blur and slice (detail -1), one pixel and one line at a time."""
    h, w = lightness.shape
    s, r, (sy, sx, sz) = grid_geometry(h, w, sigma_s, sigma_r)
    grid = np.zeros((sy, sx, sz))

    def cell(j, i, L):
        pos = [min(max(j / s, 0), sy - 1), min(max(i / s, 0), sx - 1), min(max(L / r, 0), sz - 1)]
        low = [min(int(p), n - 2) for p, n in zip(pos, (sy, sx, sz))]
        return low, [p - q for p, q in zip(pos, low)]

    def corners(low, frac):
        for a in range(2):
            for b in range(2):
                for c in range(2):
                    weight = ((frac[0] if a else 1 - frac[0]) * (frac[1] if b else 1 - frac[1])
                              * (frac[2] if c else 1 - frac[2]))
                    yield (low[0] + a, low[1] + b, low[2] + c), weight

    for j in range(h):
        for i in range(w):
            for at, weight in corners(*cell(j, i, lightness[j, i])):
                grid[at] += weight * 100.0 / (s * s)

    def blur_lines(axis, taps):
        g = np.moveaxis(grid, axis, -1)
        out = np.zeros_like(g)
        n = g.shape[-1]
        for k in range(n):
            for t, tap in enumerate(taps):
                if 0 <= k + t - 2 < n:
                    out[..., k] += tap / 16 * g[..., k + t - 2]
        return np.moveaxis(out, -1, axis)

    grid = blur_lines(1, (1, 4, 6, 4, 1))
    grid = blur_lines(0, (1, 4, 6, 4, 1))
    grid = blur_lines(2, (-2, -4, 0, 4, 2))
    out = np.empty_like(lightness, dtype=np.float64)
    for j in range(h):
        for i in range(w):
            value = sum(weight * grid[at] for at, weight in corners(*cell(j, i, lightness[j, i])))
            out[j, i] = max(0.0, lightness[j, i] + r * 0.04 * value)
    return out


@pytest.mark.parametrize("h, w, sigma", [(9, 14, 2.0), (13, 7, 0.3), (16, 16, 40.0), (10, 23, 3.7)])
def test_the_base_is_bilateral_c_run_pixel_by_pixel(h, w, sigma):
    lightness = torch.rand(h, w, generator=torch.Generator().manual_seed(h * w)) * 120 - 10   # past 0..100 too
    expected = loop_bilateral(lightness.numpy().astype(np.float64), sigma)
    np.testing.assert_allclose(bilateral_base(lightness, sigma).numpy(), expected, atol=2e-4)


def test_grid_sizes_follow_darktable():
    s, r, sizes = grid_geometry(86, 128, 25.0, 100.0)           # 3.44 rows: at least 4 cells
    assert (s, r, sizes) == (pytest.approx(25.6), 25.0, (5, 6, 5))      # sigma_r 100: 4 cells of 25
    s, r, sizes = grid_geometry(86, 128, 0.1, 100.0)                                 # sigma_s at least 0.5
    assert s == pytest.approx(0.5) and sizes == (173, 257, 5)
    s, _, sizes = grid_geometry(10, 10000, 1.0, 100.0)                              # at most 3000 cells
    assert s == pytest.approx(10000 / 3000, rel=1e-6) and sizes[1] == 3001


def test_the_base_has_a_gradient_in_the_lightness():
    lightness = (torch.rand(12, 12, generator=torch.Generator().manual_seed(1)) * 100).requires_grad_()
    base = bilateral_base(lightness, 3.0)
    base.sum().backward()
    assert torch.isfinite(lightness.grad).all() and lightness.grad.abs().sum() > 0


def exact_shadhi(pixel_scale: float = 0.25) -> Proxy:
    t = PROXIES["shadhi"]
    spec = ModelSpec(EXACT_FAMILY, "base", 3, 3, conditioning_width(t.sliders), extra_channels=SCALED_PLANES,
                     pixel_scale=pixel_scale, **t.network)
    return Proxy(spec, t.sliders, t.value_scale).eval()


def test_an_exact_shadhi_proxy_is_its_prior_at_each_images_scale_its_radius_a_searched_step():
    proxy = exact_shadhi(0.25)
    lab = torch.rand(2, 3, 20, 30, generator=torch.Generator().manual_seed(2)) * 100
    values = torch.tensor([[50.0, -50.0, 0.0, 40.0, 50.0], [-80.0, 90.0, 2.0, 120.0, 10.0]], dtype=torch.float64)
    u = proxy.to_unit(values)
    named = {s.name: proxy.from_unit(u)[:, j] for j, s in enumerate(proxy.sliders)}
    for given, used in ((0.3, 0.3), (0.0, 0.25)):          # 0: unknown, the training scale
        x = torch.cat([lab, coordinate_planes(20, 30, SCALED_PLANES, given).expand(2, -1, -1, -1)], 1)
        expected = priors.shadhi(lab, named, torch.full((2,), used, dtype=torch.float64))
        torch.testing.assert_close(proxy(x, u), expected)
    assert proxy.steps == [proxy.slider_names.index("radius")] and proxy.whole_image
    assert list(proxy.parameters()) == [] and proxy.device == torch.device("cpu")
    with pytest.raises(ValueError, match="prior"):
        Proxy(ModelSpec(EXACT_FAMILY, "base", 3, 3, 5), proxy.sliders, 100.0)


def test_the_shadhi_prior_is_shadhi_c_overlay_of_the_base_and_differentiable_in_its_sliders():
    lab = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(3)).double() * torch.tensor(
        [100.0, 160.0, 160.0]).view(1, 3, 1, 1) - torch.tensor([0.0, 80.0, 80.0]).view(1, 3, 1, 1)
    for values in ((50.0, -50.0, 0.0, 30.0, 50.0), (-100.0, 100.0, -4.0, 200.0, 0.0), (73.0, 0.0, 4.5, 12.0, 99.0)):
        named = {n: torch.tensor([v], dtype=torch.float64, requires_grad=True)
                 for n, v in zip(("shadows", "highlights", "whitepoint", "radius", "compress"), values)}
        out = priors.shadhi(lab, named, torch.ones(1, dtype=torch.float64))
        base = bilateral_base(lab[0, 0].float(), values[3]).double().numpy()
        expected = overlay(lab[0].permute(1, 2, 0).numpy(), base, values[0], values[1], values[2], values[4])
        np.testing.assert_allclose(out[0].permute(1, 2, 0).detach().numpy(), expected, atol=1e-4)
        out.sum().backward()
        assert all(torch.isfinite(named[n].grad).all() for n in ("shadows", "highlights", "whitepoint", "compress"))
    assert named["shadows"].grad.abs() > 0


def overlay(lab: np.ndarray, base: np.ndarray, shadows: float, highlights: float, whitepoint: float,
            compress: float) -> np.ndarray:
    """(H, W, 3) Lab: shadhi.c's overlay of the inverted base at the registry's fixed fields
    (flags 127: unbound L, a and b, the bilateral mask bound; colour corrections 100 and 50)."""
    def sign(v):
        return np.where(np.asarray(v) < 0, -1.0, 1.0)
    shadows, highlights = 2 * min(max(-1, shadows / 100), 1), 2 * min(max(-1, highlights / 100), 1)
    wp, compress = max(1 - whitepoint / 100, 0.01), min(max(0, compress / 100), 0.99)
    s_cc, h_cc = (1.0 - 0.5) * sign(shadows) + 0.5, (0.5 - 0.5) * sign(-highlights) + 0.5
    L, a, b = lab[..., 0] / 100, lab[..., 1] / 128, lab[..., 2] / 128
    tb = (100 - base) / 100
    L, tb = np.where(L > 0, L / wp, L), np.where(tb > 0, tb / wp, tb)

    def apply(L, a, b, amount, xform, direction, dark_cc):
        while amount > 0:
            lb = np.clip((tb - 0.5) * direction * sign(1 - L) + 0.5, 0, 1)
            lref = np.where(np.abs(L) > 1e-6, 1 / np.maximum(np.abs(L), 1e-12), 1e6) * sign(L)
            href = np.where(np.abs(1 - L) > 1e-6, 1 / np.maximum(np.abs(1 - L), 1e-12), 1e6) * sign(1 - L)
            opacity = min(amount, 1.0) * xform
            amount -= 1.0
            L = L * (1 - opacity) + np.where(L > 0.5, 1 - (1 - 2 * (L - 0.5)) * (1 - lb), 2 * L * lb) * opacity
            chroma = L * lref * dark_cc + (1 - L) * href * (1 - dark_cc)
            a, b = a * (1 - opacity) + a * chroma * opacity, b * (1 - opacity) + b * chroma * opacity
        return L, a, b

    L, a, b = apply(L, a, b, highlights ** 2, np.clip(1 - tb / (1 - compress), 0, 1), sign(-highlights), 1 - h_cc)
    L, a, b = apply(L, a, b, shadows ** 2, np.clip(tb / (1 - compress) - compress / (1 - compress), 0, 1),
                    sign(shadows), s_cc)
    return np.stack([L * 100, a * 128, b * 128], -1)


@pytest.mark.darktable
def test_darktables_shadhi_is_the_prior_at_the_pipes_scale(dt, raw_image):
    shadhi = PROXIES["shadhi"]
    values = {"shadows": 70.0, "highlights": -60.0, "whitepoint": 1.5, "radius": 60.0, "compress": 30.0}
    render = dt.render(raw_image, [shadhi.history_item(dt, values)], dump=["shadhi"], size=128, hq=False)
    tap_in, tap_out = render.io("shadhi")
    scale = pixel_scale(tap_in.shape, image_size(raw_image))
    x = torch.from_numpy(np.ascontiguousarray(tap_in[..., :3].transpose(2, 0, 1)))[None]
    named = {k: torch.tensor([v], dtype=torch.float64) for k, v in values.items()}
    ours = priors.shadhi(x, named, torch.tensor([scale], dtype=torch.float64))[0].permute(1, 2, 0).numpy()
    error = np.mean((ours.astype(np.float64) - tap_out[..., :3]) ** 2)
    assert 10 * math.log10(100 ** 2 / error) > 100        # float rounding (measured 147-158 dB)
    assert np.abs(tap_out[..., 0] - tap_in[..., 0]).max() > 5      # and the module did change the image


def test_the_exact_family_is_refused_for_a_type_without_a_prior():
    with pytest.raises(UserError, match="exposure has no exact prior"):
        default_config(PROXIES["exposure"], family=EXACT_FAMILY)


@pytest.mark.darktable
def test_an_exact_proxy_trains_as_one_validated_epoch_and_regresses_on_whole_images(tmp_path):
    """Darktable_proxies.py end to end on a few real shadhi samples: nothing to learn, the
    held-out samples reproduced, and the recovered sliders re-rendered by darktable."""
    cmd = [sys.executable, "Darktable_proxies.py", "shadhi", "-n", "1", "--size", "64", "--out", str(tmp_path),
           "--set", "STAGE_2_SAMPLES_PER_IMAGE=2", "-r", "2", "--set", "PARAM_TUNING_NUM_ITER=30", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to learn (the exact family)" in proc.stderr
    name = "shadhi_shadows_highlights_whitepoint_radius_compress"
    with open(tmp_path / f"{name}_model_weights" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["val_psnr"]) > 60
    with open(tmp_path / "params" / f"{name}.csv") as f:
        targets = list(csv.DictReader(f))
    assert len(targets) == 2 and all(float(t["darktable_psnr"]) > 40 for t in targets)
