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
    full = torch.tensor([[450.0, 300.0], [6000.0, 4000.0], [6000.0, 4000.0], [4000.0, 6000.0]], dtype=torch.float64)
    scales = denoise.max_scales(full, torch.tensor([128 / 450, 1.0, 0.05, 0.05], dtype=torch.float64)).tolist()
    assert scales[0] == 4                                               # the table's images
    assert scales[1] > scales[2] == scales[3]


def test_darktables_number_of_scales_in_its_float32_steps():
    """max_scales against darktable's loop (denoiseprofile.c) written out in numpy float32."""
    f32 = np.float32

    def darktables(w: int, h: int, s: float) -> int:
        in_scale = min(f32(s), f32(1.0))
        supp0 = min(f32(2 * (2 << (denoise.MAX_MAX_SCALE - 1)) + 1), f32(max(w, h)) * f32(0.2))
        i0 = np.log2(f32((supp0 - f32(1.0)) * f32(0.5)))
        for ms in range(denoise.MAX_MAX_SCALE):
            supp_in = f32(2 * (2 << ms) + 1) * (f32(1.0) / in_scale)
            if f32(1.0) - (np.log2(f32((supp_in - f32(1)) * f32(0.5))) - f32(1.0) + f32(0.5)) / i0 < 0:
                return ms
        return denoise.MAX_MAX_SCALE

    rng = np.random.default_rng(0)
    sizes = rng.integers(16, 12000, (400, 2))
    s = np.concatenate([rng.uniform(0.005, 1.2, 300), 512 / sizes[300:].max(1)])
    got = denoise.max_scales(torch.tensor(sizes, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
    assert got.tolist() == [darktables(w, h, k) for (w, h), k in zip(sizes.tolist(), s.tolist())]
    assert len(set(got.tolist())) >= 5


def test_a_batch_with_each_images_scales_is_each_image_on_its_own(monkeypatch):
    """Off the CPU the batch runs the most scales its shape allows and each image's bands past
    its own number go back unthresholded: the same as each image on its own (float rounding);
    an image whose largest scale does not fit stays as it is."""
    torch.manual_seed(0)
    x = torch.rand(4, 3, 20, 24, dtype=torch.float64) * 0.5
    strength, shadows = torch.tensor([1.0, 3.0, 0.5, 2.0], dtype=torch.float64), torch.full((4,), 1.2, dtype=torch.float64)
    s, wb = torch.full((4,), 0.3, dtype=torch.float64), torch.tensor([[2.0, 1.0, 1.5]] * 4, dtype=torch.float64)
    n = torch.tensor([1, 2, 4, 5])                     # 2^5 > 20 px: the last does not fit
    alone = [denoise.denoise_rgb(x[k:k + 1], strength[k:k + 1], shadows[k:k + 1], s[k:k + 1], wb[k:k + 1], int(n[k]))
             for k in range(4)]
    together = denoise.denoise_rgb(x, strength, shadows, s, wb, n)
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-12, atol=1e-12)
    assert torch.equal(together[3], x[3]) and not torch.allclose(together[2], x[2])


def _decompose_tap_by_tap(img: torch.Tensor, scale: int) -> torch.Tensor:
    """eaw.c's edge-aware step as written there: every pixel, every one of the 25 taps, edges
    repeated; the coarse image."""
    _, _, h, w = img.shape
    mult, inv_sigma2 = 1 << scale, 1.0 / denoise.VARF ** (2 * scale)
    num, den = torch.zeros_like(img), torch.zeros_like(img[:, :1])
    for jj in range(5):
        for ii in range(5):
            ys = (torch.arange(h) + mult * (jj - 2)).clamp(0, h - 1)
            xs = (torch.arange(w) + mult * (ii - 2)).clamp(0, w - 1)
            neighbour = img[:, :, ys][:, :, :, xs]
            d2 = ((img - neighbour) ** 2).sum(1, keepdim=True) * inv_sigma2
            weight = denoise.B3[ii] * denoise.B3[jj] * denoise._fast_mexp2((d2 * 0.02 - 9).clamp_min(0))
            num, den = num + weight * neighbour, den + weight
    return num / den


@pytest.mark.parametrize("unfolded", [False, True], ids=["pairs", "unfolded"])
@pytest.mark.parametrize("size, scale", [((12, 17), 0), ((12, 17), 1), ((9, 11), 2), ((6, 5), 3)])
def test_each_pair_of_taps_shares_its_weights_as_the_tap_by_tap_filter(size, scale, unfolded, monkeypatch):
    """The weights of opposite taps, computed once per pair, give the tap-by-tap filter,
    with and without a gradient (in place), also where the taps reach past the image; and so
    do all 25 taps at once, a GPU's way (``denoise.unfolds``, forced here on the CPU)."""
    monkeypatch.setattr(denoise, "unfolds", lambda img: unfolded)
    torch.manual_seed(scale)
    img = torch.rand(2, 3, *size, dtype=torch.float64) * 60     # differences across the weights' bend
    expected = _decompose_tap_by_tap(img, scale)
    with torch.no_grad():
        coarse, detail = denoise._dn_decompose(img, scale)
    torch.testing.assert_close(coarse, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(detail, img - expected, rtol=1e-12, atol=1e-12)
    grad_in = img.clone().requires_grad_()
    coarse_g, _ = denoise._dn_decompose(grad_in, scale)
    torch.testing.assert_close(coarse_g.detach(), expected, rtol=1e-12, atol=1e-12)
    reference = img.clone().requires_grad_()
    (g1,), (g2,) = (torch.autograd.grad((c * c).sum(), t) for c, t in
                    ((coarse_g, grad_in), (_decompose_tap_by_tap(reference, scale), reference)))
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-9)


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
