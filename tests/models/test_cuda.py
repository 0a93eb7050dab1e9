"""Every exact type on CUDA, where a CUDA device is present (skipped elsewhere): its pass and
its sliders' gradient run there (no tensor of the computation left on the CPU) and give what
the CPU gives."""
import pytest
import torch

from tools.bench import exact_cases, synthetic_image
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
