"""Pipelines: config parsing, colour-space glue, gradient flow through chained proxies, and
Pipeline_regression.py end to end on tiny proxies (darktable tests are marked)."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.colorspace import lab_to_rgb, rgb_to_lab
from models.fixed import ImageContext
from models.networks import EXACT_FAMILY, ModelSpec
from models.proxy import Proxy, save_checkpoint
from tests.conftest import ROOT
from utils.errors import UserError
from utils.evaluation.regress import freeze, regress
from utils.pipeline.chain import Block, Chain
from utils.pipeline.config import BlockLine, parse_config
from utils.data.tapouts import SCALED_PLANES
from utils.proxies.registry import COLORBALANCERGB, EXPOSURE, SHADHI, split_proxy_name
from utils.proxies.slider import Slider, conditioning_width
from utils.proxies.trained import missing_proxies
from utils.runs import RunPaths


def tiny_proxy(sliders, proxy_type, family="pointwise"):
    torch.manual_seed(len(sliders))
    return Proxy(ModelSpec(family, "tiny", 3, 3, len(sliders)), sliders, 0.01,
                 {"proxy_type": proxy_type, "operation": proxy_type})


def two_blocks(recover_cb=("saturation_global", "contrast")):
    exp = Block(BlockLine(1, "exposure_exposure_black", None, True), tiny_proxy(EXPOSURE.sliders, "exposure"),
                EXPOSURE, ["exposure", "black"])
    cb = Block(BlockLine(2, "cb", recover_cb, True), tiny_proxy(COLORBALANCERGB.sliders, "colorbalancergb", "neighbourhood"),
               COLORBALANCERGB, list(recover_cb))
    return [exp, cb]


# ------------------------------------------------------------------ config

def write(tmp_path, text):
    path = tmp_path / "pipeline_config.txt"
    path.write_text(text)
    return path


def test_config_parses_seed_format(tmp_path):
    lines = parse_config(write(tmp_path, "# chain\nexposure full 1\n\ncolorin full 0  # off\n"
                                         "colorbalancergb_saturation_global saturation_global,contrast 1\n"))
    assert [(l.lineno, l.name, l.sliders) for l in lines] == [
        (2, "exposure", None), (5, "colorbalancergb_saturation_global", ("saturation_global", "contrast"))]


@pytest.mark.parametrize("text, message", [
    ("exposure full\n", "line 1"),
    ("exposure full 2\n", "must be 1"),
    ("exposure full 1 extra\n", "4 fields"),
    ("exposure full 0\n", "uses no block"),
    ("exposure full 1\nexposure full 1\n", "already used on line 1"),
    ("exposure , 1\n", "list the sliders"),
])
def test_bad_config_lines_are_refused(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        parse_config(write(tmp_path, text))


def test_missing_config(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        parse_config(tmp_path / "nope.txt")


def test_proxy_names_split_into_type_and_sliders():
    assert split_proxy_name("exposure")[1] == ["exposure", "black"]
    t, s = split_proxy_name("colorbalancergb_saturation_global_grey_fulcrum")
    assert t.name == "colorbalancergb" and s == ["saturation_global", "grey_fulcrum"]
    with pytest.raises(UserError, match="proxy type"):
        split_proxy_name("nosuchmodule_x")
    with pytest.raises(UserError):
        split_proxy_name("exposure_nosuchslider")


# ------------------------------------------------------------------ glue and gradients

def test_colour_conversions_round_trip_and_gradcheck():
    rgb = torch.rand(1, 3, 4, 5, dtype=torch.float64) * 1.5 + 0.001
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-9)
    assert torch.autograd.gradcheck(rgb_to_lab, (rgb.clone().requires_grad_(),))
    lab = rgb_to_lab(rgb).detach().requires_grad_()
    assert torch.autograd.gradcheck(lab_to_rgb, (lab,))
    assert torch.allclose(rgb_to_lab(torch.ones(1, 3, 1, 1, dtype=torch.float64))[0, :, 0, 0],
                          torch.tensor([100.0, 0.0, 0.0], dtype=torch.float64), atol=1e-3)


@pytest.mark.parametrize("conversion", ["identity", "rgb_to_lab"])
def test_gradient_reaches_every_block(conversion):
    chain = Chain(two_blocks(), [conversion])
    freeze(chain)
    x = torch.rand(2, 3, 8, 8) * 0.5 + 0.05
    u = torch.full((2, chain.n_sliders), 0.4, requires_grad=True)
    chain(x, u).square().mean().backward()
    for k, block in enumerate(chain.blocks):
        grad = u.grad[:, chain.slices[k]]
        assert (grad.abs() > 0).all(), f"no gradient for {block.name}"


def test_a_chain_with_an_exact_block_fits_whole_images_and_searches_its_step():
    spec = ModelSpec(EXACT_FAMILY, "base", 3, 3, conditioning_width(SHADHI.sliders), extra_channels=SCALED_PLANES,
                     pixel_scale=0.25, **SHADHI.network)
    names = [s.name for s in SHADHI.sliders]
    shadhi = Block(BlockLine(2, "shadhi", None, True), Proxy(spec, SHADHI.sliders, SHADHI.value_scale).eval(),
                   SHADHI, names)
    chain = Chain([two_blocks()[0], shadhi], ["rgb_to_lab"])
    assert chain.whole_image and not Chain(two_blocks(), ["identity"]).whole_image
    assert chain.planes == SCALED_PLANES and chain.slider_labels()[chain.steps[0]] == "shadhi.radius"
    with torch.no_grad():
        out = chain(chain.input(torch.rand(1, 3, 16, 16) * 0.5 + 0.05), torch.full((1, chain.n_sliders), 0.4))
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()


def test_non_recovered_sliders_stay_at_default():
    chain = Chain(two_blocks(("contrast",)), ["identity"])
    assert chain.n_sliders == 3 and chain.slider_labels()[-1] == "cb.contrast"
    full = chain.block_u(1, torch.tensor([[0.1, 0.2, 0.9]]))
    defaults = chain.blocks[1].defaults()
    names = chain.blocks[1].proxy.slider_names
    for j, n in enumerate(names):
        expected = 0.9 if n == "contrast" else float(defaults[j])
        assert abs(float(full[0, j]) - expected) < 1e-6


def test_joint_regression_moves_every_block():
    chain = Chain(two_blocks(), ["identity"])
    freeze(chain)
    x = torch.rand(1, 3, 16, 16) * 0.5 + 0.05
    u_true = torch.tensor([[0.7, 0.3, 0.8, 0.2]])
    with torch.no_grad():
        y = chain(x, u_true)
    rec = regress(chain, chain.n_sliders, chain.scale, x, y, 30, 2, torch.Generator().manual_seed(0))
    moved = (rec.u - rec.start).abs()
    for k in range(len(chain.blocks)):
        assert moved[chain.slices[k]].max() > 1e-3


# ------------------------------------------------------------------ with darktable

@pytest.mark.darktable
def test_glue_matches_darktable_tapouts(dt, raw_image):
    from utils.data.tapouts import to_chw
    render = dt.render(raw_image, [EXPOSURE.history_item(dt, {"exposure": 0.7}),
                                   COLORBALANCERGB.history_item(dt, {"saturation_global": 0.4, "contrast": 0.3})],
                       dump=["colorin", "colorbalancergb", "colorout"], size=0)
    t = lambda op, kind: torch.from_numpy(to_chw(render.tapouts[(op, kind)]))[None].double()
    rgb = lab_to_rgb(t("colorin", "out"))
    assert (rgb - t("colorbalancergb", "in")).abs().max() < 1e-4
    lab = rgb_to_lab(t("colorbalancergb", "out"))
    assert (lab - t("colorout", "in")).abs().max() < 0.03        # L*a*b* units (L 0..100)
    assert render.order.index("colorin") < render.order.index("colorbalancergb") < render.order.index("colorout")


@pytest.fixture(scope="module")
def pipeline_root(tmp_path_factory, tiff16):
    """A ROOT with two untrained tiny proxies saved as trained ones, and one TIFF image."""
    root = tmp_path_factory.mktemp("pipeline")
    for name, sliders, kind in (("exposure_exposure_black", EXPOSURE.sliders, "exposure"),
                                ("colorbalancergb_saturation_global_vibrance_grey_fulcrum_contrast",
                                 COLORBALANCERGB.sliders, "colorbalancergb")):
        folder = root / f"{name}_model_weights"
        folder.mkdir()
        save_checkpoint(folder / "best.pt", tiny_proxy(sliders, kind))
    images = root / "images"
    images.mkdir()
    import shutil
    shutil.copy(tiff16, images)
    return root


def run_pipeline(root, config_text, *extra):
    config = root / "config.txt"
    config.write_text(config_text)
    return subprocess.run([sys.executable, "Pipeline_regression.py", "--config", str(config), "--out", str(root),
                           "--eval-images", str(root / "images"), "--device", "cpu", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


CHAIN = ("exposure_exposure_black full 1\n"
         "colorbalancergb_saturation_global_vibrance_grey_fulcrum_contrast saturation_global,contrast 1\n")


@pytest.mark.darktable
def test_pipeline_regression_end_to_end(pipeline_root):
    proc = run_pipeline(pipeline_root, CHAIN, "-n", "2", "--iters", "5",
                        "--set", "PIPELINE_ANIMATION_TARGETS=1")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((pipeline_root / "pipeline" / "metrics.json").read_text())
    for key in ("blocks", "targets", "param_mae", "proxy_psnr", "darktable_psnr", "per_block"):
        assert key in metrics
    # colorout is filled in (exact): the chain ends at the display RGB an export writes
    assert metrics["targets"] == 2 and metrics["blocks"][2] == "colorout" and len(metrics["blocks"]) == 3
    assert metrics["conversions"] == ["identity", "rgb_to_lab"]   # in linear Rec.2020 after colorin, then Lab
    for name in metrics["blocks"][:2]:
        assert set(metrics["per_block"][name]) >= {"param_mae", "moved"} and metrics["per_block"][name]["moved"] > 0
    assert metrics["per_block"]["colorout"]["sliders"] == []
    assert np.isfinite(metrics["darktable_psnr"])
    assert (pipeline_root / "pipeline" / "report.md").read_text().startswith("# pipeline")
    assert len((pipeline_root / "params" / "pipeline.csv").read_text().splitlines()) == 3
    outputs = sorted((pipeline_root / "pipeline" / "outputs").iterdir())
    assert len(outputs) == 2 and (outputs[0] / "blocks.png").exists()
    assert list((pipeline_root / "pipeline_animations").glob("*.mp4"))
    assert "| metric | value |" in proc.stdout
    # a rerun reuses the data and the journal: same numbers, nothing rendered again
    again = run_pipeline(pipeline_root, CHAIN, "-n", "2", "--iters", "5", "-s")
    assert again.returncode == 0, again.stderr
    assert json.loads((pipeline_root / "pipeline" / "metrics.json").read_text())["param_mae"] == metrics["param_mae"]


@pytest.mark.darktable
def test_pipeline_order_is_checked_against_darktable(pipeline_root, tmp_path):
    reversed_chain = "\n".join(reversed(CHAIN.strip().splitlines())) + "\n"
    # another ROOT, where the proxies are missing: the order is checked first, from one render
    proc = run_pipeline(pipeline_root, reversed_chain, "-n", "1", "--iters", "2", "--out", str(tmp_path),
                        "--train-missing")
    assert proc.returncode == 2 and "out of darktable's order" in proc.stderr and "line 1" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.glob("stage_*"))


def test_untrained_proxy_names_its_line(tmp_path):
    assert missing_proxies([BlockLine(3, "exposure", None, True)], RunPaths(tmp_path), True)[0].lineno == 3
    with pytest.raises(UserError, match="line 4: proxy exposure is not trained.*--train-missing"):
        missing_proxies([BlockLine(4, "exposure", None, True)], RunPaths(tmp_path), False)


@pytest.mark.parametrize("pattern", ["RGGB", "GBRG"])
def test_gradient_crosses_mosaic_blocks(pattern):
    """temperature-like mosaic block -> slider-less demosaic-like block -> exposure: the mosaic
    block's sliders get gradient through the packing and the demosaic proxy."""
    from models.mosaic import network_channels
    from utils.proxies.registry import get_proxy

    def proxy(layout, sliders, kind):
        cin, cout = network_channels(layout, 1, 1 if layout == "mosaic" else 3)
        return Proxy(ModelSpec("pointwise", "tiny", cin, cout, len(sliders), layout), sliders, 0.01,
                     {"proxy_type": kind})
    wb = [Slider(n, 0.25, 4.0, 1.0, scale="log") for n in ("red", "blue")]
    blocks = [Block(BlockLine(1, "temperature", None, True), proxy("mosaic", wb, "temperature"),
                    get_proxy("temperature"), ["red", "blue"]),
              Block(BlockLine(2, "demosaic", None, True), proxy("mosaic_rgb", [], "demosaic"),
                    get_proxy("demosaic"), []),
              Block(BlockLine(3, "exposure", None, True), tiny_proxy(EXPOSURE.sliders, "exposure"), EXPOSURE,
                    ["exposure"])]
    chain = Chain(blocks, ["identity", "identity"])
    chain.context = ImageContext(pattern)
    freeze(chain)
    assert chain.mosaic and chain.n_sliders == 3
    u = torch.full((1, 3), 0.5, requires_grad=True)
    out = chain(torch.rand(1, 1, 8, 12) * 0.5, u)
    assert out.shape == (1, 3, 8, 12)
    out.square().mean().backward()
    assert (u.grad.abs() > 0).all()


