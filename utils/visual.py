"""Viewable PNGs of scene-referred float images: contact sheets with labels."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def to_display(image: np.ndarray, gamma: float = 2.2) -> np.ndarray:
    """Float image (H, W) or (H, W, 3), linear or display-encoded, -> uint8 RGB for viewing.

    Values are clipped to [0, 1] and a 1/gamma curve brightens linear data; this is for
    looking only, never for metrics.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[2] == 1:   # a raw mosaic as (H, W, 1)
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = np.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0)
    shown = np.clip(image, 0.0, 1.0) ** (1.0 / gamma)
    return (shown * 255.0 + 0.5).astype(np.uint8)


def label(tile: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner of a uint8 RGB tile (white on a dark box)."""
    img = Image.fromarray(tile)
    draw = ImageDraw.Draw(img)
    box = draw.textbbox((3, 2), text)
    draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
    draw.text((3, 2), text, fill=(255, 255, 255))
    return np.asarray(img)


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[Sequence[str]] | None = None,
                  pad: int = 4) -> np.ndarray:
    """Lay out uint8 RGB tiles in a grid (rows of columns), each cell as big as the largest tile."""
    h = max(t.shape[0] for row in rows for t in row)
    w = max(t.shape[1] for row in rows for t in row)
    ncols = max(len(row) for row in rows)
    sheet = np.full((len(rows) * (h + pad) + pad, ncols * (w + pad) + pad, 3), 32, np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            if labels is not None and labels[r][c]:
                tile = label(tile, labels[r][c])
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            sheet[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    return sheet


def save_png(path: str | Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path)


def save_dataset_preview(folder: Path, sliders: Sequence, count: int = 6) -> Path:
    """``preview.png`` in a dataset folder: input | output of its first ``count`` samples."""
    from utils.dataset import read_manifest   # dataset imports visual's users, not the reverse
    from utils.pfm import read_tiff
    rows, labels = [], []
    for row in read_manifest(folder)[:count]:
        rows.append([to_display(read_tiff(row["input"])), to_display(read_tiff(row["output"]))])
        labels.append([row["sample"], " ".join(f"{s.name}={float(row[s.name]):.3g}" for s in sliders)])
    path = folder / "preview.png"
    save_png(path, contact_sheet(rows, labels))
    return path
