"""darktable's loops compiled for the CPU (models.darktable.cpu_kernels) against their torch twins."""
import pytest
import torch

from models.darktable import cpu_kernels, dehaze, denoise
from tests.models.test_denoise import _decompose_tap_by_tap

pytestmark = pytest.mark.skipif(not cpu_kernels.INSTALLED, reason="numba is not installed")


def test_kernels_take_float32_on_the_cpu_without_a_gradient_only():
    x = torch.zeros(1, 3, 4, 4)
    assert cpu_kernels.available(x)
    assert cpu_kernels.available(x.requires_grad_()) is False
    with torch.no_grad():
        assert cpu_kernels.available(x)
    assert not cpu_kernels.available(torch.zeros(1, 3, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("size, scale", [((12, 17), 0), ((40, 33), 1), ((9, 11), 2), ((64, 64), 4)])
def test_the_compiled_edge_aware_step_is_the_tap_by_tap_filter(size, scale):
    """Two images, differences across the weights' whole range (the smallest ones dropped),
    taps reaching past the image: the same coarse image as eaw.c's loop, in float32."""
    torch.manual_seed(scale)
    img = torch.rand(2, 3, *size) * 60
    expected = _decompose_tap_by_tap(img.double(), scale)
    with torch.no_grad():
        coarse, detail = denoise._dn_decompose(img, scale)
    torch.testing.assert_close(coarse.double(), expected, rtol=2e-6, atol=2e-5)
    torch.testing.assert_close(detail, img - coarse)


def _denoise_args():
    return (torch.tensor([3.0]), torch.tensor([0.5]), torch.tensor([0.25]), torch.tensor([[2.05, 1.0, 1.65]]), 4)


def test_denoise_runs_the_kernel_and_agrees_with_torch(monkeypatch):
    torch.manual_seed(0)
    rgb = torch.rand(1, 3, 48, 40) * 0.8
    calls = []
    kernel = cpu_kernels.eaw_coarse
    monkeypatch.setattr(cpu_kernels, "eaw_coarse", lambda *a: calls.append(1) or kernel(*a))
    with torch.no_grad():
        compiled = denoise.denoise_rgb(rgb, *_denoise_args())
    assert len(calls) == 4                                       # one per scale
    monkeypatch.setattr(cpu_kernels, "INSTALLED", False)
    with torch.no_grad():
        with_torch = denoise.denoise_rgb(rgb, *_denoise_args())
    assert len(calls) == 4
    torch.testing.assert_close(compiled, with_torch, rtol=1e-5, atol=1e-6)
    assert (compiled - rgb).abs().max() > 1e-3                   # it did denoise


@pytest.mark.parametrize("size, scale", [((12, 17), 0), ((40, 33), 1), ((9, 11), 2), ((64, 64), 3)])
def test_the_compiled_step_has_the_gradient_of_the_torch_step(size, scale, monkeypatch):
    """Every weight across its range (the clamp's flat part, the slopes, the dropped ones),
    taps past the image (their gradient goes to the edge pixels they repeat): the gradient of
    the compiled step is the torch step's to float32 rounding."""
    torch.manual_seed(scale)
    img = torch.rand(2, 3, *size) * 60

    def gradient(installed: bool) -> torch.Tensor:
        monkeypatch.setattr(cpu_kernels, "INSTALLED", installed)
        x = img.clone().requires_grad_()
        coarse, detail = denoise._dn_decompose(x, scale)
        weights = torch.linspace(-1, 1, coarse.numel()).view_as(coarse)
        ((coarse * weights).sum() + 0.01 * (detail ** 2).sum()).backward()
        return x.grad

    compiled, with_torch = gradient(True), gradient(False)
    torch.testing.assert_close(compiled, with_torch, rtol=0, atol=2e-5 * float(with_torch.abs().max()))


def test_denoise_has_the_sliders_gradient_of_its_torch_pass(monkeypatch):
    """The whole profiled denoise, its sliders' gradient through the compiled steps."""
    torch.manual_seed(1)
    rgb = torch.rand(1, 3, 40, 36) * 0.8
    strength, shadows, scale, wb, scales = _denoise_args()

    def gradients(installed: bool) -> torch.Tensor:
        monkeypatch.setattr(cpu_kernels, "INSTALLED", installed)
        sliders = torch.stack([strength, shadows]).requires_grad_()
        y = denoise.denoise_rgb(rgb, sliders[0], sliders[1], scale, wb, scales)
        (y * torch.linspace(0, 1, y.numel()).view_as(y)).sum().backward()
        return sliders.grad

    compiled, with_torch = gradients(True), gradients(False)
    assert with_torch.abs().min() > 0
    torch.testing.assert_close(compiled, with_torch, rtol=1e-4, atol=0)


@pytest.mark.parametrize("shape, w", [((1, 13, 64, 48), 9), ((2, 3, 37, 21), 9), ((1, 4, 5, 30), 6), ((1, 1, 3, 2), 6)])
def test_the_compiled_box_mean_is_the_cumulative_sums_to_the_bit(shape, w):
    """Haze removal's box mean, boxes cut at the edges (wider than the image in the last cases)."""
    torch.manual_seed(w)
    x = torch.rand(*shape) * 10 - 2
    with torch.no_grad():
        compiled = dehaze.box_mean(x, w)
    assert torch.equal(compiled, cpu_kernels.box_mean(x, w))
    assert torch.equal(compiled, dehaze._running_mean(dehaze._running_mean(x, w, 3), w, 2))
    corner = x[0, 0, :w + 1, :w + 1].double().mean()          # the box of the top-left pixel
    torch.testing.assert_close(compiled[0, 0, 0, 0].double(), corner, rtol=1e-6, atol=1e-6)


def test_kernels_compile_where_their_machine_code_cannot_be_kept(monkeypatch):
    """numba refuses to decorate for a cache with nowhere to write it: the kernel is then
    compiled in each process instead of the import failing."""
    njit = cpu_kernels.numba.njit

    def no_cache_folder(*args, cache=False, **kwargs):
        if cache:
            raise RuntimeError("cannot cache function: no locator available")
        return njit(*args, **kwargs)
    monkeypatch.setattr(cpu_kernels.numba, "njit", no_cache_folder)
    twice = cpu_kernels._jit()(lambda v: 2 * v)
    assert twice(21) == 42


@pytest.mark.parametrize("shape", [(2, 3, 37, 45), (1, 2, 5, 4), (3, 1, 16, 1)])
def test_the_compiled_separable_blur_is_the_slices_sums(shape, monkeypatch):
    """The multiscale family's blurs without a gradient (fixed taps; a Gaussian per image whose
    13 taps reach past small images): what its slices sum, to float32 rounding."""
    from models import multiscale
    torch.manual_seed(len(shape))
    x = torch.randn(shape) * 10
    sigma = torch.linspace(0.3, 2.4, shape[0])
    with torch.no_grad():
        compiled = [multiscale.separable_blur(x, multiscale.BINOMIAL5), multiscale.gaussian_blur(x, sigma)]
        monkeypatch.setattr(cpu_kernels, "available", lambda *a, **k: False)
        sliced = [multiscale.separable_blur(x, multiscale.BINOMIAL5), multiscale.gaussian_blur(x, sigma)]
    for a, b in zip(compiled, sliced):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)
