"""Per-volume robust intensity normalisation to about [-1, 1], and its exact inverse.

MRI has no fixed intensity scale, so each volume is mapped by its own robust range: the
``lower`` and ``upper`` percentiles go to -1 and 1. The parameters are kept, so outputs go back
to the input's units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["IntensityRange", "robust_range"]

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


def robust_range(data: np.ndarray | torch.Tensor, lower: float = 0.5, upper: float = 99.5) -> IntensityRange:
    """The ``lower`` and ``upper`` percentiles of ``data`` as an :class:`IntensityRange`."""
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"need 0 <= lower < upper <= 100, got {lower}, {upper}")
    values = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    low, high = np.percentile(values.astype(np.float64, copy=False), [lower, upper])
    return IntensityRange(float(low), float(high))
