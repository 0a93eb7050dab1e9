"""Training of one proxy: Adam with a cosine learning-rate schedule (over the epochs, or over
the time budget when that ends first), validation PSNR against darktable on
held-out scenes after every epoch, self-describing checkpoints, prediction grids, logs.

Single process on CUDA or CPU (precision: ``utils.devices.training_dtype``); several
processes when launched by ``torchrun`` (DistributedDataParallel: gloo on CPU, NCCL on CUDA;
each process trains on its share of the data; rank 0 alone writes checkpoints, logs and grids).
"""
from __future__ import annotations

import atexit
import csv
import io
import logging
import math
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models.mosaic import network_channels
from models.networks import EXACT_FAMILY, FAMILIES, NETWORK_OPTIONS, RETIRED_FAMILIES, UNET_SIZES, ModelSpec, new_network_options
from models.proxy import IncompatibleCheckpoint, Proxy, read_checkpoint, save_checkpoint
from models.transform import to_network
from utils.atomic import write_text_atomic
from utils.data.manifest import read_spec
from utils.data.tapouts import COORDINATE_PLANES, SCALED_PLANES, TRAIT_PLANES, WB_PLANES, TapoutDataset
from utils.devices import resolve_device, training_dtype
from utils.errors import UserError
from utils.evaluation.metrics import psnr
from utils.journal import run_lock
from utils.proxies.losses import parse_loss
from utils.proxies.schema import ProxyType, Slider
from utils.proxies.slider import conditioning_width
from utils.runs import RunPaths
from utils.settings import DEFAULTS, Settings
from utils.visual import contact_sheet, save_png, to_display

log = logging.getLogger(__name__)
# weight of a proxy's auxiliary loss (Proxy.auxiliary_loss: an untouched border's width in
# px, a gate)
# against the loss of its output (network domain, ~0.03 late in training)
AUXILIARY_LOSS_WEIGHT = 0.01


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    family: str
    size: str
    device: str          # auto, cpu or cuda
    max_minutes: float   # 0 = no budget
    resume: bool         # a checkpoint must exist (it is resumed in any case when compatible)
    seed: int
    crop: int            # 0 = the family's default (Constants.PROXY_MODEL_CROP)
    save_every: int
    loss: str
    activation: str = ""        # of the network ("": the family's NEW_ACTIVATION); a resumed run keeps its own
    grid_every: int = 10        # epochs between prediction grids (SAVE_OUTPUT_FREQ)
    grid_samples: int = 4       # validation samples in a grid (PREDICTION_SAMPLES)
    preload_mb: float = 4000    # datasets up to this size are held in memory (PRELOAD_MAX_MB)
    ema: float = 0.0            # the weights' moving average's horizon in epochs (PROXY_MODEL_EMA; 0 = none)
    settings: dict = field(default_factory=dict)   # the run's settings and command line (snapshot)


@dataclass
class TrainResult:
    weights: Path
    epochs_done: int
    best_psnr: float
    last_psnr: float
    seconds_per_epoch: float
    stopped_by_budget: bool


