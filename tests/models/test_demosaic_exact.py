"""darktable's default Bayer demosaic (RCD), computed exactly: its maths on tiny tensors, and
one real darktable render against the demosaic tap-out."""
import numpy as np
import pytest
import torch

from models.darktable.demosaic import MARGIN, _border, _border_frame, _box, _colours, colour_map, rcd_demosaic
from models.fixed import EXACT, Demosaic, ImageContext

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")


def mosaic_of(rgb: torch.Tensor, pattern: str) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W): each photosite keeps its own colour."""
    colours = colour_map(pattern, *rgb.shape[-2:])
    return rgb.gather(1, colours.expand(rgb.shape[0], 1, -1, -1))


def test_colour_maps_name_the_top_left_tile():
    assert colour_map("GBRG", 3, 4).tolist() == [[1, 2, 1, 2], [0, 1, 0, 1], [1, 2, 1, 2]]
    assert colour_map("BGGR", 2, 2).tolist() == [[2, 1], [1, 0]]
    with pytest.raises(ValueError, match="not a Bayer pattern"):
        colour_map("RGBG", 2, 2)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("size", [(8, 10), (20, 26), (130, 212)])   # border only, one tile, 2 x 3 tiles
def test_a_flat_colour_demosaics_to_itself(pattern, size):
    colour = torch.tensor([0.62, 0.35, 0.21])
    flat = colour[None, :, None, None].expand(1, 3, *size)
    out = rcd_demosaic(mosaic_of(flat, pattern), pattern, 1.7)
    # RCD's epsilon (1e-5 against divisions by zero) is the only departure
    assert out.shape == (1, 3, *size) and torch.allclose(out, flat, rtol=2e-5, atol=0)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_smooth_image_is_recovered_in_every_pattern(pattern):
    y, x = torch.meshgrid(torch.linspace(0, 1, 60), torch.linspace(0, 1, 84), indexing="ij")
    rgb = torch.stack([0.2 + 0.5 * x, 0.3 + 0.2 * y * x, 0.6 - 0.4 * y])[None]
    out = rcd_demosaic(mosaic_of(rgb, pattern), pattern)
    # within a photosite's step of the ramps (0.007; a wrong pattern is off by 0.1 and more):
    # RCD weighs its two estimates by gradients; the 7 px border is one-sided at the very edge
    assert (out - rgb)[..., 7:-7, 7:-7].abs().max() < 4e-3 and (out - rgb).abs().max() < 1e-2
    # photosites keep their own value (RCD clips negatives, as darktable does)
    assert torch.equal(mosaic_of(out, pattern), mosaic_of(rgb, pattern))


def test_a_batch_of_patterns_is_each_image_alone_and_negatives_count_as_zero():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 24, 30) - 0.05
    together = rcd_demosaic(x, list(PATTERNS), [1.0, 2.0, 1.0, 3.5])
    for i, (p, s) in enumerate(zip(PATTERNS, [1.0, 2.0, 1.0, 3.5])):
        assert torch.equal(together[i:i + 1], rcd_demosaic(x[i:i + 1], p, s))
    assert torch.equal(rcd_demosaic(x, "GRBG"), rcd_demosaic(x.clamp_min(0), "GRBG"))
    assert together[..., 7:-7, 7:-7].min() >= 0      # RCD clips; the border's colour differences do not


def test_a_crop_demosaics_with_its_own_pattern():
    """A crop at an odd offset is another pattern's mosaic; any size from 6 x 6 works."""
    y, x = torch.meshgrid(torch.linspace(0, 1, 41), torch.linspace(0, 1, 37), indexing="ij")
    rgb = torch.stack([0.3 + 0.3 * x, 0.4 + 0.1 * y, 0.5 - 0.2 * x * y])[None]
    whole = mosaic_of(rgb, "RGGB")
    crop = whole[..., 1:, 1:]                 # starts on a blue photosite: BGGR
    out = rcd_demosaic(crop, "BGGR")
    assert out.shape == (1, 3, 40, 36) and (out - rgb[..., 1:, 1:])[..., 7:-7, 7:-7].abs().max() < 4e-3
    assert rcd_demosaic(whole[..., :6, :7], "RGGB").shape == (1, 3, 6, 7)
    with pytest.raises(ValueError, match="at least 6 x 6"):
        rcd_demosaic(whole[..., :5, :8], "RGGB")


