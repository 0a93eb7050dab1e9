"""Forward passes replayed as CUDA graphs: one launch for all of a pass's kernels.

A proxy's pass over one image launches hundreds of small kernels, and on a GPU each launch
costs microseconds of CPU time: the pass is bound by launching, not by the GPU. Captured once
as a CUDA graph and replayed, the same pass ran 3-7x faster on an H200 (docs/performance.md).

:class:`GraphedPasses` keeps one graph per input signature (shapes, dtypes, strides, and
what else the caller names, such as a CFA pattern). A signature is captured the second time
it is seen, so a one-off shape (the last, smaller batch of an epoch) costs no capture. A pass
that cannot be captured (it reads a value back to the host to size a step:
``tests/models/test_capture.py`` names those exact types) runs as it is from then on. Each
replay copies the inputs into the graph's own and returns a copy of its output, which the
next replay would overwrite; all graphs on a device share one memory pool, which is safe
because nothing but those copies leaves a replay.
"""
from __future__ import annotations

import collections
import logging
from typing import Callable, Hashable, Sequence

import torch

log = logging.getLogger(__name__)

MOST_GRAPHS = 8     # graphs kept per GraphedPasses, the least recently replayed dropped first
MOST_SEEN = 1024    # signatures remembered as seen once, before the memory is cleared
# one memory pool per device for every graph: each replay's output is copied out at once and
# nothing else of a replay outlives it, so the graphs (of a pipeline's proxies too) may share
# memory, and hold about what the largest pass needs rather than the sum of all of them
_POOLS: dict[torch.device, tuple] = {}

Capture = Callable[[Callable[..., torch.Tensor], Sequence[torch.Tensor]], Callable[[], torch.Tensor]]


class GraphedPasses:
    """Runs ``fn(*tensors)`` as a replayed graph once its signature has been seen before.

    ``capture(fn, static)`` records ``fn`` of the tensors ``static`` and returns a function of
    no arguments that computes it again, from whatever ``static`` then holds, into the same
    output tensor (by default :meth:`cuda_capture`); a RuntimeError it raises means the pass
    cannot be captured, and every later call runs ``fn`` as it is (``failed`` says why). The
    caller replays only passes on ``device_type``."""

    def __init__(self, capture: Capture | None = None, most: int = MOST_GRAPHS, device_type: str = "cuda"):
        self.device_type = device_type
        self._capture = capture or self.cuda_capture
        self._most = most
        self._graphs: collections.OrderedDict[Hashable, tuple[list[torch.Tensor], Callable[[], torch.Tensor]]] = \
            collections.OrderedDict()
        self._seen: set[Hashable] = set()
        self.failed = ""

    def __call__(self, fn: Callable[..., torch.Tensor], *tensors: torch.Tensor,
                 extra: Hashable = ()) -> torch.Tensor:
        key = (signature(tensors), torch.is_inference_mode_enabled(), extra)
        graph = self._graphs.get(key)
        if graph is None:
            if self.failed or key not in self._seen:
                if len(self._seen) >= MOST_SEEN:
                    self._seen.clear()
                self._seen.add(key)
                return fn(*tensors)
            static = [t.clone() for t in tensors]
            try:
                graph = static, self._capture(fn, static)
            except RuntimeError as e:
                self.failed = str(e).splitlines()[0] if str(e) else type(e).__name__
                log.debug("the pass cannot be captured as a CUDA graph (%s); it runs as it is", self.failed)
                return fn(*tensors)
            self._graphs[key] = graph
            while len(self._graphs) > self._most:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        static, replay = graph
        for target, source in zip(static, tensors):
            target.copy_(source)
        return replay().clone()

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every graph (they read the tensors they were captured with: after a proxy
        moves or changes dtype they would read freed memory)."""
        self._graphs.clear()
        self._seen.clear()

    def cuda_capture(self, fn: Callable[..., torch.Tensor], static: Sequence[torch.Tensor]) -> Callable[[], torch.Tensor]:
        """``fn(*static)`` captured as a CUDA graph, after one pass on a side stream (cuDNN's
        choices and the allocator's first blocks stay out of the graph); the current stream
        is the caller's again whether or not the capture succeeds."""
        device = static[0].device
        if device not in _POOLS:
            _POOLS[device] = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        try:
            with torch.cuda.stream(side):
                fn(*static)
                with torch.cuda.graph(graph, pool=_POOLS[device], stream=side, capture_error_mode="thread_local"):
                    out = fn(*static)
        finally:
            torch.cuda.current_stream(device).wait_stream(side)

        def replay() -> torch.Tensor:
            graph.replay()
            return out
        return replay


def signature(tensors: Sequence[torch.Tensor]) -> tuple:
    """What a graph captured on ``tensors`` needs of the tensors it replays: the same shapes,
    strides, dtypes and devices."""
    return tuple((tuple(t.shape), t.stride(), t.dtype, t.device) for t in tensors)
