"""Small building blocks shared by the proxy networks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def slider_planes(sliders: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast normalised sliders (B, S) to constant planes (B, S, H, W) shaped like ``like``."""
    b, _, h, w = like.shape
    return sliders[:, :, None, None].to(like.dtype).expand(b, sliders.shape[1], h, w)


def and_one(sliders: torch.Tensor) -> torch.Tensor:
    """(B, S) -> (B, S + 1): the sliders and a 1, so that a head has an input when S is 0."""
    return torch.cat([sliders, sliders.new_ones(sliders.shape[0], 1)], 1)


def values_on_host(x: torch.Tensor) -> bool:
    """Whether ``x`` lies on the CPU, where a pass may read a value back to size or select a
    step at no cost; elsewhere such a read makes the host wait for the device and keeps the
    pass out of a CUDA graph (models.graphs)."""
    return x.device.type == "cpu"


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, stride: int | tuple[int, int] = 1) -> torch.Tensor:
    """``F.conv2d(x, weight)`` with a group per channel of ``x`` (B, C, H, W), in float32 sums
    on CUDA too: there, in float32 and channel-first memory, torch computes a depthwise
    convolution of two groups or more in its own kernel, where cuDNN (a single group) would
    round through TF32 by default; a single channel therefore goes in twice on a GPU."""
    if x.shape[1] == 1 and x.device.type == "cuda":
        return F.conv2d(torch.cat([x, x], 1), torch.cat([weight, weight]), stride=stride,
                        groups=2)[:, :weight.shape[0]]
    return F.conv2d(x, weight, stride=stride, groups=x.shape[1])


def linear_columns(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A Linear layer applied to every column of (B, C, N): (B, C_out, N)."""
    return torch.baddbmm(layer.bias[None, :, None], layer.weight.expand(x.shape[0], -1, -1), x)


def in_pixel_slices(fn, *tables: torch.Tensor, size: int) -> torch.Tensor:
    """``fn`` of (B, C, N) pixel tables whose every column (a pixel) is computed alone, run on
    slices of ``size`` pixels and joined: the intermediates of a per-pixel network then stay
    in a CPU's caches, where on a whole image it is memory-bound (docs/performance.md). On a
    GPU, whose every kernel launch costs microseconds of CPU time, the whole table at once."""
    if tables[0].device.type != "cpu" or tables[0].shape[-1] <= size:
        return fn(*tables)
    return torch.cat([fn(*parts) for parts in zip(*(t.split(size, -1) for t in tables))], -1)


class FreshSiLU(nn.SiLU):
    """SiLU for an input nothing else reads (a layer's fresh output): computed in place where
    no gradient flows through it, which spares a CPU the allocation of another table (10.5
    against 14.3 ms for 512 x 512 pixels x 64); out of place where one does, since autograd
    would copy the input to keep it (20 % slower training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=not (torch.is_grad_enabled() and x.requires_grad))


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions with LeakyReLU, as in Learning-to-See-in-the-Dark's UNet."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(0.2, inplace=True))


class ConvStack(nn.Sequential):
    """``depth`` convolutions of kernel ``k`` with LeakyReLU between them, linear last layer."""

    def __init__(self, cin: int, cout: int, width: int, depth: int, k: int):
        layers: list[nn.Module] = []
        for i in range(depth - 1):
            layers += [nn.Conv2d(cin if i == 0 else width, width, k, padding=k // 2),
                       nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(width if depth > 1 else cin, cout, k, padding=k // 2))
        super().__init__(*layers)


SIZE_TOLERANCE = 0.01    # px: how far below a whole number a size read from planes may come


def pixel_indices(planes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the pixels of (B, >= 2, h, w) coordinate planes (utils.data.tapouts.coordinate_planes
    of the whole image, maybe cropped since; h, w >= 2) lie in their image: each column's and
    row's index there, (B, w) and (B, h), and the image's width and height in pixels, (B,);
    all int64. The planes span the image's extent in the pipe, 2 over their step; its pixels
    are the whole ones (an image 85.5 px high at its scale has 85 rows: the last one is 84).
    The step is read across the whole span (float32 planes: about 1e-4 px of extent at 1000
    px on a whole image), and an extent within SIZE_TOLERANCE of a whole number counts as it."""
    def axis(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        extent = 2 * (v.shape[1] - 1) / (v[:, -1] - v[:, 0])
        index = ((v + 1) / 2 * extent[:, None] - 0.5).round()
        return index.long(), (extent + SIZE_TOLERANCE).floor().long()

    (cols, width), (rows, height) = axis(planes[:, 0, 0, :].double()), axis(planes[:, 1, :, 0].double())
    return cols, rows, width, height


def pixelate(z: torch.Tensor, radius: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """darktable's pixelation (censorize) of (B, C, h, w) ``z`` into cells of 2 ``radius`` (B,)
    px (int; 0 leaves an image as it is), laid from its image's top-left corner (``planes``:
    where z lies there, :func:`pixel_indices`): each cell painted with the mean of z at its
    four corners and centre, the corners shared with the next cells, all clamped into the
    image; its last row and column, which no cell paints, 0 (as darktable 5.0.1 leaves them).
    On a crop the points outside it are taken at its edge. Differentiable in z."""
    b, c, h, w = z.shape
    cols, rows, width, height = pixel_indices(planes)
    r = radius.long().clamp_min(1)[:, None]

    def corners(index: torch.Tensor, size: torch.Tensor, offset: torch.Tensor):
        """A cell's top-left, centre and bottom-right along one axis, as indices into the crop."""
        top = (index // (2 * r) * (2 * r)).minimum(size[:, None] - 1)
        centre = (top + r).minimum(size[:, None] - 1)
        bottom = (centre + r).minimum(size[:, None] - 1)
        return [(p - offset).clamp(0, index.shape[1] - 1) for p in (top, centre, bottom)]

    (left, middle, right), (top, centre, bottom) = corners(cols, width, cols[:, :1]), corners(rows, height, rows[:, :1])

    def at(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        picked = z.gather(3, col[:, None, None, :].expand(b, c, h, w))
        return picked.gather(2, row[:, None, :, None].expand(b, c, h, w))

    cells = (at(top, left) + at(top, right) + at(centre, middle) + at(bottom, left) + at(bottom, right)) / 5
    painted = (cols < width[:, None] - 1)[:, None, None, :] & (rows < height[:, None] - 1)[:, None, :, None]
    cells = torch.where(painted, cells, torch.zeros_like(cells))
    return torch.where((radius.long() > 0)[:, None, None, None], cells, z)
