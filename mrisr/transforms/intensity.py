"""Per-volume robust intensity normalisation to about [-1, 1], and its exact inverse.

MRI has no fixed intensity scale, so each volume is mapped by its own robust range: the
``lower`` and ``upper`` percentiles go to -1 and 1. The parameters are kept, so outputs go back
to the input's units.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends

__all__ = ["IntensityRange", "robust_range", "ROBUST_PERCENTILES", "model_percentiles", "RobustNormalise",
           "RobustNormalised", "RobustNormaliseD", "RobustNormaliseDict", "INTENSITY_KEY"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class IntensityRange:
    """The affine map ``[low, high] -> [-1, 1]`` of one volume."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.low) or not np.isfinite(self.high):
            raise ValueError(f"intensity range must be finite, got {self.low}, {self.high}")

    @property
    def scale(self) -> float:
        # a constant image would divide by zero; any positive scale inverts exactly
        return max(self.high - self.low, 1e-8) / 2.0

    def normalise(self, x: ArrayT) -> ArrayT:
        return (x - self.low) / self.scale - 1.0

    def denormalise(self, x: ArrayT) -> ArrayT:
        return (x + 1.0) * self.scale + self.low

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: the percentiles mapped to -1 and 1 everywhere mrisr normalises a volume (models store their own)
ROBUST_PERCENTILES = (0.5, 99.5)


def model_percentiles(config: dict | None) -> tuple[float, float]:
    """The (lower, upper) percentiles a model's config (or a training config's ``data``) stores
    under ``normalisation``, else :data:`ROBUST_PERCENTILES`."""
    norm = (config or {}).get("normalisation") or {}
    return float(norm.get("lower", ROBUST_PERCENTILES[0])), float(norm.get("upper", ROBUST_PERCENTILES[1]))


def robust_range(data: np.ndarray | torch.Tensor, lower: float = ROBUST_PERCENTILES[0],
                 upper: float = ROBUST_PERCENTILES[1]) -> IntensityRange:
    """The ``lower`` and ``upper`` percentiles of ``data`` as an :class:`IntensityRange`."""
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"need 0 <= lower < upper <= 100, got {lower}, {upper}")
    values = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    low, high = np.percentile(values.astype(np.float64, copy=False), [lower, upper])
    return IntensityRange(float(low), float(high))


# --------------------------------------------------------------------------------------------
# MONAI transforms

#: where the normalisation parameters are recorded in a MetaTensor's meta dict
INTENSITY_KEY = "mrisr_intensity"


class RobustNormalise(Transform):
    """Map an image's ``lower`` / ``upper`` percentiles to -1 / 1 and record the map.

    The parameters go into ``img.meta["mrisr_intensity"]`` for MetaTensors, so
    :meth:`IntensityRange.denormalise` can return outputs to the input's units. Same type out
    as in.

    Args:
        lower: lower percentile (default 0.5).
        upper: upper percentile (default 99.5).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, lower: float = ROBUST_PERCENTILES[0], upper: float = ROBUST_PERCENTILES[1]) -> None:
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
        self.lower = lower
        self.upper = upper

    def __call__(self, img: ArrayT) -> ArrayT:
        rng = robust_range(img, self.lower, self.upper)
        out = rng.normalise(img)
        if isinstance(out, MetaTensor):
            out.meta[INTENSITY_KEY] = rng.to_dict()
        return out


class RobustNormalised(MapTransform):
    """Dictionary twin of :class:`RobustNormalise`; also stores the map under
    ``"<key>_intensity"`` so it survives conversion away from MetaTensors."""

    backend = RobustNormalise.backend

    def __init__(self, keys: KeysCollection, lower: float = ROBUST_PERCENTILES[0], upper: float = ROBUST_PERCENTILES[1],
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normaliser = RobustNormalise(lower, upper)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            rng = robust_range(d[key], self.normaliser.lower, self.normaliser.upper)
            d[key] = self.normaliser(d[key])
            d[f"{key}_intensity"] = rng.to_dict()
        return d


RobustNormaliseD = RobustNormaliseDict = RobustNormalised
