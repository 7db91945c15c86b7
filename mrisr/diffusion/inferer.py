"""``PartialDiffusionInferer``: the MONAI-style entry point to training losses and sampling.

MONAI's ``DiffusionInferer.sample`` always starts from pure noise and runs every timestep, and
its ``DDPMScheduler.step`` is only exact at stride 1, so partial diffusion gets its own inferer
with the same call shape: ``inferer(inputs, network, ...)`` is the training loss and
``inferer.sample(lowres, network, ...)`` runs a sampler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from monai.inferers import Inferer

from mrisr.diffusion.objectives import (OBJECTIVES, PREDICTIONS, LossType, Objective, Prediction, alignment_weight,
                                        predict_noise, predict_regression, training_loss)
from mrisr.diffusion.samplers import (DEFAULT_DDIM_STEPS, SAMPLERS, Clip, Generators, SamplerName, SamplingPlan,
                                      ancestral_sample, apply_clip, condition_range, ddim_sample, partial_start,
                                      plan_sampling, randn)
from mrisr.diffusion.schedules import INFERENCE_SCHEDULE, TRAINING_SCHEDULE, NoiseSchedule
from mrisr.errors import ConfigError

__all__ = ["SampleMethod", "SAMPLE_METHODS", "PartialDiffusionInferer", "DEFAULT_DDIM_STEPS"]

SampleMethod = Literal["partdiff", "sr3", "regression"]
SAMPLE_METHODS: tuple[str, ...] = get_args(SampleMethod)


def _schedule(value: NoiseSchedule | dict | None, default: dict) -> NoiseSchedule:
    if value is None:
        return NoiseSchedule(**default)
    if isinstance(value, NoiseSchedule):
        return value
    return NoiseSchedule.from_config(dict(value))


#: aligned DDIM jumps rescale the blend only from steps whose alignment weight is at least this:
#: below it the predicted blend holds almost no high-resolution content, and the rescaling would
#: multiply its error by more than 10
ALIGNED_LEAST_WEIGHT = 0.1


class PartialDiffusionInferer(Inferer):
    """Training loss and samplers of PartDiff / SR3 / regression for one network.

    Args:
        objective: what the network was (or is being) trained for: ``"partdiff"`` (latent
            alignment for ``t <= K``), ``"sr3"`` (noise prediction over the whole schedule) or
            ``"regression"``.
        train_schedule: the training schedule (default Linear(5e-5, 0.01, 2000)).
        inference_schedule: the sampling schedule (default Linear(1e-5, 0.213, 100)).
        k_noise_level: partial-diffusion threshold ``sqrt(alpha_bar_K)`` (0.25 <-> K = 50 with
            the default inference schedule).
        loss: ``"l1"`` (SR3's choice) or ``"l2"`` distance to the noise.
        clip_denoised: bounds for predicted clean images while sampling (and for the regression
            output): ``"condition"`` (the default; None means it too) clips each sample to its
            condition's range widened as in :func:`~mrisr.diffusion.samplers.condition_range`,
            so no model can write values far outside the image's; a number ``c`` clips to
            ``[-c, c]`` (intensities are normalised to about [-1, 1], bright tails reach ~2.7);
            ``"off"`` does not clip.
        autocast_dtype: run the network under ``torch.autocast`` with this dtype while sampling
            (e.g. ``torch.bfloat16``); None runs it in its own precision.
        prediction: what a diffusion network predicts: ``"eps"`` (the noise, the paper's choice)
            or ``"x0"`` (the clean image as a residual on the condition, like the regression
            model, so that a diffusion model can start from regression weights); the samplers
            get the noise either way. The regression objective ignores it.

    Attributes:
        network_evaluations: network calls made by the last :meth:`sample`.
    """

    def __init__(self, objective: Objective = "partdiff", train_schedule: NoiseSchedule | dict | None = None,
                 inference_schedule: NoiseSchedule | dict | None = None, k_noise_level: float = 0.25,
                 loss: LossType = "l1", clip_denoised: float | str | None = None,
                 autocast_dtype: torch.dtype | None = None, prediction: Prediction = "eps") -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if prediction not in PREDICTIONS:
            raise ConfigError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        self.objective = objective
        self.prediction = prediction
        self.train_schedule = _schedule(train_schedule, TRAINING_SCHEDULE)
        self.inference_schedule = _schedule(inference_schedule, INFERENCE_SCHEDULE)
        self.k_noise_level = float(k_noise_level)
        self.k = self.inference_schedule.k_for_noise_level(self.k_noise_level)
        self.loss = loss
        if clip_denoised is None:
            clip_denoised = "condition"
        if isinstance(clip_denoised, str) and clip_denoised not in ("condition", "off"):
            raise ConfigError(f"clip_denoised must be 'condition', 'off' or a number, got {clip_denoised!r}")
        if not isinstance(clip_denoised, str) and (not isinstance(clip_denoised, (int, float))
                                                   or isinstance(clip_denoised, bool) or clip_denoised <= 0):
            raise ConfigError(f"clip_denoised must be a positive number, 'condition' or 'off', got {clip_denoised!r}")
        self.clip_denoised: float | str = clip_denoised if isinstance(clip_denoised, str) else float(clip_denoised)
        self.autocast_dtype = autocast_dtype
        self.network_evaluations = 0

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this inferer (saved with a model's weights; ``prediction``
        only where it is not the default ``"eps"``, so files of noise-predicting models keep the
        layout earlier mrisr versions read)."""
        config = {"objective": self.objective, "train_schedule": self.train_schedule.config(),
                  "inference_schedule": self.inference_schedule.config(), "k_noise_level": self.k_noise_level,
                  "loss": self.loss, "clip_denoised": self.clip_denoised}
        if self.prediction != "eps":
            config["prediction"] = self.prediction
        return config

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, condition: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, **kwargs: Any) -> torch.Tensor:
        """The training loss of one batch.

        Args:
            inputs: ``(B, C, H, W)`` high-resolution images.
            network: the noise-predicting network.
            condition: ``(B, C, H, W)`` bicubic-upsampled low-resolution images.
            generator: seeded generator for noise levels and noise.

        Returns:
            A scalar loss.
        """
        if condition is None:
            if not args:
                raise ConfigError("PartialDiffusionInferer needs the condition (upsampled low-resolution image)")
            condition = args[0]
        if condition.shape != inputs.shape:
            raise ConfigError(f"condition {tuple(condition.shape)} and inputs {tuple(inputs.shape)} differ in shape")
        return training_loss(network, inputs, condition, self.objective, self.train_schedule,
                             self.k_noise_level if self.objective == "partdiff" else None, self.loss, generator,
                             self.prediction)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None or self.autocast_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def clip_bounds(self, condition: torch.Tensor) -> Clip:
        """The clipping the samplers apply to predicted clean images of this batch."""
        if self.clip_denoised == "off":
            return None
        if self.clip_denoised == "condition":
            return condition_range(condition)
        return float(self.clip_denoised)

    def _eps_model(self, network: Callable, lowres: torch.Tensor) -> Callable:
        def eps(x_t: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
            self.network_evaluations += 1
            with self._autocast(x_t.device):
                return predict_noise(network, x_t.to(lowres.dtype), lowres, level, self.prediction).float()

        return eps

    @torch.no_grad()
    def sample(self, lowres: torch.Tensor, network: Callable, method: SampleMethod = "partdiff",
               sampler: SamplerName = "ancestral", steps: int | None = None, k: int | None = None,
               generators: Generators = None, progress: Callable[[int], None] | None = None,
               start: torch.Tensor | None = None,
               condition_bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
               aligned: bool = False) -> torch.Tensor:
        """Super-resolve a batch.

        Args:
            lowres: ``(B, C, H, W)`` low-resolution images already bicubic-upsampled to the output
                size (the network's condition), normalised like the training data.
            network: the trained network.
            method: ``"partdiff"`` starts at ``x_K`` from the diffused ``lowres``; ``"sr3"``
                starts from pure noise at ``T``; ``"regression"`` is one forward pass.
            sampler: ``"ancestral"`` (one network evaluation per step) or ``"ddim"``
                (deterministic, ``steps`` evaluations).
            steps: for ``ancestral`` partdiff, K (default: this inferer's K); for ``ddim``, the
                number of network evaluations (default 8); ignored by ``sr3`` ancestral, which
                runs every step of the inference schedule.
            k: the partial-diffusion start for ``ddim`` (default: this inferer's K).
            generators: noise source, ideally one seeded generator per sample.
            progress: called with 1 after each network evaluation.
            start: partdiff only: the image diffused to ``x_K`` instead of ``lowres`` (e.g. a
                regression model's output, a start closer to the high-resolution image); the
                network's condition stays ``lowres``.
            condition_bounds: with the ``"condition"`` guard, its per-sample ``(lo, hi)`` bounds
                instead of those of ``lowres`` (a window of a larger plane keeps the whole plane's).
            aligned: DDIM with a latent-aligned (``"partdiff"``) model only: each jump hands the next
                step the blend of its own level, ``lowres + (lambda_next / lambda_t) (x0_hat -
                lowres)``, instead of the blend of the step it leaves (from steps with lambda of at
                least :data:`ALIGNED_LEAST_WEIGHT`). Off unless asked: it lowered two of three
                noise-predicting models and lifted both clean-image models shipped since, whose
                registry entries ask for it (docs/ablations.md).

        Returns:
            ``(B, C, H, W)`` float32.
        """
        plan = self.plan(method, sampler, steps, k)
        if start is not None and (method != "partdiff" or start.shape != lowres.shape):
            raise ConfigError(f"a start image needs --method partdiff and the condition's shape {tuple(lowres.shape)}")
        self.network_evaluations = 0
        clip = self.clip_bounds(lowres)
        if condition_bounds is not None and self.clip_denoised == "condition":
            clip = condition_bounds
        if method == "regression":
            with self._autocast(lowres.device):
                self.network_evaluations = 1
                out = predict_regression(network, lowres).float()
            if progress is not None:
                progress(1)
            return apply_clip(out, clip)
        schedule = self.inference_schedule
        eps_model = self._eps_model(network, lowres)
        noise = randn(lowres.shape, generators, lowres.device)
        start_k = int(plan.start_k)  # type: ignore[arg-type]
        x_start = noise if method == "sr3" else partial_start(lowres if start is None else start, schedule, start_k,
                                                              noise)
        if plan.sampler == "ancestral":
            return ancestral_sample(eps_model, x_start, schedule, start_k, generators, clip, progress)
        alignment = None
        if aligned and self.objective == "partdiff" and method == "partdiff":
            def weight(t: int) -> float:
                level = torch.tensor([schedule.noise_level(t)], dtype=torch.float64)
                return float(alignment_weight(level, self.train_schedule, self.k_noise_level))
            alignment = (lowres.float(), weight, ALIGNED_LEAST_WEIGHT)
        return ddim_sample(eps_model, x_start, schedule, start_k, len(plan.timesteps), clip, progress, alignment)

    def plan(self, method: SampleMethod = "partdiff", sampler: SamplerName = "ancestral", steps: int | None = None,
             k: int | None = None) -> SamplingPlan:
        """The :class:`~mrisr.diffusion.samplers.SamplingPlan` of a :meth:`sample` call with these
        arguments: start step, timesteps and network evaluations, without running anything.

        ``steps`` keeps its documented double meaning (K for the ancestral PartDiff sampler,
        network evaluations for DDIM, ignored by SR3's ancestral sampler); ``k`` is the start
        step itself.
        """
        if method not in SAMPLE_METHODS:
            raise ConfigError(f"method must be one of {', '.join(SAMPLE_METHODS)}, got {method!r}")
        if sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if method == "regression":
            return plan_sampling(self.inference_schedule, self.k, method)
        if sampler == "ancestral":
            start = (steps if steps is not None else k) if method == "partdiff" else None
            return plan_sampling(self.inference_schedule, self.k, method, sampler, k=start)
        return plan_sampling(self.inference_schedule, self.k, method, sampler, k=k, evaluations=steps)

