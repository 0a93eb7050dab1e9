"""Filling in a chain: the modules darktable runs between the listed ones, checked from one
render; the exact fixed blocks against darktable's own tap-outs; chain data."""
import numpy as np
import pytest
import torch

from models.fixed import ColorIn, ColorOut, Demosaic
from utils.darktable.runner import Render
from utils.data.manifest import read_manifest, read_spec
from utils.data.tapouts import to_chw
from utils.errors import UserError
from utils.evaluation.metrics import psnr
from utils.pipeline.config import BlockLine
from utils.pipeline.fill import (disabled_modules, exact_block, fill_in, image_context, line_types, probe,
                                 proxy_lines, redundant_sliders)
from utils.proxies.registry import PROXIES
from utils.runs import RunPaths
from utils.settings import DEFAULTS

RAW_ORDER = ["rawprepare", "temperature", "demosaic", "exposure", "colorin", "colorbalancergb", "finalscale",
             "colorout"]


def fake_render(order, no_ops=("finalscale",)):
    tapouts = {}
    for k, op in enumerate(order):
        image = np.full((4, 4, 3), float(k), np.float32)
        tapouts[(op, "in")] = image
        tapouts[(op, "out")] = image if op in no_ops else image + 1
    return Render(tapouts, list(order), "")


def lines_of(*names):
    return [BlockLine(k + 1, name, None, True) for k, name in enumerate(names)]


def filled(lines, order=RAW_ORDER, **kw):
    types = line_types(lines, lambda name: None)
    return [line.name for line in fill_in(lines, types, fake_render(order, **kw), True)]


def test_listed_modules_are_filled_in_to_colorout():
    assert filled(lines_of("exposure", "colorbalancergb")) == ["exposure", "colorin", "colorbalancergb", "colorout"]
    # the seed's format: every module listed; demosaic, colorin and colorout are exact
    seed = lines_of("temperature", "demosaic", "exposure", "colorin", "colorbalancergb", "colorout")
    assert filled(seed) == [line.name for line in seed]
    assert [exact_block(line) for line in seed] == [False, True, False, True, False, True]
    # from temperature on, demosaic (exact) is filled in
    without_balance = [op for op in RAW_ORDER if op != "colorbalancergb"]
    assert filled(lines_of("temperature", "exposure"), order=without_balance) == \
        ["temperature", "demosaic", "exposure", "colorin", "colorout"]
    # a module that changes nothing is left out; one that changes pixels is not
    assert "finalscale" not in filled(lines_of("colorbalancergb"))
    with pytest.raises(UserError, match="runs finalscale after colorbalancergb.*no stand-in"):
        filled(lines_of("colorbalancergb"), no_ops=())


def test_bad_configs_are_refused_from_the_probe():
    with pytest.raises(UserError, match="line 1: colorbalancergb .* out of darktable's order"):
        filled(lines_of("colorbalancergb", "exposure"))
    with pytest.raises(UserError, match="line 2: darktable does not run velvia"):
        filled(lines_of("exposure", "velvia"))
    assert line_types(lines_of("exposure", "vignette"), lambda name: None)["vignette"].positional
    with pytest.raises(UserError, match="line 1: proxy nosuch is not trained, and cannot tell"):
        line_types(lines_of("nosuch"), lambda name: None)
    types = line_types(lines_of("temperature"), lambda name: None)
    with pytest.raises(UserError, match="line 1: temperature works on a raw mosaic"):
        fill_in(lines_of("temperature"), types, fake_render(["colorin", "temperature", "colorout"]), False)
    with pytest.raises(UserError, match="no colorout"):
        filled(lines_of("exposure"), order=["exposure", "colorin"])


def test_a_slider_subset_of_a_bare_type_names_its_own_proxy(tmp_path):
    lines = [BlockLine(1, "colorbalancergb", ("contrast", "saturation_global"), True),
             BlockLine(2, "exposure", None, True), BlockLine(3, "colorbalancergb", ("saturation_global", "vibrance",
                                                                                   "grey_fulcrum", "contrast"), True)]
    names = [line.name for line in proxy_lines(lines, lambda name: False)]
    assert names == ["colorbalancergb_saturation_global_contrast", "exposure", "colorbalancergb"]
    # a trained proxy of the bare name is used as it is
    assert proxy_lines(lines[:1], lambda name: True)[0].name == "colorbalancergb"


# ------------------------------------------------------------------ with darktable

def test_interchangeable_sliders_are_named():
    [warning] = redundant_sliders({"temperature": ["red", "green", "blue"], "exposure": ["exposure", "black"]})
    assert "temperature.green" in warning and "exposure.exposure" in warning and "temperature red,blue" in warning
    assert not redundant_sliders({"temperature": ["red", "blue"], "exposure": ["exposure"]})
    assert not redundant_sliders({"temperature": ["red", "green", "blue"], "colorbalancergb": ["contrast"]})


@pytest.mark.darktable
def test_white_balance_gain_is_an_exposure_change(dt, raw_image):
    """Why REDUNDANT names them: all multipliers times 2 with exposure 1 EV lower (and its black
    level times 2) renders byte-identically."""
    def render(k):
        items = [PROXIES["temperature"].history_item(dt, {"red": 1.6 * k, "green": 0.8 * k, "blue": 1.4 * k}),
                 PROXIES["exposure"].history_item(dt, {"exposure": 0.5 - np.log2(k), "black": 0.004 * k}),
                 *disabled_modules(dt, ["temperature", "exposure"], raw_image, DEFAULTS.PIPELINE_DISABLED_MODULES)]
        return dt.render(raw_image, items, ["colorout"], 0, True).tapouts[("colorout", "out")]
    assert np.array_equal(render(1.0), render(2.0))


