"""The identity baseline next to every fidelity figure: each held-out sample's input taken as
its output, in metrics.json and the report."""
import numpy as np
import torch

from tests.test_reliability import NAME, write_dataset
from utils.darktable.files import read_tiff
from utils.data.manifest import read_manifest
from utils.data.tapouts import TapoutDataset, to_chw
from utils.evaluation.fidelity import identity_psnr
from utils.evaluation.metrics import psnr
from utils.evaluation.report import proxy_report
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
