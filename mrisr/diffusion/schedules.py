"""Noise schedules: beta_t, alpha_bar_t, noise levels, posteriors, and the K <-> noise-level map.

Notation follows the PartDiff paper (Sec. 3): steps ``t = 1..T``, ``alpha_t = 1 - beta_t``,
``alpha_bar_t = prod_{s<=t} alpha_s`` (Eq. 3), and the *noise level* (the paper's "noise
scale") ``sqrt(alpha_bar_t)``. Index 0 of every table is the clean image: ``alpha_bar_0 = 1``.

A model is conditioned on the continuous noise level, not on ``t`` (Sec. 3.2 and 5.1.2, after
WaveGrad), so one trained model runs with any inference schedule. Training draws ``t``
uniformly from ``1..T`` and the level uniformly between ``sqrt(alpha_bar_t)`` and
``sqrt(alpha_bar_{t-1})``; equivalently a *continuous step* ``s ~ U(0, T]`` mapped through the
piecewise-linear level curve, which is what :meth:`NoiseSchedule.noise_level_at` does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch

from mrisr.errors import ConfigError, require_int

__all__ = [
    "ScheduleKind",
    "NoiseSchedule",
    "TRAINING_SCHEDULE",
    "INFERENCE_SCHEDULE",
    "training_schedule",
    "inference_schedule",
]

ScheduleKind = Literal["linear", "cosine"]


@dataclass(frozen=True)
class _Config:
    kind: str
    num_steps: int
    beta_start: float
    beta_end: float
    cosine_s: float


class NoiseSchedule:
    """A discrete diffusion schedule with continuous noise-level helpers.

    Args:
        kind: ``"linear"``: ``beta_t`` evenly spaced from ``beta_start`` to ``beta_end``
            (Linear(beta_1, beta_T, T) in the paper); ``"cosine"``: Nichol & Dhariwal's
            ``alpha_bar`` curve (``beta`` capped at ``beta_end``).
        num_steps: T.
        beta_start, beta_end: first and last beta of the linear schedule; ``beta_end`` caps the
            cosine one.
        cosine_s: the cosine schedule's offset.

    Every constructor argument is kept in :meth:`config`, so a schedule saved next to a
    model's weights is rebuilt exactly by :meth:`from_config`.
    """

    def __init__(self, kind: ScheduleKind = "linear", num_steps: int = 2000, beta_start: float = 5e-5,
                 beta_end: float = 0.01, cosine_s: float = 0.008) -> None:
        if kind not in get_args(ScheduleKind):
            raise ConfigError(f"schedule kind must be one of {get_args(ScheduleKind)}, got {kind!r}")
        require_int(num_steps, "num_steps")
        if not 0.0 < beta_start <= beta_end <= 1.0:
            raise ConfigError(f"need 0 < beta_start <= beta_end <= 1, got {beta_start}, {beta_end}")
        self._config = _Config(kind, num_steps, float(beta_start), float(beta_end), float(cosine_s))
        if kind == "linear":
            betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        else:
            steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
            f = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=beta_end)
        #: beta_t for t = 0..T (beta_0 = 0 is a placeholder for the clean image)
        self.betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])
        self.alphas = 1.0 - self.betas
        #: alpha_bar_t for t = 0..T, alpha_bar_0 = 1 (Eq. 3)
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        #: sqrt(alpha_bar_t): the noise level the network is conditioned on
        self.noise_levels = self.alpha_bar.sqrt()

    # ----------------------------------------------------------------------------------------
    # configuration

    @property
    def num_steps(self) -> int:
        return self._config.num_steps

    def config(self) -> dict[str, Any]:
        return asdict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NoiseSchedule:
        allowed = {"kind", "num_steps", "beta_start", "beta_end", "cosine_s"}
        unknown = set(config) - allowed
        if unknown:
            raise ConfigError(f"unknown noise schedule keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        return cls(**config)

    def __repr__(self) -> str:
        c = self._config
        if c.kind == "linear":
            return f"NoiseSchedule(Linear({c.beta_start:g}, {c.beta_end:g}, {c.num_steps}))"
        return f"NoiseSchedule(Cosine(s={c.cosine_s:g}, T={c.num_steps}))"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoiseSchedule) and self._config == other._config

    def __hash__(self) -> int:
        return hash(self._config)

    # ----------------------------------------------------------------------------------------
    # noise levels and K

    def noise_level(self, t: int) -> float:
        """``sqrt(alpha_bar_t)`` for an integer step ``0 <= t <= T``."""
        self._check_step(t)
        return float(self.noise_levels[t])

    def k_for_noise_level(self, threshold: float) -> int:
        """The partial-diffusion start K for a noise-level threshold: the largest step whose noise
        level is still >= ``threshold`` (with Linear(1e-5, 0.213, 100), 0.25 -> K = 50)."""
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"noise-level threshold must be in (0, 1), got {threshold}")
        above = torch.nonzero(self.noise_levels >= threshold).flatten()
        k = int(above.max())
        if k < 1:
            raise ConfigError(f"noise level {threshold} is above every step of {self!r}")
        return k

    def noise_level_at(self, s: torch.Tensor) -> torch.Tensor:
        """Noise level at continuous steps ``s`` in ``[0, T]``: linear in the level between
        neighbouring integer steps (the WaveGrad sampling of Sec. 5.1.2)."""
        s = s.to(torch.float64).clamp(0, self.num_steps)
        lo = s.floor().long().clamp(max=self.num_steps - 1)
        frac = s - lo
        levels = self.noise_levels.to(s.device)
        return levels[lo] + frac * (levels[lo + 1] - levels[lo])

    def continuous_step(self, noise_level: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`noise_level_at`: the continuous step at which the level is reached."""
        g = noise_level.to(torch.float64)
        levels = self.noise_levels.to(g.device)  # decreasing in t
        # idx = how many levels lie below g, so levels[t] < g <= levels[t - 1] with t = T - idx + 1
        idx = torch.searchsorted(levels.flip(0).contiguous(), g.contiguous()).clamp(1, self.num_steps)
        t = self.num_steps - idx + 1
        upper, lower = levels[t - 1], levels[t]
        frac = ((upper - g) / (upper - lower)).clamp(0, 1)
        return (t - 1 + frac).clamp(0, self.num_steps)

    def sample_noise_levels(self, n: int, generator: torch.Generator | None = None,
                            max_step: float | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """Training noise levels: ``t ~ U{1..T}`` then the level ~ U between ``t`` and ``t - 1``.

        Args:
            n: how many.
            generator: seeded generator.
            max_step: draw only ``t <= max_step`` (continuous; latent alignment trains on
                ``t <= K``).

        Returns:
            ``(n,)`` float64 noise levels.
        """
        top = float(self.num_steps if max_step is None else max_step)
        if not 0.0 < top <= self.num_steps:
            raise ConfigError(f"max_step must be in (0, {self.num_steps}], got {max_step}")
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        # (0, top]: 1 - u is in (0, 1]
        return self.noise_level_at((1.0 - u) * top)

    # ----------------------------------------------------------------------------------------
    # forward process and posterior

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, noise_level: torch.Tensor | float) -> torch.Tensor:
        """``x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps`` (Eq. 4) at the given level(s).

        ``noise_level`` is a float or a ``(B,)`` tensor broadcast over the other dimensions.
        """
        g = _per_sample(noise_level, x0)
        return g * x0 + (1.0 - g * g).clamp(min=0).sqrt() * noise

    def posterior(self, t: int) -> tuple[float, float, float]:
        """Coefficients of ``q(x_{t-1} | x_t, x_0)`` (Eq. 5-7): ``(coef_x0, coef_xt, variance)``
        with mean ``coef_x0 * x_0 + coef_xt * x_t``."""
        self._check_step(t, low=1)
        ab_t, ab_prev = float(self.alpha_bar[t]), float(self.alpha_bar[t - 1])
        beta_t, alpha_t = float(self.betas[t]), float(self.alphas[t])
        coef_x0 = math.sqrt(ab_prev) * beta_t / (1.0 - ab_t)
        coef_xt = math.sqrt(alpha_t) * (1.0 - ab_prev) / (1.0 - ab_t)
        variance = (1.0 - ab_prev) / (1.0 - ab_t) * beta_t
        return coef_x0, coef_xt, variance

    def _check_step(self, t: int, low: int = 0) -> None:
        require_int(t, "step", low, self.num_steps)


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        value = value.to(like.device, like.dtype)
        if value.ndim == 1:
            return value.view(-1, *([1] * (like.ndim - 1)))
        return value
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


#: the paper's training schedule, Linear(5e-5, 0.01, 2000) (Sec. 5.1.2)
TRAINING_SCHEDULE: dict[str, Any] = {"kind": "linear", "num_steps": 2000, "beta_start": 5e-5, "beta_end": 0.01}
#: the paper's inference schedule, Linear(1e-5, 0.213, 100) (Sec. 5.1.2)
INFERENCE_SCHEDULE: dict[str, Any] = {"kind": "linear", "num_steps": 100, "beta_start": 1e-5, "beta_end": 0.213}


def training_schedule() -> NoiseSchedule:
    return NoiseSchedule(**TRAINING_SCHEDULE)


def inference_schedule() -> NoiseSchedule:
    return NoiseSchedule(**INFERENCE_SCHEDULE)