def default_config(proxy: ProxyType, settings: Settings = DEFAULTS, **flags) -> TrainConfig:
    """The training of ``proxy`` as ``settings`` say, overridden by the flags that were given
    (not None); refuses bad values before any work."""
    s, losses = settings, settings.PROXY_LOSS
    cfg = TrainConfig(epochs=s.PROXY_MODEL_NUM_EPOCH, batch_size=s.PROXY_MODEL_BATCH_SIZE,
                      lr=s.PROXY_MODEL_LR, family=proxy.model, size=s.PROXY_MODEL_SIZE, device="auto",
                      max_minutes=0.0, resume=False, seed=s.SEED, crop=0,
                      save_every=s.SAVE_CHECKPOINT_FREQ,
                      loss=losses.get(proxy.name, losses.get("default", "l1")),
                      grid_every=s.SAVE_OUTPUT_FREQ, grid_samples=s.PREDICTION_SAMPLES,
                      preload_mb=s.PRELOAD_MAX_MB, ema=s.PROXY_MODEL_EMA, settings=s.snapshot())
    for key, value in flags.items():
        if value is not None:
            setattr(cfg, key, value)
    if flags.get("lr") is None:
        cfg.lr *= s.PROXY_MODEL_LR_FACTOR.get(cfg.family, 1)
    if cfg.family == EXACT_FAMILY and not proxy.network.get("prior"):
        raise UserError(f"--model {EXACT_FAMILY}: {proxy.name} has no exact prior; choose one of {', '.join(FAMILIES)}")
    if cfg.family not in FAMILIES + (EXACT_FAMILY,):
        retired = "retired, its older checkpoints still load; " if cfg.family in RETIRED_FAMILIES else ""
        raise UserError(f"--model {cfg.family!r}: {retired}choose one of {', '.join(FAMILIES)}")
    if not cfg.crop:
        cfg.crop = s.PROXY_MODEL_CROP.get(cfg.family, 64)
    if cfg.size not in UNET_SIZES:
        raise UserError(f"PROXY_MODEL_SIZE {cfg.size!r}: choose one of {', '.join(UNET_SIZES)}")
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be 1 or more")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0) or not (math.isfinite(cfg.max_minutes) and cfg.max_minutes >= 0):
        raise UserError("--lr must be a positive number and --max-minutes 0 or more")
    if not (math.isfinite(cfg.ema) and cfg.ema >= 0):
        raise UserError(f"PROXY_MODEL_EMA {cfg.ema!r}: epochs the weights are averaged over, 0 or more")
    parse_loss(cfg.loss)   # refuse a bad spec before any work
    return cfg


class _Dist:
    """The torchrun world this process belongs to (a world of one without torchrun)."""

    def __init__(self, device: torch.device):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    timeout=timedelta(minutes=30))
            # left at exit while Python still runs: a group left to the interpreter's teardown
            # can abort the process there (gloo's threads still hold tensors; seen once in CI)
            atexit.register(_leave_group)
            if device.type == "cuda":
                torch.cuda.set_device(device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float, weight: float = 1.0) -> float:
        """Weighted mean of ``value`` over all processes."""
        if self.size == 1:
            return value
        t = torch.tensor([value * weight, weight], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t[0] / t[1]) if t[1] else float("nan")

    def any(self, flag: bool) -> bool:
        if self.size == 1:
            return flag
        t = torch.tensor([float(flag)])
        dist.all_reduce(t)
        return bool(t.item())


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def train(proxy_type: ProxyType, sliders: Sequence[Slider], name: str, stage1: Path,
          stage2: Path | None, paths: RunPaths, cfg: TrainConfig) -> TrainResult:
    """Train (or resume, or, when a previous run of it completed, skip) the proxy ``name``."""
    device = resolve_device(cfg.device)
    world = _Dist(device)
    torch.manual_seed(cfg.seed + world.rank)
    np.random.seed(cfg.seed + world.rank)

    resumed = _resumed_spec(paths.weights(name) / "last.pt")
    if resumed and resumed.family != cfg.family:    # before building the other family's network
        default = "" if cfg.family != proxy_type.model else f" ({proxy_type.name}'s default now)"
        raise UserError(f"{paths.weights(name) / 'last.pt'} holds a proxy of the {resumed.family} family, not "
                        f"{cfg.family}{default}; give --model {resumed.family} to go on with it, or use another "
                        f"-c NAME or move {paths.weights(name)} away to make one of the {cfg.family} family")
    planes = coordinate_planes_of(proxy_type, resumed, cfg.family)
    # the exact family validates its prior on whole images (darktable's operation sees the
    # whole image: a crop's would differ), and has nothing to train
    # (and, for mosaics, in the frame darktable rendered: mirrored its tiles would differ)
    exact = (resumed.family if resumed else cfg.family) == EXACT_FAMILY
    train_set = TapoutDataset(stage1, sliders, crop=None if exact else cfg.crop, positional=planes,
                              preload_mb=cfg.preload_mb, native=exact)
    val_set = (TapoutDataset(stage2, sliders, positional=planes, preload_mb=cfg.preload_mb, native=exact)
               if stage2 is not None and (stage2 / "manifest.csv").exists() else None)
    if val_set is None:
        log.warning("no stage-2 dataset at %s: no validation PSNR; 'best' is the last epoch", stage2)

    spec = network_spec(proxy_type, cfg.family, cfg.size, train_set.layout, train_set.in_channels,
                        train_set.out_channels, train_set.extra_channels, train_set.pixel_scale, sliders=sliders,
                        activation=cfg.activation, resumed=resumed)
    if spec.pixel_scale == 0 and planes in (SCALED_PLANES, WB_PLANES):
        raise UserError(f"dataset {stage1}: the full size of none of its images is known (a raw format "
                        "only darktable reads); give TIFF, DNG or another TIFF-based raw")
    dataset = read_spec(stage1)
    meta = {"proxy_type": proxy_type.name, "operation": proxy_type.operation, "name": name,
            "darktable_version": dataset.get("darktable_version", ""),
            "module_version": dataset.get("module_version"), "tapout_size": dataset.get("size"),
            "value_scale": proxy_type.value_scale}
    proxy = Proxy(spec, sliders, proxy_type.value_scale, meta)
    start_at_mean_offset(proxy, train_set)
    proxy = proxy.to(device)
    weights_to_learn = list(proxy.parameters())
    if not weights_to_learn:    # the exact family: one epoch validates and saves the prior
        cfg.epochs = 1
        log.info("%s has nothing to learn (the %s family): its prior is validated and saved", name, spec.family)
    # beta2 0.99 rather than 0.999: slider-conditioned targets change scale from batch to batch
    # (an empty tensor stands in for the weights of a proxy that has none)
    optimizer = torch.optim.Adam(weights_to_learn or [torch.zeros(0, requires_grad=True)], lr=cfg.lr,
                                 betas=(0.9, 0.99), fused=fused_adam(device))

    weights = paths.weights(name)
    # one writer per weights folder (rank 0 under torchrun); held until the process ends
    lock = ExitStack()
    if world.main:
        lock.enter_context(run_lock(weights / ".lock", f"training {name}"))
        for stale in weights.glob(".*.tmp"):   # a checkpoint write cut short by a kill
            stale.unlink()
    with lock:
        return _train(_Run(name, stage1, stage2, cfg, device, world, train_set, val_set, proxy,
                           optimizer, weights, paths.predictions(name)))


