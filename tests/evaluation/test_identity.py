"""The identity baseline next to every fidelity figure: each held-out sample's input taken as
its output (a demosaic's: the bilinear demosaic; none for a change of colour space), in
metrics.json and the report."""
import dataclasses

import numpy as np
import pytest
import torch

from tests.test_reliability import NAME, write_dataset
from utils.darktable.files import read_tiff
from utils.data.manifest import read_manifest
from utils.data.tapouts import TapoutDataset, to_chw
from models.darktable.demosaic import colour_map
from utils.evaluation.fidelity import BASELINES, bilinear_demosaic, identity_psnr
from utils.evaluation.metrics import psnr
from utils.evaluation.report import proxy_report
from utils.proxies import schema
from utils.proxies.registry import PROXIES


def test_the_identity_is_the_mean_psnr_of_inputs_taken_as_outputs(tmp_path):
    folder = write_dataset(tmp_path / NAME, 2, 3, seed=4)
    by_hand = [float(psnr(*(torch.from_numpy(to_chw(read_tiff(row[k])))[None] for k in ("input", "output")))[0])
               for row in read_manifest(folder)]
    data = TapoutDataset(folder, PROXIES["exposure"].sliders)
    assert len(by_hand) == 6 and len(set(round(v, 6) for v in by_hand)) == 6      # every sample differs
    assert identity_psnr(data) == np.mean(by_hand)


def test_the_report_shows_the_identity_where_it_was_measured():
    metrics = {"proxy": NAME, "darktable_version": "5.0.1", "val_samples": 20, "val_psnr": 48.5, "val_ssim": 0.99,
               "val_mae": 0.01, "regression": {"skipped": "no sliders"}}
    assert "identity" not in proxy_report(metrics)                  # a metrics.json from before it
    lines = proxy_report({**metrics, "val_identity_psnr": 12.25}).splitlines()
    psnr_row = next(i for i, line in enumerate(lines) if "PSNR vs darktable" in line)
    assert lines[psnr_row + 1] == "| fidelity: identity (the input taken as output), same samples | 12.25 dB |"
    lines = proxy_report({**metrics, "val_identity_psnr": 31.5, "val_baseline": "bilinear"}).splitlines()
    assert lines[psnr_row + 1] == ("| fidelity: identity (the bilinear demosaic of the input), same samples "
                                   "| 31.50 dB |")
    lines = proxy_report({**metrics, "val_identity_psnr": None, "val_baseline": "none"}).splitlines()
    assert lines[psnr_row + 1] == "| fidelity: identity | none: input and output are values of two colour spaces |"


def test_a_change_of_colour_space_has_no_identity(tmp_path):
    folder = write_dataset(tmp_path / NAME, 1, 2, seed=4)
    assert identity_psnr(TapoutDataset(folder, PROXIES["exposure"].sliders), "none") is None
    assert [PROXIES[t].baseline for t in ("colorin", "colorout", "demosaic", "exposure")] == \
        ["none", "none", "bilinear", "identity"]
    with pytest.raises(ValueError, match="baseline"):
        dataclasses.replace(PROXIES["exposure"], baseline="nothing")


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_the_bilinear_demosaic_keeps_photosites_and_interpolates_ramps_exactly(pattern):
    h, w = 10, 13
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    rgb = torch.stack([0.1 + 0.03 * xx, 0.2 + 0.02 * yy, 0.05 + 0.01 * (xx + yy)])      # a linear ramp per channel
    colours = colour_map(pattern, h, w)
    mosaic = rgb.gather(0, colours[None])
    out = bilinear_demosaic(mosaic, pattern)
    assert torch.equal(out.gather(0, colours[None]), mosaic)                            # photosites kept
    torch.testing.assert_close(out[:, 1:-1, 1:-1], rgb[:, 1:-1, 1:-1], rtol=0, atol=1e-12)   # inside: exact
    if pattern == "RGGB":                                      # at the red corner: what lies inside
        assert out[1, 0, 0] == (mosaic[0, 0, 1] + mosaic[0, 1, 0]) / 2 and out[2, 0, 0] == mosaic[0, 1, 1]


def test_every_baseline_a_type_may_name_has_its_line_in_the_report():
    """The registry's names (validated by ProxyType) and the report's lines are one list."""
    assert set(BASELINES) == set(schema.BASELINES)
