"""Simulated acquisitions: what a thicker slice would have measured.

A 2D multi-slice acquisition with slice thickness ``f`` times the fine spacing integrates the
signal over ``f`` fine lines (Sec. 5.2.2 of the PartDiff paper uses the average of 6 lines).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from mrisr.errors import GeometryError
from mrisr.geometry import check_factor, downsampled_affine
from mrisr.io import Volume

__all__ = ["average_lines", "thick_slice_volume"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def average_lines(data: ArrayT, axis: int, factor: int) -> ArrayT:
    """Average each run of ``factor`` consecutive samples along ``axis`` (numpy or torch).

    A trailing remainder shorter than ``factor`` is dropped.

    Args:
        data: array or tensor of any shape.
        axis: the axis to thicken (negative counts from the end).
        factor: samples per thick sample (>= 2).

    Returns:
        ``data.shape[axis] // factor`` samples along ``axis``; float32 for numpy input, the
        input's floating dtype (float32 for integer tensors) for torch.
    """
    factor = check_factor(factor)
    n = data.shape[axis] // factor
    if n < 1:
        raise GeometryError(f"axis {axis} has {data.shape[axis]} samples, fewer than the factor {factor}")
    if isinstance(data, torch.Tensor):
        moved = data.movedim(axis, 0)[: n * factor]
        moved = moved if moved.is_floating_point() else moved.float()
        return moved.reshape(n, factor, *moved.shape[1:]).mean(dim=1).movedim(0, axis)  # type: ignore[return-value]
    moved = np.moveaxis(np.asarray(data, dtype=np.float64), axis, 0)[: n * factor]
    thick = moved.reshape(n, factor, *moved.shape[1:]).mean(axis=1)
    return np.moveaxis(thick, 0, axis).astype(np.float32)  # type: ignore[return-value]


def thick_slice_volume(volume: Volume, axis: int, factor: int) -> Volume:
    """A thick-slice version of ``volume``: ``factor`` lines averaged along ``axis``, with the
    affine of the merged grid (same slab, each thick voxel centred on its children)."""
    factors = tuple(factor if a == axis else 1 for a in range(3))
    data = average_lines(volume.data, axis, factor)
    return volume.with_data(data, downsampled_affine(volume.affine, factors),  # type: ignore[arg-type]
                            degradation=f"average of {factor} lines along axis {axis}")
