"""Exact fixed blocks (colorin, colorout): their maths on tiny tensors; against darktable's
tap-outs in tests/pipeline/test_fill.py."""
import numpy as np
import torch

from models.colorspace import lab_to_xyz, xyz_to_lab
from models.fixed import ColorIn, ColorOut, ImageContext, srgb_decode, srgb_encode, srgb_to_xyz_d50


def test_colorout_is_the_srgb_curve_of_the_adapted_matrix_in_range():
    linear = torch.rand(2, 3, 4, 5, dtype=torch.float64) * 0.98 + 0.01
    lab = xyz_to_lab(torch.einsum("ij,bjhw->bihw", torch.from_numpy(srgb_to_xyz_d50()), linear))
    out = ColorOut()(lab, torch.zeros(2, 0))
    assert torch.allclose(out, srgb_encode(linear), atol=1e-9)


def test_colorout_clips_negatives_and_extrapolates_above_white_continuously():
    block = ColorOut()
    white = xyz_to_lab(torch.tensor([0.9642, 1.0, 0.8249], dtype=torch.float64)[:, None, None])[None]
    for factor, expected in ((1.0 - 1e-6, 1.0), (1.0 + 1e-6, 1.0)):
        lab = xyz_to_lab(lab_to_xyz(white) * factor)
        assert torch.allclose(block(lab, torch.zeros(1, 0)), torch.full((1, 3, 1, 1), expected, dtype=torch.float64),
                              atol=1e-5)
    brighter = block(xyz_to_lab(lab_to_xyz(white) * 2.0), torch.zeros(1, 0))
    assert (brighter > 1.2).all() and (brighter < 1.45).all()   # 2^0.44: darktable's power law
    black = block(torch.tensor([[[[0.0]], [[60.0]], [[0.0]]]], dtype=torch.float64), torch.zeros(1, 0))
    assert black.min() == 0.0      # out of gamut below zero: clipped, as darktable does


def test_colorin_applies_the_context_matrix_then_lab():
    m = np.array([[0.8, 0.1, 0.06], [0.4, 0.7, -0.1], [0.05, -0.1, 0.9]])
    x = torch.rand(1, 3, 3, 4, dtype=torch.float64)
    lab = ColorIn()(x, torch.zeros(1, 0), ImageContext("RGGB", m.tolist()))
    assert torch.allclose(lab_to_xyz(lab), torch.einsum("ij,bjhw->bihw", torch.from_numpy(m), x), atol=1e-9)
    encoded = ColorIn()(x, torch.zeros(1, 0), ImageContext("", m.tolist(), colorin_encoded=True))
    assert torch.allclose(encoded, ColorIn()(srgb_decode(x), torch.zeros(1, 0), ImageContext("", m.tolist())))


def test_fixed_blocks_pass_gradient_and_have_no_sliders():
    ctx = ImageContext()
    x = (torch.rand(1, 3, 2, 2, dtype=torch.float64) * 0.5 + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ColorIn()(t, torch.zeros(1, 0), ctx), (x,))
    lab = (torch.rand(1, 3, 2, 2, dtype=torch.float64) * torch.tensor([80, 40, 40.])[:, None, None]
           + torch.tensor([10, -20, -20.])[:, None, None]).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ColorOut()(t, torch.zeros(1, 0)), (lab,))
    assert ColorIn().slider_names == [] and ColorOut().sliders == ()
    context = ImageContext("GBRG", np.eye(3).tolist(), True)
    assert ImageContext.from_dict(context.to_dict()) == context


def test_a_constant_is_made_once_per_dtype_and_device_and_serves_passes_with_a_gradient():
    from models.colorspace import D50, constant
    like = torch.zeros(1, dtype=torch.float32)
    with torch.inference_mode():                   # first asked for in a pass without a gradient
        first = constant(D50, like)
    again = constant(np.array(D50), like)
    assert again is first and torch.equal(first, torch.tensor(D50, dtype=torch.float32))
    assert constant(D50, like.double()).dtype == torch.float64 and constant(D50, like.double()) is not first
    x = torch.ones(3, requires_grad=True)
    (x * first).sum().backward()                   # not an inference tensor: autograd may save it
    assert torch.equal(x.grad, first)
