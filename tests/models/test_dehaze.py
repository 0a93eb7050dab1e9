"""darktable's haze removal (models.darktable.dehaze, the hazeremoval prior of the exact family): the box
filters and the guided filter against plain loops over pixels as hazeremoval.c and
guided_filter.c run them, the ambient light against sorted order statistics, the operation's
gradient (fast); the prior against darktable's own hazeremoval (marked ``darktable``)."""
import math

import numpy as np
import pytest
import torch

from models import priors
from models.darktable import dehaze
from models.networks import EXACT_FAMILY, ModelSpec
from models.proxy import Proxy
from utils.evaluation.metrics import psnr
from utils.proxies.registry import PROXIES
from utils.proxies.slider import conditioning_width


def loop_box(a: np.ndarray, w: int, reduce) -> np.ndarray:
    """(H, W): ``reduce`` of each (2w + 1)^2 box, cut at the edges, one pixel at a time."""
    h, wd = a.shape
    return np.array([[reduce(a[max(j - w, 0):j + w + 1, max(i - w, 0):i + w + 1]) for i in range(wd)]
                     for j in range(h)])


@pytest.mark.parametrize("w", [1, 2, 6])
def test_box_filters_are_hazeremoval_c_boxes_cut_at_the_edges(w):
    a = torch.rand(9, 14, generator=torch.Generator().manual_seed(w), dtype=torch.float64)
    for ours, reduce in ((dehaze.box_min, np.min), (dehaze.box_max, np.max), (dehaze.box_mean, np.mean)):
        np.testing.assert_allclose(ours(a[None, None], w)[0, 0].numpy(), loop_box(a.numpy(), w, reduce), rtol=1e-12)


@pytest.mark.parametrize("w", [1, 3])
def test_the_box_means_gradient_is_its_adjoint(w):
    """Written out as the same pass (the box's symmetry), in float64 (torch's sums) and float32
    (the compiled kernel on the CPU), against autograd through the cumulative sums."""
    a = torch.rand(2, 3, 9, 14, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: dehaze.box_mean(x, w), (a,))
    x = torch.rand(2, 3, 17, 12, requires_grad=True)
    g = torch.rand(2, 3, 17, 12)
    ours, = torch.autograd.grad(dehaze.box_mean(x, w), x, g)
    plain, = torch.autograd.grad(dehaze._running_mean(dehaze._running_mean(x, w, 3), w, 2), x, g)
    torch.testing.assert_close(ours, plain, rtol=1e-6, atol=1e-7)


def loop_guided(guide: np.ndarray, p: np.ndarray, w: int, eps: float) -> np.ndarray:
    """(H, W): guided_filter.c per box: the regularised least-squares map of the guide's colour
    to ``p``, the maps averaged over the boxes around each pixel and applied to its colour."""
    h, wd = p.shape
    coef = np.zeros((h, wd, 4))
    for j in range(h):
        for i in range(wd):
            g = guide[:, max(j - w, 0):j + w + 1, max(i - w, 0):i + w + 1].reshape(3, -1)
            q = p[max(j - w, 0):j + w + 1, max(i - w, 0):i + w + 1].reshape(-1)
            mg, mq = g.mean(1), q.mean()
            sigma = (g @ g.T) / g.shape[1] - np.outer(mg, mg) + eps * np.eye(3)
            a = np.linalg.solve(sigma, (g @ q) / g.shape[1] - mg * mq)
            coef[j, i] = [*a, mq - a @ mg]
    mean = np.stack([loop_box(coef[..., k], w, np.mean) for k in range(4)], -1)
    return (mean[..., :3] * guide.transpose(1, 2, 0)).sum(-1) + mean[..., 3]


