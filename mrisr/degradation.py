"""Simulated acquisitions: what a thicker slice would have measured.

A 2D multi-slice acquisition with slice thickness ``f`` times the fine spacing integrates the
signal over ``f`` fine lines (Sec. 5.2.2 of the PartDiff paper uses the average of 6 lines).
"""

from __future__ import annotations

import numpy as np

from mrisr.errors import GeometryError
from mrisr.geometry import check_factor, downsampled_affine
from mrisr.io import Volume

__all__ = ["average_lines", "thick_slice_volume"]


def average_lines(data: np.ndarray, axis: int, factor: int) -> np.ndarray:
    """Average each run of ``factor`` consecutive samples along ``axis``.

    A trailing remainder shorter than ``factor`` is dropped.

    Args:
        data: array of any shape.
        axis: the axis to thicken.
        factor: samples per thick sample (>= 2).

    Returns:
        Array with ``data.shape[axis] // factor`` samples along ``axis``, float32.
    """
    factor = check_factor(factor)
    n = data.shape[axis] // factor
    if n < 1:
        raise GeometryError(f"axis {axis} has {data.shape[axis]} samples, fewer than the factor {factor}")
    moved = np.moveaxis(np.asarray(data, dtype=np.float64), axis, 0)[: n * factor]
    thick = moved.reshape(n, factor, *moved.shape[1:]).mean(axis=1)
    return np.moveaxis(thick, 0, axis).astype(np.float32)


def thick_slice_volume(volume: Volume, axis: int, factor: int) -> Volume:
    """A thick-slice version of ``volume``: ``factor`` lines averaged along ``axis``, with the
    affine of the merged grid (same slab, each thick voxel centred on its children)."""
    factors = tuple(factor if a == axis else 1 for a in range(3))
    data = average_lines(volume.data, axis, factor)
    return volume.with_data(data, downsampled_affine(volume.affine, factors),  # type: ignore[arg-type]
                            degradation=f"average of {factor} lines along axis {axis}")
