"""Built-in default images: real photographs "unprocessed" into camera raw DNGs.

No installable package ships camera raw files, so we make them from the photographs in
scikit-image's package data, following "Unprocessing Images for Learned Raw Denoising"
(Brooks et al., CVPR 2019): inverse tone curve, inverse sRGB gamma, sRGB -> camera colour
matrix, inverse white balance with highlight protection, Bayer mosaic, shot/read noise,
quantisation. Each image gets its own camera traits, as real cameras differ: CFA pattern
(RGGB, BGGR, GRBG, GBRG), 12/14/16-bit, black level, colour matrix and white balance.

The DNGs carry the tags darktable (rawspeed) needs: CFA pattern, black/white level,
ColorMatrix1 (XYZ D65 -> camera) and AsShotNeutral, so darktable's whole raw pipe runs
(rawprepare, temperature, highlights, demosaic, ..., colorin).

Training and evaluation scenes are disjoint. The set is built once into
``Constants.CACHE_DIR`` (deterministically: same bytes every build) and rebuilt when
``Constants.BUILTIN_IMAGES_VERSION`` changes.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import tifffile
from PIL import Image

from models.colorspace import camera_to_xyz_d50
from utils.darktable.cfa import PROBE_GAINS, image_pattern
from utils.darktable.runner import Darktable
from utils.errors import UserError, cli_main
from utils.proxies.registry import TEMPERATURE
from utils.settings import DEFAULTS, Settings, configure

# tifffile logs what it finds wrong in a damaged file; check_readable reports it in one line
logging.getLogger("tifffile").setLevel(logging.ERROR)

# XYZ(D65) -> camera matrices of real cameras (Adobe DNG converter values, x 1e-4).
CAMERA_MATRICES = {
    "Canon EOS 5D Mark II": (4716, 603, -830, -7798, 15474, 2480, -1496, 1937, 6651),
    "Nikon D700": (8139, -2171, -663, -8747, 16541, 2295, -1925, 2008, 8093),
}
SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
# CFA patterns as DNG colour indices (0 red, 1 green, 2 blue), row-major over a 2x2 tile.
CFA_PATTERNS = {"RGGB": (0, 1, 1, 2), "BGGR": (2, 1, 1, 0), "GRBG": (1, 0, 2, 1), "GBRG": (1, 2, 0, 1)}


@dataclass(frozen=True)
class Camera:
    """The traits of one simulated camera."""

    pattern: str            # key of CFA_PATTERNS
    bits: int               # sensor bit depth: white level 2^bits - 1
    black: int              # black level in sensor counts
    red_gain: float         # white-balance multipliers the camera would apply (green = 1)
    blue_gain: float
    matrix_mix: float       # blend of the two reference cameras' colour matrices
    brightness: float       # global gain < 1 leaves highlight headroom
    noise: float            # shot-noise scale (read noise is a tenth of it squared)


@dataclass(frozen=True)
class Scene:
    name: str               # file stem
    source: str             # skimage.data loader
    camera: Camera


TRAIN_SCENES = (
    Scene("astronaut", "astronaut", Camera("RGGB", 14, 512, 2.10, 1.55, 0.0, 0.80, 2e-4)),
    Scene("coffee", "coffee", Camera("BGGR", 12, 256, 1.90, 1.75, 0.3, 0.75, 4e-4)),
    Scene("rocket", "rocket", Camera("GRBG", 16, 1024, 2.35, 1.45, 0.6, 0.85, 1e-4)),
    Scene("hubble", "hubble_deep_field", Camera("GBRG", 14, 600, 1.80, 1.90, 1.0, 0.90, 3e-4)),
    Scene("ihc", "immunohistochemistry", Camera("RGGB", 12, 128, 2.25, 1.60, 0.8, 0.70, 2e-4)),
    Scene("retina", "retina", Camera("BGGR", 16, 2048, 1.95, 1.50, 0.2, 0.80, 1e-4)),
)
EVAL_SCENES = (
    Scene("chelsea", "chelsea", Camera("GRBG", 14, 400, 2.05, 1.65, 0.5, 0.80, 3e-4)),
    Scene("motorcycle", "stereo_motorcycle", Camera("GBRG", 12, 64, 2.20, 1.40, 0.9, 0.75, 2e-4)),
)
SPLITS = {"train": TRAIN_SCENES, "eval": EVAL_SCENES}


def _load_photo(source: str) -> np.ndarray:
    from skimage import data  # heavy import, only when images are built
    image = getattr(data, source)()
    if isinstance(image, tuple):   # stereo_motorcycle -> (left, right, disparity)
        image = image[0]
    return image[..., :3].astype(np.float64) / 255.0


def _resize_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    from skimage.transform import resize
    h, w = image.shape[:2]
    scale = min(1.0, long_side / max(h, w))
    # even size so that every 2x2 CFA tile is complete
    size = (max(2, int(round(h * scale)) // 2 * 2), max(2, int(round(w * scale)) // 2 * 2))
    return resize(image, size, anti_aliasing=scale < 1, order=1, mode="reflect")


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def inverse_tone_curve(y: np.ndarray) -> np.ndarray:
    """Invert the smoothstep tone curve 3x^2 - 2x^3 that cameras roughly apply."""
    y = np.clip(y, 0.0, 1.0)
    return 0.5 - np.sin(np.arcsin(1.0 - 2.0 * y) / 3.0)


def xyz_to_camera(camera: Camera) -> np.ndarray:
    """The camera's XYZ -> native matrix, normalised so that sRGB white gives equal channels."""
    a, b = (np.array(m, float).reshape(3, 3) / 1e4 for m in CAMERA_MATRICES.values())
    xyz2cam = (1 - camera.matrix_mix) * a + camera.matrix_mix * b
    rows = (xyz2cam @ SRGB_TO_XYZ).sum(axis=1, keepdims=True)
    return xyz2cam / rows


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """(H, W, 3) -> (H, W) Bayer mosaic for a CFA pattern."""
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for k, colour in enumerate(CFA_PATTERNS[pattern]):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, colour]
    return out


