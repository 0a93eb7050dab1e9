"""Proxy networks, losses and metrics on tiny tensors (fast, no darktable)."""
import math

import pytest
import torch

from models.networks import FAMILIES, RETIRED_FAMILIES, ModelSpec, quadratic_terms
from models.proxy import (
    IncompatibleCheckpoint,
    Proxy,
    load_proxy,
    read_checkpoint,
    save_checkpoint,
)
from models.transform import from_network, to_network
from utils.errors import UserError
from utils.evaluation.metrics import psnr, ssim
from utils.proxies.losses import gradient_loss, parse_loss
from utils.proxies.slider import Slider
from utils.proxies.train import cosine_lr

SLIDERS = [Slider("a", -3.0, 4.0, 0.0), Slider("b", 0.05, 0.5, 0.18, scale="log")]


def make(family, cin=3, cout=3, dtype=torch.float32):
    torch.manual_seed(0)
    return Proxy(ModelSpec(family, "tiny", cin, cout, len(SLIDERS)), SLIDERS, 0.01).to(dtype)


@pytest.mark.parametrize("family", FAMILIES + RETIRED_FAMILIES)
@pytest.mark.parametrize("cin, cout", [(3, 3), (1, 1), (1, 3)])
def test_shapes_any_size(family, cin, cout):
    proxy = make(family, cin, cout)
    x = torch.rand(2, cin, 13, 10) * 5     # odd sizes and values far above 1
    out = proxy(x, torch.rand(2, 2))
    assert out.shape == (2, cout, 13, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("family", FAMILIES + RETIRED_FAMILIES)
def test_gradcheck_wrt_sliders(family):
    proxy = make(family, dtype=torch.float64)
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64) * 3
    u = torch.tensor([[0.3, 0.6]], dtype=torch.float64, requires_grad=True)
    proxy.net.double()
    assert torch.autograd.gradcheck(lambda v: from_network(proxy.net(to_network(x, 0.01), v), 0.01), (u,))


def test_transform_keeps_full_range():
    x = torch.tensor([-0.3, 0.0, 1e-4, 0.5, 1.0, 16.0, 300.0])
    back = from_network(to_network(x, 0.01), 0.01)
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-7)


def test_fast_sinh_and_asinh_are_as_accurate_as_torch_and_asinh_has_slope_one_at_zero():
    from models.transform import asinh, sinh
    x = torch.cat([torch.linspace(-12, 12, 20001), torch.tensor([0.0, 1e-9, -1e-30, 1e30, -1.6e38])])
    for fast, exact in ((asinh, torch.asinh), (sinh, torch.sinh)):
        keep = exact(x.double()).abs() < 1e37
        ref = exact(x.double())[keep]
        err = ((fast(x)[keep].double() - ref).abs() / ref.abs().clamp_min(1)).max()
        assert err <= 1.5 * ((exact(x)[keep].double() - ref).abs() / ref.abs().clamp_min(1)).max() + 1e-8
    t = torch.tensor([0.0, -2.0, 7.0], dtype=torch.float64, requires_grad=True)
    asinh(t).sum().backward()
    torch.testing.assert_close(t.grad, 1 / torch.sqrt(1 + t.detach() ** 2))
    assert torch.autograd.gradcheck(asinh, (t,))


def test_per_pixel_families_answer_alike_in_slices(monkeypatch):
    """The pointwise and multiscale forward passes run over slices of the pixels: any slice
    size (a ragged last one too) gives the same outputs and gradients."""
    import models.multiscale
    import models.networks
    from models.networks import build_model
    for spec in (ModelSpec("pointwise", "tiny", 3, 3, 2, extra_channels=4, activation="silu", affine=True, fields=3,
                           field_gates=2),
                 ModelSpec("multiscale", "tiny", 3, 3, 2, extra_channels=4, fine=2)):
        torch.manual_seed(3)
        net = build_model(spec).double()
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.3)
        x = torch.randn(2, 7, 9, 11, dtype=torch.float64)
        results = []
        for chunk in (10 ** 6, 7):
            monkeypatch.setattr(models.networks, "PIXEL_CHUNK", chunk)
            monkeypatch.setattr(models.multiscale, "PIXEL_CHUNK", chunk)
            u = torch.tensor([[0.2, 0.9], [0.6, 0.1]], dtype=torch.float64, requires_grad=True)
            y = net(x, u)
            y.square().sum().backward()
            results.append((y, u.grad))
        torch.testing.assert_close(results[0], results[1])


