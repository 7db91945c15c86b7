"""Upsampling: the registry of methods (:mod:`~mrisr.inference.methods`), the loop over a volume's
2D planes (:mod:`~mrisr.inference.volume`) and natural images (:mod:`~mrisr.inference.images`).

A *method* turns a batch of 2D planes ``(B, 1, H, W)`` into ``(B, 1, H * fh, W * fw)``. All of
them are registered here the same way: the classical ``bicubic`` and ``bspline``, and the
learned ``partdiff``, ``sr3`` and ``regression`` that run a trained model through
:class:`~mrisr.diffusion.PartialDiffusionInferer`. The CLI, reports and benchmarks never need
to know which kind they run.

Learned methods work on intensities normalised per volume (robust percentiles to [-1, 1], as in
training); the loop maps the output back to the input's units. Stochastic samplers draw their
noise from one generator per plane, seeded from ``(seed, sample, plane index)``, so results do
not depend on the batch size.
"""

from __future__ import annotations

from mrisr.devices import Device, resolve_device
from mrisr.inference.images import upsample_images
from mrisr.inference.methods import (OBJECTIVES_FOR, ImagePlan, MethodSpec, PlaneUpsampler, available_methods,
                                     get_method, plane_seed, register_method)
from mrisr.inference.volume import SPACING_TOLERANCE, UpsampleResult, fit_batch_size, upsample_volume

__all__ = [
    "Device",
    "PlaneUpsampler",
    "MethodSpec",
    "register_method",
    "get_method",
    "available_methods",
    "resolve_device",
    "OBJECTIVES_FOR",
    "UpsampleResult",
    "upsample_volume",
    "ImagePlan",
    "upsample_images",
    "plane_seed",
    "fit_batch_size",
    "SPACING_TOLERANCE",
]