def test_exact_demosaic_follows_the_white_balance_block_and_passes_gradient():
    """temperature-like mosaic block -> exact demosaic -> exposure: demosaic's processed
    maximum is the white-balance block's largest multiplier, and the white-balance sliders get
    gradient through it."""
    from models.darktable.demosaic import rcd_demosaic
    from models.fixed import Demosaic
    from models.mosaic import network_channels
    from utils.proxies.registry import get_proxy
    wb = [Slider(n, 0.25, 4.0, 1.0, scale="log") for n in ("red", "blue")]
    cin, cout = network_channels("mosaic", 1, 1)
    temperature = Proxy(ModelSpec("pointwise", "tiny", cin, cout, 2, "mosaic"), wb, 0.01, {"proxy_type": "temperature"})
    blocks = [Block(BlockLine(1, "temperature", None, True), temperature, get_proxy("temperature"), ["red", "blue"]),
              Block(BlockLine(0, "demosaic", (), True), Demosaic(), get_proxy("demosaic"), []),
              Block(BlockLine(3, "exposure", None, True), tiny_proxy(EXPOSURE.sliders, "exposure"), EXPOSURE,
                    ["exposure"])]
    chain = Chain(blocks, ["identity", "identity"])
    chain.context = ImageContext("GBRG")
    assert chain.context_margin == 10 and Chain(blocks[2:], []).context_margin == 0
    freeze(chain)
    u = torch.tensor([[0.9, 0.2, 0.5]], requires_grad=True)     # red 3.0, blue 0.44 (green: 1)
    x = torch.rand(1, 1, 24, 30) * 0.5
    out, (balanced, rgb, _) = chain(x, u, keep=True)
    red = float(temperature.from_unit(u.detach()[:, :2])[0, 0])
    assert red > 3 and torch.equal(rgb, rcd_demosaic(balanced, "GBRG", red))
    out.square().mean().backward()
    assert torch.isfinite(u.grad).all() and (u.grad.abs() > 0).all()