def test_slider_units_round_trip():
    proxy = make("pointwise")
    values = torch.tensor([[-3.0, 0.05], [4.0, 0.5], [0.5, math.sqrt(0.05 * 0.5)]])
    u = proxy.to_unit(values)
    torch.testing.assert_close(u, torch.tensor([[0, 0], [1, 1], [0.5, 0.5]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(proxy.from_unit(u), values.double(), atol=1e-6, rtol=0)


def test_gradient_loss_is_nchw():
    ramp = torch.arange(5.0).repeat(1, 1, 4, 1)          # (1, 1, 4, 5): changes along W only
    flat = torch.zeros(1, 1, 4, 5)
    # d/dW of the ramp is 1 everywhere, d/dH is 0: only the W term contributes
    assert gradient_loss(ramp, flat).item() == pytest.approx(1.0)
    assert gradient_loss(ramp.transpose(2, 3), flat.transpose(2, 3)).item() == pytest.approx(1.0)
    assert gradient_loss(ramp + 7, ramp).item() == 0.0


def test_loss_specs():
    a, b = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    assert parse_loss("l1+0.5*mse")(a, b).item() == pytest.approx(1.5)
    with pytest.raises(UserError):
        parse_loss("l1+perceptual")


def test_log_mse_weighs_every_image_alike():
    """logmse is the mean over images of their MSE in dB: halving the error of the image with
    the smaller one lowers it as much as halving the larger one (mse would barely move)."""
    target = torch.zeros(2, 1, 2, 2)
    pred = torch.stack([torch.full((1, 2, 2), 1e-3), torch.full((1, 2, 2), 1.0)])
    loss = parse_loss("logmse")
    assert loss(pred, target).item() == pytest.approx((10 * math.log10(1e-6) + 0.0) / 2, abs=1e-4)
    finer, coarser = pred.clone(), pred.clone()
    finer[0] /= 2
    coarser[1] /= 2
    assert loss(finer, target).item() == pytest.approx(loss(coarser, target).item(), abs=1e-4)
    assert math.isfinite(loss(target, target).item())                 # an exact image: the floor


def test_psnr_definition():
    target = torch.tensor([[[[4.0, 0.0], [0.0, 0.0]]]])   # peak 4, not 1
    pred = target + torch.tensor([[[[0.0, 0.4], [0.0, 0.0]]]])
    # MSE = 0.16 / 4 = 0.04; PSNR = 10 log10(16 / 0.04) = 26.02 dB
    assert psnr(pred, target).item() == pytest.approx(10 * math.log10(16 / 0.04))
    assert psnr(target, target).item() == pytest.approx(120.0)
    image = torch.rand(1, 3, 12, 12)
    assert ssim(image, image).item() == pytest.approx(1.0)
    assert ssim(image + 0.3 * torch.rand(1, 3, 12, 12), image).item() < 0.95


def test_cosine_lr():
    assert cosine_lr(1e-3, 0.0) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 1.0) == pytest.approx(1e-5)


def test_checkpoint_round_trip(tmp_path):
    proxy = make("unet")
    proxy.meta = {"proxy_type": "exposure", "name": "x"}
    save_checkpoint(tmp_path / "last.pt", proxy, epoch=3, best_psnr=30.0)
    loaded, payload = load_proxy(tmp_path / "last.pt")
    x, u = torch.rand(1, 3, 9, 9), torch.rand(1, 2)
    torch.testing.assert_close(loaded(x, u), proxy.eval()(x, u))
    assert payload["epoch"] == 3 and loaded.meta["proxy_type"] == "exposure"
    assert loaded.slider_names == ["a", "b"]


def test_incompatible_checkpoints(tmp_path):
    torch.save({"format": 999}, tmp_path / "future.pt")
    with pytest.raises(IncompatibleCheckpoint, match="format 999"):
        read_checkpoint(tmp_path / "future.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(IncompatibleCheckpoint, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")


def test_pointwise_activation_is_recorded_and_old_checkpoints_keep_leaky_relu():
    from torch import nn
    from models.networks import NEW_ACTIVATION, build_model
    old = {"family": "pointwise", "size": "tiny", "in_channels": 3, "out_channels": 3, "n_sliders": 1}
    assert ModelSpec(**old).activation == "leaky"
    assert any(isinstance(m, nn.LeakyReLU) for m in build_model(ModelSpec(**old)).modules())
    new = ModelSpec(**old, activation=NEW_ACTIVATION["pointwise"])
    assert any(isinstance(m, nn.SiLU) for m in build_model(new).modules())
    assert ModelSpec(**new.to_dict()) == new


@pytest.mark.parametrize("activation", ["leaky", "silu"])
def test_pointwise_is_the_per_pixel_mlp_its_weights_hold(activation):
    """The matrix-product form (sliders folded into a bias) computes what the stored
    Sequential computes on a (pixels, channels) table: checkpoints keep their meaning."""
    from models.networks import build_model
    torch.manual_seed(1)
    net = build_model(ModelSpec("pointwise", "small", 3, 3, 2, activation=activation)).double()
    x, u = torch.randn(2, 3, 5, 7, dtype=torch.float64), torch.rand(2, 2, dtype=torch.float64)
    table = torch.cat([x, u[:, :, None, None].expand(2, 2, 5, 7)], 1).permute(0, 2, 3, 1)
    expected = net.mlp(table).permute(0, 3, 1, 2) + x
    torch.testing.assert_close(net(x, u), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", ["unet", "neighbourhood"])
def test_convolution_families_run_pixel_major_and_answer_alike_for_any_input_layout(family, tmp_path):
    proxy = make(family).eval()
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in proxy.parameters() if p.dim() == 4)
    x, u = torch.rand(1, 3, 12, 10), torch.rand(1, 2)
    out = proxy(x, u)
    assert out.is_contiguous()
    torch.testing.assert_close(proxy(x.contiguous(memory_format=torch.channels_last), u), out)
    save_checkpoint(tmp_path / "last.pt", proxy)
    torch.testing.assert_close(load_proxy(tmp_path / "last.pt")[0](x, u), out)


def test_pointwise_affine_map_makes_a_colour_matrix_exact_and_is_differentiable():
    """With the MLP's output at zero, the affine form is asinh(v + A v + b) of the values:
    coefficients that say v -> M v give a channel mixer exactly; gradients reach the sliders."""
    from models.multiscale import VALUE_UNIT
    from models.networks import build_model
    torch.manual_seed(2)
    net = build_model(ModelSpec("pointwise", "tiny", 3, 3, 2, affine=True)).double()
    m = torch.tensor([[1.2, -0.3, 0.1], [0.0, 0.9, 0.2], [-0.1, 0.4, 1.1]], dtype=torch.float64)
    offset = torch.tensor([0.5, -0.2, 0.0], dtype=torch.float64)
    with torch.no_grad():   # coefficients (C_out, C_in + 1): M - I and the offset in VALUE_UNIT
        net.coefficients[-1].bias.copy_(torch.cat([m - torch.eye(3), offset[:, None] / VALUE_UNIT], 1).flatten())
        net.mlp[-1].weight.zero_()
        net.mlp[-1].bias.zero_()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64) * 3
    v = torch.sinh(x)
    expected = torch.asinh(torch.einsum("oc,bchw->bohw", m, v) + offset[None, :, None, None])
    torch.testing.assert_close(net(x, torch.rand(2, 2, dtype=torch.float64)), expected)
    u = torch.tensor([[0.3, 0.6]], dtype=torch.float64, requires_grad=True)
    torch.nn.init.normal_(net.coefficients[-1].weight, std=0.1)
    torch.nn.init.normal_(net.mlp[-1].weight, std=0.1)
    assert torch.autograd.gradcheck(lambda s: net(x[:1], s), (u,))


def test_a_pointwise_network_without_its_mlp_is_the_affine_map():
    from models.multiscale import VALUE_UNIT
    from models.networks import build_model
    net = build_model(ModelSpec("pointwise", "tiny", 3, 3, 2, affine=True, mlp=False)).double()
    assert net.mlp is None
    with torch.no_grad():
        net.coefficients[-1].bias.copy_(torch.cat([-0.5 * torch.eye(3), torch.full((3, 1), 2.0 / VALUE_UNIT)], 1).flatten())
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(net(x, torch.rand(2, 2, dtype=torch.float64)), torch.asinh(0.5 * torch.sinh(x) + 2))
    with pytest.raises(ValueError):
        build_model(ModelSpec("pointwise", "tiny", 3, 3, 2, mlp=False))


def test_field_gates_weight_the_affine_maps_per_pixel():
    """asinh(v + sum_k g_k (A_k v + b_k)), g_k per pixel from the fields; 1 at the start."""
    from models.multiscale import VALUE_UNIT
    from models.networks import build_model
    torch.manual_seed(4)
    net = build_model(ModelSpec("pointwise", "tiny", 3, 3, 2, extra_channels=2, affine=True, fields=3,
                                field_gates=2)).double()
    x = torch.cat([torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.rand(2, 2, 4, 5, dtype=torch.float64)], 1)
    u = torch.rand(2, 2, dtype=torch.float64)
    gains, offsets = torch.tensor([0.5, -0.25], dtype=torch.float64), torch.tensor([0.0, 0.3], dtype=torch.float64)
    with torch.no_grad():   # map k: gains[k] I, offsets[k]
        maps = torch.stack([torch.cat([g * torch.eye(3, dtype=torch.float64), torch.full((3, 1), o / VALUE_UNIT,
                                                                                 dtype=torch.float64)], 1)
                            for g, o in zip(gains, offsets)])
        net.coefficients[-1].bias.copy_(maps.flatten())
        net.mlp[-1].weight.zero_()
        net.mlp[-1].bias.zero_()
    v = torch.sinh(x[:, :3])
    at_start = torch.asinh(v * (1 + gains.sum()) + offsets.sum())
    torch.testing.assert_close(net(x, u), at_start)                       # gates 1 everywhere
    torch.nn.init.normal_(net.gate_mlp[-1].weight, std=0.5)
    fields = torch.bmm(net.field_coefficients(torch.cat([u, torch.ones(2, 1, dtype=u.dtype)], 1)).view(2, 3, -1),
                       quadratic_terms(x[:, 3:].flatten(2)))
    g = net.gate_mlp(torch.cat([fields, u[:, :, None].expand(-1, -1, 20)], 1).transpose(1, 2)).transpose(1, 2)
    g = g.view(2, 2, 1, 4, 5)
    assert g.std() > 0.01                                                  # the gates vary per pixel
    expected = torch.asinh(v + (g * (gains.view(1, 2, 1, 1, 1) * v[:, None]
                                     + offsets.view(1, 2, 1, 1, 1))).sum(1))
    torch.testing.assert_close(net(x, u), expected)


def test_slider_outputs_add_per_pixel_outputs_weighted_linearly_by_the_sliders():
    from models.networks import build_model
    torch.manual_seed(5)
    net = build_model(ModelSpec("multiscale", "tiny", 3, 3, 2, slider_outputs=3)).double()
    x, u = torch.randn(2, 3, 9, 8, dtype=torch.float64), torch.rand(2, 2, dtype=torch.float64)
    without = net(x, u)
    torch.testing.assert_close(net(x, u), without)
    torch.nn.init.normal_(net.out_sliders.weight, std=0.3)                # zero at the start
    change = net(x, u) - without
    assert change.abs().max() > 1e-3
    with torch.no_grad():                                                 # linear in the weights
        net.out_weights.weight.mul_(2)
        net.out_weights.bias.mul_(2)
    torch.testing.assert_close(net(x, u) - without, 2 * change)
    with torch.no_grad():
        net.out_weights.weight.zero_()
        net.out_weights.bias.zero_()
    torch.testing.assert_close(net(x, u), without)


@pytest.mark.parametrize("family, option", [("unet", {"stem": 2}), ("unet", {"stem": 2, "width": 0.75}),
                                            ("neighbourhood", {"stem": 2}),
                                            ("pointwise", {"affine": True}), ("multiscale", {"fine": 2}),
                                            ("multiscale", {"upsample": "expand"}),
                                            ("multiscale", {"slider_outputs": 3}),
                                            ("pointwise", {"affine": True, "mlp": False})])
@pytest.mark.parametrize("cin, cout", [(3, 3), (1, 3), (4, 4)])
def test_new_network_options_any_size_and_through_a_checkpoint(family, option, cin, cout, tmp_path):
    torch.manual_seed(0)
    proxy = Proxy(ModelSpec(family, "tiny", cin, cout, len(SLIDERS), **option), SLIDERS, 0.01).eval()
    x, u = torch.rand(2, cin, 13, 10) * 5, torch.rand(2, 2)   # odd sizes: the stem pads and crops
    out = proxy(x, u)
    assert out.shape == (2, cout, 13, 10) and torch.isfinite(out).all()
    save_checkpoint(tmp_path / "last.pt", proxy)
    loaded, payload = load_proxy(tmp_path / "last.pt")
    assert ModelSpec(**payload["model"]) == proxy.spec
    torch.testing.assert_close(loaded(x, u), out)


def test_unet_width_scales_its_levels_and_older_checkpoints_keep_theirs():
    from models.networks import UNET_SIZES, new_network_options
    assert new_network_options("unet")["width"] == 0.75 and new_network_options("pointwise")["width"] == 1.0
    for width, expected in [(1.0, UNET_SIZES["base"]), (0.75, (24, 48, 96, 192))]:
        net = Proxy(ModelSpec("unet", "base", 3, 3, 2, width=width), SLIDERS, 0.01).net
        assert tuple(block[0].out_channels for block in net.down) == expected
    older = {k: v for k, v in ModelSpec("unet", "base", 3, 3, 2).to_dict().items() if k != "width"}
    assert ModelSpec(**older).width == 1.0
