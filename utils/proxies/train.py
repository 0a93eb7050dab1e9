"""Training of one proxy: Adam with a cosine learning-rate schedule (over the epochs, or over
the time budget when that ends first), validation PSNR against darktable on
held-out scenes after every epoch, self-describing checkpoints, prediction grids, logs.

Single process on CUDA (bf16 autocast) or CPU; several processes when launched by
``torchrun`` (DistributedDataParallel: gloo on CPU, NCCL on CUDA; each process trains on its
share of the data; rank 0 alone writes checkpoints, logs and grids).
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models.mosaic import network_channels
from models.networks import FAMILIES, UNET_SIZES, ModelSpec
from models.proxy import IncompatibleCheckpoint, Proxy, read_checkpoint, save_checkpoint
from models.transform import to_network
from utils.atomic import write_text_atomic
from utils.data.manifest import read_spec
from utils.data.tapouts import TapoutDataset
from utils.devices import resolve_device
from utils.errors import UserError
from utils.evaluation.metrics import psnr
from utils.journal import run_lock
from utils.proxies.losses import parse_loss
from utils.proxies.schema import ProxyType, Slider
from utils.runs import RunPaths
from utils.settings import DEFAULTS, Settings
from utils.visual import contact_sheet, save_png, to_display

log = logging.getLogger(__name__)


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
    grid_every: int = 10        # epochs between prediction grids (SAVE_OUTPUT_FREQ)
    grid_samples: int = 4       # validation samples in a grid (PREDICTION_SAMPLES)
    preload_mb: float = 4000    # datasets up to this size are held in memory (PRELOAD_MAX_MB)
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
                      preload_mb=s.PRELOAD_MAX_MB, settings=s.snapshot())
    for key, value in flags.items():
        if value is not None:
            setattr(cfg, key, value)
    if cfg.family not in FAMILIES:
        raise UserError(f"--model {cfg.family!r}: choose one of {', '.join(FAMILIES)}")
    if not cfg.crop:
        cfg.crop = s.PROXY_MODEL_CROP.get(cfg.family, 64)
    if cfg.size not in UNET_SIZES:
        raise UserError(f"PROXY_MODEL_SIZE {cfg.size!r}: choose one of {', '.join(UNET_SIZES)}")
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be 1 or more")
    if not cfg.lr > 0 or cfg.max_minutes < 0:
        raise UserError("--lr must be positive and --max-minutes 0 or more")
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


def train(proxy_type: ProxyType, sliders: Sequence[Slider], name: str, stage1: Path,
          stage2: Path | None, paths: RunPaths, cfg: TrainConfig) -> TrainResult:
    """Train (or resume, or, when a previous run of it completed, skip) the proxy ``name``."""
    device = resolve_device(cfg.device)
    world = _Dist(device)
    torch.manual_seed(cfg.seed + world.rank)
    np.random.seed(cfg.seed + world.rank)

    positional = proxy_type.positional
    train_set = TapoutDataset(stage1, sliders, crop=cfg.crop, positional=positional, preload_mb=cfg.preload_mb)
    val_set = (TapoutDataset(stage2, sliders, positional=positional, preload_mb=cfg.preload_mb)
               if stage2 is not None and (stage2 / "manifest.csv").exists() else None)
    if val_set is None:
        log.warning("no stage-2 dataset at %s: no validation PSNR; 'best' is the last epoch", stage2)

    spec = ModelSpec(cfg.family, cfg.size, *network_channels(train_set.layout, train_set.in_channels,
                                                             train_set.out_channels),
                     len(sliders), layout=train_set.layout, extra_channels=train_set.extra_channels)
    dataset = read_spec(stage1)
    meta = {"proxy_type": proxy_type.name, "operation": proxy_type.operation, "name": name,
            "darktable_version": dataset.get("darktable_version", ""),
            "module_version": dataset.get("module_version"), "tapout_size": dataset.get("size"),
            "value_scale": proxy_type.value_scale}
    proxy = Proxy(spec, sliders, proxy_type.value_scale, meta)
    start_at_mean_offset(proxy, train_set)
    proxy = proxy.to(device)
    # beta2 0.99 rather than 0.999: slider-conditioned targets change scale from batch to batch
    optimizer = torch.optim.Adam(proxy.parameters(), lr=cfg.lr, betas=(0.9, 0.99))

    weights = paths.weights(name)
    # one writer per weights folder (rank 0 under torchrun); held until the process ends
    lock = ExitStack()
    if world.main:
        lock.enter_context(run_lock(weights / ".lock", f"training {name}"))
        for stale in weights.glob(".*.tmp"):   # a checkpoint write cut short by a kill
            stale.unlink()
    with lock:
        return _train(proxy_type, name, stage1, stage2, cfg, device, world, train_set, val_set,
                      proxy, optimizer, weights, paths.predictions(name))


def _train(proxy_type: ProxyType, name: str, stage1: Path, stage2: Path | None, cfg: TrainConfig,
           device: torch.device, world: _Dist, train_set: TapoutDataset, val_set: TapoutDataset | None,
           proxy: Proxy, optimizer: torch.optim.Optimizer, weights: Path, predictions: Path) -> TrainResult:
    start_epoch, best, history, completed = _resume(weights / "last.pt", proxy, optimizer, cfg, device)
    last_psnr = history[-1]["val_psnr"] if history else float("nan")
    if completed and not cfg.resume:
        log.info("training of %s is complete (%d epochs, validation PSNR %.2f dB); --resume "
                 "continues it", name, start_epoch, last_psnr)
        return TrainResult(weights, start_epoch, best, last_psnr,
                           float(np.mean([h["seconds"] for h in history])), False)
    if world.main:
        weights.mkdir(parents=True, exist_ok=True)

    model = DistributedDataParallel(proxy) if world.size > 1 else proxy
    steps_per_epoch = max(1, len(train_set) * train_set.crops_per_sample // world.size // cfg.batch_size)
    loss_fn = parse_loss(cfg.loss)
    amp = device.type == "cuda"
    writer = _tensorboard(weights) if world.main else None
    budget = cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf
    # an interrupted run continues its time budget; --resume of a completed run gets a new one
    started = time.monotonic() - (0.0 if completed else sum(h["seconds"] for h in history))
    stopped = False
    epoch = start_epoch
    seconds = []

    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.monotonic()
        model.train()
        total, count = 0.0, 0
        shuffle = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)   # same order on every rank
        # crops drawn per epoch from its own seed: a resumed run trains exactly as an uninterrupted one
        torch.manual_seed((cfg.seed * 100003 + epoch) * 1009 + world.rank)
        for step, (x, y, u) in enumerate(train_set.batches(cfg.batch_size, shuffle, world.rank, world.size)):
            # cosine schedule over whichever ends first: the epochs or the time budget
            progress = max((epoch - 1 + step / steps_per_epoch) / cfg.epochs, (time.monotonic() - started) / budget)
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(cfg.lr, min(progress, 1.0))
            x, y, u = x.to(device), y.to(device), u.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                pred = model(x, u)                                          # (B, C_out, h, w)
            # the loss compares in the network domain, where every decade counts alike
            loss = loss_fn(to_network(pred.float(), proxy.scale), to_network(y, proxy.scale))
            if not torch.isfinite(loss):
                raise _diverged(f"the training loss became {loss.item()}", epoch, weights, cfg, stage1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(x), count + len(x)
            if time.monotonic() - started > budget:
                stopped = True
                break
        stopped = world.any(stopped)
        train_loss = world.mean(total / max(count, 1), count)
        bad = [n for n, p in proxy.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise _diverged(f"weights {bad[0]} hold NaN or Inf", epoch, weights, cfg, stage1)
        last_psnr = _validate(proxy, val_set, device, world) if val_set is not None else float("nan")
        if val_set is not None and math.isnan(last_psnr):
            raise _diverged("the validation PSNR is NaN", epoch, weights, cfg, stage1)
        seconds.append(time.monotonic() - t0)
        improved = val_set is None or math.isnan(best) or last_psnr > best
        best = last_psnr if improved else best
        history.append({"epoch": epoch, "train_loss": train_loss, "val_psnr": last_psnr,
                        "seconds": seconds[-1], "lr": optimizer.param_groups[0]["lr"]})
        if world.main:
            state = {"epoch": epoch, "best_psnr": best, "val_psnr": last_psnr, "history": history,
                     "completed": epoch == cfg.epochs or stopped,
                     "optimizer": optimizer.state_dict(),
                     "train_config": {k: v for k, v in vars(cfg).items() if k != "settings"}, "settings": cfg.settings, "train_dataset": str(stage1),
                     "val_dataset": str(stage2) if val_set is not None else ""}
            save_checkpoint(weights / "last.pt", proxy, **state)
            if improved:
                save_checkpoint(weights / "best.pt", proxy, **state)
            if cfg.save_every and epoch % cfg.save_every == 0:
                save_checkpoint(weights / f"epoch_{epoch:04d}.pt", proxy, **state)
            _write_log(weights, history)
            if writer is not None:
                writer.add_scalar("train_loss", train_loss, epoch)
                writer.add_scalar("val_psnr", last_psnr, epoch)
            if val_set is not None and (epoch % max(cfg.grid_every, 1) == 0 or epoch == cfg.epochs or stopped):
                _prediction_grid(proxy, val_set, device, predictions / f"epoch_{epoch:04d}.png", cfg.grid_samples)
            log.info("epoch %d/%d  loss %.5f  val PSNR %.2f dB  %.1f s", epoch, cfg.epochs,
                     train_loss, last_psnr, seconds[-1])
        if stopped:
            log.info("time budget of %g min spent after epoch %d", cfg.max_minutes, epoch)
            break
    if writer is not None:
        writer.close()
    if world.size > 1:
        dist.barrier()
    return TrainResult(weights, epoch, best, last_psnr,
                       float(np.mean(seconds)) if seconds else float("nan"), stopped)


@torch.no_grad()
def start_at_mean_offset(proxy: Proxy, data: TapoutDataset, count: int = 16, threshold: float = 1.0) -> None:
    """Start a module that changes the scale of its values at its mean offset, not at the
    identity: the networks add their output to their input (a residual), which is a good
    start for exposure but not for colorin (camera RGB 0..1 -> Lab, L 0..100), whose output
    sits ~5 units away in the network domain, more than short training moves a bias. When
    the mean of t(output) - t(input) over ``count`` samples exceeds ``threshold`` for some
    channel, it goes into the bias of the network's last layer (3-channel layouts only)."""
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