@dataclass
class _Run:
    """One training run: what its epochs work with, and how far it has come."""

    name: str
    stage1: Path
    stage2: Path | None
    cfg: TrainConfig
    device: torch.device
    world: _Dist
    train_set: TapoutDataset
    val_set: TapoutDataset | None
    proxy: Proxy
    optimizer: torch.optim.Optimizer
    weights: Path                   # the weights folder
    predictions: Path               # the prediction grids' folder
    best: float = float("nan")      # best validation PSNR so far
    history: list[dict] = field(default_factory=list)     # one entry per epoch done (log.csv)
    started: float = 0.0            # time.monotonic() from which the time budget counts
    stopped: bool = False           # the time budget is spent
    seconds: list[float] = field(default_factory=list)    # per epoch of this process
    ema: dict[str, torch.Tensor] | None = None   # moving average of the weights (cfg.ema > 0)
    steps: int = 0                  # optimiser steps done (the average's warm-up)
    steps_per_epoch: int = 1

    @property
    def budget(self) -> float:
        """The time budget in seconds (inf: none)."""
        return self.cfg.max_minutes * 60 if self.cfg.max_minutes > 0 else math.inf


def _train(run: _Run) -> TrainResult:
    cfg, world = run.cfg, run.world
    start_epoch, run.best, run.history, completed = _resume(run.weights / "last.pt", run, cfg)
    last_psnr = run.history[-1]["val_psnr"] if run.history else float("nan")
    if completed and not cfg.resume:
        log.info("training of %s is complete (%d epochs, validation PSNR %.2f dB); --resume "
                 "continues it", run.name, start_epoch, last_psnr)
        return TrainResult(run.weights, start_epoch, run.best, last_psnr,
                           float(np.mean([h["seconds"] for h in run.history])), False)
    if world.main:
        run.weights.mkdir(parents=True, exist_ok=True)

    learns = any(p.requires_grad for p in run.proxy.parameters())
    model = DistributedDataParallel(run.proxy) if world.size > 1 and learns else run.proxy
    loss_fn = parse_loss(cfg.loss)
    writer = _tensorboard(run.weights) if world.main else None
    # an interrupted run continues its time budget; --resume of a completed run gets a new one
    run.started = time.monotonic() - (0.0 if completed else sum(h["seconds"] for h in run.history))
    epoch = start_epoch
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.monotonic()
        train_loss = _train_epoch(run, model, loss_fn, epoch) if learns else float("nan")
        last_psnr = _end_epoch(run, epoch, train_loss, t0, writer)
        if run.stopped:
            log.info("time budget of %g min spent after epoch %d", cfg.max_minutes, epoch)
            break
    if writer is not None:
        writer.close()
    if world.size > 1:
        dist.barrier()
    return TrainResult(run.weights, epoch, run.best, last_psnr,
                       float(np.mean(run.seconds)) if run.seconds else float("nan"), run.stopped)


