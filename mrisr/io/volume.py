"""The :class:`Volume` (data with its voxel-to-RAS affine) and :class:`DicomSeries` records, and the
suffixes mrisr reads."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mrisr.errors import InputError

__all__ = ["Volume", "DicomSeries", "NIFTI_SUFFIXES", "SITK_SUFFIXES"]

logger = logging.getLogger(__name__)


NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
# LPS (DICOM, ITK) <-> RAS (NIfTI): negate the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Volume:
    """A 3D scalar volume and where it lies in the world.

    Attributes:
        data: voxel values, shape ``(I, J, K)``, float32, in the input's units.
        affine: ``(4, 4)`` float64 map from voxel index to RAS millimetres.
        metadata: where the volume came from (path, format, DICOM series UID and description,
            the stored data type, ...); JSON-serialisable.
    """

    data: np.ndarray
    affine: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise InputError(f"a Volume needs 3D data, got shape {tuple(self.data.shape)}")
        if self.affine.shape != (4, 4):
            raise InputError(f"a Volume needs a 4x4 affine, got shape {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in millimetres along each array axis (norms of the affine's columns)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> tuple[str, str, str]:
        """Anatomical direction each array axis points to, e.g. ``('L', 'P', 'S')``."""
        import nibabel as nib

        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]

    def with_data(self, data: np.ndarray, affine: np.ndarray, **metadata: Any) -> Volume:
        """A new volume on another grid that keeps this one's provenance."""
        return Volume(np.ascontiguousarray(data, dtype=np.float32), np.asarray(affine, dtype=np.float64),
                      {**self.metadata, **metadata})

    def crop(self, sizes: Sequence[int | None], multiple: Sequence[int] = (1, 1, 1)) -> Volume:
        """The central ``sizes[a]`` voxels along each axis (None or a larger size: all of it), each
        size rounded down to a multiple of ``multiple[a]``; the affine moves so that every kept
        voxel keeps its world position."""
        box = []
        for n, size, m in zip(self.shape, sizes, multiple):
            size = n if size is None or size >= n else size
            size -= size % m
            if size < 1:
                raise ValueError(f"crop of {sizes} leaves no voxels of a {self.shape} volume")
            box.append(((n - size) // 2, (n - size) // 2 + size))
        return self.subvolume(box)

    def subvolume(self, box: Sequence[tuple[int, int]]) -> Volume:
        """The voxels ``box[a][0]:box[a][1]`` along each axis; the affine moves so that every kept
        voxel keeps its world position."""
        return self.with_data(self.data[tuple(slice(lo, hi) for lo, hi in box)],
                              self.offset_affine([lo for lo, _ in box]))

    def offset_affine(self, starts: Sequence[int]) -> np.ndarray:
        """The affine of the sub-grid whose first voxel is ``starts``: the same axes, the origin
        moved there, so that every voxel keeps its world position."""
        affine = self.affine.copy()
        affine[:3, 3] = self.affine[:3, :3] @ np.asarray(starts, float) + self.affine[:3, 3]
        return affine


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found in a folder tree, its files sorted along the slice normal."""

    uid: str
    description: str
    files: tuple[str, ...]
    modality: str = ""
    #: position of each file along the slice normal (mm), in file order
    positions: tuple[float, ...] = ()

    @property
    def n_slices(self) -> int:
        return len(self.files)

    def summary(self) -> str:
        return f"{self.uid} ({self.description or 'no description'}, {self.n_slices} slices)"