@pytest.mark.darktable
def test_fixed_blocks_reproduce_darktable(dt, raw_image):
    """colorin (with the matrix fitted to a default render) and colorout, computed exactly,
    against darktable's tap-outs at other slider values; demosaic with the processed maximum
    measured from the same render."""
    lines = lines_of("exposure", "colorbalancergb")
    types = line_types(lines, lambda name: None)
    render = probe(dt, lines, types, raw_image, DEFAULTS)
    assert [line.name for line in fill_in(lines, types, render, True)] == \
        ["exposure", "colorin", "colorbalancergb", "colorout"]
    context = image_context(dt, raw_image, render)
    assert context.pattern in ("RGGB", "BGGR", "GRBG", "GBRG") and not context.colorin_encoded
    mosaic, rgb = (torch.from_numpy(a) for a in render.io("demosaic"))
    demosaiced = Demosaic()(mosaic[None, None], torch.zeros(1, 0), context)[0].permute(1, 2, 0)
    assert context.processed_maximum > 1 and 10 * np.log10(1 / float((demosaiced - rgb).square().mean())) > 140
    other = dt.render(raw_image, [PROXIES["exposure"].history_item(dt, {"exposure": 2.5}),
                                  PROXIES["colorbalancergb"].history_item(dt, {"contrast": 0.6})],
                      ["colorin", "colorout"], 0, True)
    t = lambda op, kind: torch.from_numpy(to_chw(other.tapouts[(op, kind)]))[None].double()
    lab = ColorIn()(t("colorin", "in"), torch.zeros(1, 0), context)
    assert float(psnr((lab / 100).float(), (t("colorin", "out") / 100).float())[0]) > 80
    display = ColorOut()(t("colorout", "in"), torch.zeros(1, 0))
    assert float(psnr(display.float(), t("colorout", "out").float())[0]) > 80


@pytest.mark.darktable
def test_chain_data_holds_every_blocks_tapouts(dt, tmp_path):
    from utils.data.images import builtin_images, list_images
    from utils.pipeline.chaindata import ChainData, sliders_of
    images = list_images(builtin_images("eval"))
    lines = fill_in(lines_of("exposure", "colorbalancergb"), types := line_types(lines_of("exposure", "colorbalancergb"),
                                                                                  lambda name: None),
                    fake_render(RAW_ORDER), True)
    paths = RunPaths(tmp_path)
    data = ChainData(lines, types, lambda line: sliders_of(line, paths), paths, DEFAULTS, dt.install.version_string)
    data.generate(dt, images, 1, 1)
    exposure, balance = (read_manifest(data.folder(name)) for name in ("exposure", "colorbalancergb"))
    assert len(exposure) == len(balance) == len(images)
    assert list(balance[0])[:8] == ["input", "output", "saturation_global", "vibrance", "grey_fulcrum", "contrast",
                                    "exposure.exposure", "exposure.black"]
    assert [r["sample"] for r in exposure] == [r["sample"] for r in balance]
    for e, b in zip(exposure, balance):
        assert e["exposure"] == b["exposure.exposure"]       # one render, one draw, both datasets
    assert read_spec(data.folder("colorbalancergb"))["sliders"] == ["saturation_global", "vibrance", "grey_fulcrum",
                                                                     "contrast"]
    # a rerun renders nothing again
    data.generate(dt, images, 1, 1)
    assert len(read_manifest(data.folder("exposure"))) == len(images)


@pytest.mark.darktable
def test_end_to_end_fine_tuning_keeps_every_block_and_reports_it(dt, tmp_path):
    """--fine-tune on tiny proxies: chain data with the display RGB, a few steps, the effect per
    block, the fine-tuned weights as best.pt with the previous ones kept."""
    from models.proxy import save_checkpoint
    from tests.pipeline.test_pipeline import tiny_proxy
    from utils.data.images import builtin_images, list_images
    from utils.pipeline.chain import Chain, build_blocks
    from utils.pipeline.chaindata import ChainData, sliders_of
    from utils.pipeline.finetune import fine_tune_chain, fine_tune_report
    from utils.pipeline.targets import image_contexts
    from utils.proxies.trained import load_trained
    paths = RunPaths(tmp_path)
    for name, kind in (("exposure", "exposure"), ("colorbalancergb", "colorbalancergb")):
        paths.weights(name).mkdir()
        save_checkpoint(paths.weights(name) / "best.pt", tiny_proxy(PROXIES[kind].sliders, kind))
    listed = lines_of("exposure", "colorbalancergb")
    types = line_types(listed, lambda name: name)
    lines = fill_in(listed, types, fake_render(RAW_ORDER), True)
    data = ChainData(lines, types, lambda line: sliders_of(line, paths), paths, DEFAULTS, dt.install.version_string)
    images = list_images(builtin_images("eval"))
    data.make(dt, images[:1], images[1:], 1)
    chain = Chain(build_blocks(lines, lambda name: load_trained(paths, name, torch.device("cpu"))[0]),
                  ["identity", "lab_to_rgb", "rgb_to_lab"])
    contexts = image_contexts(dt, chain, images, data.final(1), DEFAULTS)
    before = {name: (paths.weights(name) / "best.pt").read_bytes() for name in ("exposure", "colorbalancergb")}
    result = fine_tune_chain(chain, data, contexts, paths.weights, 0.05, torch.device("cpu"), DEFAULTS)
    assert result["steps"] > 0 and set(result["before"]) == {"exposure", "colorbalancergb", "display RGB"}
    assert "| display RGB |" in fine_tune_report(result)
    for name, blob in before.items():
        assert (paths.weights(name) / "before_chain.pt").read_bytes() == blob
        assert (paths.weights(name) / "best.pt").read_bytes() != blob