def test_the_guided_filter_is_guided_filter_c_box_by_box():
    gen = torch.Generator().manual_seed(4)
    guide = torch.rand(1, 3, 11, 13, generator=gen, dtype=torch.float64)
    p = torch.rand(1, 1, 11, 13, generator=gen, dtype=torch.float64)
    for w, eps in ((2, 0.025), (3, 1e-3)):
        ours = dehaze.guided_filter(guide, p, w, eps)[0, 0].numpy()
        np.testing.assert_allclose(ours, loop_guided(guide[0].numpy(), p[0, 0].numpy(), w, eps), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("values, nth, expected", [
    ([5.0, 1.0, 4.0, 2.0, 3.0], 2, [2.0, 1.0, 3.0, 4.0, 5.0]),
    ([3.0, 9.0, 1.0, 7.0, 5.0, 2.0, 8.0, 6.0, 4.0, 0.0], 9, [0.0, 3.0, 1.0, 2.0, 9.0, 5.0, 7.0, 6.0, 4.0, 8.0]),
    ([3.0, 9.0, 1.0, 7.0, 5.0, 2.0, 8.0, 6.0, 4.0, 0.0], 5, [0.0, 2.0, 1.0, 9.0, 3.0, 4.0, 5.0, 7.0, 8.0, 6.0]),
    ([2.0, 2.0, 1.0, 2.0, 0.0, 2.0], 3, [0.0, 2.0, 1.0, 2.0, 2.0, 2.0]),
])
def test_quick_select_leaves_what_darktables_leaves(values, nth, expected):
    """darktable 5.0.1's selection is not exact: the second case leaves 8 at the place of 9."""
    values = np.array(values, dtype=np.float32)
    dehaze.quick_select(values, 0, nth, len(values))
    assert values.tolist() == expected


def loop_quick_select(a: list, first: int, nth: int, last: int) -> None:
    """The quick select of darktable 5.0.1's libhazeremoval.so, one element at a time as its
    machine code steps: median of three, forward and backward scans, swaps, the pivot put
    where the forward scan stopped, then the side holding ``nth``."""
    if first + 1 >= last:
        return
    while True:
        if not a[last - 1] > a[first]:
            a[first], a[last - 1] = a[last - 1], a[first]
        if not a[nth] > a[first]:
            a[first], a[nth] = a[nth], a[first]
        if not a[nth] > a[last - 1]:
            a[nth], a[last - 1] = a[last - 1], a[nth]
        pivot, i, j = a[last - 1], first, last
        while True:
            i += 1
            if i < j and pivot > a[i]:
                continue
            j -= 1
            while i < j and a[j] > pivot:
                j -= 1
            if i >= j:
                break
            a[i], a[j] = a[j], a[i]
        a[last - 1], a[i] = a[i], a[last - 1]
        if nth == i or (nth > i and i + 2 >= last) or (nth < i and first + 1 >= i):
            return
        first, last = (i + 1, last) if nth > i else (first, i)


def test_quick_select_moves_what_the_step_by_step_selection_moves():
    rng = np.random.default_rng(9)
    for trial in range(400):
        n = int(rng.integers(1, 120))
        a = (rng.integers(0, 5, n) if trial % 2 else rng.random(n)).astype(np.float32)
        first = int(rng.integers(0, n))
        last = int(rng.integers(first + 1, n + 1))
        nth = int(rng.integers(first, last))
        expected = a.tolist()
        loop_quick_select(expected, first, nth, last)
        dehaze.quick_select(a, first, nth, last)
        assert a.tolist() == expected


def test_quick_select_permutes_and_lands_near_the_order_statistic():
    rng = np.random.default_rng(8)
    values = rng.random(5000).astype(np.float32)
    kept = np.sort(values)
    nth = 4750
    dehaze.quick_select(values, 0, nth, len(values))
    np.testing.assert_array_equal(np.sort(values), kept)
    assert abs(int(np.searchsorted(kept, values[nth])) - nth) < 250


def test_the_ambient_light_is_among_the_brightest_hazy_pixels_and_remembered():
    x = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(5))
    a, depth = dehaze.ambient_light(x)
    dark = dehaze.box_min(x.amin(0, keepdim=True)[None], dehaze.DARK_WINDOW).flatten()
    sums = x.sum(0).flatten()
    assert float(a.sum()) > float(sums[dark >= dark.quantile(0.9)].quantile(0.9))
    assert 0 < depth < -1.125 * math.log(float(dark.quantile(0.8)))
    again, _ = dehaze.ambient_light(x.clone())
    assert again is a                                   # the same image: the remembered light


def test_haze_removal_follows_its_sliders_and_has_their_gradient():
    x = torch.rand(2, 3, 24, 30, generator=torch.Generator().manual_seed(6)) * 0.5 + 0.1
    strength = torch.tensor([0.0, 0.8], dtype=torch.float64, requires_grad=True)
    distance = torch.tensor([0.2, 0.1], dtype=torch.float64, requires_grad=True)
    out = dehaze.hazeremoval(x, strength, distance)
    torch.testing.assert_close(out[0], x[0])                 # no strength: t = 1, the image
    assert (out[1] - x[1]).abs().max() > 0.05
    out.sum().backward()
    assert strength.grad[1].abs() > 0 and torch.isfinite(distance.grad).all()


def test_an_exact_hazeremoval_proxy_is_its_prior_on_whole_images():
    t = PROXIES["hazeremoval"]
    spec = ModelSpec(EXACT_FAMILY, "base", 3, 3, conditioning_width(t.sliders), prior="hazeremoval")
    proxy = Proxy(spec, t.sliders, t.value_scale).eval()
    x = torch.rand(2, 3, 20, 26, generator=torch.Generator().manual_seed(7)) * 0.6
    u = torch.tensor([[0.3, 0.5], [0.9, 0.1]])
    values = proxy.from_unit(u)
    expected = priors.hazeremoval(x, {"strength": values[:, 0], "distance": values[:, 1]}, torch.ones(2))
    torch.testing.assert_close(proxy(x, u), expected)
    assert proxy.whole_image and proxy.steps == [] and list(proxy.parameters()) == []


@pytest.mark.darktable
def test_darktables_hazeremoval_is_the_prior(dt, raw_image):
    haze = PROXIES["hazeremoval"]
    values = {"strength": 0.6, "distance": 0.1}
    render = dt.render(raw_image, [haze.history_item(dt, values)], dump=["hazeremoval"], size=128, hq=False)
    tap_in, tap_out = render.io("hazeremoval")
    x = torch.from_numpy(np.ascontiguousarray(tap_in[..., :3].transpose(2, 0, 1)))[None]
    ours = dehaze.hazeremoval(x, torch.tensor([0.6]), torch.tensor([0.1]))
    target = torch.from_numpy(np.ascontiguousarray(tap_out[..., :3].transpose(2, 0, 1)))[None]
    assert float(psnr(ours, target)[0]) > 100          # float rounding (measured: the 120 dB cap)
    assert np.abs(tap_out[..., :3] - tap_in[..., :3]).max() > 0.01     # and the module did change the image
