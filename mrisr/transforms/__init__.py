"""MONAI-style transforms: intensity normalisation with its inverse, degradations, pairs."""

from mrisr.transforms.intensity import IntensityRange, robust_range

__all__ = ["IntensityRange", "robust_range"]
