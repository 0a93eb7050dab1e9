"""PyTorch datasets over generated tap-out datasets (see utils/data/generate.py for the layout)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from models.mosaic import even_crop, to_rggb
from utils.darktable.files import read_tiff, tiff_shape
from utils.data.images import image_size, required_traits
from utils.data.manifest import read_manifest, read_spec
from utils.errors import UserError
from utils.proxies.schema import Slider
from utils.settings import DEFAULTS

log = logging.getLogger(__name__)


def to_chw(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) -> (C, H, W) float32."""
    image = image[..., None] if image.ndim == 2 else image
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


COORDINATE_PLANES = 4   # what new positional proxies get (checkpoints with 2 keep theirs)
# what new positional proxies get whose type has a pixel length among its sliders
# (``Slider.pixels``): the coordinate planes, then the input's pixel scale
SCALED_PLANES = COORDINATE_PLANES + 1
# what an exact colorin proxy gets instead: its image's camera matrix (white-balanced camera
# RGB -> XYZ D50, models.colorspace.camera_to_xyz_d50), row by row, each entry a constant plane
MATRIX_PLANES = 9
# what an exact denoiseprofile proxy gets: the coordinate planes with the scale (its number of
# scales follows the full size), then its image's white balance (R, G, B), a constant plane each
WB_PLANES = SCALED_PLANES + 3
# the planes that carry an image trait (utils.data.images.TRAITS), by their number
TRAIT_PLANES = {MATRIX_PLANES: "camera_matrix", WB_PLANES: "white_balance"}


def pixel_scale(tapout_shape: Sequence[int], full_size: Sequence[int] | None) -> float:
    """darktable's pipe scale at a tap-out of (H, W[, C]) ``tapout_shape`` for an image of
    ``full_size`` (W, H) at full size (utils.data.images.image_size): the long sides' ratio,
    at most 1 (darktable exports never upscale); 0 when the full size is unknown."""
    if not full_size or min(full_size) <= 0:
        return 0.0
    return min(1.0, max(tapout_shape[:2]) / max(full_size))


def coordinate_planes(height: int, width: int, planes: int = COORDINATE_PLANES,
                      scale: float = 0.0, full_size: Sequence[int] | None = None) -> torch.Tensor:
    """(planes, H, W): the x and y of every pixel centre, from -1 to 1 across the whole image;
    with 4 planes then x and y again, in units of half the image's longest side (the image's
    shape kept: a circle in pixels is a circle there); with 5 (SCALED_PLANES) then the
    image's pixel ``scale`` everywhere (:func:`pixel_scale`; 0: unknown, the proxy takes the
    scale it was trained at).

    With the image's ``full_size`` (W, H), the image spans what darktable's pipe holds: the
    full size times the long sides' ratio, of which the tap-out's H x W pixels are the whole
    part (an image of 450 x 300 at 128 px is 128 x 85.33 there, 85 rows in the tap-out);
    without it, just the tap-out's pixels.

    Positional proxy types (``ProxyType.positional``: vignette, graduated filter, ...) depend
    on where a pixel is in the image, some in coordinates relative to each side (graduatednd's
    line), some in pixels (vignette's circle); their networks get these planes after the image
    channels, so a random crop still knows where it lies and what shape its image has.
    """
    if planes not in (2, 4, SCALED_PLANES):
        raise ValueError(f"coordinate planes are 2, 4 or {SCALED_PLANES}, not {planes}")
    if planes == SCALED_PLANES:
        return torch.cat([coordinate_planes(height, width, full_size=full_size),
                          torch.full((1, height, width), float(scale))])
    extent_x, extent_y = float(width), float(height)
    if full_size and min(full_size) > 0:
        ratio = max(height, width) / max(full_size)
        extent_x, extent_y = full_size[0] * ratio, full_size[1] * ratio
    ys = ((torch.arange(height, dtype=torch.float64) + 0.5) / extent_y * 2 - 1).float()
    xs = ((torch.arange(width, dtype=torch.float64) + 0.5) / extent_x * 2 - 1).float()
    xy = torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width)])
    if planes == 2:
        return xy
    shape = torch.tensor([extent_x, extent_y], dtype=torch.float32)[:, None, None] / max(extent_x, extent_y)
    return torch.cat([xy, xy * shape])


