"""Samplers: SR3 ancestral from noise, PartDiff partial ancestral from the diffused LR image,
and a deterministic DDIM-style partial sampler with few network evaluations.

Each takes an *eps model* ``eps_model(x_t, noise_level) -> eps`` (the condition already bound),
a start latent and an inference :class:`~mrisr.diffusion.schedules.NoiseSchedule`; all math
runs in float32 whatever precision the network uses. Randomness comes from one generator per
sample, so a plane's result does not depend on which other planes share its batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from mrisr.diffusion.schedules import NoiseSchedule
from mrisr.errors import ConfigError, require_int

__all__ = [
    "SamplerName",
    "SAMPLERS",
    "EpsModel",
    "Generators",
    "randn",
    "NoiseWindow",
    "partial_start",
    "ancestral_sample",
    "ddim_steps",
    "ddim_sample",
    "SamplingPlan",
    "plan_sampling",
    "DEFAULT_DDIM_STEPS",
    "Clip",
    "condition_range",
    "apply_clip",
]

#: DDIM network evaluations when none are asked for
DEFAULT_DDIM_STEPS = 8

SamplerName = Literal["ancestral", "ddim"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class NoiseWindow:
    """One sample's generator whose noise is drawn on a larger plane and cut to a window of it.

    A region of interest sampled with windows of the whole plane gets, draw by draw, the noise
    the whole plane's sample has there (:func:`randn`), so that cropping the work does not change
    the sample.
    """

    generator: torch.Generator
    full: tuple[int, int]  # (H, W) of the whole plane
    offset: tuple[int, int]  # the window's first row and column in it

    @property
    def device(self) -> torch.device:
        return self.generator.device


Generators = torch.Generator | Sequence[torch.Generator | NoiseWindow] | None


def _one_sample(shape: Sequence[int], g: torch.Generator | NoiseWindow, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(g, NoiseWindow):
        return torch.randn(tuple(shape), generator=g, device=g.device, dtype=dtype)
    (h, w), (r, c) = shape[-2:], g.offset
    if r + h > g.full[0] or c + w > g.full[1]:
        raise ValueError(f"a {h} x {w} window at {g.offset} does not fit a {g.full[0]} x {g.full[1]} plane")
    whole = torch.randn((*shape[:-2], *g.full), generator=g.generator, device=g.device, dtype=dtype)
    return whole[..., r:r + h, c:c + w]


def randn(shape: Sequence[int], generators: Generators, device: torch.device | str = "cpu",
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise; with a list of generators, sample ``i`` uses generator ``i`` (a
    :class:`NoiseWindow` draws the whole plane's noise and keeps its window)."""
    if generators is None or isinstance(generators, torch.Generator):
        gen_device = generators.device if isinstance(generators, torch.Generator) else device
        return torch.randn(tuple(shape), generator=generators, device=gen_device, dtype=dtype).to(device)
    gens = list(generators)
    if len(gens) != shape[0]:
        raise ValueError(f"{len(gens)} generators for a batch of {shape[0]}")
    return torch.stack([_one_sample(shape[1:], g, dtype).to(device) for g in gens])


Clip = float | tuple[torch.Tensor, torch.Tensor] | None


