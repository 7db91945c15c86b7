"""Training objectives: SR3 noise prediction, PartDiff latent alignment, and regression.

All three use the same network: ``network(cat([condition, x], dim=1), noise_level)``, the
condition (the bicubic-upsampled low-resolution image) first, as in SR3. (MONAI's
``DiffusionInferer`` concatenates ``[noisy, condition]``; mrisr keeps SR3's order.)

Latent alignment (Sec. 4.3; derivation in docs/method.md). For ``t <= K`` the network sees the
interpolated latent ``x_t = sqrt(alpha_bar_t) (lambda x0_HR + (1 - lambda) x0_LR) +
sqrt(1 - alpha_bar_t) eps`` with ``lambda = (K - t) / K``; because the posterior mean (Eq. 6) is
linear in ``(x_t, x_0)``, the interpolated posterior of Eq. (18) is the ordinary posterior of
the blended image, and its noise-parameterised target is the same ``eps``. ``t`` is the
continuous training step of the noise level, so ``lambda`` is a fixed function of the level
and any inference schedule can be used.

What the network predicts (``prediction``). ``"eps"`` (the paper's and SR3's choice): the noise.
``"x0"``: the clean image, as a residual on the condition like the regression model
(``x0_hat = condition + network(...)``), trained with the loss on ``x0``; the samplers still see
``eps = (x_t - sqrt(alpha_bar) x0_hat) / sqrt(1 - alpha_bar)``, exact for any ``x0_hat``. Its use: a
diffusion model can start from a trained regression model's weights (same network, same output)
and learn only what the noisy image adds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from mrisr.diffusion.schedules import NoiseSchedule
from mrisr.errors import ConfigError

__all__ = [
    "Objective",
    "OBJECTIVES",
    "Prediction",
    "PREDICTIONS",
    "LossType",
    "alignment_weight",
    "noisy_input",
    "clean_target",
    "predict_clean",
    "predict_noise",
    "predict_regression",
    "training_loss",
]

Objective = Literal["partdiff", "sr3", "regression"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
LossType = Literal["l1", "l2"]
Prediction = Literal["eps", "x0"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)


def alignment_weight(noise_level: torch.Tensor, schedule: NoiseSchedule, k_noise_level: float) -> torch.Tensor:
    """``lambda = (K - t) / K`` of Sec. 4.3 as a function of the noise level.

    ``t`` and ``K`` are the continuous training steps at which ``noise_level`` and
    ``k_noise_level`` are reached, so ``lambda`` is 0 at the partial-diffusion start and tends
    to 1 as the level tends to 1 (the clean image).
    """
    t = schedule.continuous_step(noise_level)
    k = schedule.continuous_step(torch.tensor([k_noise_level], dtype=torch.float64, device=t.device))
    return (1.0 - t / k).clamp(0.0, 1.0)


def _levels(noise_level: torch.Tensor, x_t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(B,)`` levels for the batch ``x_t`` (one given level serves all)."""
    level = noise_level.to(x_t.device, dtype).reshape(-1)
    return level.expand(x_t.shape[0]) if level.numel() == 1 else level


def predict_clean(network: Callable, x_t: torch.Tensor, condition: torch.Tensor,
                  noise_level: torch.Tensor) -> torch.Tensor:
    """``x0_hat`` of an ``"x0"``-predicting network: the condition plus its output, float32."""
    out = network(torch.cat([condition, x_t], dim=1), _levels(noise_level, x_t))
    return condition.float() + out.float()


def predict_noise(network: Callable, x_t: torch.Tensor, condition: torch.Tensor,
                  noise_level: torch.Tensor, prediction: Prediction = "eps") -> torch.Tensor:
    """``eps_theta(x_t, condition, level)``: the network on ``[condition, x_t]``.

    For an ``"x0"``-predicting network, the noise its clean image implies:
    ``(x_t - s x0_hat) / sqrt(1 - s^2)`` with ``s`` the level (computed in float64, returned in
    float32).
    """
    level = _levels(noise_level, x_t)
    if prediction == "eps":
        return network(torch.cat([condition, x_t], dim=1), level)
    if prediction != "x0":
        raise ConfigError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
    x0 = predict_clean(network, x_t, condition, level).double()
    # in float64 from the level as given: near level 1, 1 - s^2 loses digits in float32
    s = _levels(noise_level, x_t, torch.float64).view(-1, *([1] * (x_t.ndim - 1)))
    return ((x_t.double() - s * x0) / torch.sqrt((1.0 - s * s).clamp_min(1e-12))).float()


