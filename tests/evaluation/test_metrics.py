"""PSNR and SSIM as the docs define them (docs/evaluation.md), checked against scikit-image."""
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from utils.evaluation.metrics import PSNR_CAP_DB, psnr, ssim


def pair(seed=0, shape=(3, 24, 20)):
    rng = np.random.default_rng(seed)
    target = rng.random(shape) * 2.5            # scene-referred: above 1
    pred = target + rng.normal(0, 0.05, shape)
    return pred, target


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_equals_scikit_image_with_the_documented_variant(seed):
    pred, target = pair(seed)
    ours = float(ssim(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])[0])
    reference = structural_similarity(
        pred, target, win_size=7, gaussian_weights=False, use_sample_covariance=False,
        data_range=float(target.max() - target.min()), channel_axis=0, K1=0.01, K2=0.03)
    assert ours == pytest.approx(reference, abs=1e-12)


def test_ssim_of_an_image_with_itself_is_one_and_falls_with_noise():
    pred, target = pair()
    t = torch.from_numpy(target)[None]
    assert float(ssim(t, t)[0]) == pytest.approx(1.0)
    assert float(ssim(torch.from_numpy(pred)[None], t)[0]) < 1.0


def test_psnr_uses_the_targets_peak_and_is_capped():
    pred, target = pair()
    ours = float(psnr(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])[0])
    reference = peak_signal_noise_ratio(target, pred, data_range=float(np.abs(target).max()))
    assert ours == pytest.approx(reference, abs=1e-9)
    t = torch.from_numpy(target)[None]
    assert float(psnr(t, t)[0]) == pytest.approx(PSNR_CAP_DB)
