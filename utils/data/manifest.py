"""The on-disk contract of a dataset folder (``ROOT/stage_<k>/NAME``): what it is
(``dataset.json``) and its samples (``manifest.csv``), with readers that tolerate a
half-written last line.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from utils.darktable.files import read_tiff
from utils.errors import UserError
from utils.proxies.schema import Slider
from utils.visual import contact_sheet, save_png, to_display

MANIFEST = "manifest.csv"


EXTRA_COLUMNS = ("image", "sample")


@dataclass
class DatasetSpec:
    """What a dataset is; a rerun into the same folder must ask for the same thing."""

    proxy: str
    operation: str
    sliders: list[str]
    samples_per_image: int
    seed: int
    stage: int
    size: int
    darktable_version: str
    module_version: int
    images: list[str] = field(default_factory=list)   # "<file name>:<bytes>" of each input image
    source_dir: str = ""    # where the images were (for closed-loop re-renders); not compared
    layout: str = "rgb"     # utils.proxies.registry.LAYOUTS
    sampler: str | None = None   # manifest column of the upstream slider varied (slider-less modules)
    cfa_patterns: dict[str, str] = field(default_factory=dict)   # image file name -> pattern at the tap-outs
    # image file name -> [width, height] at full size (utils.data.images.image_size), where known:
    # with a tap-out's size, darktable's pipe scale there (utils.data.tapouts.pixel_scale)
    image_sizes: dict[str, list[int]] = field(default_factory=dict)

    NOT_COMPARED = ("source_dir", "cfa_patterns", "image_sizes")   # derived from the images, which are compared

    def check_against(self, folder: Path) -> None:
        path = folder / "dataset.json"
        if not path.exists():
            return
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise UserError(f"{path} is damaged; remove the folder {folder} and generate again") from None
        mine = asdict(self)
        defaults = asdict(DatasetSpec("", "", [], 0, 0, 0, 0, "", 0))   # for keys older datasets lack
        diff = [k for k in mine if k not in self.NOT_COMPARED and old.get(k, defaults[k]) != mine[k]]
        if diff:
            what = ", ".join(f"{k}: {old.get(k)!r} there, {mine[k]!r} now" for k in diff)
            raise UserError(f"dataset {folder} was made with other settings ({what}); "
                            "use another name (-c) or output root (--out), or remove it")


def column(slider: Slider, proxy: str) -> str:
    """A drawn slider's column in a dataset of proxy type ``proxy``: its name, or
    ``<proxy type>.<slider>`` for a slider of another type (the sampler of a module without
    sliders)."""
    return slider.qualified_name if slider.foreign_to(proxy) else slider.name


def columns(proxy: str, sliders: Sequence[Slider]) -> list[str]:
    """The columns of a manifest of proxy type ``proxy`` whose samples draw ``sliders``."""
    return ["input", "output", *(column(s, proxy) for s in sliders), *EXTRA_COLUMNS]


def _csv_line(values: Sequence) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a manifest or part file; an incomplete last line (a killed writer) is ignored."""
    if not path.exists():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
    return list(csv.DictReader(io.StringIO(text)))


def read_spec(folder: str | Path) -> dict:
    """The dataset.json of a dataset folder ({} when it has none or it is unreadable)."""
    try:
        return json.loads((Path(folder) / "dataset.json").read_text())
    except (OSError, ValueError):
        return {}


def read_manifest(folder: str | Path) -> list[dict[str, str]]:
    """The samples of a dataset, paths made absolute."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        raise UserError(f"no dataset at {folder} ({MANIFEST} missing); generate it first")
    rows = read_rows(path)
    for row in rows:
        row["input"] = str(folder / row["input"])
        row["output"] = str(folder / row["output"])
    return rows


def _fmt(value: float) -> str:
    return f"{value:.9g}"   # round-trips float32 exactly


def save_dataset_preview(folder: Path, sliders: Sequence, count: int = 6) -> Path:
    """``preview.png`` in a dataset folder: input | output of its first ``count`` samples."""
    rows, labels = [], []
    for row in read_manifest(folder)[:count]:
        rows.append([to_display(read_tiff(row["input"])), to_display(read_tiff(row["output"]))])
        labels.append([row["sample"], " ".join(f"{s.name}={float(row[s.name]):.3g}" for s in sliders)])
    path = folder / "preview.png"
    save_png(path, contact_sheet(rows, labels))
    return path

