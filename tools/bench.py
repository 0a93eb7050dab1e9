"""Benchmarks: proxies against darktable-cli, batched against one-call-per-sample generation,
training and slider-regression speed, peak memory; every figure with the machine it ran on.

``python -m tools.bench`` (``make bench``) writes ``bench/results.json`` and prints a table.
Ratios are measured in the same run. Without darktable (``--skip-darktable``) the darktable
figures come from an earlier results file (``--darktable-from``, marked so) or are absent.

How each figure is made:

- darktable, one call per sample: ``utils.data.generate.generate`` with one sample per darktable
  process, one worker (the baseline of the issue) and ``workers`` workers; batched: the
  default batch size and ``workers`` workers. Same images (the built-in training set), same
  tap-out size (256 px), everything a generation run does (TIFFs, manifest, fsync) included.
- darktable at 512 px: the wall time of one ``Darktable.render`` call (start-up included, as
  a user pays it) of exposure on a 512 px built-in raw, median of ``repeats``.
- proxy: one forward pass of a ``models.proxy.Proxy`` of each family (size preset
  ``--model-size``, random weights: speed does not depend on them) on darktable's own input
  tap-out of that render (a 512 px synthetic image without darktable), in every variant
  (fp32; ``scripts``, the precision a loaded proxy runs in; channels-last, bf16/fp16
  autocast, torch.compile; on CUDA also captured as a CUDA graph) under ``torch.inference_mode``;
  each variant's output is compared with fp32 (PSNR); the fastest variant within
  ``VARIANT_MIN_PSNR`` of fp32 is the family's figure.
- training: optimisation steps as ``utils.proxies.train`` runs them (Adam, the proxy type's
  loss, the precision ``utils.devices.training_dtype`` gives) on random crops of the
  family's crop size, batch ``PROXY_MODEL_BATCH_SIZE``: samples (crops) per second.
- regression: ``utils.evaluation.regress`` at 1280x720 with the project's settings (random
  crops, ``PARAM_TUNING_RESTARTS`` starts), and full frame with one start (what the published
  7.7 s for 200 iterations measures; on a CPU fewer iterations, scaled to 200 and marked).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import Constants as C
from models.colorspace import camera_to_xyz_d50
from models.graphs import GraphedPasses
from models.networks import EXACT_FAMILY, FAMILIES, ModelSpec, new_network_options
from models.proxy import Proxy
from models.transform import to_network
from utils.atomic import write_text_atomic
from utils.darktable.runner import Darktable
from utils.devices import for_inference, inference_dtype, keep_freed_memory, native_bf16, training_dtype
from utils.data.generate import generate
from utils.data.images import builtin_images, list_images, mosaic
from utils.data.tapouts import TRAIT_PLANES, to_chw, with_coordinates
from utils.errors import UserError, cli_main
from utils.evaluation.metrics import psnr
from utils.evaluation.regress import regress
from utils.proxies.losses import parse_loss
from utils.proxies.registry import EXPOSURE, PROXIES
from utils.proxies.train import exact_proxy, fused_adam

log = logging.getLogger(__name__)

VARIANT_MIN_PSNR = 60.0      # dB against fp32: a faster variant must stay this close to be used
PUBLISHED_REGRESSION_S = 7.7  # 200 iterations at 1280x720, a monolithic proxy on an RTX 4090


# ------------------------------------------------------------------ machine and timing

def machine(device: torch.device, darktable_version: str | None) -> dict[str, Any]:
    """What a figure was measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__, "python": platform.python_version(),
            "darktable": darktable_version, "device": device.type,
            "load_average_1min": os.getloadavg()[0]}   # other work on the machine skews timings


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def failure(e: Exception) -> str:
    """What went wrong, in one line, for the results file and the table."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ darktable figures

def bench_datagen(dt, images: list[Path], per_image: int, single: int, workers: int,
                  size: int = 256) -> dict[str, Any]:
    """samples/s of dataset generation: batched vs one darktable call per sample."""
    work = Path(tempfile.mkdtemp(prefix="dtp-bench-"))
    try:
        def run(name: str, imgs: list[Path], n: int, batch: int, k: int) -> float:
            report = generate(dt, EXPOSURE, EXPOSURE.sliders, imgs, work / name, n, seed=0,
                              stage=1, size=size, workers=k, batch_size=batch)
            if report.failed:
                raise UserError(f"benchmark generation failed: {next(iter(report.failed.values()))}")
            log.info("datagen %s: %d samples in %.1f s", name, report.generated, report.seconds)
            return report.samples_per_second

        EXPOSURE.module_version(dt)   # probed (or read from the cache) outside the timings
        one = run("one_call", images[:1], single, 1, 1)
        one_parallel = run("one_call_parallel", images[:1], single, 1, workers)
        batched = run("batched", images, per_image, C.DARKTABLE_BATCH_SIZE, workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"size_px": size, "workers": workers, "batch_size": C.DARKTABLE_BATCH_SIZE,
            "batched_samples": per_image * len(images), "one_call_samples": single,
            "batched_sps": batched, "one_call_sps": one, "one_call_parallel_sps": one_parallel,
            "datagen_speedup_vs_one_call_per_sample": batched / one,
            "datagen_speedup_vs_parallel_one_call": batched / one_parallel}


def bench_darktable_render(dt, image: Path, repeats: int, size: int = 512):
    """Wall time of one darktable-cli call rendering exposure at ``size`` px; its input tap-out."""
    item = EXPOSURE.history_item(dt, {"exposure": 1.0, "black": 0.0})
    renders = []

    def call():
        renders.append(dt.render(image, [item], dump=[EXPOSURE.operation], size=size, hq=False))

    seconds = median_seconds(call, torch.device("cpu"), repeats, warmup=1)
    tap_in = renders[-1].io(EXPOSURE.operation)[0]
    return {"ms": seconds * 1000, "image": image.name, "shape": list(tap_in.shape),
            "repeats": repeats}, tap_in


# ------------------------------------------------------------------ proxy figures

def make_proxy(family: str, size: str, device: torch.device, seed: int = 0) -> Proxy:
    """An exposure proxy of ``family`` with random weights (speed does not depend on them), as
    new proxies of the family are built (activation, stem, affine map)."""
    torch.manual_seed(seed)
    spec = ModelSpec(family, size, 3, 3, len(EXPOSURE.sliders), **new_network_options(family))
    return Proxy(spec, EXPOSURE.sliders, EXPOSURE.value_scale).to(device).eval()


def variants(device: torch.device, only: str = "") -> list[dict[str, Any]]:
    """The ways to run a forward pass worth measuring on ``device`` (``only``: names,
    comma-separated); by default bf16 autocast only where the device computes bf16 natively
    (utils.devices.native_bf16): elsewhere it is emulated, 1-7.5 s a 512 px pass on a CPU
    without it, and never ran faster than fp32 (docs/performance.md)."""
    out = [{"name": "fp32"}, {"name": "scripts", "scripts": True},
           {"name": "channels_last", "channels_last": True},
           {"name": "bf16", "dtype": torch.bfloat16},
           {"name": "bf16+channels_last", "dtype": torch.bfloat16, "channels_last": True},
           {"name": "compile", "compile": True}]
    if device.type == "cuda":
        out += [{"name": "fp16+channels_last", "dtype": torch.float16, "channels_last": True},
                {"name": "compile+bf16+channels_last", "compile": True, "dtype": torch.bfloat16,
                 "channels_last": True},
                {"name": "graph", "graph": True},
                {"name": "graph+bf16+channels_last", "graph": True, "dtype": torch.bfloat16,
                 "channels_last": True}]
    if only:
        return [v for v in out if v["name"] in only.split(",")]
    return [v for v in out if v.get("dtype") is not torch.bfloat16 or native_bf16(device)]


def in_variant_layout(proxy: Proxy, x: torch.Tensor, variant: dict[str, Any]) -> tuple[Proxy, torch.Tensor]:
    """``proxy`` and ``x`` in channels-last memory order if ``variant`` asks for it, otherwise
    as they are (the convolution families keep channels-last weights themselves, models.networks)."""
    if not variant.get("channels_last"):
        return proxy, x
    return proxy.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)


def inference_runner(proxy: Proxy, x: torch.Tensor, u: torch.Tensor, variant: dict[str, Any]):
    """A no-argument function running ``proxy(x, u)`` as ``variant`` says (``scripts``: as
    a loaded proxy runs, utils.devices.for_inference: its precision, and on CUDA its graphs)."""
    if variant.get("scripts"):
        for_inference(proxy, x.device)
    proxy, x = in_variant_layout(proxy, x, variant)
    net = proxy
    if variant.get("compile"):
        net = torch.compile(net)
    dtype = variant.get("dtype")

    def run(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        # a graph replays the casts it captured: autocast's cache would hold tensors of the capture
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype or torch.bfloat16,
                                                    enabled=dtype is not None,
                                                    cache_enabled=not variant.get("graph")):
            return net(x, u)
    return cuda_graphed(run, x, u) if variant.get("graph") else lambda: run(x, u)


def cuda_graphed(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                 u: torch.Tensor) -> Callable[[], torch.Tensor]:
    """``fn(x, u)`` captured once as a CUDA graph (models.graphs), then replayed: one launch for
    all of its kernels, where a pass over one image launches hundreds of small ones, each
    costing microseconds of CPU time. The replay writes into the same output tensor every
    time (the scripts' passes, variant ``scripts``, also copy their inputs in and it out)."""
    return GraphedPasses().cuda_capture(fn, (x, u))


def bench_proxies(families: list[str], size: str, x_hwc, device: torch.device, repeats: int,
                  only: str = "", result: dict[str, Any] | None = None,
                  checkpoint: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """ms per forward pass of every family in every variant; the fastest faithful variant.
    Written into ``result`` (a new dict by default), ``checkpoint()`` after each family."""
    x = torch.from_numpy(to_chw(x_hwc))[None].to(device)               # (1, 3, H, W)
    u = torch.tensor([[0.7, 0.4]], device=device)
    result = {} if result is None else result
    result.update(shape=list(x.shape), model_size=size, families={})
    for family in families:
        rows = {}
        reference = None
        for variant in variants(device, only):
            proxy = make_proxy(family, size, device)
            try:
                run = inference_runner(proxy, x, u, variant)
                t0 = time.perf_counter()
                out = run()                                              # compiles, if asked
                first = time.perf_counter() - t0
                seconds = median_seconds(run, device, repeats, warmup=1)
            except Exception as e:   # a variant the platform cannot run (no compiler, no kernel)
                rows[variant["name"]] = {"error": failure(e)}
                log.info("proxy %s %s: failed (%s)", family, variant["name"], rows[variant["name"]]["error"])
                continue
            out = out.float().contiguous()
            reference = out if reference is None else reference
            rows[variant["name"]] = {"ms": seconds * 1000, "first_call_ms": first * 1000,
                                     "psnr_vs_fp32": float(psnr(out, reference)[0])}
            log.info("proxy %s %s: %.2f ms (%.1f dB vs fp32)", family, variant["name"],
                     seconds * 1000, rows[variant["name"]]["psnr_vs_fp32"])
        ok = {k: v for k, v in rows.items() if "ms" in v and v["psnr_vs_fp32"] >= VARIANT_MIN_PSNR}
        best = min(ok, key=lambda k: ok[k]["ms"]) if ok else None
        result["families"][family] = {"variants": rows, "best": best,
                                      "ms": ok[best]["ms"] if best else None}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        checkpoint()
    return result


def exact_input(proxy, tap_in) -> torch.Tensor:
    """A whole 512 px image for an exact ``proxy`` (1, C, H, W): darktable's RGB tap-out, as a
    Bayer mosaic (RGGB) for the mosaic layouts, with the planes the proxy takes at full size
    (a camera matrix or white balance of a typical camera where its type needs one)."""
    if proxy.layout != "rgb":
        h, w = (side - side % 2 for side in tap_in.shape[:2])
        return torch.from_numpy(to_chw(mosaic(tap_in[:h, :w, :3], "RGGB")))[None]
    x = torch.from_numpy(to_chw(tap_in)[:3])                             # (3, H, W)
    planes = proxy.spec.extra_channels
    if not planes:
        return x[None]
    trait = TYPICAL_TRAITS.get(TRAIT_PLANES.get(planes, ""))
    return with_coordinates(x, planes, 1.0, (x.shape[2], x.shape[1]), trait)[None]


# a camera's input profile (from a DNG ColorMatrix for D65) and as-shot white balance, for timing
TYPICAL_TRAITS = {"camera_matrix": camera_to_xyz_d50(np.array([[0.6722, -0.0635, -0.0963], [-0.4287, 1.2460, 0.2028],
                                                               [-0.0908, 0.2162, 0.5668]])),
                  "white_balance": np.array([2.05, 1.0, 1.65])}


def exact_cases(tap_in, device: torch.device):
    """(type, proxy, input, sliders mid-range) of every type whose default family is exact."""
    for proxy_type in PROXIES.values():
        if proxy_type.model == EXACT_FAMILY:
            proxy = exact_proxy(proxy_type).to(device)
            u = torch.full((1, len(proxy_type.sliders)), 0.5, dtype=torch.float64, device=device)
            yield proxy_type, proxy, exact_input(proxy, tap_in).to(device), u


def exact_pass(proxy: Proxy) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A pass of an exact ``proxy`` without a gradient, as Eval.py runs it."""
    def run(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return proxy(x, u)
    return run


def bench_exact_graphs(tap_in, device: torch.device, repeats: int, out: dict[str, Any]) -> None:
    """On CUDA, adds to ``out`` (bench_exact's) the ms per forward pass of every exact type
    captured as a CUDA graph (cuda_graphed), or why it could not be: a pass that reads a value
    back to the CPU (to size a kernel, say) cannot be captured. Run after every other figure
    is saved, so that a capture that fails cannot cost them."""
    for proxy_type, proxy, x, u in exact_cases(tap_in, device):
        row = out.setdefault(proxy_type.name, {})
        try:
            graphed = cuda_graphed(exact_pass(proxy), x, u)
            row["graph_ms"] = median_seconds(graphed, device, repeats) * 1000
            log.info("exact %s as a CUDA graph: %.2f ms", proxy_type.name, row["graph_ms"])
        except Exception as e:
            row["graph_error"] = failure(e)
            log.info("exact %s as a CUDA graph: failed (%s)", proxy_type.name, row["graph_error"])


def exact_ms(row: dict[str, Any]) -> float | None:
    """The faster of an exact type's pass and its CUDA graph, where measured."""
    times = [row[k] for k in ("ms", "graph_ms") if row.get(k) is not None]
    return min(times) if times else None


def bench_exact(tap_in, device: torch.device, repeats: int, out: dict[str, Any] | None = None,
                checkpoint: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """ms per forward pass at 512 px of every type whose default family is exact (darktable's
    own operation: no network), without a gradient, as Eval.py runs it, and with the sliders'
    gradient, a step of slider regression; every slider mid-range. Written into ``out`` (a
    new dict by default), ``checkpoint()`` after each type. A type that fails is a bug: its
    error is recorded and the others are still timed."""
    out = {} if out is None else out
    for proxy_type, proxy, x, u in exact_cases(tap_in, device):
        def step():
            v = u.clone().requires_grad_()
            y = proxy(x, v)
            if y.requires_grad:           # types without sliders (demosaic, colorin, colorout): none
                y.float().square().mean().backward()

        row = out[proxy_type.name] = {"shape": list(x.shape)}
        try:
            row["ms"] = median_seconds(lambda: exact_pass(proxy)(x, u), device, repeats) * 1000
            row["with_gradient_ms"] = median_seconds(step, device, repeats) * 1000
            log.info("exact %s: %.1f ms, %.1f ms with the sliders' gradient", proxy_type.name,
                     row["ms"], row["with_gradient_ms"])
        except Exception as e:
            row["error"] = failure(e)
            log.error("exact %s: failed (%s)", proxy_type.name, row["error"])
        checkpoint()
    return out


def bench_training(families: list[str], size: str, device: torch.device, steps: int,
                   crop: int = 0) -> dict[str, Any]:
    """Training samples (crops) per second of every family, as utils.proxies.train runs a step."""
    loss_fn = parse_loss(C.PROXY_LOSS.get(EXPOSURE.name, C.PROXY_LOSS.get("default", "l1")))
    out = {}
    for family in families:
        side, batch = crop or C.PROXY_MODEL_CROP.get(family, 64), C.PROXY_MODEL_BATCH_SIZE
        proxy = make_proxy(family, size, device).train()
        optimizer = torch.optim.Adam(proxy.parameters(), lr=1e-4, fused=fused_adam(device))
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.rand(batch, 3, side, side, generator=g).to(device)
        y, u = x * 2, torch.rand(batch, 2, generator=g).to(device)

        dtype = training_dtype(device, family)

        def step():
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                pred = proxy(x, u)
            loss = loss_fn(to_network(pred.float(), proxy.scale), to_network(y, proxy.scale))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        seconds = median_seconds(step, device, steps, warmup=3)
        out[family] = {"samples_per_s": batch / seconds, "crop": side, "batch": batch,
                       "megapixels_per_s": batch * side * side / seconds / 1e6}
        log.info("training %s: %.0f samples/s", family, batch / seconds)
    return out


def bench_regression(family: str, size: str, device: torch.device, iterations: int,
                     full_iterations: int, hw: tuple[int, int], tried: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds of slider regression per target at ``hw`` (H, W) in each variant of ``tried``
    (compile excluded: crops and the whole image have other shapes): project settings
    (random crops, several starts) and full frame (one start)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    h, w = hw
    ramp = torch.linspace(0.01, 1.0, w)[None, None, None, :] * torch.linspace(0.2, 1.0, h)[None, None, :, None]
    out = {"family": family, "shape": [h, w], "iterations": iterations,
           "restarts": C.PARAM_TUNING_RESTARTS, "crop": C.REGRESSION_CROP, "variants": {},
           "full_frame_iterations_measured": full_iterations,
           "published_seconds_per_200_iterations": PUBLISHED_REGRESSION_S}
    for variant in tried:
        proxy = make_proxy(family, size, device)
        x = (ramp * torch.tensor([0.9, 1.0, 0.8])[None, :, None, None]).to(device)   # (1, 3, H, W)
        proxy, x = in_variant_layout(proxy, x, variant)
        with torch.no_grad():
            target = proxy(x, torch.tensor([[0.6, 0.3]], device=device))
        dtype = variant.get("dtype")

        def timed(n: int, restarts: int, crop: int) -> float:
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                t0 = time.perf_counter()
                regress(proxy, len(proxy.sliders), proxy.scale, x, target, n, restarts, g, crop=crop)
                _sync(device)
                return time.perf_counter() - t0

        try:
            timed(2, 1, C.REGRESSION_CROP)   # warm-up (allocator, kernels)
            project = timed(iterations, C.PARAM_TUNING_RESTARTS, C.REGRESSION_CROP)
            full = timed(full_iterations, 1, 0) * 200 / full_iterations
        except Exception as e:   # e.g. out of memory at full frame: the other variants still count
            log.info("regression %s %s: failed (%s)", family, variant["name"], e)
            continue
        out["variants"][variant["name"]] = {"seconds_per_target": project,
                                            "full_frame_seconds_per_200_iterations": full}
        log.info("regression %s %s: %.2f s per target, full frame %.2f s per 200 iterations",
                 family, variant["name"], project, full)
    for figure, best in (("seconds_per_target", "best"), ("full_frame_seconds_per_200_iterations", "best_full_frame")):
        out[best] = min(out["variants"], key=lambda k: out["variants"][k][figure])
        out[figure] = out["variants"][out[best]][figure]
    return out


def paying_variants(device: torch.device, timings: dict[str, Any]) -> list[dict[str, Any]]:
    """fp32 and the variants (not compiled, not graphs) that beat it in ``timings`` (a family's
    forward passes); not ``scripts``, whose passes with gradients are fp32's."""
    fp32 = timings.get("fp32", {}).get("ms", float("inf"))
    return [v for v in variants(device) if not v.get("compile") and not v.get("scripts") and
            not v.get("graph") and
            (v["name"] == "fp32" or timings.get(v["name"], {}).get("ms", float("inf")) < fp32)]


# ------------------------------------------------------------------ the whole benchmark

def synthetic_image(h: int, w: int):
    """A smooth (H, W, 3) float32 scene stand-in for timing without darktable."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([xx / w, yy / h, (xx + yy) / (h + w)], -1).astype(np.float32) * 0.8 + 0.01


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure; the results so far are written to ``args.out`` after each part."""
    started = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = resolve_devices(args.device)
    keep_freed_memory()   # as every script that resolves its device (utils.devices)
    families = args.families.split(",")
    for f in families:
        if f not in FAMILIES:
            raise UserError(f"--families: unknown family {f!r}; choose from {', '.join(FAMILIES)}")
    results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items()}, "darktable": None}
    dt_version = None
    tap_in = None
    if not args.skip_darktable:
        dt = Darktable()
        dt_version = dt.install.version_string
        images = list_images(builtin_images("train"))
        render, tap_in = bench_darktable_render(dt, images[0], args.repeats)
        datagen = bench_datagen(dt, images, args.per_image, args.single, args.workers)
        results["darktable"] = {"render_512": render, "datagen": datagen,
                                "machine": machine(torch.device("cpu"), dt_version)}
        save(results, args.out)
    elif args.darktable_from and Path(args.darktable_from).exists():
        earlier = json.loads(Path(args.darktable_from).read_text()).get("darktable")
        if earlier:
            results["darktable"] = {**earlier, "from_earlier_run": str(args.darktable_from)}
            dt_version = earlier["machine"].get("darktable")
    if tap_in is None:
        shape = (results["darktable"] or {}).get("render_512", {}).get("shape", [args.image, args.image, 3])
        tap_in = synthetic_image(shape[0], shape[1])

    results["devices"] = {}
    for device in devices:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        entry = {"machine": machine(device, dt_version)}
        results["devices"][device.type] = entry

        def checkpoint() -> None:   # a run stopped half-way keeps what it measured
            save(results, args.out)
        bench_proxies(families, args.model_size, tap_in, device, args.repeats, args.variants,
                      entry.setdefault("proxy", {}), checkpoint)
        if not args.skip_exact:
            bench_exact(tap_in, device, args.repeats, entry.setdefault("exact", {}), checkpoint)
        entry["training"] = bench_training(families, args.model_size, device, args.train_steps,
                                           args.train_crop)
        save(results, args.out)
        full_iters = args.full_frame_iterations or (200 if device.type == "cuda" else 2)
        chosen = args.regression_families or ",".join(families)
        entry["regression"] = {}
        for f in chosen.split(","):
            entry["regression"][f] = bench_regression(
                f, args.model_size, device, args.regression_iterations, full_iters, tuple(args.regression_size),
                paying_variants(device, entry["proxy"]["families"].get(f, {}).get("variants", {})))
            checkpoint()
        entry["peak_rss_mb"] = peak_rss_mb()
        if device.type == "cuda":
            entry["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        dt_ms = (results["darktable"] or {}).get("render_512", {}).get("ms")
        entry["proxy_speedup_vs_darktable"] = {
            f: (dt_ms / v["ms"] if dt_ms and v["ms"] else None) for f, v in entry["proxy"]["families"].items()}
        scripts = {f: v["variants"].get("scripts", {}).get("ms") for f, v in entry["proxy"]["families"].items()}
        entry["scripts_speedup_vs_darktable"] = {f: (dt_ms / ms if dt_ms and ms else None) for f, ms in scripts.items()}
        entry["scripts_precision"] = {f: "bf16" if inference_dtype(device, f) else "fp32" for f in scripts}
        if device.type == "cuda" and "exact" in entry:
            bench_exact_graphs(tap_in, device, args.repeats, entry["exact"])
            save(results, args.out)
        entry["exact_speedup_vs_darktable"] = {
            t: (dt_ms / exact_ms(v) if dt_ms and exact_ms(v) else None) for t, v in entry.get("exact", {}).items()}
        save(results, args.out)
    results["peak_rss_mb"] = peak_rss_mb()
    results["seconds"] = time.monotonic() - started
    return results


def save(results: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(results, indent=1) + "\n")


def resolve_devices(choice: str) -> list[torch.device]:
    if choice not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {choice!r}: use auto, cpu or cuda")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu or auto")
    if choice == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [torch.device(choice)]


def _fmt(value, spec: str = ".1f") -> str:
    return "absent" if value is None else format(value, spec)


def _load(m: dict[str, Any]) -> str:
    load = m.get("load_average_1min")
    return "" if load is None else f", load {load:.1f}"


def _regression_rows(r: dict[str, Any], kind: str, where: str) -> list[tuple[str, str, str]]:
    shape = f"{r['shape'][1]}x{r['shape'][0]}"
    measured = r["full_frame_iterations_measured"]
    note = "" if measured == 200 else f", from {measured} it"
    return [(f"regression s per target, {r['family']} ({kind}, {shape}, {r['iterations']} it, "
             f"{r['restarts']} starts, {r['crop']} px crops, {r['best']})",
             f"{r['seconds_per_target']:.2f}", where),
            (f"regression s per 200 iterations, {r['family']}, full frame {shape} ({kind}, 1 start{note}, "
             f"{r['best_full_frame']}; published {r['published_seconds_per_200_iterations']} s)",
             f"{r['full_frame_seconds_per_200_iterations']:.2f}", where)]


def table(results: dict[str, Any]) -> str:
    """The figures as a Markdown table: figure | value | machine."""
    rows = []
    dtr = results.get("darktable")
    if dtr:
        m = dtr["machine"]
        where = f"{m['cpu']}, {m['cores']} cores, darktable {m['darktable']}{_load(m)}"
        if dtr.get("from_earlier_run"):
            where += f" (earlier run: {dtr['from_earlier_run']})"
        g = dtr.get("datagen")
        rows += [] if not g else [("datagen_speedup_vs_one_call_per_sample",
                  f"{g['datagen_speedup_vs_one_call_per_sample']:.1f}x "
                  f"({g['datagen_speedup_vs_parallel_one_call']:.1f}x vs {g['workers']} parallel one-sample calls)", where),
                 (f"generation samples/s, batched ({g['workers']} workers, {g['batch_size']} per call, {g['size_px']} px)",
                  f"{g['batched_sps']:.2f}", where),
                 ("generation samples/s, one call per sample (1 worker)", f"{g['one_call_sps']:.2f}", where),
                 (f"generation samples/s, one call per sample ({g['workers']} workers)",
                  f"{g['one_call_parallel_sps']:.2f}", where)]
        rows += [(f"darktable-cli ms per image (one call, {dtr['render_512']['shape'][1]}x"
                  f"{dtr['render_512']['shape'][0]})", f"{dtr['render_512']['ms']:.0f}", where)]
    else:
        rows.append(("darktable figures", "absent (--skip-darktable, no earlier results)", ""))
    for kind, e in results["devices"].items():
        m = e["machine"]
        where = (f"{m['gpu']}, " if m["gpu"] else "") + f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}{_load(m)}"
        p = e["proxy"]
        for family, v in p["families"].items():
            speed = e["proxy_speedup_vs_darktable"][family]
            rows.append((f"proxy_speedup_vs_darktable, {family} ({kind})",
                         "absent" if speed is None else f"{speed:.1f}x", where))
        for family, speed in e.get("scripts_speedup_vs_darktable", {}).items():
            rows.append((f"speedup vs darktable as the scripts run it, {family} ({kind}, "
                         f"{e['scripts_precision'][family]})",
                         "absent" if speed is None else f"{speed:.1f}x", where))
        for family, v in p["families"].items():
            rows.append((f"proxy ms per image, {family} {p['model_size']} ({kind}, {v['best']})",
                         _fmt(v["ms"], ".2f"), where))
        for name, v in e.get("exact", {}).items():
            speed = e["exact_speedup_vs_darktable"][name]
            graph = f", {v['graph_ms']:.2f} as a CUDA graph" if "graph_ms" in v else ""
            times = (f"failed: {v['error']}" if "error" in v else
                     f"ms per image {v['ms']:.1f}{graph}, {v['with_gradient_ms']:.1f} with the sliders' gradient")
            rows.append((f"proxy_speedup_vs_darktable, exact {name} ({kind}; {times})",
                         "absent" if speed is None else f"{speed:.1f}x", where))
        for family, v in e["training"].items():
            rows.append((f"training samples/s, {family} ({kind}, {v['batch']} x {v['crop']} px crops)",
                         f"{v['samples_per_s']:.0f}", where))
        for r in e["regression"].values():
            rows += _regression_rows(r, kind, where)
        rows.append((f"peak RSS MB ({kind} run)", f"{e['peak_rss_mb']:.0f}", where))
        if "cuda_max_allocated_mb" in e:
            rows.append(("CUDA max allocated MB", f"{e['cuda_max_allocated_mb']:.0f}", where))
    lines = ["| figure | value | machine |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CPU, and CUDA when present), cpu or cuda")
    p.add_argument("--skip-darktable", action="store_true", help="no darktable figures (a machine without darktable)")
    p.add_argument("--darktable-from", default="bench/results.json", metavar="FILE",
                   help="with --skip-darktable: take the darktable figures from this earlier results file")
    p.add_argument("--out", default="bench/results.json", metavar="FILE", help="where the results go")
    p.add_argument("--families", default=",".join(FAMILIES), help="model families to time")
    p.add_argument("--model-size", default=C.PROXY_MODEL_SIZE, help="size preset of the timed proxies")
    p.add_argument("--image", type=int, default=512, metavar="PX", help="side of the synthetic image without darktable")
    p.add_argument("--variants", default="", help="forward-pass variants to time, comma-separated "
                   "(default all: fp32, scripts, channels_last, bf16 and bf16+channels_last where the "
                   "device computes bf16 natively, compile, and on CUDA fp16+channels_last, "
                   "compile+bf16+channels_last, graph, graph+bf16+channels_last)")
    p.add_argument("--threads", type=int, default=0, metavar="T",
                   help="torch CPU threads (default: torch's choice, one per core)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per figure (median)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="darktable processes in parallel")
    p.add_argument("--per-image", type=int, default=32, help="batched generation: samples per built-in image")
    p.add_argument("--single", type=int, default=8, help="one-call-per-sample generation: samples")
    p.add_argument("--skip-exact", action="store_true",
                   help="do not time the exact family (each type whose default it is, at 512 px)")
    p.add_argument("--train-steps", type=int, default=20, help="timed training steps per family")
    p.add_argument("--train-crop", type=int, default=0, metavar="PX",
                   help="side of the training crops (default: each family's PROXY_MODEL_CROP)")
    p.add_argument("--regression-families", default="", metavar="FAMILIES",
                   help="families timed in slider regression (default: every timed family)")
    p.add_argument("--regression-iterations", type=int, default=C.PARAM_TUNING_NUM_ITER)
    p.add_argument("--full-frame-iterations", type=int, default=0,
                   help="full-frame regression iterations (default 200 on CUDA, 2 on CPU)")
    p.add_argument("--regression-size", type=int, nargs=2, default=[720, 1280], metavar=("H", "W"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = run_bench(args)
    save(results, args.out)
    print(table(results))
    print(f"results: {args.out} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    cli_main(main)()
