"""darktable's sharpen, exact (models.priors.sharpen): an unsharp mask of L."""
import math

import numpy as np
import pytest
import torch

from models.priors import PRIORS, SHARPEN_MAX_RADIUS
from utils.data.images import image_size
from utils.data.tapouts import pixel_scale
from utils.evaluation.metrics import psnr
from utils.proxies.registry import PROXIES


def loop_sharpen(lab: np.ndarray, sigma: float, amount: float, threshold: float) -> np.ndarray:
    """sharpen.c's passes over (H, W, 3) Lab, one kernel tap at a time: a horizontal then a
    vertical blur of L inside the border, then the detail above the threshold added."""
    reach = min(SHARPEN_MAX_RADIUS, math.ceil(2.5 * sigma))
    taps = np.arange(-reach, reach + 1)
    kernel = np.exp(-taps ** 2 / (2 * sigma * sigma))
    kernel /= kernel.sum()
    L = lab[..., 0]
    h, w = L.shape
    across, down = np.zeros_like(L), np.zeros_like(L)
    for t, k in zip(taps, kernel):
        across[:, reach:w - reach] += k * L[:, reach + t:w - reach + t]
    for t, k in zip(taps, kernel):
        down[reach:h - reach] += k * across[reach + t:h - reach + t]
    out = lab.copy()
    for i in range(reach, h - reach):
        for j in range(reach, w - reach):
            diff = L[i, j] - down[i, j]
            detail = math.copysign(max(abs(diff) - threshold, 0.0), diff) if abs(diff) > threshold else 0.0
            out[i, j, 0] = L[i, j] + detail * amount
    return out


@pytest.mark.parametrize("sigma, amount, threshold", [(0.7, 1.2, 0.3), (2.2, 0.5, 0.0), (7.0, 2.0, 1.0)])
def test_sharpen_is_sharpen_c_pass_by_pass(sigma, amount, threshold):
    rng = np.random.default_rng(3)
    lab = np.stack([rng.random((40, 33)) * 100, rng.normal(0, 20, (40, 33)), rng.normal(0, 20, (40, 33))], -1)
    ours = PRIORS["sharpen"](torch.from_numpy(lab.transpose(2, 0, 1))[None],
                             {"radius": torch.tensor([sigma / 0.5], dtype=torch.float64),
                              "amount": torch.tensor([amount], dtype=torch.float64),
                              "threshold": torch.tensor([threshold], dtype=torch.float64)},
                             torch.tensor([0.5], dtype=torch.float64))
    np.testing.assert_allclose(ours[0].numpy().transpose(1, 2, 0), loop_sharpen(lab, sigma, amount, threshold),
                               rtol=0, atol=1e-9)


def test_each_image_of_a_batch_is_sharpened_at_its_own_radius():
    """One pass for a batch whose kernels reach 1, 4 and 8 px (and 12, which does not fit in
    the image: left as it is): each image as sharpen.c computes it alone."""
    rng = np.random.default_rng(5)
    labs = [np.stack([rng.random((30, 24)) * 100, rng.normal(0, 20, (30, 24)), rng.normal(0, 20, (30, 24))], -1)
            for _ in range(4)]
    sigmas, amounts, thresholds = (0.3, 1.5, 3.1, 20.0), (1.2, 0.5, 2.0, 1.0), (0.3, 0.0, 1.0, 0.1)
    ours = PRIORS["sharpen"](torch.from_numpy(np.stack(labs).transpose(0, 3, 1, 2)),
                             {"radius": torch.tensor(sigmas, dtype=torch.float64),
                              "amount": torch.tensor(amounts, dtype=torch.float64),
                              "threshold": torch.tensor(thresholds, dtype=torch.float64)},
                             torch.ones(4, dtype=torch.float64))
    for i, lab in enumerate(labs[:3]):
        np.testing.assert_allclose(ours[i].numpy().transpose(1, 2, 0), loop_sharpen(lab, sigmas[i], amounts[i],
                                                                                    thresholds[i]), rtol=0, atol=1e-9)
    assert torch.equal(ours[3], torch.from_numpy(labs[3].transpose(2, 0, 1)))    # 2 x 12 px do not fit in 24


def test_an_image_narrower_than_the_kernel_is_left_as_it_is_and_sliders_have_gradients():
    sliders = {k: torch.tensor([v], dtype=torch.float64, requires_grad=True)
               for k, v in (("radius", 3.0), ("amount", 1.0), ("threshold", 0.2))}
    small = torch.rand(1, 3, 6, 30, dtype=torch.float64) * 100
    assert torch.equal(PRIORS["sharpen"](small, sliders, torch.ones(1, dtype=torch.float64)), small)
    lab = torch.rand(1, 3, 30, 30, dtype=torch.float64) * 100
    PRIORS["sharpen"](lab, sliders, torch.ones(1, dtype=torch.float64))[:, 0].pow(2).sum().backward()
    for name, value in sliders.items():
        assert torch.isfinite(value.grad).all() and float(value.grad.abs()) > 0, name


@pytest.mark.darktable
def test_darktables_sharpen_is_the_prior_with_its_kernel_cut_at_full_size(dt, raw_image):
    values = {"radius": 8.0, "amount": 1.5, "threshold": 0.1}   # 2.5 sigma = 20 px: cut at 12
    render = dt.render(raw_image, [PROXIES["sharpen"].history_item(dt, values)], dump=["sharpen"], size=0, hq=True)
    tap_in, tap_out = (torch.from_numpy(np.ascontiguousarray(a[..., :3].transpose(2, 0, 1)))[None]
                       for a in render.io("sharpen"))
    scale = torch.tensor([pixel_scale(tap_in.shape[-2:], image_size(raw_image))], dtype=torch.float64)
    assert float(scale) == 1.0
    ours = PRIORS["sharpen"](tap_in, {k: torch.tensor([v], dtype=torch.float64) for k, v in values.items()}, scale)
    assert float(psnr(ours, tap_out)[0]) > 110        # measured 149 dB (the metric stops at 120)
    assert float(psnr(tap_in, tap_out)[0]) < 60       # and the module did change the image