def unprocess(srgb: np.ndarray, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """sRGB photo in [0, 1] -> raw sensor counts (uint16 mosaic) for ``camera``."""
    linear = srgb_to_linear(inverse_tone_curve(srgb))
    cam = np.einsum("ij,hwj->hwi", xyz_to_camera(camera) @ SRGB_TO_XYZ, linear)
    cam = np.clip(cam, 0.0, None) * camera.brightness
    # inverse white balance; bright pixels keep their gain so highlights do not clip early
    inv_gains = np.array([1 / camera.red_gain, 1.0, 1 / camera.blue_gain])
    grey = cam.mean(axis=-1, keepdims=True)
    mask = (np.maximum(grey - 0.9, 0.0) / 0.1) ** 2
    cam = cam * np.maximum(mask + (1 - mask) * inv_gains, inv_gains)
    raw = mosaic(np.clip(cam, 0.0, 1.0), camera.pattern)
    read = (10 * camera.noise) ** 2
    raw = raw + rng.normal(size=raw.shape) * np.sqrt(camera.noise * raw + read)
    white = 2 ** camera.bits - 1
    counts = camera.black + np.clip(raw, 0.0, 1.0) * (white - camera.black)
    return np.round(counts).astype(np.uint16)


def write_dng(path: str | Path, counts: np.ndarray, camera: Camera, model: str,
              extra_tags: Sequence[tuple] = ()) -> None:
    """Write a Bayer mosaic of sensor counts as a DNG darktable opens (``extra_tags``: more
    tifffile tag tuples, e.g. ActiveArea or DefaultCropOrigin/Size)."""
    xyz2cam_native = np.diag([1 / camera.red_gain, 1.0, 1 / camera.blue_gain]) @ xyz_to_camera(camera)
    denom = 10000
    matrix = [v for x in xyz2cam_native.ravel() for v in (int(round(x * denom)), denom)]
    neutral = [v for g in (1 / camera.red_gain, 1.0, 1 / camera.blue_gain) for v in (int(round(g * 1e6)), 1000000)]
    tags = [
        (271, "s", 0, "darktable-proxies", True),          # Make
        (272, "s", 0, model, True),                        # Model
        (274, "H", 1, 1, True),                            # Orientation: top-left
        (33421, "H", 2, (2, 2), True),                     # CFARepeatPatternDim
        (33422, "B", 4, CFA_PATTERNS[camera.pattern], True),  # CFAPattern
        (50706, "B", 4, (1, 4, 0, 0), True),               # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),               # DNGBackwardVersion
        (50708, "s", 0, model, True),                      # UniqueCameraModel
        (50710, "B", 3, (0, 1, 2), True),                  # CFAPlaneColor
        (50711, "H", 1, 1, True),                          # CFALayout: rectangular
        (50713, "H", 2, (1, 1), True),                     # BlackLevelRepeatDim
        (50714, "I", 1, camera.black, True),               # BlackLevel
        (50717, "I", 1, 2 ** camera.bits - 1, True),       # WhiteLevel
        (50721, "2i", 9, matrix, True),                    # ColorMatrix1 (SRATIONAL)
        (50728, "2I", 3, neutral, True),                   # AsShotNeutral (RATIONAL)
        (50778, "H", 1, 21, True),                         # CalibrationIlluminant1: D65
    ]
    tifffile.imwrite(path, counts, photometric=32803, subfiletype=0, extratags=[*tags, *extra_tags],
                     metadata=None)


def build_split(split: str, out_dir: Path, long_side: int) -> list[Path]:
    paths = []
    for i, scene in enumerate(SPLITS[split]):
        rng = np.random.default_rng(1000 + i + (100 if split == "eval" else 0))
        photo = _resize_long_side(_load_photo(scene.source), long_side)
        counts = unprocess(photo, scene.camera, rng)
        path = out_dir / f"{scene.name}.dng"
        model = f"unprocessed {scene.camera.pattern} {scene.camera.bits}-bit"
        write_dng(path, counts, scene.camera, model)
        paths.append(path)
    return paths


def builtin_dir(settings: Settings = DEFAULTS) -> Path:
    """Where the built-in images of these settings (CACHE_DIR, BUILTIN_IMAGES_VERSION,
    BUILTIN_IMAGE_LONG_SIDE) are."""
    return (Path(settings.CACHE_DIR) /
            f"builtin-images-v{settings.BUILTIN_IMAGES_VERSION}-{settings.BUILTIN_IMAGE_LONG_SIDE}px")


def builtin_images(split: str, settings: Settings = DEFAULTS) -> Path:
    """The folder of the built-in ``train`` or ``eval`` images, built on first use."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}")
    root = builtin_dir(settings)
    if not (root / "complete").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.parent / ".builtin-images.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (root / "complete").exists():
                tmp = root.with_name(root.name + f".partial-{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                for name in SPLITS:
                    (tmp / name).mkdir(parents=True)
                    build_split(name, tmp / name, settings.BUILTIN_IMAGE_LONG_SIDE)
                (tmp / "complete").touch()
                shutil.rmtree(root, ignore_errors=True)
                os.replace(tmp, root)
    return root / split


IMAGE_EXTENSIONS = {".dng", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".cr2", ".cr3", ".nef",
                    ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw", ".3fr", ".iiq", ".nrw",
                    ".erf", ".mos", ".mrw", ".x3f", ".kdc", ".dcr", ".exr"}


TIFF_BASED = {".dng", ".tif", ".tiff", ".nef", ".cr2", ".arw", ".pef", ".srw", ".3fr", ".iiq",
              ".nrw", ".erf", ".mos", ".kdc", ".dcr"}


def check_readable(path: Path) -> None:
    """Refuse files that cannot be images: empty, or with a broken header for their type.

    TIFF-based files (TIFF, DNG and most camera raws) get their structure read; PNG and JPEG
    are opened by Pillow; for other raw formats only darktable can tell (a file it cannot
    decode then fails its samples, which are reported).
    """
    if path.is_symlink() and not path.exists():
        raise UserError(f"image {path} is a link to a file that does not exist; remove it or fix the link")
    if path.stat().st_size == 0:
        raise UserError(f"image {path} is empty; remove it from the folder")
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_BASED:
            with tifffile.TiffFile(path) as tif:
                if not tif.pages:
                    raise ValueError("no image in the file")
        elif suffix in (".png", ".jpg", ".jpeg"):
            with Image.open(path) as im:
                im.verify()
    except Exception as e:   # any decoder error means the same thing to the user
        raise UserError(f"image {path} is unreadable ({type(e).__name__}: {e}); "
                        "remove it from the folder or replace it") from None


D65_ILLUMINANT = 21     # the DNG/EXIF light source code of D65


def dng_colour_matrix(path: Path) -> np.ndarray | None:
    """A DNG's colour matrix for D65 (ColorMatrix1 or 2, XYZ -> camera, 3x3), the one
    darktable's colorin takes as the embedded matrix; None for other files, or a DNG with
    no matrix for D65."""
    if path.suffix.lower() != ".dng":
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            for matrix, illuminant in ((50721, 50778), (50722, 50779)):
                if matrix in tags and (illuminant not in tags or tags[illuminant].value == D65_ILLUMINANT):
                    values = np.asarray(tags[matrix].value, dtype=np.float64).reshape(-1, 2)
                    if len(values) == 9 and (values[:, 1] != 0).all():
                        return (values[:, 0] / values[:, 1]).reshape(3, 3)
    except Exception:   # check_readable names unreadable files; here no matrix is no matrix
        return None
    return None


def dng_white_balance(path: Path) -> np.ndarray | None:
    """A DNG's as-shot white balance (1 / AsShotNeutral, green 1): the coefficients darktable's
    white balance module starts from; None for other files or a DNG without them."""
    if path.suffix.lower() != ".dng":
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            values = np.asarray(tif.pages[0].tags[50728].value, dtype=np.float64).reshape(-1, 2)
    except Exception:   # no tag, or an unreadable file: no white balance
        return None
    if len(values) != 3 or (values == 0).any():
        return None
    coefficients = values[:, 1] / values[:, 0]
    return coefficients / coefficients[1]


def dng_camera_matrix(path: Path) -> np.ndarray | None:
    """darktable's input profile of a DNG (models.colorspace.camera_to_xyz_d50 of its colour
    matrix for D65); None where it has none."""
    embedded = dng_colour_matrix(path)
    return None if embedded is None else camera_to_xyz_d50(embedded)


# what an exact proxy may need of its image beyond its pixels (ProxyType.traits), and how to get it
TRAITS = {"camera_matrix": dng_camera_matrix, "white_balance": dng_white_balance}
TRAIT_NAMES = {"camera_matrix": "DNG colour matrix for D65", "white_balance": "DNG as-shot white balance"}


def image_traits(path: Path, kind: str) -> np.ndarray | None:
    """``kind`` of TRAITS of the image at ``path`` (float64), None where the file has none."""
    return TRAITS[kind](path)


def required_traits(image: Path | None, kind: str, needs: str = "this exact proxy",
                    alternative: str = "a proxy of a learned family (--model)") -> np.ndarray:
    """``image``'s ``kind`` of TRAITS; UserError naming what ``needs`` it and the
    ``alternative`` when the image has none."""
    traits = image_traits(image, kind) if image is not None else None
    if traits is None:
        raise UserError(f"{image}: no {TRAIT_NAMES[kind]}, which {needs} needs; use DNG images, or {alternative}")
    return traits


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of an image's largest picture (a DNG's raw data, not its preview), read
    from its header; None for formats only darktable decodes."""
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_BASED:
            with tifffile.TiffFile(path) as tif:
                shapes = [(page.imagewidth, page.imagelength) for page in tif.pages]
                for page in tif.pages:
                    for sub in getattr(page, "pages", None) or ():   # DNG raw data in a SubIFD
                        shapes.append((sub.imagewidth, sub.imagelength))
            return max(shapes, key=lambda s: s[0] * s[1]) if shapes else None
        if suffix in (".png", ".jpg", ".jpeg"):
            with Image.open(path) as im:
                return im.size
    except Exception:   # check_readable names unreadable files; here an unknown size is no size
        return None
    return None