def test_a_crop_with_its_context_margin_is_the_whole_images_demosaic():
    """Without context a crop's outer 7 px are darktable's border interpolation; with
    Demosaic.context_margin px around it, the crop is the whole image's demosaic up to where
    RCD's tiles fall (their grid starts at the image's corner)."""
    from utils.evaluation.regress import with_margin
    torch.manual_seed(0)
    y, x = torch.meshgrid(torch.linspace(0, 6, 150), torch.linspace(0, 8, 230), indexing="ij")
    mosaic = (0.4 + 0.3 * torch.sin(x) * torch.cos(y) + 0.02 * torch.rand(150, 230))[None, None]
    whole = rcd_demosaic(mosaic, "GRBG", 1.5)
    m = Demosaic.context_margin
    for top, left in ((0, 0), (40, 60), (86, 166), (50, 2)):
        (rows, inner_rows), (cols, inner_cols) = with_margin(top, 64, 150, m), with_margin(left, 64, 230, m)
        widened = rcd_demosaic(mosaic[..., rows, cols], "GRBG", 1.5)[..., inner_rows, inner_cols]
        bare = rcd_demosaic(mosaic[..., top:top + 64, left:left + 64], "GRBG", 1.5)
        truth = whole[..., top:top + 64, left:left + 64]
        assert (widened - truth).abs().max() < 2e-4
        assert top == left == 0 or (bare - truth).abs().max() > 1e-3


@pytest.mark.parametrize("size", [(8, 8), (20, 22)])
def test_gradients_reach_every_photosite_and_are_finite(size):
    torch.manual_seed(1)
    x = (torch.rand(1, 1, *size, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: rcd_demosaic(t, "GBRG", 1.3), (x,), fast_mode=True)
    big = (torch.rand(1, 1, 40, 48) * 0.9).requires_grad_(True)
    rcd_demosaic(big, "RGGB").square().mean().backward()
    assert torch.isfinite(big.grad).all() and (big.grad != 0).float().mean() > 0.99


def test_the_block_takes_the_chain_context_and_has_no_sliders():
    x = torch.rand(2, 1, 24, 24)
    block = EXACT["demosaic"]()
    assert isinstance(block, Demosaic) and block.slider_names == [] and block.layout == "mosaic_rgb"
    context = ImageContext("GRBG", processed_maximum=2.5)
    assert torch.equal(block(x, torch.zeros(2, 0), context), rcd_demosaic(x, "GRBG", 2.5))
    assert torch.equal(block(x, torch.zeros(2, 0), "GRBG"), rcd_demosaic(x, "GRBG"))
    assert ImageContext.from_dict(context.to_dict()) == context


@pytest.mark.parametrize("pattern", ("RGGB", "GBRG"))
@pytest.mark.parametrize("size", [(512, 96), (41, 37), (30, 31)])       # strips, odd sizes, all border
def test_the_border_from_strips_is_the_border_of_the_whole_image(pattern, size):
    """Computed on the top and bottom rows and the left and right columns, the border is the
    whole image's to the bit, with the same gradient; zero inside."""
    torch.manual_seed(size[1])
    x = (torch.rand(2, *size, dtype=torch.float64) * 1.2 - 0.1).requires_grad_()
    colours = _colours([pattern], *size, x.device)
    band = ~_box(*size, MARGIN, MARGIN, MARGIN, MARGIN)
    whole, frame = _border(x, colours, MARGIN), _border_frame(x, colours, MARGIN)
    assert torch.equal(frame[..., band], whole[..., band])
    assert not frame[..., ~band].any()
    weights = torch.rand_like(whole) * band
    (g_whole,), (g_frame,) = (torch.autograd.grad((y * weights).sum(), x) for y in (whole, frame))
    torch.testing.assert_close(g_frame, g_whole, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ with darktable

def psnr_peak1(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


@pytest.mark.darktable
def test_demosaic_reproduces_darktable(dt):
    """One built-in raw (BGGR) at a white balance with the largest multiplier 2.6: the whole
    image, border and tile seams included, to float rounding (measured 153-172 dB over the
    built-in raws; max error 5e-7)."""
    from utils.data.images import builtin_images, cfa_pattern, list_images
    from utils.proxies.registry import PROXIES
    image = [p for p in list_images(builtin_images("train")) if p.stem == "coffee"][0]
    wb = {"red": 2.6, "green": 0.8, "blue": 1.7}
    render = dt.render(image, [PROXIES["temperature"].history_item(dt, wb),
                               PROXIES["highlights"].history_item(dt, {}, enabled=False)], ["demosaic"], 0, True)
    mosaic, rgb = render.io("demosaic")
    pattern = cfa_pattern(image, dt)
    out = rcd_demosaic(torch.from_numpy(mosaic)[None, None], pattern, max(wb.values()))[0]
    target = torch.from_numpy(rgb).permute(2, 0, 1)
    assert pattern == "BGGR" and out.shape == target.shape
    assert psnr_peak1(out, target) > 145 and psnr_peak1(out[:, 10:-10, 10:-10], target[:, 10:-10, 10:-10]) > 145
    assert float((out - target).abs().max()) < 2e-6
