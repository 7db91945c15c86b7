"""MONAI-style transforms: loading, intensity normalisation with its inverse, training pairs."""

from mrisr.transforms.intensity import (INTENSITY_KEY, ROBUST_PERCENTILES, IntensityRange, RobustNormalise,
                                        RobustNormalised, RobustNormaliseD, RobustNormaliseDict, model_percentiles,
                                        robust_range)
from mrisr.transforms.io import MrisrReader
from mrisr.transforms.pairs import (PAIR_KINDS, InPlaneDegrade, InPlanePairD, InPlanePaird, InPlanePairDict, PairKind,
                                    ThroughPlaneDegrade, ThroughPlanePairD, ThroughPlanePaird, ThroughPlanePairDict,
                                    gaussian_blur, plane_degradation, training_planes)

__all__ = [
    "IntensityRange", "robust_range", "ROBUST_PERCENTILES", "model_percentiles", "RobustNormalise", "RobustNormalised", "RobustNormaliseD",
    "RobustNormaliseDict", "INTENSITY_KEY", "MrisrReader", "PairKind", "PAIR_KINDS", "training_planes",
    "plane_degradation",
    "gaussian_blur", "InPlaneDegrade", "InPlanePaird", "InPlanePairD", "InPlanePairDict", "ThroughPlaneDegrade",
    "ThroughPlanePaird", "ThroughPlanePairD", "ThroughPlanePairDict",
]