def _diverged(what: str, epoch: int, weights: Path, cfg: TrainConfig, stage1: Path) -> UserError:
    """The error that stops a diverged training; nothing of that epoch was saved."""
    return UserError(f"{what} at epoch {epoch}; nothing of this epoch is saved ({weights / 'last.pt'} "
                     f"keeps epoch {epoch - 1}); lower --lr (now {cfg.lr:g}) or check the dataset {stage1}")


def cosine_lr(lr: float, progress: float) -> float:
    """Cosine decay from ``lr`` to lr/100 as training progresses from 0 to 1."""
    return lr / 100 + (lr - lr / 100) * 0.5 * (1 + math.cos(math.pi * progress))


def _resume(path: Path, proxy: Proxy, optimizer, cfg: TrainConfig,
            device: torch.device) -> tuple[int, float, list[dict], bool]:
    """Continue from ``path`` when it exists and fits: (epoch done, best PSNR, history,
    whether that run completed: it reached its epochs or spent its time budget)."""
    if not path.exists():
        if cfg.resume:
            raise UserError(f"--resume: no checkpoint {path}; train without --resume first")
        return 0, float("nan"), [], False
    try:
        payload = read_checkpoint(path, device)
    except IncompatibleCheckpoint as e:
        raise UserError(f"{e}; move {path.parent} away (or use another -c NAME) to train anew") from None
    mine = proxy.describe()
    for key in ("model", "sliders", "proxy_type"):
        if payload.get(key) != mine.get(key):
            raise UserError(f"{path} holds a proxy with another {key} ({payload.get(key)!r}, "
                            f"now {mine.get(key)!r}); use another -c NAME or remove {path.parent}")
    try:
        proxy.load_weights(payload["state_dict"])
        optimizer.load_state_dict(payload["optimizer"])
        done = payload["epoch"], payload["best_psnr"], list(payload["history"]), bool(payload.get("completed"))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:   # written by another version
        raise UserError(f"{path} cannot be resumed by this version ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}); move {path.parent} away (or use another "
                        "-c NAME) to train anew") from None
    if not done[3] or cfg.resume:
        log.info("resuming %s after epoch %d", path, done[0])
    return done


@torch.no_grad()
def _validate(proxy: Proxy, val_set: TapoutDataset, device: torch.device, world: _Dist) -> float:
    """Mean PSNR (utils.evaluation.metrics) of the proxy against darktable over this process's share."""
    proxy.eval()
    scores = []
    for i in range(world.rank, len(val_set), world.size):
        x, y, u = (t[None].to(device) for t in val_set[i])
        scores.append(float(psnr(proxy(x, u).float(), y)[0]))
    return world.mean(float(np.mean(scores)) if scores else 0.0, len(scores))


@torch.no_grad()
def _prediction_grid(proxy: Proxy, val_set: TapoutDataset, device: torch.device, path: Path,
                     count: int) -> None:
    """input | darktable | proxy | error (x10) for the first validation samples."""
    proxy.eval()
    rows, labels = [], []
    for i in range(min(count, len(val_set))):
        x, y, u = (t[None].to(device) for t in val_set[i])
        pred = proxy(x, u).float()
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
    a.semilogy(epochs, [h["train_loss"] for h in history])
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
