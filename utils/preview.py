"""Render a few slider settings of a proxy type with darktable and save the tap-outs."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from utils.darktable import Darktable
from utils.pfm import write_tiff
from utils.registry import ProxyType, Slider
from utils.visual import contact_sheet, save_png, to_display

log = logging.getLogger(__name__)


def preview_settings(sliders: Sequence[Slider], count: int) -> list[dict[str, float]]:
    """``count`` settings sweeping every chosen slider together across its range."""
    us = np.linspace(0.0, 1.0, count) if count > 1 else np.array([0.5])
    return [{s.name: round(s.from_sampling(float(u)), 6) for s in sliders} for u in us]


def render_preview(dt: Darktable, proxy: ProxyType, sliders: Sequence[Slider],
                   images: Sequence[Path], count: int, out_dir: Path, size: int) -> Path:
    """Render each image at ``count`` settings; write the ``in``/``out`` tap-outs as float32
    TIFFs and a contact sheet ``preview.png`` (input | output per row) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = preview_settings(sliders, count)
    rows, labels = [], []
    for image in tqdm(images, desc=f"{proxy.name} tap-outs", unit="image"):
        for k, values in enumerate(settings):
            render = dt.render(image, [dt.history_item(proxy, values)], dump=[proxy.operation], size=size,
                               hq=size == 0)
            tap_in, tap_out = render.io(proxy.operation)
            stem = f"{image.stem}_{k:02d}"
            write_tiff(out_dir / f"{stem}_in.tif", tap_in)
            write_tiff(out_dir / f"{stem}_out.tif", tap_out)
            text = " ".join(f"{n}={v:g}" for n, v in values.items())
            rows.append([to_display(tap_in), to_display(tap_out)])
            labels.append([f"{image.stem} in", text])
    sheet = out_dir / "preview.png"
    save_png(sheet, contact_sheet(rows, labels))
    return sheet
