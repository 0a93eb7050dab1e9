"""Where networks run: ``--device auto|cpu|cuda|mps``, resolved once per script."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import torch

from models.graphs import GraphedPasses
from models.networks import BF16_FAMILIES
from models.proxy import Proxy
from utils.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")
# glibc's mallopt parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 1 << 30
INT_MAX = (1 << 31) - 1


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed memory for tensors of up to ``KEEP_FREED_BYTES`` rather
    than map fresh pages from the kernel for each (its default above 32 MB): every fresh page
    faults when first written, which made a 512x512 forward pass on a CPU 1.4-3x slower
    (docs/performance.md). Freed memory stays with the process (up to 2 GB more is kept
    than returned). Once per process; False where the C library has no mallopt (not glibc)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BYTES) and mallopt(M_TRIM_THRESHOLD, INT_MAX))


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(choice: str) -> torch.device:
    """``auto``: CUDA, else Apple's MPS, else the CPU; a device that is not there is a
    UserError. Under torchrun each process takes the CUDA device of its LOCAL_RANK."""
    if choice not in DEVICES:
        raise UserError(f"--device {choice!r}: use one of {', '.join(DEVICES)}")
    keep_freed_memory()
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu or auto")
    if choice == "mps" and not mps_available():
        raise UserError("--device mps: no Apple MPS device is available; use --device cpu or auto")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if choice == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(choice)


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA device that supports it, or a CPU
    with AMX (Intel's matrix units; measured on one, docs/performance.md). CPUs without it
    emulate bf16 and run it 2-4x slower than fp32; MPS is not measured and keeps fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        capabilities = getattr(torch.cpu, "get_capabilities", dict)()
        return bool(capabilities.get("amx_bf16"))
    return False


def inference_dtype(device: torch.device, family: str) -> torch.dtype | None:
    """The autocast dtype of a loaded proxy's forward passes without gradients
    (``Proxy.inference_dtype``): bfloat16 for the convolution families on a CPU that computes
    it natively (3x faster, outputs 71-84 dB from fp32), else None (fp32). Not on CUDA: there
    a 512 px unet pass took 3.3-3.8 ms in bf16 autocast against 1.8-2.7 ms in fp32 (an H200,
    two runs; one image is too little work to pay for the casts). Passes with gradients
    (slider regression) stay fp32: docs/performance.md."""
    cpu_bf16 = device.type == "cpu" and native_bf16(device)
    return torch.bfloat16 if family in BF16_FAMILIES and cpu_bf16 else None


def for_inference(proxy: Proxy, device: torch.device) -> Proxy:
    """``proxy`` (on ``device``) set to run its forward passes without gradients as fast as
    measured there: in ``inference_dtype``, and on CUDA replayed as CUDA graphs (models.graphs:
    3-7x faster passes of one image on an H200, docs/performance.md)."""
    proxy.inference_dtype = inference_dtype(device, proxy.spec.family)
    proxy.graphs = GraphedPasses() if device.type == "cuda" else None
    return proxy


def training_dtype(device: torch.device, family: str) -> torch.dtype | None:
    """The autocast dtype of a training step's forward pass: bfloat16 for the convolution
    families on CUDA, else None (fp32). The per-pixel families train in fp32 everywhere, as
    they run at inference: the demo's exposure trained in bf16 autocast wandered by 1.6 dB
    over its last epochs and ended at 59.99 dB, against a steady 60.34 in fp32. CPUs train
    in fp32 (docs/performance.md)."""
    return torch.bfloat16 if device.type == "cuda" and family in BF16_FAMILIES else None
