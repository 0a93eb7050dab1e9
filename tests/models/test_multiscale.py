"""The multiscale family's fixed blurs, scale weights and start (tiny tensors, fast)."""
import pytest
import torch

from models.multiscale import (
    BINOMIAL3,
    BINOMIAL5,
    SliderMultiscale,
    guided_luminance,
    mix_scales,
    pyramid_scales,
    scale_weights,
    separable_blur,
)
from models.networks import ModelSpec, build_model


def test_blur_keeps_constants_and_decimates_rounding_up():
    x = torch.full((2, 3, 9, 6), 2.5)
    torch.testing.assert_close(separable_blur(x, BINOMIAL3), x)
    assert separable_blur(x, BINOMIAL5, stride=2).shape == (2, 3, 5, 3)


def test_blur_is_the_depthwise_convolution_with_replicated_edges():
    """The shifted-slice sums compute what a depthwise convolution of the padded image does,
    at stride 1 and 2, odd sizes included."""
    import torch.nn.functional as F
    x = torch.randn(2, 3, 11, 8, dtype=torch.float64)
    for taps, stride in ((BINOMIAL3, 1), (BINOMIAL5, 1), (BINOMIAL5, 2)):
        k = torch.tensor(taps, dtype=torch.float64)
        k = k / k.sum()
        r = len(taps) // 2
        y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(3, 1, 1, -1),
                     stride=(1, stride), groups=3)
        y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(3, 1, -1, 1),
                     stride=(stride, 1), groups=3)
        torch.testing.assert_close(separable_blur(x, taps, stride), y)


def test_expand_is_centred_on_the_pyramid_samples():
    """A ramp decimated as the pyramid does comes back exactly through expand (the bilinear
    upsampling of checkpoints without the field shifts or stretches it by up to half a pixel)."""
    from models.multiscale import UPSAMPLES, _expand_plain, expand
    for n in (9, 10):
        ramp = torch.arange(n, dtype=torch.float64).expand(1, 2, 7, n)      # along W
        coarse = ramp[..., ::2]
        up = expand(coarse, (7, n))
        torch.testing.assert_close(up[..., 1:n - 2], ramp[..., 1:n - 2])     # the edge pixels: replicated
        assert (UPSAMPLES["bilinear"](coarse, (7, n))[..., 1:n - 2] - ramp[..., 1:n - 2]).abs().max() >= 0.25
    one = torch.rand(1, 3, 1, 1)
    torch.testing.assert_close(expand(one, (2, 1)), one.expand(1, 3, 2, 1))
    for shape, size in (((2, 3, 5, 6), (9, 12)), ((1, 2, 1, 2), (1, 3)), ((1, 1, 3, 1), (6, 2))):
        g = torch.randn(shape, dtype=torch.float64, requires_grad=True)   # its own backward: the adjoint
        assert torch.autograd.gradcheck(lambda g: expand(g, size), (g,))
        plain = _expand_plain(_expand_plain(g, size[0], 2), size[1], 3)  # what torch.compile runs
        torch.testing.assert_close(plain, expand(g, size))


def test_pyramid_goes_down_to_one_pixel():
    scales = pyramid_scales(torch.rand(1, 2, 12, 7), levels=5)
    assert len(scales) == 6 and scales[-1][0].shape[-2:] == (1, 1)
    assert all(g.shape == g3.shape for g, g3 in scales)


def test_scale_weights_sum_to_one_and_follow_the_position():
    w = scale_weights(torch.tensor([[-6.0, 0.0, 6.0]]), 8)            # (1, 3, 8)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 3))
    assert w[0, 0].argmax() == 0 and w[0, 2].argmax() == 7 and w[0, 1, 3] == w[0, 1, 4]   # centre 3.5


def test_mix_of_the_finest_scale_is_the_input_and_of_the_coarsest_the_mean():
    torch.manual_seed(0)        # edge replication weights the edges: the mean is met to ~0.1 at worst
    x = torch.rand(1, 2, 16, 16)
    scales = pyramid_scales(x, levels=4)
    finest = torch.zeros(1, 2, 10)
    finest[..., 0] = 1
    torch.testing.assert_close(mix_scales(scales, finest, 1), x)
    coarsest = torch.zeros(1, 2, 10)
    coarsest[..., -1] = 1
    flat = mix_scales(scales, coarsest, 1)
    assert flat.std(dim=(2, 3)).max() < 0.02                            # about constant
    assert (flat.mean(dim=(2, 3)) - x.mean(dim=(2, 3))).abs().max() < 0.05


