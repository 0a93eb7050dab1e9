"""Which exact passes a GPU can capture as a CUDA graph (tools.bench times them so on CUDA),
checked without one: each pass runs on the meta device, which holds no values, so a value
read back to the host fails there; a constant copied from the host is caught as it is made.
Either one stops a capture."""
import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tools.bench import exact_cases, synthetic_image

# what keeps the others from being captured: sizes that follow a value of the image or a slider
NOT_CAPTURABLE = {
    "shadhi": "its bilateral grid's size follows the radius",
    "hazeremoval": "its ambient light is selected on the host",
}


class _HostCopies(TorchDispatchMode):
    """Counts the host data copied onto the (meta) device."""

    def __init__(self):
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source, target = (args[1], args[0]) if func is torch.ops.aten.copy_.default else (args[0], out)
            self.copies += source.device.type == "cpu" and target.device.type == "meta"
        return out


def _blocker(proxy, x, u, monkeypatch) -> str:
    """Why the pass cannot be captured, or "" if it can."""
    literals = collections.Counter()
    for name in ("tensor", "as_tensor"):     # a constant made on the device is copied from the host
        made = getattr(torch, name)

        def watched(data, *args, _made=made, _name=name, **kwargs):
            device = kwargs.get("device")
            literals[_name] += device is not None and torch.device(device).type != "cpu" \
                and not isinstance(data, torch.Tensor)
            return _made(data, *args, **kwargs)
        monkeypatch.setattr(torch, name, watched)
    proxy, x, u = proxy.to("meta"), x.to("meta"), u.to("meta")
    try:
        with torch.inference_mode():
            proxy(x, u)                         # a first pass fills the caches, as a warm-up does
            literals.clear()
            copies = _HostCopies()
            with copies:
                proxy(x, u)
    except (RuntimeError, NotImplementedError) as e:
        return f"reads a value back: {str(e).splitlines()[0]}"
    if copies.copies or sum(literals.values()):
        return f"copies from the host: {copies.copies} copies, {dict(literals)} constants"
    return ""


@pytest.mark.parametrize("case", list(exact_cases(synthetic_image(40, 48), torch.device("cpu"))),
                         ids=lambda case: case[0].name)
def test_exact_passes_are_capturable_unless_a_size_follows_a_value(case, monkeypatch):
    proxy_type, proxy, x, u = case
    blocker = _blocker(proxy, x, u, monkeypatch)
    if proxy_type.name in NOT_CAPTURABLE:
        assert blocker.startswith("reads a value back"), blocker
    else:
        assert blocker == "", f"{proxy_type.name} {blocker}"