def predict_regression(network: Callable, condition: torch.Tensor) -> torch.Tensor:
    """The regression baseline: the same network predicts the high-resolution image in one
    pass, as a residual on the condition, with an empty noisy channel and level 0."""
    zeros = torch.zeros(condition.shape[0], device=condition.device)
    return condition + network(torch.cat([condition, torch.zeros_like(condition)], dim=1), zeros)


def clean_target(hr: torch.Tensor, condition: torch.Tensor, objective: Objective, schedule: NoiseSchedule,
                 k_noise_level: float | None, noise_level: torch.Tensor) -> torch.Tensor:
    """The clean image a training step's noisy input is made from: the blend ``lambda hr + (1 -
    lambda) condition`` of latent alignment (Sec. 4.3) for ``"partdiff"``, ``hr`` otherwise."""
    if objective != "partdiff":
        return hr
    if k_noise_level is None:
        raise ConfigError("the partdiff objective needs k_noise_level")
    lam = alignment_weight(noise_level, schedule, k_noise_level).to(hr.dtype).view(-1, *([1] * (hr.ndim - 1)))
    return lam * hr + (1.0 - lam) * condition


def noisy_input(hr: torch.Tensor, condition: torch.Tensor, objective: Objective, schedule: NoiseSchedule,
                k_noise_level: float | None, noise: torch.Tensor,
                noise_level: torch.Tensor) -> torch.Tensor:
    """The network's noisy input for a training step (Eq. 4; interpolated for latent alignment).

    Args:
        hr: ``(B, C, H, W)`` high-resolution targets ``x0_HR``.
        condition: ``(B, C, H, W)`` bicubic-upsampled low-resolution images ``x0_LR``.
        objective: ``"sr3"`` or ``"partdiff"``.
        schedule: the training schedule (defines continuous steps for ``lambda``).
        k_noise_level: the partial-diffusion threshold (``"partdiff"`` only).
        noise: ``eps``, same shape as ``hr``.
        noise_level: ``(B,)`` levels ``sqrt(alpha_bar)``.
    """
    return schedule.add_noise(clean_target(hr, condition, objective, schedule, k_noise_level, noise_level), noise,
                              noise_level)


def training_loss(network: Callable, hr: torch.Tensor, condition: torch.Tensor, objective: Objective,
                  schedule: NoiseSchedule, k_noise_level: float | None = None, loss: LossType = "l1",
                  generator: torch.Generator | None = None, prediction: Prediction = "eps") -> torch.Tensor:
    """One batch's loss for ``objective``.

    ``"sr3"`` draws levels over the whole schedule; ``"partdiff"`` only at or below the
    partial-diffusion start (``t <= K``) with latent alignment; ``"regression"`` predicts the
    image directly. The noise target is ``eps`` in both diffusion objectives (Eq. 15); with
    ``prediction="x0"`` the target is the clean image the noisy input was made from instead (the
    blended image under latent alignment, ``hr`` for SR3).

    Returns:
        A scalar tensor.
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if loss not in ("l1", "l2"):
        raise ConfigError(f"loss must be l1 or l2, got {loss!r}")
    if prediction not in PREDICTIONS:
        raise ConfigError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
    distance = F.l1_loss if loss == "l1" else F.mse_loss
    if objective == "regression":
        return distance(predict_regression(network, condition).float(), hr.float())
    max_step = None
    if objective == "partdiff":
        if k_noise_level is None:
            raise ConfigError("the partdiff objective needs k_noise_level")
        max_step = float(schedule.continuous_step(torch.tensor([k_noise_level], dtype=torch.float64)))
    level = schedule.sample_noise_levels(hr.shape[0], generator=generator, max_step=max_step,
                                         device=generator.device if generator is not None else "cpu").to(hr.device)
    noise = torch.randn(hr.shape, generator=generator, device=generator.device if generator is not None else "cpu",
                        dtype=hr.dtype).to(hr.device)
    target = clean_target(hr, condition, objective, schedule, k_noise_level, level)
    x_t = schedule.add_noise(target, noise, level)
    if prediction == "x0":
        return distance(predict_clean(network, x_t, condition, level), target.float())
    return distance(predict_noise(network, x_t, condition, level).float(), noise.float())