def list_images(folder: str | Path) -> list[Path]:
    """The image files (raw or TIFF/PNG/JPEG) in ``folder``, sorted and checked; UserError if none."""
    folder = Path(folder)
    if folder.is_file():
        raise UserError(f"image folder {folder} is a file; pass a folder of raw or TIFF/PNG/JPEG files")
    if not folder.is_dir():
        raise UserError(f"image folder {folder} does not exist; pass a folder of raw or TIFF/PNG/JPEG files")
    # broken links are kept, so that they are refused by name rather than skipped
    images = sorted(p for p in folder.iterdir() if (p.is_file() or p.is_symlink()) and not p.is_dir()
                    and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise UserError(f"image folder {folder} holds no raw or TIFF/PNG/JPEG files")
    for image in images:
        check_readable(image)
    return images


def cfa_pattern(path: str | Path, dt: Darktable) -> str:
    """The CFA pattern of a raw image at darktable's mosaic tap-outs: read from the file, or
    measured with a white-balance render (utils.darktable.cfa)."""
    r, g, b = PROBE_GAINS
    return image_pattern(path, dt, lambda: TEMPERATURE.history_item(dt, {"red": r, "green": g, "blue": b}))


def main() -> None:
    """``python -m utils.data.images``: build the built-in images and print where they are."""
    settings = configure()
    for split in SPLITS:
        folder = builtin_images(split, settings)
        print(f"{split}: {folder} ({len(list_images(folder))} images)")


if __name__ == "__main__":
    cli_main(main)()