def _train_epoch(run: _Run, model: nn.Module, loss_fn: Callable, epoch: int) -> float:
    """One epoch over this process's share of the training data (until the time budget is
    spent); the mean training loss over all processes."""
    cfg, world, data = run.cfg, run.world, run.train_set
    model.train()
    # the losses summed where they are computed: reading one back each step would make a GPU
    # wait for every step before the next is launched (its steps are launch-bound)
    total, count = torch.zeros((), dtype=torch.float64, device=run.device), 0
    steps_per_epoch = max(1, len(data) * data.crops_per_sample // world.size // cfg.batch_size)
    run.steps_per_epoch = steps_per_epoch
    shuffle = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)   # same order on every rank
    # crops drawn per epoch from its own seed: a resumed run trains exactly as an uninterrupted one
    torch.manual_seed((cfg.seed * 100003 + epoch) * 1009 + world.rank)
    for step, batch in enumerate(data.batches(cfg.batch_size, shuffle, world.rank, world.size)):
        _schedule(run, (epoch - 1 + step / steps_per_epoch) / cfg.epochs)
        loss = _step(run, model, loss_fn, batch)
        total, count = total + loss.double() * len(batch[0]), count + len(batch[0])
        if time.monotonic() - run.started > run.budget:
            run.stopped = True
            break
    mean = float(total) / max(count, 1)
    if not math.isfinite(mean):        # checked once an epoch; nothing of the epoch is saved
        raise _diverged(f"the training loss became {mean}", epoch, run)
    run.stopped = world.any(run.stopped)
    return world.mean(mean, count)


def fused_adam(device: torch.device) -> bool:
    """Whether Adam takes its fused kernel on ``device``: on the CPU and CUDA, where torch has
    one. A step of the pointwise family's 14 weights on a 2-core CPU: 0.27 ms, against 0.70
    for the loop over the weights (docs/training.md)."""
    return device.type in ("cpu", "cuda")


def _schedule(run: _Run, epochs_progress: float) -> None:
    """The learning rate: cosine schedule over whichever ends first, the epochs (``epochs_progress``
    of them done) or the time budget."""
    progress = max(epochs_progress, (time.monotonic() - run.started) / run.budget)
    for group in run.optimizer.param_groups:
        group["lr"] = cosine_lr(run.cfg.lr, min(progress, 1.0))


