"""Whole-volume upsampling: the registry of methods and the loop over 2D planes.

A *method* turns a batch of 2D planes ``(B, 1, H, W)`` into ``(B, 1, H * fh, W * fw)``. The
classical ones (``bicubic``, ``bspline``) are registered here; the diffusion methods
(``partdiff``, ``sr3``) and the ``regression`` network register themselves the same way, so the
CLI, reports and benchmarks never need to know which kind they run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch

from mrisr.errors import ConfigError
from mrisr.geometry import Plane, UpsamplingPlan, from_planes, plan_upsampling, to_planes
from mrisr.interpolation import bicubic_upsample, bspline_upsample
from mrisr.io import Volume

__all__ = [
    "Device",
    "PlaneUpsampler",
    "MethodSpec",
    "register_method",
    "get_method",
    "available_methods",
    "resolve_device",
    "UpsampleResult",
    "upsample_volume",
]

logger = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]


class PlaneUpsampler(Protocol):
    """What a method builds: a callable on plane batches that counts its network evaluations."""

    network_evaluations: int

    def __call__(self, planes: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
        """Upsample ``(B, 1, H, W)`` planes by ``factors`` to ``(B, 1, H * fh, W * fw)``."""
        ...


@dataclass(frozen=True)
class MethodSpec:
    """A registered upsampling method.

    Attributes:
        name: the name ``--method`` takes.
        summary: one line for ``--help`` and docs.
        build: ``build(device=..., seed=..., plan=..., **options)`` -> :class:`PlaneUpsampler`.
        learned: whether the method runs a trained network.
    """

    name: str
    summary: str
    build: Callable[..., PlaneUpsampler]
    learned: bool = False


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, summary: str, learned: bool = False) -> Callable:
    """Decorator that registers a builder under ``name``."""

    def deco(build: Callable[..., PlaneUpsampler]) -> Callable[..., PlaneUpsampler]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        _REGISTRY[name] = MethodSpec(name=name, summary=summary, build=build, learned=learned)
        return build

    return deco


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``.

    Raises:
        ConfigError: no method has that name; the message lists those that exist.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(available_methods())}") from None


def resolve_device(device: str) -> torch.device:
    """Turn ``auto`` / ``cpu`` / ``cuda`` into a torch device.

    Raises:
        ConfigError: an unknown name, or ``cuda`` on a machine without a usable GPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but torch sees no CUDA GPU here; use --device cpu or auto")
        return torch.device("cuda")
    raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")


# --------------------------------------------------------------------------------------------
# classical methods


@dataclass
class _Bicubic:
    device: torch.device
    network_evaluations: int = 0

    def __call__(self, planes: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
        return bicubic_upsample(planes.to(self.device, torch.float32), factors)


@dataclass
class _BSpline:
    network_evaluations: int = 0

    def __call__(self, planes: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
        out = bspline_upsample(planes[:, 0].detach().cpu().numpy(), factors)
        return torch.from_numpy(out)[:, None]


@register_method("bicubic", "cell-centred bicubic interpolation (torch, Keys kernel a=-0.75)")
def _build_bicubic(device: torch.device, **_: Any) -> PlaneUpsampler:
    return _Bicubic(device)


@register_method("bspline", "cubic B-spline interpolation with prefilter (scipy.ndimage)")
def _build_bspline(**_: Any) -> PlaneUpsampler:
    return _BSpline()


# --------------------------------------------------------------------------------------------
# the volume loop


@dataclass
class UpsampleResult:
    """The upsampled volume and what it took to make it."""

    volume: Volume
    plan: UpsamplingPlan
    method: str
    device: str
    seconds: float
    network_evaluations: int
    extras: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """The JSON report written by ``mrisr upsample --report``."""
        return {
            "method": self.method,
            **self.plan.describe(),
            "axis": self.plan.slice_axis,
            "device": self.device,
            "seconds": round(self.seconds, 4),
            "network_evaluations": self.network_evaluations,
            **self.extras,
        }


def upsample_volume(volume: Volume, plane: Plane, factor: int, axis: int | None = None,
                    method: str = "bicubic", device: str = "cpu", batch_size: int = 8,
                    seed: int = 0, progress: bool = False, **options: Any) -> UpsampleResult:
    """Upsample a volume in-plane or through-plane, one batch of 2D planes at a time.

    Args:
        volume: the input volume.
        plane: ``"in"`` or ``"through"`` (see :mod:`mrisr.geometry`).
        factor: integer factor >= 2.
        axis: the slice axis; by default the axis with the largest spacing.
        method: a registered method name (:func:`available_methods`).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: planes per call of the method.
        seed: seed of stochastic methods.
        progress: show a progress bar on stderr (it appears only after about a second).
        options: passed to the method's builder.

    Returns:
        The result, whose volume has the plan's output shape and affine.

    Raises:
        GeometryError, ConfigError: bad plane, factor, axis, method, device or batch size.
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be an integer >= 1, got {batch_size!r}")
    plan = plan_upsampling(volume.shape, volume.affine, plane, factor, axis)
    spec = get_method(method)
    dev = resolve_device(device)
    upsampler = spec.build(device=dev, seed=seed, plan=plan, **options)

    start = time.perf_counter()
    planes = torch.from_numpy(np.ascontiguousarray(to_planes(volume.data, plan)))  # (N, H, W)
    out_planes = np.empty((plan.n_planes, *(plan.output_shape[a] for a in plan.plane_axes)), np.float32)
    with tqdm(total=plan.n_planes, desc=f"{method} x{factor} {plane}-plane", unit="plane",
              disable=not progress, delay=1.0, leave=False) as bar:
        for lo in range(0, plan.n_planes, batch_size):
            batch = planes[lo:lo + batch_size, None].to(dev)
            with torch.inference_mode():
                up = upsampler(batch, plan.plane_factors)
            out_planes[lo:lo + len(batch)] = up[:, 0].float().cpu().numpy()
            bar.update(len(batch))
    data = from_planes(out_planes, plan)
    seconds = time.perf_counter() - start
    logger.info("%s x%d %s-plane: %s -> %s in %.2f s", method, factor, plane, plan.input_shape,
                plan.output_shape, seconds)
    out = volume.with_data(data, plan.output_affine, mrisr_method=method, mrisr_plane=plane,
                           mrisr_factor=factor)
    return UpsampleResult(volume=out, plan=plan, method=method, device=str(dev), seconds=seconds,
                          network_evaluations=int(upsampler.network_evaluations))
