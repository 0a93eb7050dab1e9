"""Every exact type on CUDA, where a CUDA device is present (skipped elsewhere): its pass and
its sliders' gradient run there (no tensor of the computation left on the CPU) and give what
the CPU gives; loaded proxies' passes replayed as CUDA graphs give their plain passes."""
import pytest
import torch

from tests.models.test_capture import NOT_CAPTURABLE
from tools.bench import exact_cases, make_proxy, synthetic_image
from utils.devices import for_inference
from utils.evaluation.metrics import psnr

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_every_exact_type_runs_on_cuda_with_its_sliders_gradient_as_on_the_cpu():
    image = synthetic_image(96, 96)
    cuda = torch.device("cuda")
    on_cpu = {t.name: (proxy, x, u) for t, proxy, x, u in exact_cases(image, torch.device("cpu"))}
    for proxy_type, proxy, x, u in exact_cases(image, cuda):
        v = u.clone().requires_grad_()
        y = proxy(x, v)
        if y.requires_grad:           # types without sliders have no gradient to take
            y.float().square().mean().backward()
            assert v.grad is not None and torch.isfinite(v.grad).all(), proxy_type.name
        cpu_proxy, cpu_x, cpu_u = on_cpu[proxy_type.name]
        with torch.no_grad():
            reference = cpu_proxy(cpu_x, cpu_u)
        assert y.device.type == "cuda" and y.shape == reference.shape, proxy_type.name
        # the same operation; kernels that add in another order (and TF32 convolutions) differ
        assert float(psnr(y.detach().cpu().float(), reference.float())[0]) > 50, proxy_type.name


def test_loaded_proxies_replay_cuda_graphs_that_give_their_plain_passes():
    """As a loaded proxy runs (utils.devices.for_inference): the second pass of a signature is
    captured, later ones replayed; an exact type whose pass reads a value back
    (tests/models/test_capture.py) runs plain passes, and the types after it still capture."""
    image = synthetic_image(96, 96)
    cuda = torch.device("cuda")
    cases = [(family, make_proxy(family, "tiny", cuda)) for family in ("unet", "pointwise", "multiscale")]
    cases += [(t.name, proxy.eval()) for t, proxy, _, _ in exact_cases(image, cuda)]
    inputs = {t.name: (x, u) for t, _, x, u in exact_cases(image, cuda)}
    for name, proxy in cases:
        x, u = inputs.get(name, (torch.rand(1, 3, 96, 96, device=cuda), torch.rand(1, 2, device=cuda)))
        with torch.no_grad():
            plain = [proxy(x, u), proxy(x, u * 0.5)]
            for_inference(proxy, cuda)
            graphed = [proxy(x, u) for _ in range(3)] + [proxy(x, u * 0.5)]
        captured = not proxy.graphs.failed
        assert len(proxy.graphs) == captured, (name, proxy.graphs.failed)
        if name in NOT_CAPTURABLE:
            assert not captured, name
        for y, expected in zip(graphed, plain[:1] * 3 + plain[1:]):   # the same kernels, but atomic adds
            assert (y - expected).abs().max() <= 1e-5 * expected.abs().max().clamp_min(1), name