def test_regression_crops_carry_the_margin_of_context_asked_for():
    from utils.evaluation.regress import SCREENED, with_margin
    assert with_margin(10, 8, 32, 4) == (slice(6, 22), slice(4, 12))
    assert with_margin(2, 8, 12, 4) == (slice(0, 12), slice(2, 10))     # clipped at both ends
    seen = []

    def forward(x, u):
        seen.append(tuple(x.shape[-2:]))
        return x * u[:, :1, None, None]
    x = torch.rand(1, 3, 32, 32) + 0.1
    rec = regress(forward, 1, 0.01, x, x * 0.5, 30, 2, torch.Generator().manual_seed(0), lr=0.2, crop=8, margin=4)
    descent = seen[SCREENED:-1]     # after the screening of the starts, before the final pick (whole image)
    assert abs(float(rec.u[0]) - 0.5) < 0.02 and max(descent) == (16, 16) and min(seen) >= (8, 8)


def test_regression_survives_a_start_that_overflows():
    """A start whose output is not finite neither poisons the others nor wins (with this seed
    five of the eight starts begin in the region where the output is NaN)."""
    def forward(x, u):
        return torch.where(u[:, :1, None, None] > 0.3, x * u[:, :1, None, None] * 2,
                           torch.full_like(x, float("nan")))
    x = torch.rand(1, 3, 8, 8) + 0.1
    rec = regress(forward, 1, 0.01, x, x * 1.5, 20, 8, torch.Generator().manual_seed(3))
    assert torch.isfinite(rec.u).all() and math.isfinite(rec.loss)