def _step(run: _Run, model: nn.Module, loss_fn: Callable, batch: Sequence[torch.Tensor]) -> torch.Tensor:
    """One optimiser step on ``batch`` (x, y, u); its loss, on the device, without a gradient.
    Nothing is read back: a loss that is not finite is caught at the end of the epoch."""
    x, y, u = (to_device(t, run.device) for t in batch)
    dtype = training_dtype(run.device, run.proxy.spec.family)
    with torch.autocast(run.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        pred = model(x, u)                                          # (B, C_out, h, w)
    # the loss compares in the network domain, where every decade counts alike
    loss = loss_fn(to_network(pred.float(), run.proxy.scale), to_network(y, run.proxy.scale))
    loss = loss + AUXILIARY_LOSS_WEIGHT * run.proxy.auxiliary_loss(x, y, u, pred.float())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    _update_average(run)
    return loss.detach()


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch's tensor on ``device``; onto a GPU from pinned memory without waiting (a copy
    from pageable memory makes the host wait for the GPU's queue)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@torch.no_grad()
def _update_average(run: _Run) -> None:
    """The weights' exponential moving average after a step, over about ``cfg.ema`` epochs
    of steps whatever the family's steps per epoch (decay 1 - 1 / steps), over fewer during
    the first steps ((1 + n) / (10 + n) after n steps), so that it does not lag far behind a
    short training."""
    if run.ema is None:
        return
    run.steps += 1
    decay = min(1 - 1 / max(run.cfg.ema * run.steps_per_epoch, 1), (1 + run.steps) / (10 + run.steps))
    params = dict(run.proxy.named_parameters())   # one fused update (a loop costs ms per step)
    torch._foreach_lerp_([run.ema[n] for n in params], [p.detach() for p in params.values()], 1 - decay)


@contextmanager
def _averaged(run: _Run):
    """The proxy holds the averaged weights inside (validation, checkpoints, grids), its
    training weights again after."""
    if run.ema is None:
        yield None
        return
    training = {k: v.clone() for k, v in run.proxy.state_dict().items()}
    run.proxy.load_state_dict(run.ema)
    try:
        yield training
    finally:
        run.proxy.load_state_dict(training)


def _end_epoch(run: _Run, epoch: int, train_loss: float, t0: float, writer) -> float:
    """After an epoch: check the weights, validate, record the epoch, and (rank 0) write its
    checkpoints and logs; the validation PSNR."""
    bad = [n for n, p in run.proxy.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise _diverged(f"weights {bad[0]} hold NaN or Inf", epoch, run)
    with _averaged(run) as training:
        val_psnr = (_validate(run.proxy, run.val_set, run.device, run.world) if run.val_set is not None
                    else float("nan"))
        if run.val_set is not None and math.isnan(val_psnr):
            raise _diverged("the validation PSNR is NaN", epoch, run)
        run.seconds.append(time.monotonic() - t0)
        improved = run.val_set is None or math.isnan(run.best) or val_psnr > run.best
        run.best = val_psnr if improved else run.best
        run.history.append({"epoch": epoch, "train_loss": train_loss, "val_psnr": val_psnr,
                            "seconds": run.seconds[-1], "lr": run.optimizer.param_groups[0]["lr"]})
        if run.world.main:
            _save_epoch(run, epoch, improved, training)
            _log_epoch(run, epoch, writer)
    return val_psnr


def _save_epoch(run: _Run, epoch: int, improved: bool, training: dict | None) -> None:
    """The checkpoints of an epoch: last.pt, best.pt when it improved, every ``save_every`` epochs;
    the proxy holds the weights a checkpoint serves (the average, when one is kept), ``training``
    the weights training continues from (None: the same)."""
    cfg = run.cfg
    resume = {} if training is None else {"training_state_dict": training, "ema_steps": run.steps}
    state = {**resume, "epoch": epoch, "best_psnr": run.best, "val_psnr": run.history[-1]["val_psnr"],
             "history": run.history, "completed": epoch == cfg.epochs or run.stopped,
             "optimizer": run.optimizer.state_dict(),
             "train_config": {k: v for k, v in vars(cfg).items() if k != "settings"}, "settings": cfg.settings,
             "train_dataset": str(run.stage1), "val_dataset": str(run.stage2) if run.val_set is not None else ""}
    save_checkpoint(run.weights / "last.pt", run.proxy, **state)
    if improved:
        save_checkpoint(run.weights / "best.pt", run.proxy, **state)
    if cfg.save_every and epoch % cfg.save_every == 0:
        save_checkpoint(run.weights / f"epoch_{epoch:04d}.pt", run.proxy, **state)


def _log_epoch(run: _Run, epoch: int, writer) -> None:
    """log.csv and log.png, TensorBoard, the prediction grid when due, and the epoch's log line."""
    cfg, done = run.cfg, run.history[-1]
    _write_log(run.weights, run.history)
    if writer is not None:
        writer.add_scalar("train_loss", done["train_loss"], epoch)
        writer.add_scalar("val_psnr", done["val_psnr"], epoch)
    if run.val_set is not None and (epoch % max(cfg.grid_every, 1) == 0 or epoch == cfg.epochs or run.stopped):
        _prediction_grid(run.proxy, run.val_set, run.device, run.predictions / f"epoch_{epoch:04d}.png",
                         cfg.grid_samples)
    log.info("epoch %d/%d  loss %.5f  val PSNR %.2f dB  %.1f s", epoch, cfg.epochs,
             done["train_loss"], done["val_psnr"], done["seconds"])


@torch.no_grad()
def start_at_mean_offset(proxy: Proxy, data: TapoutDataset, count: int = 16, threshold: float = 1.0) -> None:
    """Start a module that changes the scale of its values at its mean offset, not at the
    identity: the networks add their output to their input (a residual), which is a good
    start for exposure but not for colorin (camera RGB 0..1 -> Lab, L 0..100), whose output
    sits ~5 units away in the network domain, more than short training moves a bias. When
    the mean of t(output) - t(input) over ``count`` samples exceeds ``threshold`` for some
    channel, it goes into the bias of the network's last layer (3-channel layouts only). A
    proxy with a prior (``ModelSpec.prior``) starts at the prior's output, as it is."""
    if proxy.spec.prior:
        return
    last = [m for m in proxy.net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    if proxy.layout != "rgb" or last.bias is None or last.bias.numel() != data.in_channels:
        return
    offsets = []
    for row in data.rows[:count]:       # whole images: no random crop, no random numbers drawn
        x, y = data.load_pair(row)
        offsets.append((to_network(y, proxy.scale) - to_network(x, proxy.scale)).mean(dim=(1, 2)))
    offset = torch.stack(offsets).mean(0)                                  # (C,)
    if offset.abs().max() > threshold:
        last.bias += offset.to(last.bias.dtype)
        log.info("output starts at the data's mean offset %s (network domain)",
                 " ".join(f"{v:+.2f}" for v in offset.tolist()))


def _diverged(what: str, epoch: int, run: _Run) -> UserError:
    """The error that stops a diverged training; nothing of that epoch was saved."""
    return UserError(f"{what} at epoch {epoch}; nothing of this epoch is saved ({run.weights / 'last.pt'} "
                     f"keeps epoch {epoch - 1}); lower --lr (now {run.cfg.lr:g}) or check the dataset {run.stage1}")


def _resumed_spec(path: Path) -> ModelSpec | None:
    """The network of the checkpoint a run resumes (None when there is none): a proxy trained
    before SiLU, the UNet stem or the affine map became its family's default keeps its own."""
    if not path.exists():
        return None
    try:
        return ModelSpec(**read_checkpoint(path)["model"])
    except (IncompatibleCheckpoint, KeyError, TypeError):   # _resume names what is wrong
        return None


def coordinate_planes_of(proxy_type: ProxyType, resumed: ModelSpec | None, family: str = "") -> int:
    """How many planes the networks of a ``proxy_type`` proxy of ``family`` get after the image
    channels: those of the image's trait for an exact proxy of a type that takes one
    (``ProxyType.traits``: utils.data.tapouts.TRAIT_PLANES); else none unless the type is positional, then the coordinates,
    and the pixel scale too if it takes one (``ProxyType.takes_pixel_scale``: a slider is a
    pixel length, or the operation follows the scale); a resumed proxy keeps its own
    (checkpoints before the 4 planes have 2)."""
    if resumed:
        return resumed.extra_channels
    if proxy_type.traits and family == EXACT_FAMILY:
        return next(planes for planes, kind in TRAIT_PLANES.items() if kind == proxy_type.traits)
    if not proxy_type.positional:
        return 0
    return SCALED_PLANES if proxy_type.takes_pixel_scale else COORDINATE_PLANES


def network_spec(proxy_type: ProxyType, family: str, size: str, layout: str, in_channels: int,
                 out_channels: int, planes: int, pixel_scale: float, sliders: Sequence[Slider] | None = None,
                 activation: str = "", resumed: ModelSpec | None = None) -> ModelSpec:
    """The network of a ``proxy_type`` proxy of ``family`` and ``size`` for images of ``layout``
    with ``in_channels`` and ``out_channels`` and ``planes`` after them, conditioned on
    ``sliders`` (default: the type's): a resumed proxy's options and pixel scale are its own;
    a new one takes its family's options under the type's (``ProxyType.network``), and only
    the exact family its prior (a network that starts from the prior learns it away: shadhi
    31-39 dB in its first minute against 147-158 dB for the prior alone, docs/proxies.md).
    ``activation`` replaces the options' where given."""
    if resumed:
        options, pixel_scale = {k: getattr(resumed, k) for k in NETWORK_OPTIONS}, resumed.pixel_scale
    else:
        options = {**new_network_options(family, layout, positional=planes > 0), **proxy_type.network}
        if family != EXACT_FAMILY:
            options["prior"] = ""
    sliders = proxy_type.sliders if sliders is None else sliders
    return ModelSpec(family, size, *network_channels(layout, in_channels, out_channels), conditioning_width(sliders),
                     layout=layout, extra_channels=planes, pixel_scale=pixel_scale,
                     **{**options, "activation": activation or options["activation"]})


def exact_proxy(proxy_type: ProxyType, planes: int | None = None, pixel_scale: float | None = None) -> Proxy:
    """A ``proxy_type`` proxy of the exact family (darktable's operation, nothing to learn) as
    training builds one: the type's network options (its prior; a pixelation), the planes a
    new one takes (:func:`coordinate_planes_of`) unless ``planes`` says how many, and the
    ``pixel_scale`` it assumes where its planes give none (default: full size, 1, when its
    planes carry a scale; else none, 0)."""
    planes = coordinate_planes_of(proxy_type, None, EXACT_FAMILY) if planes is None else planes
    if pixel_scale is None:
        pixel_scale = 1.0 if planes in (SCALED_PLANES, WB_PLANES) else 0.0
    image = {"rgb": (3, 3), "mosaic": (1, 1), "mosaic_rgb": (1, 3)}[proxy_type.layout]
    spec = network_spec(proxy_type, EXACT_FAMILY, "base", proxy_type.layout, *image, planes, pixel_scale)
    return Proxy(spec, proxy_type.sliders, proxy_type.value_scale,
                 {"proxy_type": proxy_type.name, "operation": proxy_type.operation, "name": proxy_type.name})


def cosine_lr(lr: float, progress: float) -> float:
    """Cosine decay from ``lr`` to lr/100 as training progresses from 0 to 1."""
    return lr / 100 + (lr - lr / 100) * 0.5 * (1 + math.cos(math.pi * progress))


def _resume(path: Path, run: _Run, cfg: TrainConfig) -> tuple[int, float, list[dict], bool]:
    """Continue from ``path`` when it exists and fits: (epoch done, best PSNR, history,
    whether that run completed: it reached its epochs or spent its time budget). The
    weights' average (``cfg.ema``) starts from the checkpoint's weights, or the initial ones.
    A best PSNR measured on another validation set than this run's (a proxy fine-tuned on new
    data) is forgotten: the first epoch on the new data becomes the best."""
    proxy, optimizer = run.proxy, run.optimizer
    val_dataset = str(run.stage2) if run.val_set is not None else ""
    if not path.exists():
        if cfg.resume:
            raise UserError(f"--resume: no checkpoint {path}; train without --resume first")
        run.ema = _copy_weights(proxy) if cfg.ema > 0 else None
        return 0, float("nan"), [], False
    try:
        payload = read_checkpoint(path, run.device)
    except IncompatibleCheckpoint as e:
        raise UserError(f"{e}; move {path.parent} away (or use another -c NAME) to train anew") from None
    mine = proxy.describe()
    try:   # a format-1 checkpoint from before ModelSpec.activation, .stem, .affine: their defaults
        payload["model"] = ModelSpec(**payload["model"]).to_dict()
    except (KeyError, TypeError):
        pass
    try:   # sliders from before Slider.hsl: its default
        payload["sliders"] = [Slider.from_dict(d).to_dict() for d in payload["sliders"]]
    except (KeyError, TypeError, ValueError):
        pass
    for key in ("model", "sliders", "proxy_type"):
        if payload.get(key) != mine.get(key):
            raise UserError(f"{path} holds a proxy with another {key} ({payload.get(key)!r}, "
                            f"now {mine.get(key)!r}); use another -c NAME or remove {path.parent}")
    try:
        proxy.load_weights(payload["state_dict"])            # the average, when one was kept
        run.ema = _copy_weights(proxy) if cfg.ema > 0 else None
        if "training_state_dict" in payload:
            proxy.load_state_dict(payload["training_state_dict"])
            run.steps = int(payload.get("ema_steps", 0))
        optimizer.load_state_dict(payload["optimizer"])
        for group in optimizer.param_groups:     # the saved run's choice was for its device
            group.update(fused=fused_adam(run.device), foreach=None)
        best = payload["best_psnr"] if payload.get("val_dataset", "") == val_dataset else float("nan")
        done = payload["epoch"], best, list(payload["history"]), bool(payload.get("completed"))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:   # written by another version
        raise UserError(f"{path} cannot be resumed by this version ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}); move {path.parent} away (or use another "
                        "-c NAME) to train anew") from None
    if not done[3] or cfg.resume:
        log.info("resuming %s after epoch %d", path, done[0])
    return done


def _copy_weights(proxy: Proxy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in proxy.state_dict().items()}


@torch.no_grad()
def _validate(proxy: Proxy, val_set: TapoutDataset, device: torch.device, world: _Dist) -> float:
    """Mean PSNR (utils.evaluation.metrics) of the proxy against darktable over this process's share."""
    proxy.eval()
    scores = []
    for i in range(world.rank, len(val_set), world.size):
        x, y, u = (t[None].to(device) for t in val_set[i])
        scores.append(float(psnr(proxy(x, u, val_set.pattern(i)).float(), y)[0]))
    return world.mean(float(np.mean(scores)) if scores else 0.0, len(scores))


@torch.no_grad()
def _prediction_grid(proxy: Proxy, val_set: TapoutDataset, device: torch.device, path: Path,
                     count: int) -> None:
    """input | darktable | proxy | error (x10) for the first validation samples."""
    proxy.eval()
    rows, labels = [], []
    for i in range(min(count, len(val_set))):
        x, y, u = (t[None].to(device) for t in val_set[i])
        pred = proxy(x, u, val_set.pattern(i)).float()
        score = float(psnr(pred, y)[0])
        tiles = [x[0, :proxy.spec.in_channels], y[0], pred[0], (pred[0] - y[0]).abs() * 10]
        rows.append([to_display(t.permute(1, 2, 0).cpu().numpy()) for t in tiles])
        labels.append([val_set.rows[i]["sample"], "darktable", f"proxy {score:.1f} dB", "|error| x10"])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(path, contact_sheet(rows, labels))


def _write_log(folder: Path, history: list[dict]) -> None:
    """log.csv (one row per epoch) and log.png (its curves)."""
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(history[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    write_text_atomic(folder / "log.csv", text.getvalue())
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    losses = [h["train_loss"] for h in history]
    (a.semilogy if min(losses) > 0 else a.plot)(epochs, losses)   # a loss in dB (logmse) is negative
    a.set(xlabel="epoch", ylabel="training loss")
    b.plot(epochs, [h["val_psnr"] for h in history], color="tab:orange")
    b.set(xlabel="epoch", ylabel="validation PSNR (dB)")
    fig.tight_layout()
    fig.savefig(folder / "log.png", dpi=90)
    plt.close(fig)


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:   # tensorboard is optional
        return None
    return SummaryWriter(str(folder / "tensorboard"))
