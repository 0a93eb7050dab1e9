"""Viewable pictures of scene-referred float images: contact sheets with labels, PNGs, and
videos (regression animations, sweeps)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    import torch


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




def write_animation(folder: Path, stem: str, frames: list, target: torch.Tensor,
                    caption: Callable[[torch.Tensor], str]) -> Path | None:
    """PNG frames (output at each iteration, captioned ``caption(u)`` | darktable target) and
    an mp4 of them."""
    if not frames:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    goal = to_display(target.permute(1, 2, 0).numpy())
    images = []
    for k, (it, u, pred) in enumerate(frames):
        tile = contact_sheet([[to_display(pred.permute(1, 2, 0).numpy()), goal]],
                             [[f"iter {it}: {caption(u)}", "darktable target"]])
        save_png(folder / f"{stem}_{k:04d}.png", tile)
        images.append(tile)
    return write_video(folder / f"{stem}.mp4", images, fps=12)


def write_video(path: Path, frames: Iterable[np.ndarray], fps: int = 25,
                size: tuple[int, int] | None = None) -> Path:
    """An H.264 mp4 through imageio's FFmpeg plugin (no system FFmpeg needed). Frames are
    placed on a canvas of ``size`` (height, width), default the largest frame's; with a
    ``size``, frames are streamed (never all in memory)."""
    if size is None:
        frames = list(frames)
        size = (max(f.shape[0] for f in frames), max(f.shape[1] for f in frames))
    h, w = size[0] + size[0] % 2, size[1] + size[1] % 2
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                            ffmpeg_log_level="error") as writer:
        for f in frames:
            canvas = np.zeros((h, w, 3), np.uint8)
            canvas[:f.shape[0], :f.shape[1]] = f
            writer.append_data(canvas)
    return path