def test_a_positional_block_gets_the_coordinates_of_its_pixels_in_the_whole_image():
    """The chain's input carries coordinate planes (Chain.with_planes, before any crop): a crop
    of the input then gives the positional block (vignette) the crop of what the whole image
    gives it, as regression's random crops need."""
    from utils.proxies.registry import VIGNETTE
    torch.manual_seed(0)
    vignette = Proxy(ModelSpec("pointwise", "tiny", 3, 3, len(VIGNETTE.sliders), extra_channels=4, fields=8),
                     VIGNETTE.sliders, 0.01, {"proxy_type": "vignette"})
    with torch.no_grad():                         # a field of position that matters
        for p in vignette.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    exp = two_blocks()[0]
    chain = Chain([exp, Block(BlockLine(2, "vignette", None, True), vignette, VIGNETTE,
                              vignette.slider_names)], ["identity"])
    assert chain.planes == 4 and Chain([exp], []).planes == 0
    x = torch.rand(1, 3, 12, 16) * 0.5 + 0.05
    xin = chain.with_planes(x)
    assert xin.shape[1] == 7 and torch.equal(Chain([exp], []).with_planes(x), x)
    u = torch.full((1, chain.n_sliders), 0.4)
    with torch.no_grad():
        whole = chain(xin, u)
        crop = chain(xin[..., 2:8, 4:14], u)
        alone = vignette(torch.cat([chain.block(0, x, chain.block_u(0, u)), xin[:, 3:]], 1), chain.block_u(1, u))
    torch.testing.assert_close(crop, whole[..., 2:8, 4:14])
    torch.testing.assert_close(whole, alone)
    assert not torch.allclose(whole, chain(chain.with_planes(x.flip(-1)), u).flip(-1))   # position matters
    with pytest.raises(ValueError, match="positional"):
        chain.block(1, x, chain.block_u(1, u))


