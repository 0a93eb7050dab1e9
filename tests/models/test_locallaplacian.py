"""darktable's local contrast, local laplacian mode, exact (models.darktable.locallaplacian):
its pyramid steps against their definitions as convolutions, the curve's written-out
gradient against autograd, and the exact proxy against darktable's own render."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.darktable import locallaplacian as ll
from utils.evaluation.fidelity import chw, proxy_on_render
from utils.evaluation.metrics import psnr
from utils.proxies.registry import PROXIES
from utils.proxies.train import exact_proxy

BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16
KERNEL = torch.outer(BINOMIAL, BINOMIAL).view(1, 1, 5, 5)


@pytest.mark.parametrize("h, w", [(128, 85), (37, 50), (12, 9), (64, 64)])
def test_the_pyramid_steps_are_the_binomial_convolutions_with_darktables_borders(h, w):
    x = torch.rand(2, 1, h, w, dtype=torch.float64)
    down = F.pad(F.conv2d(x, KERNEL, stride=2), (1, 1, 1, 1), mode="replicate")   # even pixels inside
    torch.testing.assert_close(ll._reduce(x), down, rtol=0, atol=1e-14)
    coarse = torch.rand(2, 1, (h - 1) // 2 + 1, (w - 1) // 2 + 1, dtype=torch.float64)
    last_y, last_x = ((h - 1) & ~1) - 1, ((w - 1) & ~1) - 1          # fine pixels 1 .. last computed
    up = F.conv_transpose2d(coarse, 4 * KERNEL, stride=2)[..., 3:last_y + 3, 3:last_x + 3]
    up = F.pad(up, (1, w - 1 - last_x, 1, h - 1 - last_y), mode="replicate")
    torch.testing.assert_close(ll._expand(coarse, h, w), up, rtol=0, atol=1e-14)


@pytest.mark.parametrize("h, w", [(12, 9), (7, 10), (5, 6)])
def test_the_pyramid_steps_backward_passes_are_their_adjoints(h, w):
    """Written out (through autograd every slice took a zero-filled buffer of its input)."""
    x = torch.rand(2, 1, h, w, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ll._reduce, (x,))
    coarse = torch.rand(2, 1, (h - 1) // 2 + 1, (w - 1) // 2 + 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: ll._expand(c, h, w), (coarse,))


@pytest.mark.parametrize("h, w, border", [(20, 24, 4), (37, 50, 2), (70, 41, 8)])
def test_a_window_of_the_expansion_is_the_expansion_there(h, w, border):
    """The finest level is collapsed only where the image is, inside the padding."""
    coarse = torch.rand(2, 1, (h - 1) // 2 + 1, (w - 1) // 2 + 1, dtype=torch.float64)
    rows, cols = (border, h - border), (border, w - border)
    torch.testing.assert_close(ll._expand_window(coarse, rows, cols),
                               ll._expand(coarse, h, w)[..., rows[0]:rows[1], cols[0]:cols[1]], rtol=0, atol=0)


def test_the_fast_exponential_reads_e_to_the_x_off_the_bits():
    """Linear in the float's bits between 1 (x = 0) and e (x = 1, the bits 0x402DF854): a
    coarse exponential, 11 % over e^-1, 0 far below."""
    x = torch.tensor([0.0, 1.0, -1.0, -3.0, -100.0])
    y = ll.fast_expf(x)
    assert float(y[0]) == 1.0 and abs(float(y[1]) - np.e) < 1e-4 and float(y[-1]) == 0.0   # e: float32 sums
    np.testing.assert_allclose(y[2:4].numpy(), np.exp([-1.0, -3.0]), rtol=0.25)


def test_the_curves_written_out_gradient_is_autograds():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 9, 11, dtype=torch.float64)
    gamma = ((torch.arange(6, dtype=torch.float64) + 0.5) / 6).view(1, -1, 1, 1)
    sliders = [torch.tensor(v, dtype=torch.float64).view(2, 1, 1, 1).requires_grad_()
               for v in ([0.3, 0.7], [0.8, 1.4], [1.2, 0.5], [0.5, -0.3])]     # sigma, shadows, highlights, clarity
    xs = x.clone().requires_grad_()
    written = torch.autograd.grad((ll._Remap.apply(xs, gamma, *sliders) ** 2).sum(), [xs, *sliders])
    xs2 = x.clone().requires_grad_()
    autograd = torch.autograd.grad((ll._remap(xs2, gamma, *sliders) ** 2).sum(), [xs2, *sliders])
    for a, b in zip(written, autograd):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.darktable
def test_darktables_local_contrast_is_the_exact_proxy_on_a_render(dt, raw_image):
    """With expf (darktable before 4.4) the table dataset matched at 44.5-58.5 dB; measured
    141-148 dB on its 140 samples."""
    bilat, values = PROXIES["bilat"], {"detail": 0.9, "sigma_r": 0.3, "sigma_s": 0.7, "midtone": 0.35}
    render = dt.render(raw_image, [bilat.history_item(dt, values)], dump=["bilat"], size=128, hq=False)
    tap_in, tap_out = render.io("bilat")
    y = proxy_on_render(exact_proxy(bilat), tap_in, [values[s.name] for s in bilat.sliders], torch.device("cpu"),
                        image=raw_image)
    assert float(psnr(y[None], chw(tap_out)[None])[0]) > 100
    assert float(psnr(chw(tap_in)[None], chw(tap_out)[None])[0]) < 50     # the module did act