def condition_range(condition: torch.Tensor, below: float = 0.25, above: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample bounds for predicted clean images from the condition's own range.

    ``[min - below * span, max + above * span]`` of each ``(C, H, W)`` sample: a real
    high-resolution image is never darker than its low-resolution image by much (the magnitude
    floor is in the LR image too), but small bright structures are averaged away in it. On the
    ten ProstateX series the high-resolution maximum exceeded the x4 condition's by at most
    0.42 span and the minimum was never below it (x2 and x4 in-plane, x6 through-plane, every
    plane; docs/benchmarks.md), so these bounds clip no real value there; they stop
    a model that writes values far outside the image's range (a dynamic threshold in the sense
    of SR3's and Imagen's clipping, set per image).

    Returns:
        ``(lo, hi)``, each ``(B, 1, 1, 1)``.
    """
    flat = condition.detach().float().flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)
    span = (hi - lo).clamp_min(1e-6)
    shape = (-1,) + (1,) * (condition.ndim - 1)
    return (lo - below * span).view(shape), (hi + above * span).view(shape)


def apply_clip(x0: torch.Tensor, clip: Clip) -> torch.Tensor:
    """``x0`` clipped to ``[-clip, clip]`` or to per-sample ``(lo, hi)`` bounds (None: unchanged)."""
    if clip is None:
        return x0
    if isinstance(clip, tuple):
        return torch.maximum(torch.minimum(x0, clip[1]), clip[0])
    return x0.clamp(-clip, clip)


def _level(schedule: NoiseSchedule, t: int, batch: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch,), schedule.noise_level(t), dtype=torch.float32, device=device)


def _check_k(schedule: NoiseSchedule, k: int) -> int:
    require_int(k, "K", 1, schedule.num_steps)
    return k


def partial_start(lowres: torch.Tensor, schedule: NoiseSchedule, k: int, noise: torch.Tensor) -> torch.Tensor:
    """``x_K = sqrt(alpha_bar_K) x_LR + sqrt(1 - alpha_bar_K) eps``: the diffused low-resolution
    image PartDiff starts from (Sec. 4.2)."""
    _check_k(schedule, k)
    return schedule.add_noise(lowres.float(), noise.float(), schedule.noise_level(k))


def ancestral_sample(eps_model: EpsModel, x_start: torch.Tensor, schedule: NoiseSchedule, k: int,
                     generators: Generators = None, clip: Clip = None,
                     progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Run the ancestral reverse process from step ``k`` down to 0.

    Each step predicts ``eps``, forms ``x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)``
    (Eq. 4), optionally clips it, and samples ``x_{t-1}`` from the posterior ``q(x_{t-1} | x_t,
    x0)`` (Eq. 5-7). Unclipped, the mean is computed directly as Eq. (14), which is the same
    mean without dividing by ``sqrt(alpha_bar_t)``. The last step adds no noise.

    Args:
        eps_model: ``(x_t, noise_level (B,)) -> eps``.
        x_start: ``(B, C, H, W)`` latent at step ``k`` (pure noise for SR3 with ``k = T``).
        schedule: the inference schedule.
        k: the start step.
        generators: noise source (one generator per sample for batch-independent results).
        clip: clip predicted ``x0`` to ``[-clip, clip]``, or to per-sample ``(lo, hi)`` bounds
            (see :func:`condition_range`); None: no clipping.
        progress: called with 1 after each network evaluation.

    Returns:
        ``x_0``, float32.
    """
    _check_k(schedule, k)
    x = x_start.float()
    for t in range(k, 0, -1):
        level = _level(schedule, t, x.shape[0], x.device)
        eps = eps_model(x, level).float()
        ab = float(schedule.alpha_bar[t])
        coef_x0, coef_xt, variance = schedule.posterior(t)
        if clip is None:  # Eq. (14): stable even where alpha_bar_t is ~0
            x = (x - float(schedule.betas[t]) / math.sqrt(1.0 - ab) * eps) / math.sqrt(float(schedule.alphas[t]))
        else:
            x0 = apply_clip((x - math.sqrt(1.0 - ab) * eps) / math.sqrt(ab), clip)
            x = coef_x0 * x0 + coef_xt * x
        if t > 1 and variance > 0:
            x = x + math.sqrt(variance) * randn(x.shape, generators, x.device)
        if progress is not None:
            progress(1)
    return x


def ddim_steps(k: int, n: int) -> list[int]:
    """``n`` steps from ``k`` down to 1, evenly spaced (rounded, distinct). Ending at step 1
    matters for latent-aligned models: their clean-image prediction is fully high-resolution
    only at the lowest noise levels."""
    require_int(n, "the number of DDIM steps")
    if n >= k:
        return list(range(k, 0, -1))
    if n == 1:
        return [k]
    steps = sorted({round(k - i * (k - 1) / (n - 1)) for i in range(n)}, reverse=True)
    return steps