def test_chain_fine_tuning_fits_whole_images_when_a_block_computes_on_them(tmp_path, monkeypatch):
    """A hazeremoval block (the exact family: its ambient light is the whole image's) makes
    every fine-tuning step take the whole image rather than a crop of it."""
    from utils.darktable.files import write_tiff
    from utils.pipeline import finetune
    from utils.proxies.registry import HAZEREMOVAL
    spec = ModelSpec(EXACT_FAMILY, "base", 3, 3, conditioning_width(HAZEREMOVAL.sliders), **HAZEREMOVAL.network)
    haze = Block(BlockLine(2, "hazeremoval", None, True), Proxy(spec, HAZEREMOVAL.sliders, HAZEREMOVAL.value_scale).eval(),
                 HAZEREMOVAL, [s.name for s in HAZEREMOVAL.sliders])
    chain = Chain([two_blocks()[0], haze], ["identity"])
    assert chain.whole_image
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("input", "middle", "output"):          # larger than the fine-tuning crop
        paths[name] = tmp_path / f"{name}.tif"
        write_tiff(paths[name], (rng.random((80, 96, 3)) * 0.5 + 0.1).astype(np.float32))
    first = chain.blocks[0].name
    sample = finetune.ChainSample("k", "image", {first: (paths["input"], paths["middle"]),
                                                 "hazeremoval": (paths["middle"], paths["output"])},
                                  {first: torch.tensor([0.5, 0.5]), "hazeremoval": torch.tensor([0.3, 0.5])},
                                  paths["output"])
    seen, run = [], chain.run
    monkeypatch.setattr(chain, "run", lambda x, u, **kw: (seen.append(tuple(x.shape[-2:])), run(x, u, **kw))[1])
    loss = finetune._sample_loss(chain, sample, {"image": ImageContext()}, {}, first,
                                 torch.Generator().manual_seed(0), torch.device("cpu"))
    assert seen == [(80, 96)] and torch.isfinite(loss)
