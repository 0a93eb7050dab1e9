"""Every path under ROOT (``--out``, default ``Constants.IMAGE_ROOT_DIR``), spelled once.

The folder names are the seed's, which users know::

    ROOT/stage_1/NAME/              training data of proxy NAME (utils/data/manifest.py)
    ROOT/stage_2/NAME/              held-out evaluation data
    ROOT/NAME_model_weights/        last.pt, best.pt, log.csv, log.png
    ROOT/NAME_predictions/          prediction grids during training
    ROOT/NAME_animations/           slider-regression frames and mp4s
    ROOT/eval/NAME/                 metrics.json, report.md (and Eval.py's renders)
    ROOT/params/NAME.csv            recovered sliders of each target
    ROOT/sweep/NAME/                Sweep.py's frames and video
    ROOT/pipeline/                  pipeline metrics.json, report.md, data/, outputs/
    ROOT/pipeline_animations/       pipeline regression frames and mp4s
    ROOT/params/pipeline.csv        recovered sliders of each pipeline target
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ---------------------------------------------------------------- one proxy
    def stage(self, stage: int, name: str) -> Path:
        """The dataset of proxy ``name`` for stage 1 (training) or 2 (evaluation)."""
        return self.root / f"stage_{stage}" / name

    def weights(self, name: str) -> Path:
        return self.root / f"{name}_model_weights"

    def predictions(self, name: str) -> Path:
        return self.root / f"{name}_predictions"

    def animations(self, name: str) -> Path:
        return self.root / f"{name}_animations"

    def evaluation(self, name: str) -> Path:
        return self.root / "eval" / name

    def params_csv(self, name: str) -> Path:
        return self.root / "params" / f"{name}.csv"

    def sweep(self, name: str) -> Path:
        return self.root / "sweep" / name

    def is_trained(self, name: str) -> bool:
        folder = self.weights(name)
        return (folder / "best.pt").exists() or (folder / "last.pt").exists()

    # ---------------------------------------------------------------- pipelines
    def pipeline(self, *parts: str) -> Path:
        """ROOT/pipeline (metrics.json, report.md, the journal), or a folder in it: ``"data"``
        (the targets darktable rendered), ``"outputs"`` (each block's output per target)."""
        return self.root.joinpath("pipeline", *parts)

    @property
    def pipeline_animations(self) -> Path:
        return self.root / "pipeline_animations"

    @property
    def pipeline_csv(self) -> Path:
        return self.params_csv("pipeline")


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest parent that exists (where a folder to be made would go)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def held_out(stage1: Path) -> Path:
    """The stage-2 (held-out) twin of a stage-1 dataset folder: ``.../stage_2/NAME`` beside
    ``.../stage_1/NAME``, also for a dataset given by path (``-d``) outside ROOT."""
    return stage1.parent.parent / "stage_2" / stage1.name