def ddim_sample(eps_model: EpsModel, x_start: torch.Tensor, schedule: NoiseSchedule, k: int, n_steps: int,
                clip: Clip = None, progress: Callable[[int], None] | None = None,
                alignment: tuple[torch.Tensor, Callable[[int], float], float] | None = None) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from step ``k`` with ``n_steps`` network evaluations.

    Between chosen steps ``tau > tau'``: ``x0 = (x_tau - sqrt(1 - ab_tau) eps) / sqrt(ab_tau)``,
    ``x_tau' = sqrt(ab_tau') x0 + sqrt(1 - ab_tau') eps``; the final jump goes to
    ``alpha_bar_0 = 1``, i.e. returns the last ``x0``.

    ``alignment = (anchor, weight, least)``: latent-aligned jumps. A latent-aligned model's ``x0``
    at step ``t`` is the blend ``anchor + weight(t) (HR - anchor)``; from steps with ``weight(t) >=
    least`` the jump carries ``anchor + weight(tau') / weight(t) (x0 - anchor)``, the blend the
    model was trained to see at ``tau'`` (weight 1 at the end), instead of the blend of ``t``.

    Returns:
        ``x_0``, float32.
    """
    _check_k(schedule, k)
    steps = ddim_steps(k, n_steps)
    x = x_start.float()
    for i, t in enumerate(steps):
        level = _level(schedule, t, x.shape[0], x.device)
        eps = eps_model(x, level).float()
        ab = float(schedule.alpha_bar[t])
        x0 = apply_clip((x - math.sqrt(1.0 - ab) * eps) / math.sqrt(ab), clip)
        if clip is not None:  # keep eps consistent with the clipped x0
            eps = (x - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
        ab_next = float(schedule.alpha_bar[steps[i + 1]]) if i + 1 < len(steps) else 1.0
        if alignment is not None:
            anchor, weight, least = alignment
            lam, lam_next = weight(t), (weight(steps[i + 1]) if i + 1 < len(steps) else 1.0)
            if lam >= least:
                x0 = apply_clip(anchor + (lam_next / lam) * (x0 - anchor), clip)
        x = math.sqrt(ab_next) * x0 + math.sqrt(1.0 - ab_next) * eps
        if progress is not None:
            progress(1)
    return x


@dataclass(frozen=True)
class SamplingPlan:
    """What one sampling run does, decided in one place (:func:`plan_sampling`).

    Attributes:
        method: ``"partdiff"``, ``"sr3"`` or ``"regression"``.
        sampler: ``"ancestral"`` or ``"ddim"`` (``"ancestral"`` for regression: no sampler).
        start_k: the step the reverse process starts from (T for SR3, K for PartDiff; None for
            regression).
        timesteps: the steps the network is evaluated at, in order.
    """

    method: str
    sampler: str
    start_k: int | None
    timesteps: tuple[int, ...]

    @property
    def network_evaluations(self) -> int:
        """Network passes per image (1 for regression)."""
        return 1 if self.method == "regression" else len(self.timesteps)


def plan_sampling(schedule: NoiseSchedule, aligned_k: int, method: str, sampler: str = "ancestral",
                  k: int | None = None, evaluations: int | None = None) -> SamplingPlan:
    """Decide K and the timesteps of a run; the one place this is decided.

    Args:
        schedule: the inference schedule (T = ``schedule.num_steps``).
        aligned_k: the model's own K (where its training aligned LR and HR), the default start.
        method: ``"partdiff"`` (start at K from the diffused LR image), ``"sr3"`` (start at T
            from noise) or ``"regression"`` (one pass, no steps).
        sampler: ``"ancestral"`` (every step from the start: K evaluations for PartDiff, T for
            SR3) or ``"ddim"`` (``evaluations`` evenly spaced steps ending at 1).
        k: PartDiff's start step (default ``aligned_k``); not for SR3 (it starts at T).
        evaluations: DDIM only: network evaluations (default :data:`DEFAULT_DDIM_STEPS`), at
            most the start step.

    Raises:
        ConfigError: an unknown method or sampler, or a K / evaluations combination that does not exist.
    """
    if method not in ("partdiff", "sr3", "regression"):
        raise ConfigError(f"method must be partdiff, sr3 or regression, got {method!r}")
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if method == "regression":
        return SamplingPlan(method, "ancestral", None, ())
    if k is not None and method != "partdiff":
        raise ConfigError("K (the partial-diffusion start step) applies to partdiff only; SR3 starts at T")
    if evaluations is not None and sampler != "ddim":
        raise ConfigError("a number of evaluations applies to the DDIM sampler; the ancestral sampler runs every "
                          "step from its start (give K instead)")
    start = schedule.num_steps if method == "sr3" else require_int(k if k is not None else aligned_k, "K", 1,
                                                                   schedule.num_steps)
    if sampler == "ancestral":
        return SamplingPlan(method, sampler, start, tuple(range(start, 0, -1)))
    n = require_int(evaluations if evaluations is not None else min(DEFAULT_DDIM_STEPS, start),
                    "the number of DDIM evaluations", 1)
    if n > start:
        raise ConfigError(f"DDIM from step {start} takes at most {start} network evaluations, not {n}")
    return SamplingPlan(method, sampler, start, tuple(ddim_steps(start, n)))