def test_starts_at_the_identity_with_coordinates_and_without_sliders():
    torch.manual_seed(0)
    net = build_model(ModelSpec("multiscale", "tiny", 3, 3, 0, extra_channels=2))
    assert isinstance(net, SliderMultiscale)
    x = torch.randn(2, 5, 11, 8)
    torch.testing.assert_close(net(x, torch.zeros(2, 0)), x[:, :3], atol=1e-5, rtol=1e-5)


def test_blur_size_moves_with_the_sliders():
    """Once the slider heads say so, one slider setting blurs and another does not."""
    torch.manual_seed(0)
    net = build_model(ModelSpec("multiscale", "tiny", 1, 1, 1))
    with torch.no_grad():          # the linear map: output = the first mix of the input
        net.heads.weight.zero_()
        net.heads.bias.zero_()
        sizes = net._head_sizes()
        start = sum(sizes[:4])
        net.heads.bias[start] = -1.0                        # minus the input ...
        net.heads.bias[start + 1] = 1.0                     # ... plus its first mix
        position = sizes[0]                                 # that mix's blur size: the slider
        net.cond[0].weight.zero_()
        net.cond[0].bias.zero_()
        net.cond[0].weight[0, 0] = 1.0
        net.cond[2].weight.zero_()
        net.cond[2].bias.zero_()
        net.cond[2].weight[0, 0] = 1.0
        net.heads.weight[position, 0] = 40.0
        net.heads.bias[position] = -20.0
    x = torch.zeros(2, 1, 16, 16)
    x[:, :, 8, 8] = 1.0                                      # an impulse in the network domain
    out = net(x, torch.tensor([[0.0], [1.0]]))
    assert out[0, 0, 8, 8] > 0.9 * out[0].max() and out[0, 0, 8, 8] > 0.5   # slider 0: sharp
    assert out[1, 0, 8, 8] < 0.1 and out[1].sum() > 0.3                     # slider 1: spread out


def test_gaussian_blur_is_the_sampled_kernel_and_differentiable_in_sigma():
    from models.multiscale import gaussian_blur
    x = torch.zeros(2, 1, 15, 15, dtype=torch.float64)
    x[:, 0, 7, 7] = 1
    sigma = torch.tensor([0.7, 1.9], dtype=torch.float64, requires_grad=True)
    y = gaussian_blur(x, sigma, radius=4)
    for i, s in enumerate((0.7, 1.9)):
        taps = torch.exp(-torch.arange(-4, 5, dtype=torch.float64) ** 2 / (2 * s * s))
        taps = taps / taps.sum()
        torch.testing.assert_close(y[i, 0, 3:12, 3:12], taps[:, None] * taps[None, :])
    assert torch.allclose(gaussian_blur(torch.ones(1, 3, 6, 5), torch.tensor([2.0])), torch.ones(1, 3, 6, 5))
    assert torch.autograd.gradcheck(lambda s: gaussian_blur(x[:, :, 5:10, 5:10], s, radius=2), (sigma,))


def test_fine_blurs_start_at_the_identity_and_make_an_unsharp_mask_exact():
    """With fine blurs the linear map takes the details v - G_sigma v: coefficients that say
    'v + 0.8 (v - G v)' give an unsharp mask exactly, at the sigma the sliders set."""
    from models.multiscale import gaussian_blur
    torch.manual_seed(0)
    net = build_model(ModelSpec("multiscale", "tiny", 1, 1, 1, fine=1)).double()
    x = torch.randn(2, 1, 12, 9, dtype=torch.float64)
    u = torch.rand(2, 1, dtype=torch.float64)
    torch.testing.assert_close(net(x, u), x)
    sizes = net._head_sizes()
    with torch.no_grad():
        net.heads.weight.zero_()
        net.heads.bias.zero_()
        net.heads.bias[sum(sizes[:4]) + net.n_linear - 1] = 0.8     # the detail's coefficient
    v = torch.sinh(x)
    sigma = net._fine_sigmas(torch.zeros(2, 1, dtype=torch.float64))[:, 0]
    torch.testing.assert_close(net(x, u), torch.asinh(v + 0.8 * (v - gaussian_blur(v, sigma))))


