"""The colour conversions darktable's pipe applies between modules, as differentiable torch.

darktable converts a module's output to the next module's working space before handing it
on: a module working in Lab after one working in RGB gets ``rgb_to_lab`` of its predecessor's
output, and the reverse. Between colorin and colorout the RGB space is darktable's default
working profile, linear Rec.2020 (D50-adapted, as in its ICC profiles); Lab is CIE L*a*b*
relative to D50 (L 0..100). The constants are darktable's (``common/colorspaces_inline_
conversions.h``); the tests check the conversions against darktable's own tap-outs.

Tensors are (..., 3, H, W) with the channel axis third from last, as the proxies use them.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

D50 = (0.9642, 1.0, 0.8249)          # darktable's D50 white (XYZ)
_EPSILON = 216.0 / 24389.0           # CIE: (6/29)^3
_KAPPA = 24389.0 / 27.0              # CIE: (29/3)^3

# Rec.2020 primaries and white (CIE xy) and the Bradford cone response matrix
_REC2020_XY = ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046))
_D65_XY = (0.3127, 0.3290)
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614],
                      [-0.7502, 1.7135, 0.0367],
                      [0.0389, -0.0685, 1.0296]])


def _xy_to_xyz(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1.0 - x - y) / y])


@functools.lru_cache(maxsize=None)
def rec2020_to_xyz_d50() -> np.ndarray:
    """Linear Rec.2020 -> XYZ (D50), as an ICC matrix profile: primaries scaled to the D65
    white, then chromatically adapted to D50 with Bradford (float64, 3x3)."""
    primaries = np.stack([_xy_to_xyz(*p) for p in _REC2020_XY], axis=1)
    white = _xy_to_xyz(*_D65_XY)
    to_xyz = primaries * np.linalg.solve(primaries, white)          # columns scaled to sum to white
    return _bradford(white, np.array(D50)) @ to_xyz


def _bradford(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Bradford's chromatic adaptation from white ``src`` to white ``dst`` (XYZ), 3x3."""
    return np.linalg.inv(_BRADFORD) @ np.diag((_BRADFORD @ dst) / (_BRADFORD @ src)) @ _BRADFORD


def camera_to_xyz_d50(xyz_to_camera: np.ndarray) -> np.ndarray:
    """darktable's input profile from a raw's embedded colour matrix (a DNG's ColorMatrix
    for D65, XYZ -> camera): its rows scaled so the D65 white gives the white-balanced camera
    (1, 1, 1), inverted, then adapted to D50 with Bradford: white-balanced camera RGB -> XYZ
    (D50), 3x3 float64. Measured against darktable 5.0.1's colorin on the held-out built-in
    DNGs: 77.7-97.7 dB."""
    white = _xy_to_xyz(*_D65_XY)
    normalised = xyz_to_camera / (xyz_to_camera @ white)[:, None]
    return _bradford(white, np.array(D50)) @ np.linalg.inv(normalised)


def constant(values, like: torch.Tensor) -> torch.Tensor:
    """``values`` (an array or nested sequence of numbers) as a tensor of ``like``'s dtype and
    device, made once per values, dtype and device, and shared: read it, never write it. A
    pass on a GPU then copies no constant from the host: each copy waits for the GPU, and a
    CUDA graph cannot capture one."""
    a = np.ascontiguousarray(values, dtype=np.float64)
    return _constant(a.tobytes(), a.shape, like.dtype, like.device)


@functools.lru_cache(maxsize=64)
def _constant(data: bytes, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):     # also for passes with a gradient, if first made in one without
        array = np.frombuffer(data, dtype=np.float64).reshape(shape).copy()
        return torch.from_numpy(array).to(device=device, dtype=dtype)


def _matmul(m: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,...jhw->...ihw", constant(m, x), x)


def _white(x: torch.Tensor) -> torch.Tensor:
    return constant(D50, x)[:, None, None]


def xyz_to_lab(xyz: torch.Tensor) -> torch.Tensor:
    t = xyz / _white(xyz)
    # the clamp keeps the cube root's gradient finite in the linear branch, where it is unused
    f = torch.where(t > _EPSILON, t.clamp_min(_EPSILON) ** (1.0 / 3.0), (_KAPPA * t + 16.0) / 116.0)
    fx, fy, fz = f.unbind(-3)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=-3)


def lab_to_xyz(lab: torch.Tensor) -> torch.Tensor:
    L, a, b = lab.unbind(-3)
    fy = (L + 16.0) / 116.0
    f = torch.stack((fy + a / 500.0, fy, fy - b / 200.0), dim=-3)
    t = torch.where(f > 6.0 / 29.0, f ** 3, (116.0 * f - 16.0) / _KAPPA)
    return t * _white(lab)


def profile_to_lab(matrix: np.ndarray | torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """Lab (D50) of ``rgb`` (..., 3, H, W) taken to XYZ (D50) by an input profile's
    ``matrix``: one (3, 3) for every image, or (B, 3, 3), one for each image of (B, 3, H, W)."""
    m = matrix.to(device=rgb.device, dtype=rgb.dtype) if isinstance(matrix, torch.Tensor) else constant(matrix, rgb)
    return xyz_to_lab(torch.einsum("ij,...jhw->...ihw" if m.dim() == 2 else "bij,bjhw->bihw", m, rgb))


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """Linear Rec.2020 (darktable's working RGB) -> Lab (D50)."""
    return profile_to_lab(rec2020_to_xyz_d50(), rgb)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab (D50) -> linear Rec.2020 (darktable's working RGB)."""
    return _matmul(np.linalg.inv(rec2020_to_xyz_d50()), lab_to_xyz(lab))


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


# The conversions the pipe may apply between two modules, by name (pipelines record the name).
CONVERSIONS = {"identity": identity, "lab_to_rgb": lab_to_rgb, "rgb_to_lab": rgb_to_lab}
