"""End-to-end fine-tuning of a chain on its chain data (``Pipeline_regression.py --fine-tune``).

After per-block training, all the chain's proxies are trained together: each step takes one
chain sample (every block's darktable input and output, the sliders drawn for it, and
darktable's display RGB at the end), a random crop of it, and minimises

    sum over proxy blocks of L1(block(darktable's input), darktable's output)
    + L1(the whole chain from the first input, darktable's display RGB)

in each block's network domain (models.transform). The per-block terms keep every block a
faithful stand-in for its module; the last one makes their errors cancel rather than add up.
The effect is measured per block on the held-out chain data (chain PSNR at the true sliders,
before and after) and the fine-tuned weights become each proxy's ``best.pt`` (the previous
one is kept as ``before_chain.pt``).
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from models.fixed import ImageContext
from models.proxy import read_checkpoint, save_checkpoint
from models.transform import to_network
from utils.data.manifest import read_manifest
from utils.evaluation.metrics import psnr
from utils.evaluation.regress import with_margin
from utils.pipeline.chain import Chain, read_tapout
from utils.pipeline.chaindata import ChainData
from utils.settings import Settings

log = logging.getLogger(__name__)

CROP = 64            # pixels of each step's crop (even: a mosaic keeps its phase)
BATCH = 4            # crops (of random samples) per step


@dataclass
class ChainSample:
    """One chain render: every proxy block's tap-outs and sliders, and the display RGB."""

    key: str
    image: str
    taps: dict[str, tuple[Path, Path]]       # block name -> (input, output) TIFFs
    u: dict[str, torch.Tensor]               # block name -> its normalised sliders (S_b,)
    final: Path

    def load(self, path: Path, chain: Chain | None = None) -> torch.Tensor:
        """A tap-out (1, C, H, W) cropped to even sides; with a ``chain``, as its input (Chain.input)."""
        return read_tapout(path, chain)


def chain_samples(chain: Chain, data: ChainData, stage: int) -> list[ChainSample]:
    """The samples of a stage that every proxy block and the display RGB have."""
    rows = {}
    for b in chain.blocks:
        if not b.exact:
            rows[b.name] = {r["sample"]: r for r in read_manifest(data.folder(b.name, stage))}
    keys = set.intersection(*(set(r) for r in rows.values())) if rows else set()
    samples = []
    for key in sorted(keys):
        final = data.final(stage) / f"{key}.tif"
        if not final.exists():
            continue
        any_row = next(iter(rows.values()))[key]
        samples.append(ChainSample(
            key, any_row["image"], {n: (Path(r[key]["input"]), Path(r[key]["output"])) for n, r in rows.items()},
            {b.name: torch.tensor([s.to_unit(float(rows[b.name][key][s.name])) for s in b.proxy.sliders],
                                  dtype=torch.float32) for b in chain.blocks if not b.exact},
            final))
    return samples


def _block_u(chain: Chain, sample: ChainSample, device: torch.device) -> list[torch.Tensor]:
    return [sample.u[b.name][None].to(device) if not b.exact else torch.zeros(1, 0, device=device)
            for b in chain.blocks]


@torch.no_grad()
def block_fidelity(chain: Chain, samples: Sequence[ChainSample], contexts: dict[str, ImageContext],
                   device: torch.device) -> dict[str, float]:
    """Mean PSNR of each proxy block's output and of the display RGB when the chain runs from
    darktable's first input at the true sliders, against darktable."""
    chain.eval()
    scores: dict[str, list[float]] = {}
    first = chain.blocks[0].name
    for s in samples:
        chain.context = contexts[s.image]
        _, outputs = chain.run(s.load(s.taps[first][0], chain).to(device), _block_u(chain, s, device), keep=True)
        for b, out in zip(chain.blocks, outputs):
            if not b.exact:
                scores.setdefault(b.name, []).append(float(psnr(out.cpu(), s.load(s.taps[b.name][1]))[0]))
        scores.setdefault("display RGB", []).append(float(psnr(outputs[-1].cpu(), s.load(s.final))[0]))
    return {name: float(np.mean(v)) for name, v in scores.items()}