def test_edge_distance_is_in_pixels_of_the_whole_image_in_a_crop_too():
    from models.multiscale import edge_distance
    from utils.data.tapouts import coordinate_planes
    planes = coordinate_planes(9, 12)[None]
    d = edge_distance(planes)[0, 0]
    rows, cols = torch.arange(9)[:, None], torch.arange(12)[None, :]
    expected = torch.minimum(torch.minimum(rows, 8 - rows), torch.minimum(cols, 11 - cols)).float()
    torch.testing.assert_close(d, expected)
    torch.testing.assert_close(edge_distance(planes[..., 3:7, 1:6])[0, 0], expected[3:7, 1:6])


def test_a_border_leaves_the_pixels_it_covers_as_they_are_and_its_width_is_learnt():
    """sharpen leaves ceil(2.5 sigma) px untouched: with a border the output is the input
    there, whatever the network computes inside; the width follows its head, differentiably."""
    from models.multiscale import BORDER_UNIT
    from utils.data.tapouts import coordinate_planes
    torch.manual_seed(0)
    net = build_model(ModelSpec("multiscale", "tiny", 1, 1, 1, extra_channels=4, fine=1, border=True)).double()
    x = torch.randn(2, 1, 16, 14, dtype=torch.float64)
    planes = coordinate_planes(16, 14, 4)[None].expand(2, -1, -1, -1).double()
    u = torch.rand(2, 1, dtype=torch.float64)
    sizes = net._head_sizes()
    with torch.no_grad():
        net.heads.bias[sum(sizes[:4]) + net.n_linear - 1] = 0.8            # sharpen inside
        width = 3.0                                                         # untouched: 3 px
        net.heads.bias[-1] = torch.log(torch.expm1(torch.tensor(width / BORDER_UNIT)))
    y = net(torch.cat([x, planes], 1), u)
    torch.testing.assert_close(y[..., :3, :], x[..., :3, :])
    torch.testing.assert_close(y[..., :, -3:], x[..., :, -3:])
    assert (y[..., 3:-3, 3:-3] - x[..., 3:-3, 3:-3]).abs().min() > 0
    with pytest.raises(ValueError, match="coordinate planes"):
        build_model(ModelSpec("multiscale", "tiny", 1, 1, 1, border=True))
    net.heads.bias.grad = None
    net(torch.cat([x, planes], 1), u).square().sum().backward()
    assert net.heads.bias.grad[-1] == 0                  # the output does not move the width...


def test_the_border_width_is_fitted_to_the_pixels_the_module_changed():
    """...border_loss does: darktable's output equals its input on the border, so the nearest
    changed pixel to the image's edge gives the width (crops away from every edge say nothing)."""
    from models.multiscale import BORDER_UNIT
    from utils.data.tapouts import coordinate_planes
    torch.manual_seed(0)
    net = build_model(ModelSpec("multiscale", "tiny", 1, 1, 1, extra_channels=4, border=True)).double()
    t = torch.randn(2, 1, 16, 14, dtype=torch.float64)
    planes = coordinate_planes(16, 14, 4)[None].expand(2, -1, -1, -1).double()
    target = t.clone()
    target[0, :, 3:-3, 3:-3] += 1                       # image 0: 3 px untouched
    target[1, :, 5:-5, 5:-5] += 1                       # image 1: 5 px
    u = torch.zeros(2, 1, dtype=torch.float64)
    width = BORDER_UNIT * torch.nn.functional.softplus(torch.tensor(0.0))       # the zero heads'
    expected = torch.nn.functional.smooth_l1_loss(width.expand(2).double(), torch.tensor([3.0, 5.0]).double())
    torch.testing.assert_close(net.border_loss(t, planes, target, u), expected)
    inner = (..., slice(4, 12), slice(4, 10))
    assert net.border_loss(t[inner], planes[inner], target[inner], u) == 0
    net.border_loss(t, planes, target, u).backward()
    assert net.heads.bias.grad[-1] != 0


