"""Diffusion math: schedules, objectives, samplers and the MONAI-style inferer (pure tensors)."""

from mrisr.diffusion.inferer import DEFAULT_DDIM_STEPS, SAMPLE_METHODS, PartialDiffusionInferer, SampleMethod
from mrisr.diffusion.objectives import (OBJECTIVES, PREDICTIONS, Objective, Prediction, alignment_weight, noisy_input,
                                        predict_clean, predict_noise, predict_regression, training_loss)
from mrisr.diffusion.samplers import (SAMPLERS, NoiseWindow, SamplerName, SamplingPlan, ancestral_sample, ddim_sample,
                                      ddim_steps, partial_start, plan_sampling, randn)
from mrisr.diffusion.schedules import (INFERENCE_SCHEDULE, TRAINING_SCHEDULE, NoiseSchedule, inference_schedule,
                                       training_schedule)

__all__ = [
    "NoiseSchedule", "TRAINING_SCHEDULE", "INFERENCE_SCHEDULE", "training_schedule", "inference_schedule",
    "Objective", "OBJECTIVES", "Prediction", "PREDICTIONS", "alignment_weight", "noisy_input", "predict_clean",
    "predict_noise", "predict_regression",
    "training_loss", "SamplerName", "SAMPLERS", "randn", "NoiseWindow", "partial_start", "ancestral_sample",
    "ddim_steps", "ddim_sample", "SamplingPlan", "plan_sampling", "PartialDiffusionInferer", "SampleMethod",
    "SAMPLE_METHODS", "DEFAULT_DDIM_STEPS",
]