def with_coordinates(x: torch.Tensor, planes: int = COORDINATE_PLANES, scale: float = 0.0,
                     full_size: Sequence[int] | None = None, traits: np.ndarray | None = None) -> torch.Tensor:
    """A whole tap-out (C, H, W) -> (C + planes, H, W) with its coordinate planes appended
    (its pixel ``scale`` and its image's ``full_size``: :func:`coordinate_planes`); with
    TRAIT_PLANES its image's ``traits`` (a camera matrix, row by row; after the coordinates,
    a white balance), one constant plane per value."""
    kind = TRAIT_PLANES.get(planes)
    if kind and traits is None:
        raise ValueError(f"{planes} planes need the image's {kind}")
    if kind:
        values = torch.as_tensor(np.asarray(traits, dtype=np.float64).ravel(), dtype=x.dtype)
        constant = values[:, None, None].expand(len(values), *x.shape[-2:])
        coordinates = planes - len(values)
        parts = [x, coordinate_planes(*x.shape[-2:], coordinates, scale, full_size).to(x.dtype)] if coordinates else [x]
        return torch.cat([*parts, constant], 0)
    return torch.cat([x, coordinate_planes(*x.shape[-2:], planes, scale, full_size).to(x.dtype)], 0)


class TapoutDataset(Dataset):
    """(input, output, normalised sliders) triples of one dataset folder.

    ``crop``: side of a random crop (even offsets, so a mosaic keeps its CFA phase), or None
    for whole images. Raw mosaics (and demosaic's output) are returned in the RGGB frame of
    models.mosaic: cropped to even sizes and mirrored by their image's CFA pattern (from
    dataset.json), so a proxy takes them with its default ``pattern="RGGB"``; metrics do
    not change under mirroring. With ``native``, whole mosaics are returned as darktable
    rendered them (cropped to even size only), for a proxy that computes darktable's own
    operation, which mirroring changes (its tiles and borders start at the top left), given
    each sample's ``pattern``. Images are loaded once and kept in memory when the dataset is smaller
    than ``Constants.PRELOAD_MAX_MB``; an input shared by many samples is loaded once.
    Every image is checked for NaN/Inf when it is first read (at construction when preloaded).
    ``positional``: inputs get that many coordinate planes (True: ``COORDINATE_PLANES``) in the
    whole image (``with_coordinates``, spanning its image's full size where known: ``full_sizes``)
    before cropping; with SCALED_PLANES the last holds the
    image's pixel scale (``pixel_scales``, known when a slider is a pixel length: the full
    sizes dataset.json records, or the source images' headers for datasets made before it);
    TRAIT_PLANES carry the image's camera matrix, or its white balance after the coordinates
    (from its source DNG).
    """

    def __init__(self, folder: str | Path, sliders: Sequence[Slider], crop: int | None = None,
                 positional: bool | int = False, preload_mb: float = DEFAULTS.PRELOAD_MAX_MB,
                 native: bool = False):
        self.folder = Path(folder)
        self.native = native
        self.extra_channels = (COORDINATE_PLANES if positional is True else int(positional))
        self.rows = self._read_manifest(sliders)
        self.sliders = list(sliders)
        self.spec = read_spec(self.folder)
        self.layout, self.patterns = self._read_spec()
        if native and crop is not None and self.layout != "rgb":
            raise ValueError("mosaics in their native frame serve whole images (crop=None): a batch has one CFA pattern")
        self.u = torch.tensor([[s.to_unit(float(r[s.name])) for s in self.sliders] for r in self.rows],
                              dtype=torch.float32).reshape(len(self.rows), len(self.sliders))
        self.cache: dict[str, torch.Tensor] = {}
        self.preload = True
        self._preload(preload_mb)
        self._crop_geometry(crop)
        # each sample's image's full size (W, H) where known, for the coordinate planes
        self.full_sizes = self._full_sizes() if self.extra_channels else [None] * len(self.rows)
        # each image's trait its planes carry (a camera matrix, a white balance), by image
        self.traits = self._image_traits() if self.extra_channels in TRAIT_PLANES else {}
        # a proxy knows the pixel scale when one of its sliders is a length at full size, or
        # its planes carry the scale (its operation follows it)
        self.pixel_scales = (self._pixel_scales() if any(s.pixels for s in self.sliders)
                             or self.extra_channels in (SCALED_PLANES, WB_PLANES) else [0.0] * len(self.rows))

    def _full_sizes(self) -> list[tuple[int, int] | None]:
        """Every sample's image's full size (W, H): the one dataset.json records, or the source
        image's header for datasets made before it; None where neither is at hand."""
        sizes, source = dict(self.spec.get("image_sizes", {})), Path(self.spec.get("source_dir") or ".")
        for name in {r["image"] for r in self.rows} - set(sizes):
            sizes[name] = image_size(source / name)
        return [tuple(sizes[r["image"]]) if sizes[r["image"]] else None for r in self.rows]

    def _image_traits(self) -> dict[str, np.ndarray]:
        """Each image's trait its planes carry (TRAIT_PLANES: utils.data.images.TRAITS) from
        its source file; UserError for an image without it."""
        source, kind, traits = Path(self.spec.get("source_dir") or "."), TRAIT_PLANES[self.extra_channels], {}
        for name in sorted({r["image"] for r in self.rows}):
            traits[name] = required_traits(source / name, kind)
        return traits

    def _pixel_scales(self) -> list[float]:
        """Every sample's pixel scale (:func:`pixel_scale`; 0 where its image's full size is unknown)."""
        if self.spec.get("size") == 0:       # rendered at full size
            return [1.0] * len(self.rows)
        sizes = self.full_sizes if self.extra_channels else self._full_sizes()
        return [pixel_scale(shape, size) for size, shape in zip(sizes, self.output_sizes)]

    @property
    def pixel_scale(self) -> float:
        """The samples' median pixel scale (0: none known): the scale a proxy trained on them knows."""
        known = [s for s in self.pixel_scales if s > 0]
        return float(np.median(known)) if known else 0.0

    def _read_manifest(self, sliders: Sequence[Slider]) -> list[dict[str, str]]:
        """The manifest's rows; UserError when there are none or a slider has no column."""
        rows = read_manifest(self.folder)
        if not rows:
            raise UserError(f"dataset {self.folder} has no samples; generate it first")
        missing = [s.name for s in sliders if s.name not in rows[0]]
        if missing:
            raise UserError(f"dataset {self.folder} has no column for slider(s) {', '.join(missing)}; "
                            "it was generated for other sliders (-p)")
        return rows

    def _read_spec(self) -> tuple[str, dict[str, str]]:
        """(layout, image -> CFA pattern) from dataset.json; mosaic layouts need every image's."""
        layout, patterns = self.spec.get("layout", "rgb"), self.spec.get("cfa_patterns", {})
        if layout != "rgb":
            missing = sorted({r["image"] for r in self.rows} - set(patterns))
            if missing:
                raise UserError(f"dataset {self.folder} has no CFA pattern for {', '.join(missing[:3])} "
                                "in dataset.json; generate it again")
        return layout, patterns

    def _preload(self, preload_mb: float) -> None:
        """The channel counts (from the first sample), and every image read now when the
        dataset fits in ``preload_mb``, so that a damaged file is named before any training
        starts; a larger one is read per sample."""
        first = self.rows[0]
        first_in, first_out = self._load(first["input"], first), self._load(first["output"], first)
        self.in_channels, self.out_channels = first_in.shape[0], first_out.shape[0]
        n_inputs = len({r["input"] for r in self.rows})
        megabytes = (first_in.numel() * n_inputs + first_out.numel() * len(self.rows)) * 4 / 2 ** 20
        if megabytes > preload_mb:
            self.preload = False
            self.cache.clear()
            log.info("dataset %s: %.0f MB, read per sample (PRELOAD_MAX_MB=%d)", self.folder, megabytes,
                     preload_mb)
            return
        for row in self.rows:
            for column in ("input", "output"):
                self._load(row[column], row)

    def _crop_geometry(self, crop: int | None) -> None:
        """The crop side (even, at most the smallest image's side) and the crops per sample
        that cover its pixels about once per epoch; every output's (H, W) (``output_sizes``)."""
        self.output_sizes = sizes = [tiff_shape(r["output"])[:2] for r in self.rows]
        self.min_side = min(min(s) for s in sizes)
        self.crop = None if crop is None else max(2, min(crop, self.min_side) // 2 * 2)
        area = float(np.mean([h * w for h, w in sizes[:50]]))   # an estimate is enough
        self.crops_per_sample = 1 if self.crop is None else max(1, round(area / self.crop ** 2))

    def canonical(self, image: torch.Tensor, row: dict[str, str]) -> torch.Tensor:
        """A (C, H, W) tap-out of ``row``'s image as this dataset returns it: unchanged for
        RGB layouts; for mosaics cropped to even size and mirrored into the RGGB frame."""
        if self.layout == "rgb":
            return image
        if self.native:
            return even_crop(image).contiguous()
        return to_rggb(even_crop(image)[None], self.patterns[row["image"]])[0].contiguous()

    def pattern(self, i: int) -> str:
        """The CFA pattern sample ``i`` is returned in (a proxy's ``pattern`` argument)."""
        return self.patterns[self.rows[i]["image"]] if self.native and self.layout != "rgb" else "RGGB"

    def _load(self, path: str, row: dict[str, str]) -> torch.Tensor:
        if path in self.cache:
            return self.cache[path]
        image = torch.from_numpy(to_chw(read_tiff(path)))
        if not torch.isfinite(image).all():
            raise UserError(f"{path} holds NaN or Inf values; delete it and its manifest row, "
                            "or regenerate the dataset")
        image = self.canonical(image, row)
        if self.preload:
            self.cache[path] = image
        return image

    def load_pair(self, row: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole (input, output) of a manifest row, as __getitem__ returns them uncropped."""
        return self._load(row["input"], row), self._load(row["output"], row)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        row = self.rows[i]
        x, y = self.load_pair(row)
        if x.shape[1:] != y.shape[1:]:
            raise UserError(f"{row['input']} and {row['output']} differ in size")
        if self.extra_channels:
            x = with_coordinates(x, self.extra_channels, self.pixel_scales[i], self.full_sizes[i],
                                 self.traits.get(row["image"]))
        if self.crop is not None:
            h, w = y.shape[1:]
            top = 2 * int(torch.randint(0, (h - self.crop) // 2 + 1, ()))
            left = 2 * int(torch.randint(0, (w - self.crop) // 2 + 1, ()))
            x = x[:, top:top + self.crop, left:left + self.crop]
            y = y[:, top:top + self.crop, left:left + self.crop]
        return x, y, self.u[i]

    def batches(self, batch_size: int, generator: torch.Generator, rank: int = 0,
                world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled (x, y, u) batches from this process's share of the samples.

        An epoch draws from every sample as many random crops as cover its pixels about once
        (one crop for whole-image crops, many for the small crops of per-pixel models), so
        that an epoch means the same amount of data whatever the crop size. Stacking in-memory
        crops directly is faster than a DataLoader for small crops. The last partial batch is
        dropped when there is more than one batch.
        """
        order = torch.randperm(len(self), generator=generator).repeat(self.crops_per_sample)
        order = order[torch.randperm(len(order), generator=generator)][rank::world].tolist()
        n = len(order) // batch_size if len(order) > batch_size else 1
        for b in range(n):
            items = [self[i] for i in order[b * batch_size:(b + 1) * batch_size]]
            yield tuple(torch.stack(t) for t in zip(*items))