def test_the_gate_leaves_the_image_as_it_is_where_it_is_fitted_near_zero_and_only_out_of_training():
    """sharpen at radius 1 barely changes the image: a gate fitted to the best scale of the
    network's change (gate_loss) turns its noise off there, out of training only."""
    from models.multiscale import gate_scale
    torch.manual_seed(0)
    net = build_model(ModelSpec("multiscale", "tiny", 3, 3, 2, gate=True))
    x, u = torch.randn(2, 3, 10, 9), torch.rand(2, 2)
    torch.testing.assert_close(net(x, u), x, atol=1e-5, rtol=1e-5)          # the identity at the start
    with torch.no_grad():
        net.out.bias.fill_(0.1)                                  # a change of 0.1 everywhere
        net.heads.bias[-1] = -5.0                                # gate fitted near 0
    torch.testing.assert_close(net(x, u), x + 0.1, atol=1e-5, rtol=1e-5)     # training: ungated
    net.eval()
    torch.testing.assert_close(net(x, u), x, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        net.heads.bias[-1] = 1.0                                 # gate 0.73: the change in full
    torch.testing.assert_close(net(x, u), x + 0.1, atol=1e-5, rtol=1e-5)
    assert gate_scale(torch.tensor(0.0)) == 1 and 0 < gate_scale(torch.tensor(-1.8)) < 1
    net.train()
    pred = net(x, u)
    target = x + 0.5 * (pred - x)                                # darktable changes half as much
    loss = net.gate_loss(x, target, pred, u)
    torch.testing.assert_close(loss, (torch.sigmoid(torch.tensor(1.0)) - 0.5) ** 2)
    loss.backward()
    assert net.heads.bias.grad[-1] > 0                           # it moves towards 0.5


def test_guided_luminance_is_exposure_independent_and_keeps_edges_as_its_feathering_says():
    torch.manual_seed(6)
    flat = torch.full((1, 3, 12, 10), 2.0, dtype=torch.float64)
    feather = torch.tensor([[0.3, 0.3]], dtype=torch.float64)
    torch.testing.assert_close(guided_luminance(flat, feather), torch.full((1, 2, 12, 10), 12 ** 0.5,
                                                                          dtype=torch.float64))
    v = torch.rand(2, 3, 16, 14, dtype=torch.float64) + 0.1
    q = guided_luminance(v, feather.expand(2, -1))
    torch.testing.assert_close(guided_luminance(8 * v, feather.expand(2, -1)), 8 * q)   # 3 EV up: 3 EV up
    edge = torch.ones(1, 3, 16, 16, dtype=torch.float64)
    edge[..., 8:] = 64.0                                                   # a 6 EV step
    lum = edge.norm(dim=1, keepdim=True)
    sharp = guided_luminance(edge, torch.tensor([[1e-4]], dtype=torch.float64))
    smooth = guided_luminance(edge, torch.tensor([[1e4]], dtype=torch.float64))
    assert (sharp - lum).abs().max() < 0.01 * lum.max()                    # the edge is kept
    assert (smooth - lum).abs()[..., 7:9].min() > 0.1 * lum.max()          # a blur across it
    v.requires_grad_(True)
    guided_luminance(v, feather.expand(2, -1)).sum().backward()
    assert torch.isfinite(v.grad).all()


def test_a_curve_multiplies_the_values_by_exp_of_bumps_of_the_guided_log_luminance():
    """As darktable's tone equalizer: out = v exp(sum_k h_k bump_k(ln guided luminance))."""
    import models.multiscale as ms
    torch.manual_seed(7)
    net = build_model(ModelSpec("multiscale", "tiny", 3, 3, 2, curve=4)).double()
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64) * 2 + 3
    u = torch.rand(2, 2, dtype=torch.float64)
    torch.testing.assert_close(net(x, u), x)                              # the identity at the start
    heights = torch.tensor([0.5, -0.3, 0.2, 0.7], dtype=torch.float64)
    with torch.no_grad():
        net.heads.bias[-5:-1] = heights                                     # the bumps' heads, then feathering
    v = torch.sinh(x)
    log_lum = torch.log(guided_luminance(v, torch.full((2, 1), 0.3, dtype=torch.float64)))
    lo, hi = ms.CURVE_RANGE
    width = (hi - lo) / 3
    bumps = torch.exp(-0.5 * ((log_lum.clamp(lo, hi)[:, None] - torch.linspace(lo, hi, 4, dtype=torch.float64)
                               .view(1, 4, 1, 1, 1)) / width) ** 2)
    gain = torch.exp((heights.view(1, 4, 1, 1, 1) * bumps).sum(1))
    torch.testing.assert_close(net(x, u), torch.asinh(v * gain))


