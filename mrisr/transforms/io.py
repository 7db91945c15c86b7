"""A MONAI ``ImageReader`` built on :mod:`mrisr.io`, so ``LoadImage(d)`` yields MetaTensors with
the same RAS affine mrisr uses everywhere (NIfTI, NRRD / MHA, DICOM series folders)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from mrisr.io import NIFTI_SUFFIXES, SITK_SUFFIXES, Volume, load_volume

__all__ = ["MrisrReader"]


class MrisrReader(ImageReader):
    """Read volumes with :func:`mrisr.io.load_volume` for ``monai.transforms.LoadImage``.

    Args:
        series: SeriesInstanceUID for DICOM folders holding several series.
        nonfinite: ``"error"`` or ``"zero"`` (see :func:`mrisr.io.load_volume`).

    Example:
        ``LoadImaged(keys="image", reader=MrisrReader(), image_only=True)``
    """

    def __init__(self, series: str | None = None, nonfinite: str = "error") -> None:
        super().__init__()
        self.series = series
        self.nonfinite = nonfinite
        #: the mrisr error of the last failed read (MONAI's LoadImage replaces it with a generic one)
        self.last_error: Exception | None = None

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        for name in ensure_tuple(filename):
            p = Path(name)
            if not (p.is_dir() or p.name.lower().endswith(NIFTI_SUFFIXES + SITK_SUFFIXES)):
                return False
        return True

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs: Any) -> Volume | list[Volume]:
        self.last_error = None
        try:
            volumes = [load_volume(p, series=self.series, nonfinite=self.nonfinite)  # type: ignore[arg-type]
                       for p in ensure_tuple(data)]
        except Exception as exc:
            self.last_error = exc
            raise
        return volumes if len(volumes) > 1 else volumes[0]

    def get_data(self, img: Volume | list[Volume]) -> tuple[np.ndarray, dict]:
        volumes = list(ensure_tuple(img))
        first = volumes[0]
        for other in volumes[1:]:
            if other.shape != first.shape or not np.allclose(other.affine, first.affine, atol=1e-4):
                raise ValueError("volumes read together must share their grid (shape and affine)")
        meta: dict[str, Any] = {
            MetaKeys.AFFINE: first.affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: first.affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(first.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if len(volumes) == 1 else 0,
            "mrisr": {k: v for k, v in first.metadata.items() if isinstance(v, (str, int, float))},
        }
        data = first.data if len(volumes) == 1 else np.stack([v.data for v in volumes])
        return data, meta
