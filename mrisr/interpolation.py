"""Classical cell-centred interpolation of 2D planes: the baselines and the network's condition.

Both functions follow the convention of :mod:`mrisr.geometry`: output sample ``o`` along an
axis upsampled by ``f`` sits at input index ``(o + 0.5) / f - 0.5``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["bicubic_upsample", "bspline_upsample", "bspline_matrix"]


def _check_factors(factors: tuple[int, int]) -> tuple[int, int]:
    if len(factors) != 2 or any(int(f) != f or f < 1 for f in factors):
        raise ValueError(f"factors must be two integers >= 1, got {factors!r}")
    return int(factors[0]), int(factors[1])


def bicubic_upsample(planes: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """Bicubic (Keys, a = -0.75, PyTorch's kernel) upsampling of a batch of planes.

    Args:
        planes: ``(B, C, H, W)`` float tensor.
        factors: integer factor along ``H`` and ``W`` (1 leaves an axis untouched exactly).

    Returns:
        ``(B, C, H * factors[0], W * factors[1])``, same dtype and device.
    """
    fh, fw = _check_factors(factors)
    if planes.ndim != 4:
        raise ValueError(f"planes must be (B, C, H, W), got shape {tuple(planes.shape)}")
    if (fh, fw) == (1, 1):
        return planes.clone()
    h, w = planes.shape[-2:]
    # Explicit sizes make PyTorch use scale = in / out = 1 / f exactly (cell-centred).
    return F.interpolate(planes, size=(h * fh, w * fw), mode="bicubic", align_corners=False)


@functools.lru_cache(maxsize=64)
def bspline_matrix(n: int, factor: int) -> np.ndarray:
    """The ``(n * factor, n)`` linear map of 1D cubic B-spline interpolation (with prefilter).

    Interpolation is linear in the samples, so the operator is built once from the responses to
    unit impulses (1D ``scipy.ndimage.zoom`` with ``grid_mode=True``, the cell-centred mapping,
    and half-sample-symmetric ``reflect`` borders) and then applied as a matrix product. This
    sidesteps ``ndimage.zoom``'s inexact borders along short axes with factor 1.
    """
    from scipy import ndimage

    eye = np.eye(n)
    columns = [ndimage.zoom(eye[i], factor, order=3, mode="reflect", grid_mode=True, prefilter=True)
               for i in range(n)]
    matrix = np.stack(columns, axis=1)
    matrix.setflags(write=False)
    return matrix


def bspline_upsample(planes: np.ndarray, factors: tuple[int, int]) -> np.ndarray:
    """Cubic B-spline interpolation of planes, separable along ``H`` and ``W``.

    Args:
        planes: ``(B, H, W)`` array.
        factors: integer factor along ``H`` and ``W`` (1 leaves an axis untouched exactly).

    Returns:
        ``(B, H * factors[0], W * factors[1])`` float32.
    """
    fh, fw = _check_factors(factors)
    if planes.ndim != 3:
        raise ValueError(f"planes must be (B, H, W), got shape {planes.shape}")
    out = np.asarray(planes, dtype=np.float64)
    if fh > 1:
        out = np.einsum("oh,bhw->bow", bspline_matrix(out.shape[1], fh), out, optimize=True)
    if fw > 1:
        out = np.einsum("pw,bhw->bhp", bspline_matrix(out.shape[2], fw), out, optimize=True)
    return out.astype(np.float32)