def test_a_gain_curve_is_linear_in_the_conditioning_and_clamped_as_darktables_correction():
    """curve_gain: out = v clamp(sum_k h_k phi_k(ln guided luminance), 0.25, 4), the bumps phi
    summing to 1 and h a linear function of the conditioning (1 at the start: the identity)."""
    import models.multiscale as ms
    torch.manual_seed(3)
    net = build_model(ModelSpec("multiscale", "tiny", 3, 3, 2, curve=4, curve_gain=True)).double()
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64) * 2 + 3
    u = torch.rand(2, 2, dtype=torch.float64)
    torch.testing.assert_close(net(x, u), x)
    weight = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    with torch.no_grad():
        net.curve_heights.weight[:, :2] = weight                          # the last column takes the 1
    v = torch.sinh(x)
    log_lum = torch.log(guided_luminance(v, torch.full((2, 1), 0.3, dtype=torch.float64)))
    lo, hi = ms.CURVE_RANGE
    bumps = torch.exp(-0.5 * ((log_lum.clamp(lo, hi)[:, None] - torch.linspace(lo, hi, 4, dtype=torch.float64)
                               .view(1, 4, 1, 1, 1)) / ((hi - lo) / 3)) ** 2)
    heights = (u @ weight.T + 1).view(2, 4, 1, 1, 1)
    gain = ((heights * bumps).sum(1) / bumps.sum(1)).clamp(0.25, 4.0)
    torch.testing.assert_close(net(x, u), torch.asinh(v * gain))


def test_a_glow_plane_is_the_lightness_blooms_gathers_and_its_threshold_a_searched_step():
    """glow: L k where L k > threshold (k = 2^(min(100, strength + 1) / 100)), else 0, as
    darktable's bloom gathers it; the new network is the identity, its threshold a step."""
    from models.proxy import Proxy
    from utils.proxies.registry import BLOOM
    from utils.proxies.slider import conditioning_width
    spec = ModelSpec("multiscale", "tiny", 3, 3, conditioning_width(BLOOM.sliders), glow=True)
    proxy = Proxy(spec, BLOOM.sliders, BLOOM.value_scale).eval()
    lab = torch.stack([torch.linspace(0, 100, 20).view(4, 5), torch.zeros(4, 5), torch.zeros(4, 5)])[None]
    values = torch.tensor([[20.0, 80.0, 99.5]], dtype=torch.float64)      # size, threshold, strength
    u = proxy.to_unit(values)
    k = 2.0 ** (100 / 100)                                                 # strength + 1 capped at 100
    expected = torch.where(lab[:, :1] * k > 80.0, lab[:, :1] * k, torch.zeros(1))
    torch.testing.assert_close(proxy._glow(lab[:, :1], u), expected)
    with torch.no_grad():
        torch.testing.assert_close(proxy(lab, u), lab, atol=1e-3, rtol=0)
    assert proxy.steps == [BLOOM.sliders.index(BLOOM.slider("threshold"))]


def test_a_gpus_convolutions_compute_what_a_cpus_slices_do(monkeypatch):
    """On a GPU the blurs and expand run as depthwise convolutions (``sliced``): checked here on
    the CPU, where both can run, at odd sizes and strides, per-image kernels, and through a
    whole pass of the family with its gradients (the slices' figures, float64)."""
    import models.multiscale as ms
    x = torch.randn(2, 3, 11, 8, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([0.6, 1.7], dtype=torch.float64, requires_grad=True)
    net = build_model(ModelSpec("multiscale", "tiny", 3, 3, 2, fine=2, upsample="expand", curve=4)).double()
    with torch.no_grad():                # weights that use the sliders and every part of the pass
        for p in net.parameters():
            p.normal_(0, 0.2)
    sliders = torch.rand(2, 2, dtype=torch.float64)

    def run():
        outputs = [separable_blur(x, BINOMIAL5, stride=2), separable_blur(x, BINOMIAL3),
                   ms.gaussian_blur(x, sigma), ms.expand(x, (21, 16)), ms.expand(x, (22, 15)),
                   separable_blur(x[:1, :1], BINOMIAL5, stride=2), ms.expand(x[:1, 1:2], (22, 16)),
                   ms.gaussian_blur(x[:1, 2:], sigma[1:]),
                   *(g for level in pyramid_scales(x, 3) for g in level),
                   *ms.fine_details(x, torch.stack([sigma, sigma.flip(0) * 0.7], 1)),
                   *ms.fine_details(x[:1, :1], sigma[:1, None]),
                   net(torch.tanh(x), sliders)]
        grads = torch.autograd.grad(sum(o.square().sum() for o in outputs), (x, sigma, *net.parameters()))
        return outputs, grads

    sliced = run()
    monkeypatch.setattr(ms, "sliced", lambda t: False)
    convolved = run()
    for a, b in zip(sliced[0] + list(sliced[1]), convolved[0] + list(convolved[1])):
        torch.testing.assert_close(a, b)