def fine_tune_chain(chain: Chain, data: ChainData, contexts: dict[str, ImageContext], paths_weights,
                    minutes: float, device: torch.device, settings: Settings) -> dict:
    """Fine-tune the chain's proxies together for ``minutes`` (see the module's docstring);
    ``paths_weights(name)``: a proxy's weights folder. Returns the per-block effect."""
    train, held = chain_samples(chain, data, 1), chain_samples(chain, data, 2)
    if not train:
        log.warning("no chain sample with every block and the display RGB: nothing to fine-tune")
        return {}
    before = block_fidelity(chain, held, contexts, device)
    proxies = [b for b in chain.blocks if not b.exact]
    params = [p for b in proxies for p in b.proxy.parameters()]
    for p in params:
        p.requires_grad_(True)
    # from the learning rate per-block training ended at, decaying tenfold: a larger one
    # throws the proxies out of the minimum they reached (measured: 13 dB lost at 1e-4)
    lr = settings.PROXY_MODEL_LR / 100
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(settings.SEED)
    cache: dict[tuple[Path, bool], torch.Tensor] = {}
    first = chain.blocks[0].name
    budget, start, steps = minutes * 60 if minutes > 0 else 600.0, time.monotonic(), 0
    chain.train()
    while (elapsed := time.monotonic() - start) < budget:
        for group in optimizer.param_groups:
            group["lr"] = lr / 10 + (lr - lr / 10) * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        loss = torch.zeros((), device=device)
        for _ in range(BATCH):
            loss = loss + _sample_loss(chain, train[int(torch.randint(len(train), (1,), generator=generator))],
                                       contexts, cache, first, generator, device) / BATCH
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not math.isfinite(float(loss.detach())):
            raise RuntimeError("chain fine-tuning diverged (loss not finite)")
        optimizer.step()
        steps += 1
    after = block_fidelity(chain, held, contexts, device)
    for b in proxies:
        folder = paths_weights(b.name)
        best = folder / "best.pt" if (folder / "best.pt").exists() else folder / "last.pt"
        if not (folder / "before_chain.pt").exists():
            shutil.copy2(best, folder / "before_chain.pt")
        state = {k: v for k, v in read_checkpoint(best).items()
                 if k not in ("format", "model", "sliders", "transform_scale", "state_dict")}
        save_checkpoint(folder / "best.pt", b.proxy, **{**state, "chain_fine_tuned": data.digest})
    for p in params:
        p.requires_grad_(False)
    chain.eval()
    return {"before": before, "after": after, "steps": steps, "seconds": round(time.monotonic() - start, 1),
            "train_samples": len(train), "held_out_samples": len(held)}


def _sample_loss(chain: Chain, s: ChainSample, contexts: dict[str, ImageContext],
                 cache: dict[tuple[Path, bool], torch.Tensor], first: str, generator: torch.Generator,
                 device: torch.device) -> torch.Tensor:
    """The fine-tuning loss of one random crop of sample ``s``: the whole image when a block
    computes on whole images only (``Chain.whole_image``: on a crop its prior would compute
    something else than darktable did)."""
    def load(path: Path, as_input: bool = False) -> torch.Tensor:
        if (path, as_input) not in cache:
            cache[path, as_input] = s.load(path, chain if as_input else None)
        return cache[path, as_input]

    chain.context = contexts[s.image]
    x = load(s.taps[first][0], as_input=True)                   # the chain's input, its planes after it
    planes = x[:, x.shape[1] - chain.planes:]
    final = load(s.final)
    h, w = final.shape[-2:]
    ch, cw = (h, w) if chain.whole_image else (CROP, CROP)
    top = 2 * int(torch.randint(0, max(1, (h - ch) // 2 + 1), (1,), generator=generator))
    left = 2 * int(torch.randint(0, max(1, (w - cw) // 2 + 1), (1,), generator=generator))
    crop = lambda t: t[..., top:top + ch, left:left + cw].to(device)
    (rows, inner_rows), (cols, inner_cols) = (with_margin(top, ch, h, chain.context_margin),
                                              with_margin(left, cw, w, chain.context_margin))
    block_u = _block_u(chain, s, device)
    loss = torch.zeros((), device=device)
    for k, b in enumerate(chain.blocks):
        if not b.exact:
            tap_in, tap_out = (load(p) for p in s.taps[b.name])
            pred = chain.block(k, crop(tap_in), block_u[k], planes=crop(planes))
            loss = loss + (to_network(pred, b.proxy.scale) - to_network(crop(tap_out), b.proxy.scale)).abs().mean()
    out = chain.run(x[..., rows, cols].to(device), block_u)[..., inner_rows, inner_cols]
    return loss + (to_network(out, chain.scale) - to_network(crop(final), chain.scale)).abs().mean()


def fine_tune_report(result: dict) -> str:
    """The per-block effect of fine-tuning as a Markdown table."""
    if not result:
        return ""
    lines = [f"end-to-end fine-tuning: {result['steps']} steps in {result['seconds']:.0f} s on "
             f"{result['train_samples']} chain samples; chain PSNR at the true sliders on "
             f"{result['held_out_samples']} held-out samples:", "",
             "| block | before | after |", "|---|---|---|"]
    for name, value in result["before"].items():
        lines.append(f"| {name} | {value:.2f} dB | {result['after'][name]:.2f} dB |")
    return "\n".join(lines) + "\n"
