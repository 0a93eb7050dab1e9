"""Replayed passes (models.graphs), checked without a GPU: the capture is a stand-in that, as a
CUDA graph does, computes the recorded pass again from the tensors it was captured with, into
one output tensor it overwrites at every replay. On CUDA itself: tests/models/test_cuda.py."""
import pytest
import torch

from models.fixed import ImageContext
from models.graphs import GraphedPasses
from tools.bench import make_proxy
from utils.devices import for_inference


class Recorder:
    """A capture that replays ``fn`` on the captured tensors into one output tensor."""

    def __init__(self, fail: bool = False):
        self.captures, self.replays, self.fail = 0, 0, fail

    def __call__(self, fn, static):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing\nmore")
        self.captures += 1
        out = fn(*static)

        def replay():
            self.replays += 1
            return out.copy_(fn(*static))
        return replay


def add(x, u):
    return x + u


def test_a_signature_is_captured_the_second_time_then_replayed_on_new_values():
    recorder = Recorder()
    graphs = GraphedPasses(recorder, device_type="cpu")
    x, u = torch.rand(2, 3), torch.rand(2, 3)
    assert torch.equal(graphs(add, x, u), x + u) and recorder.captures == 0 and len(graphs) == 0
    assert torch.equal(graphs(add, x, u), x + u) and recorder.captures == 1
    first = graphs(add, x, u)
    x2 = torch.rand(2, 3)
    second = graphs(add, x2, u)
    assert recorder.captures == 1 and recorder.replays == 3
    assert torch.equal(second, x2 + u)
    assert torch.equal(first, x + u), "a replay overwrote the output of the one before"


def test_each_signature_and_extra_key_has_its_own_graph_and_the_oldest_goes_first():
    recorder = Recorder()
    graphs = GraphedPasses(recorder, most=2, device_type="cpu")
    shapes = [(1, 3), (2, 3), (4, 3)]
    for _ in range(2):
        for shape in shapes:
            graphs(add, torch.rand(shape), torch.rand(shape))
    assert recorder.captures == 3 and len(graphs) == 2
    x, u = torch.rand(1, 3), torch.rand(1, 3)
    assert torch.equal(graphs(add, x, u), x + u)    # the first shape's graph was dropped: captured again
    assert recorder.captures == 4 and len(graphs) == 2
    for extra in ("RGGB", "BGGR", "BGGR"):
        graphs(add, x, u, extra=extra)
    assert recorder.captures == 5
    assert torch.equal(graphs(add, x.t().contiguous().t(), u), x + u)   # other strides: not the graph's


def test_a_pass_that_cannot_be_captured_runs_as_it_is_and_is_not_tried_again():
    recorder = Recorder(fail=True)
    graphs = GraphedPasses(recorder, device_type="cpu")
    x, u = torch.rand(2, 3), torch.rand(2, 3)
    for _ in range(4):
        assert torch.equal(graphs(add, x, u), x + u)
    assert graphs.failed == "operation not permitted when stream is capturing" and len(graphs) == 0
    recorder.fail = False
    graphs(add, x, u)
    assert recorder.captures == 0


def test_a_proxy_replays_only_passes_without_gradients_out_of_training():
    proxy = make_proxy("multiscale", "tiny", torch.device("cpu"))
    with torch.no_grad():                   # new proxies start as the identity: weights that use the sliders
        for p in proxy.parameters():
            p.normal_(0, 0.1)
    recorder = Recorder()
    proxy.graphs = GraphedPasses(recorder, device_type="cpu")
    x, u = torch.rand(1, 3, 24, 32), torch.rand(1, 2)
    expected = proxy(x, u.requires_grad_())
    assert recorder.captures == 0 and expected.requires_grad       # with a gradient: plain passes
    u = u.detach()
    with torch.no_grad():
        proxy.train()
        proxy(x, u), proxy(x, u)
        assert recorder.captures == 0
        proxy.eval()
        outputs = [proxy(x, u) for _ in range(3)]
        assert recorder.captures == 1 and recorder.replays == 2
        other = proxy(x, u * 0.5), proxy(x, u * 0.5)
    for y in outputs:
        assert torch.allclose(y, expected.detach(), atol=1e-6)
    assert not torch.allclose(other[1], outputs[2])
    with torch.no_grad():                   # a chain's image context: its values would stay in the graph
        context = ImageContext(pattern="RGGB")
        for _ in range(3):
            proxy(x, u, context)
    assert recorder.captures == 1 and recorder.replays == 4
    proxy.to(torch.float64)                 # the graphs read the tensors they were captured with
    assert len(proxy.graphs) == 0


@pytest.mark.parametrize("family", ["pointwise", "multiscale"])
def test_a_loaded_proxy_replays_graphs_on_cuda_only(family):
    proxy = for_inference(make_proxy(family, "tiny", torch.device("cpu")), torch.device("cpu"))
    assert proxy.graphs is None
    proxy = for_inference(make_proxy(family, "tiny", torch.device("cpu")), torch.device("cuda"))
    assert isinstance(proxy.graphs, GraphedPasses) and proxy.graphs.device_type == "cuda"
