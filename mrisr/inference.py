"""Whole-volume upsampling: the registry of methods and the loop over 2D planes.

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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from mrisr.devices import Device, available_memory, resolve_device, resolve_precision
from mrisr.errors import ConfigError, require_int
from mrisr.geometry import Plane, UpsamplingPlan, from_planes, plan_upsampling, to_planes
from mrisr.interpolation import bicubic_upsample, bspline_upsample
from mrisr.io import Volume
from mrisr.transforms import model_percentiles

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
    "ImagePlan",
    "upsample_images",
    "plane_seed",
    "fit_batch_size",
]

logger = logging.getLogger(__name__)


class PlaneUpsampler(Protocol):
    """What a method builds: a callable on plane batches that counts its network evaluations.

    Attributes:
        network_evaluations: network calls so far (0 for classical methods).
        intensity: for learned methods, the robust percentiles ``(lower, upper)`` the input
            volume must be normalised with; None to work in the input's units.
        stochastic: whether different seeds give different results.
    """

    network_evaluations: int
    intensity: tuple[float, float] | None
    stochastic: bool

    def __call__(self, planes: torch.Tensor, factors: tuple[int, int], seeds: list[int]) -> torch.Tensor:
        """Upsample ``(B, 1, H, W)`` planes by ``factors`` to ``(B, 1, H * fh, W * fw)``,
        drawing plane ``i``'s randomness from ``seeds[i]``."""
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


# --------------------------------------------------------------------------------------------
# classical methods


@dataclass
class _Bicubic:
    device: torch.device
    network_evaluations: int = 0
    intensity: tuple[float, float] | None = None
    stochastic: bool = False

    def __call__(self, planes: torch.Tensor, factors: tuple[int, int], seeds: list[int]) -> torch.Tensor:
        return bicubic_upsample(planes.to(self.device, torch.float32), factors)


@dataclass
class _BSpline:
    network_evaluations: int = 0
    intensity: tuple[float, float] | None = None
    stochastic: bool = False

    def __call__(self, planes: torch.Tensor, factors: tuple[int, int], seeds: list[int]) -> torch.Tensor:
        out = bspline_upsample(planes[:, 0].detach().cpu().numpy(), factors)
        return torch.from_numpy(out)[:, None]


@register_method("bicubic", "cell-centred bicubic interpolation (torch, Keys kernel a=-0.75)")
def _build_bicubic(device: torch.device, **_: Any) -> PlaneUpsampler:
    return _Bicubic(device)


@register_method("bspline", "cubic B-spline interpolation with prefilter (scipy.ndimage)")
def _build_bspline(**_: Any) -> PlaneUpsampler:
    return _BSpline()


# --------------------------------------------------------------------------------------------
# learned methods

Precision = Literal["auto", "fp32", "bf16"]
# method -> the training objectives whose models it can run
#: the training objectives each learned method can run (PartDiff also samples SR3 models partially)
OBJECTIVES_FOR = {"partdiff": ("partdiff", "sr3"), "sr3": ("sr3",), "regression": ("regression",)}


@dataclass
class _Learned:
    """A trained model behind the PlaneUpsampler interface."""

    model: Any  # mrisr.models.LoadedModel
    method: str
    sampler: str
    steps: int | None
    device: torch.device
    precision: str = "fp32"
    k: int | None = None
    start_model: Any = None  # a regression LoadedModel whose output is diffused instead of the LR image
    network_evaluations: int = 0
    intensity: tuple[float, float] | None = None
    stochastic: bool = True
    model_name: str | None = None  # registry name of a shipped model, else the file name
    model_sha256: str | None = None
    input_spacing_mm: tuple[float, float] | None = None  # the LR spacing range it was trained for

    @property
    def steps_run(self) -> int:
        """Network evaluations per plane: the sampling plan's, plus one for a regression start."""
        extra = 1 if self.start_model is not None else 0
        return extra + self.model.inferer.plan(self.method, self.sampler, self.steps, self.k).network_evaluations

    def __call__(self, planes: torch.Tensor, factors: tuple[int, int], seeds: list[int]) -> torch.Tensor:
        condition = bicubic_upsample(planes.to(self.device, torch.float32), factors)
        generators = [torch.Generator(self.device).manual_seed(int(s)) for s in seeds]
        start = None
        if self.start_model is not None:
            start = self.start_model.inferer.sample(condition, self.start_model.network, method="regression")
            self.network_evaluations += 1
        out = self.model.inferer.sample(condition, self.model.network, method=self.method, sampler=self.sampler,
                                        steps=self.steps, k=self.k, generators=generators, start=start)
        self.network_evaluations += self.model.inferer.network_evaluations
        return out


def _build_learned(method: str, device: torch.device, plan: UpsamplingPlan, model: Any = None,
                   sampler: str | None = None, steps: int | None = None, precision: Precision | None = None,
                   k: int | None = None, start: str | None = None, start_model: str | None = None,
                   evaluations: int | None = None, **_: Any) -> PlaneUpsampler:
    from mrisr.diffusion import SAMPLERS
    from mrisr.models import LoadedModel, default_model, load_model, load_start_model, shipped_models

    expected_sha256 = None
    # a model runs at the factor it was trained for, or at those the registry says it serves
    if isinstance(model, LoadedModel):  # built in memory (a MONAI bundle's weights and config)
        served = False
    elif model is None:
        shipped = default_model(method, plan.plane, plan.factor)
        model, expected_sha256, served = str(shipped.path), shipped.sha256, True
        sampler, steps = _default_sampling(method, {"sampler": shipped.sampler, "steps": shipped.steps},
                                           sampler, steps, k, evaluations)
    else:
        served = any(m.serves(method, plan.plane, plan.factor) and m.path == Path(model).resolve()
                     for m in shipped_models())
    precision = resolve_precision(precision, device)
    dtype = torch.bfloat16 if precision == "bf16" else None
    if isinstance(model, LoadedModel):
        loaded = model
        loaded.inferer.autocast_dtype = dtype  # the precision asked for, as load_model would set it
    else:
        loaded = load_model(model, device=device, autocast_dtype=dtype, expected_sha256=expected_sha256)
    shipped_entry = next((m for m in shipped_models() if m.path == loaded.path.resolve()), None)
    if expected_sha256 is None:  # your own model: the default its file stores (set by mrisr train)
        sampler, steps = _default_sampling(method, loaded.config.get("defaults") or {}, sampler, steps, k,
                                           evaluations)
    if loaded.objective not in OBJECTIVES_FOR[method]:
        raise ConfigError(f"--method {method} needs a model trained with objective "
                          f"{' or '.join(OBJECTIVES_FOR[method])}, but {loaded.path.name} was trained for "
                          f"{loaded.objective}")
    if (loaded.plane, loaded.factor) != (plan.plane, plan.factor) and not served:
        raise ConfigError(f"{loaded.path.name} was trained for --plane {loaded.plane} --factor {loaded.factor}, "
                          f"not --plane {plan.plane} --factor {plan.factor}")
    sampler = sampler or "ancestral"
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if evaluations is not None:
        require_int(evaluations, "--evaluations")
        if steps is not None:
            raise ConfigError("give --evaluations or --steps, not both (for DDIM they are the same number)")
        if sampler != "ddim":
            raise ConfigError("--evaluations counts DDIM steps; the ancestral sampler runs every step from K "
                              "(give --k)")
        steps = evaluations
    if steps is not None:
        require_int(steps, "--steps")
    inferer = loaded.inferer
    if method == "partdiff" and sampler == "ancestral" and steps is not None:
        if loaded.objective == "partdiff" and steps != inferer.k:
            raise ConfigError(f"{loaded.path.name} is latent-aligned for K = {inferer.k} (noise level "
                              f"{inferer.k_noise_level:g}); --steps {steps} would start it elsewhere. Use "
                              f"--steps {inferer.k}, or an SR3 model for other K")
        if steps > inferer.inference_schedule.num_steps:
            raise ConfigError(f"--steps {steps} exceeds the {inferer.inference_schedule.num_steps} steps of the "
                              "inference schedule")
    if method == "regression" and (steps is not None or sampler != "ancestral"):
        raise ConfigError("--steps and --sampler do not apply to --method regression (one network pass)")
    if sampler == "ddim" and steps is not None and method != "regression":
        start_at = inferer.inference_schedule.num_steps if method == "sr3" else (k or inferer.k)
        if steps > start_at:
            raise ConfigError(f"--steps {steps}: DDIM from step {start_at} takes at most {start_at} network "
                              "evaluations")
    if k is not None:
        if method != "partdiff":
            raise ConfigError("--k (the partial-diffusion start step) applies to --method partdiff only")
        require_int(k, "--k", 1, inferer.inference_schedule.num_steps)
        if sampler == "ancestral" and steps is not None and steps != k:
            raise ConfigError("for the ancestral sampler --steps is K itself; give --k or --steps, not both")
        if loaded.objective == "partdiff" and k > inferer.k:
            raise ConfigError(f"{loaded.path.name} is latent-aligned for K = {inferer.k}: it was trained for steps up "
                              f"to {inferer.k} only, so --k must be at most {inferer.k}, got {k}")
    _check_data_kind(loaded, plan)
    start_loaded = None
    if start not in (None, "lowres", "regression"):
        raise ConfigError(f"--start must be lowres or regression, got {start!r}")
    if start == "regression":
        if method != "partdiff":
            raise ConfigError("--start regression applies to --method partdiff only")
        start_loaded = load_start_model(start_model, plan.plane, plan.factor, device=device, autocast_dtype=dtype)
        _check_data_kind(start_loaded, plan)
    elif start_model is not None:
        raise ConfigError("--start-model needs --start regression")
    learned = _Learned(model=loaded, method=method, sampler=sampler, steps=steps, device=device, precision=precision,
                       k=k, start_model=start_loaded,
                       intensity=model_percentiles(loaded.config),
                       # ancestral steps add noise; DDIM is deterministic given its noisy start
                       stochastic=method != "regression")
    from mrisr.models import sha256 as file_sha256

    learned.model_name = shipped_entry.name if shipped_entry else loaded.path.name
    learned.model_sha256 = expected_sha256 or (shipped_entry.sha256 if shipped_entry else
                                               (file_sha256(loaded.path) if loaded.path.is_file() else None))
    spacing = loaded.config.get("input_spacing_mm") or (shipped_entry.input_spacing_mm if shipped_entry else None)
    learned.input_spacing_mm = tuple(float(x) for x in spacing) if spacing else None
    return learned


def _check_data_kind(loaded: Any, plan: Any) -> None:
    """A natural-image model runs on images only, an MRI model on volumes only, and an image
    model only on images with its number of channels."""
    from mrisr.images import image_channels, is_image_model

    for_images = isinstance(plan, ImagePlan)
    name = loaded.path.name
    if is_image_model(loaded.config) and not for_images:
        raise ConfigError(f"{name} is a natural-image model ({image_channels(loaded.config)} channels, 0-255 "
                          "intensities); run it with mrisr.inference.upsample_images or pipelines/benchmark_natural.py")
    if for_images and not is_image_model(loaded.config):
        raise ConfigError(f"{name} is an MRI model (intensities normalised per volume); natural images need a model "
                          "trained with data.kind: images")
    if for_images and image_channels(loaded.config) != plan.channels:
        raise ConfigError(f"{name} makes {image_channels(loaded.config)}-channel images, not {plan.channels}-channel "
                          "ones")


def _default_sampling(method: str, defaults: dict[str, Any], sampler: str | None, steps: int | None,
                      k: int | None, evaluations: int | None = None) -> tuple[str | None, int | None]:
    """The one rule for PartDiff's default sampler (docs/cli.md): the model's default sampler
    (the registry's for a shipped model, the file's for your own) whenever no ``--sampler`` is
    given; its step count only when no ``--steps`` / ``--evaluations`` is given either (at most
    ``--k``)."""
    if method != "partdiff" or sampler is not None or not defaults.get("sampler"):
        return sampler, steps
    default_steps = defaults.get("steps")
    if steps is None and evaluations is None and default_steps is not None:
        steps = int(default_steps) if k is None else min(int(default_steps), k)
    return defaults["sampler"], steps


@register_method("partdiff", "Partial Diffusion: start at step K from the diffused LR image (--model)", learned=True)
def _build_partdiff(**kwargs: Any) -> PlaneUpsampler:
    return _build_learned("partdiff", **kwargs)


@register_method("sr3", "SR3: ancestral sampling from pure noise through the whole schedule (--model)", learned=True)
def _build_sr3(**kwargs: Any) -> PlaneUpsampler:
    return _build_learned("sr3", **kwargs)


@register_method("regression", "the same network predicting the HR image in one pass (--model)", learned=True)
def _build_regression(**kwargs: Any) -> PlaneUpsampler:
    return _build_learned("regression", **kwargs)


# --------------------------------------------------------------------------------------------
# the volume loop


# Peak memory, measured (docs/benchmarks.md): the `small` UNet (base width 32) in fp32 inference
# takes 2.3-2.9 kB per output pixel of a plane (ru_maxrss at 320 x 320 and 640 x 640); scale by
# the base width, with a margin. The volume loop holds the input, the mean (and with samples
# the squared deviations) in float64 and the output volume: ~40 bytes per output voxel.
_NET_BYTES_PER_PIXEL_PER_CHANNEL = 100
_LOOP_BYTES_PER_VOXEL = 40
# leave room for the rest of the process and the machine
_MEMORY_FRACTION = 0.7


def fit_batch_size(plan: UpsamplingPlan, upsampler: PlaneUpsampler, device: torch.device, batch_size: int,
                   samples: int = 1) -> int:
    """The batch size that fits the memory of ``device``, known before any work is done.

    The requested batch is lowered (with a warning) when its planes would not fit; a job whose
    volume or single plane does not fit at all is refused up front instead of being killed by
    the out-of-memory killer half way (a native 320 x 320 axial scan in-plane x4 took 24 GB with
    batches of 8 planes of 1280 x 1280).

    Raises:
        ConfigError: not even one plane (or the output volume) fits.
    """
    free = available_memory(device)
    host = available_memory(torch.device("cpu")) if device.type == "cuda" else free
    out_voxels = int(np.prod(plan.output_shape))
    gib = 1024**3
    if host is not None and out_voxels * _LOOP_BYTES_PER_VOXEL * (2 if samples > 1 else 1) > _MEMORY_FRACTION * host:
        raise ConfigError(f"the output ({' x '.join(map(str, plan.output_shape))} voxels) needs about "
                          f"{out_voxels * _LOOP_BYTES_PER_VOXEL / gib:.1f} GiB, but only {host / gib:.1f} GiB of "
                          "memory is available; use a smaller factor or crop the volume")
    model = getattr(upsampler, "model", None)
    if model is None or free is None:
        return batch_size
    width = int(model.config["network"]["channels"][0])
    h, w = (plan.output_shape[a] for a in plan.plane_axes)
    per_plane = h * w * width * _NET_BYTES_PER_PIXEL_PER_CHANNEL
    if getattr(upsampler, "start_model", None) is not None:
        per_plane *= 2  # the regression start's output is held alongside
    fits = int(_MEMORY_FRACTION * free // per_plane)
    if fits < 1:
        raise ConfigError(f"one {h} x {w} plane needs about {per_plane / gib:.1f} GiB on {device.type}, but only "
                          f"{free / gib:.1f} GiB is available; use a smaller factor, a GPU, or free memory")
    if fits < batch_size:
        logger.warning("--batch-size %d lowered to %d: each %d x %d plane needs about %.1f GiB of the %.1f GiB "
                       "available", batch_size, fits, h, w, per_plane / gib, free / gib)
        return fits
    return batch_size


def _adapted_options(volume: Volume, plan: UpsamplingPlan, method: str, device: torch.device, seed: int,
                     steps: int, progress: bool, options: dict[str, Any]) -> dict[str, Any]:
    """The options with ``model`` replaced by the model adapted to ``volume`` (and the shipped
    model's sampler defaults kept, as :func:`_build_learned` would apply them)."""
    from mrisr.adaptation import adapt_model
    from mrisr.models import LoadedModel, default_model, load_model

    out = dict(options)
    model = out.get("model")
    expected, defaults = None, {}
    if model is None:
        shipped = default_model(method, plan.plane, plan.factor)
        model, expected = str(shipped.path), shipped.sha256
        defaults = {"sampler": shipped.sampler, "steps": shipped.steps}
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device, expected_sha256=expected)
    out["sampler"], out["steps"] = _default_sampling(method, defaults or loaded.config.get("defaults") or {},
                                                     out.get("sampler"), out.get("steps"), out.get("k"))
    if (loaded.plane, loaded.factor) != (plan.plane, plan.factor):
        raise ConfigError(f"{loaded.path.name} was trained for --plane {loaded.plane} --factor {loaded.factor}, "
                          f"not --plane {plan.plane} --factor {plan.factor}")
    out["model"] = adapt_model(loaded, volume, plan.plane, plan.factor, steps, seed=seed, device=device,
                               progress=progress)
    return out


#: how far outside its training range an input's spacing may be before a warning
SPACING_TOLERANCE = 1.5


def _warn_outside_training_spacing(plan: UpsamplingPlan, trained: tuple[float, float] | None) -> None:
    """One warning when the input's spacing along the upsampled axes is far from what the model
    was trained for (e.g. the in-plane x4 model, trained on ~2.2 mm inputs, on a 0.6 mm scan)."""
    if not trained:
        return
    axes = [a for a in range(3) if plan.axis_factors[a] > 1]
    spacing = [plan.input_spacing[a] for a in axes]
    lo, hi = trained
    if min(spacing) < lo / SPACING_TOLERANCE or max(spacing) > hi * SPACING_TOLERANCE:
        shown = " x ".join(f"{s:.3g}" for s in spacing)
        logger.warning("this model was trained for inputs of %.3g-%.3g mm along the upsampled axes; this one has %s "
                       "mm, so expect invented texture or little gain (docs/models.md)", lo, hi, shown)


def _provenance(volume: Volume, method: str, plane: str, factor: int, extras: dict[str, Any]) -> dict[str, Any]:
    """What made an output, for its header (no time stamp: the same run gives the same bytes)."""
    from mrisr import __version__

    prov: dict[str, Any] = {"software": "mrisr", "version": __version__, "method": method, "plane": plane,
                            "factor": int(factor), "input": Path(str(volume.metadata.get("path", ""))).name or None}
    for key in ("model_name", "model_sha256", "adaptation", "sampler", "steps", "k", "start", "seed", "samples",
                "precision", "clipped_to_input_range"):
        if extras.get(key) is not None:
            prov["network_evaluations_per_plane" if key == "steps" else key] = extras[key]
    return prov


def plane_seed(seed: int, sample: int, plane: int) -> int:
    """The seed of one plane's generator: independent of the batch the plane runs in."""
    return int(np.random.SeedSequence([seed, sample, plane]).generate_state(1)[0])


@dataclass
class UpsampleResult:
    """The upsampled volume and what it took to make it."""

    volume: Volume
    plan: UpsamplingPlan
    method: str
    device: str
    seconds: float
    network_evaluations: int
    std_volume: Volume | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """The JSON report written by ``mrisr upsample --report``."""
        from mrisr import __version__

        return {
            "mrisr_version": __version__,
            "method": self.method,
            **self.plan.describe(),
            "axis": self.plan.slice_axis,
            "device": self.device,
            "seconds": round(self.seconds, 4),
            "network_evaluations": self.network_evaluations,  # batched network calls of the run
            # per plane, whatever the batch size (1 for regression, 0 for interpolation)
            "network_evaluations_per_plane": self.extras.get("steps", 0) or 0,
            **self.extras,
        }


def upsample_volume(volume: Volume, plane: Plane, factor: int, axis: int | None = None,
                    method: str = "bicubic", device: str = "cpu", batch_size: int = 8,
                    seed: int = 0, samples: int = 1, progress: bool = False, clip: bool = True,
                    on_start: Callable[[dict[str, Any]], None] | None = None, **options: Any) -> UpsampleResult:
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
        samples: how many stochastic samples to average; with ``samples > 1`` the result also
            holds their per-voxel standard deviation (an uncertainty map).
        progress: show a progress bar on stderr (it appears only after about a second).
        clip: for inputs without negative values (magnitude images), clip the output to the
            input's range: interpolation overshoot and sampling noise cannot make a magnitude
            negative or brighter than the input (False keeps the raw output).
        on_start: called once the run is planned, before any plane is computed, with ``plan``,
            ``method``, ``model_name``, ``sampler``, ``evaluations`` (per plane) and
            ``batch_size`` (the CLI prints them at once).
        options: for learned methods: ``model`` (a path, or a :class:`mrisr.models.LoadedModel`
            built in memory), ``sampler``, ``steps``, ``precision``; for partdiff also ``k`` (the
            start step) and ``start="regression"`` (diffuse the output of a regression model,
            ``start_model`` or the shipped one, instead of the low-resolution image: a start
            closer to the high-resolution image).

    Returns:
        The result, whose volume has the plan's output shape and affine.

    Raises:
        GeometryError, ConfigError, InputError: bad plane, factor, axis, method, device, batch
            size, model or option combination.
    """
    from tqdm.auto import tqdm

    require_int(batch_size, "batch size")
    require_int(samples, "samples")
    plan = plan_upsampling(volume.shape, volume.affine, plane, factor, axis)
    spec = get_method(method)
    given = sorted(k for k, v in options.items() if v is not None)
    if not spec.learned and given:
        raise ConfigError(f"--method {method} takes no {', '.join('--' + k for k in given)} "
                          "(those are for partdiff, sr3 and regression)")
    dev = resolve_device(device)
    adapt_steps, save_adapted = options.pop("adapt", None), options.pop("save_adapted", None)
    if save_adapted is not None and not adapt_steps:
        raise ConfigError("--save-adapted needs --adapt")
    if adapt_steps:
        options = _adapted_options(volume, plan, method, dev, seed, int(adapt_steps), progress, options)
        if save_adapted is not None:
            from mrisr.models import save_model

            adapted = options["model"]
            save_model(save_adapted, adapted.network, adapted.config)
    upsampler = spec.build(device=dev, seed=seed, plan=plan, **options)
    _warn_outside_training_spacing(plan, getattr(upsampler, "input_spacing_mm", None))
    if samples > 1 and not upsampler.stochastic:
        raise ConfigError(f"--samples {samples} needs a stochastic method; {method} gives the same result every time")
    batch_size = fit_batch_size(plan, upsampler, dev, batch_size, samples)
    if on_start is not None:
        on_start({"plan": plan, "method": method, "model_name": getattr(upsampler, "model_name", None),
                  "sampler": getattr(upsampler, "sampler", None) if method != "regression" else None,
                  "evaluations": getattr(upsampler, "steps_run", None), "batch_size": batch_size})

    start = time.perf_counter()
    data = volume.data
    intensity = None
    if upsampler.intensity is not None:
        from mrisr.transforms import robust_range

        intensity = robust_range(data, *upsampler.intensity)
        data = intensity.normalise(data)
    planes = torch.from_numpy(np.ascontiguousarray(to_planes(data, plan), dtype=np.float32))  # (N, H, W)
    out_shape = (plan.n_planes, *(plan.output_shape[a] for a in plan.plane_axes))
    mean = np.zeros(out_shape, np.float64)
    m2 = np.zeros(out_shape, np.float64) if samples > 1 else None
    desc = f"{method} x{factor} {plane}-plane" + (f", {samples} samples" if samples > 1 else "")
    with tqdm(total=plan.n_planes * samples, desc=desc, unit="plane", disable=not progress, delay=1.0,
              leave=False) as bar:
        for lo in range(0, plan.n_planes, batch_size):
            batch = planes[lo:lo + batch_size, None].to(dev)
            for s in range(samples):
                seeds = [plane_seed(seed, s, lo + i) for i in range(len(batch))]
                with torch.inference_mode():
                    up = upsampler(batch, plan.plane_factors, seeds)[:, 0].float().cpu().numpy()
                # Welford's running mean and sum of squared deviations
                delta = up - mean[lo:lo + len(batch)]
                mean[lo:lo + len(batch)] += delta / (s + 1)
                if m2 is not None:
                    m2[lo:lo + len(batch)] += delta * (up - mean[lo:lo + len(batch)])
                bar.update(len(batch))
    if intensity is not None:
        mean = intensity.denormalise(mean)
    clipped = bool(clip) and volume.data.size > 0 and float(volume.data.min()) >= 0.0
    if clipped:
        mean = np.clip(mean, float(volume.data.min()), float(volume.data.max()))
    std_volume = None
    if m2 is not None:
        std = np.sqrt(m2 / (samples - 1))  # sample standard deviation across the N samples
        if intensity is not None:
            std = std * intensity.scale  # back to the input's units (scale only, no offset)
        std_volume = volume.with_data(from_planes(std, plan), plan.output_affine, mrisr_method=method,
                                      mrisr_map="std")
    seconds = time.perf_counter() - start
    logger.info("%s x%d %s-plane: %s -> %s in %.2f s, %d network evaluations", method, factor, plane,
                plan.input_shape, plan.output_shape, seconds, upsampler.network_evaluations)
    out = volume.with_data(from_planes(mean, plan), plan.output_affine, mrisr_method=method, mrisr_plane=plane,
                           mrisr_factor=factor)
    extras: dict[str, Any] = {"clipped_to_input_range": clipped}
    if spec.learned:
        extras.update({"sampler": getattr(upsampler, "sampler", None), "steps": getattr(upsampler, "steps_run", None),
                       "k": getattr(upsampler, "k", None),
                       "start": "regression" if getattr(upsampler, "start_model", None) is not None else None,
                       "seed": seed, "samples": samples,
                       "model": str(upsampler.model.path),  # type: ignore[attr-defined]
                       "model_name": getattr(upsampler, "model_name", None),
                       "model_sha256": getattr(upsampler, "model_sha256", None),
                       "adaptation": {k: v for k, v in (upsampler.model.config.get("adaptation") or {}).items()  # type: ignore[attr-defined]
                                      if k in ("steps", "seed", "pairs", "from_model")} or None,
                       "precision": getattr(upsampler, "precision", None)})
    provenance = _provenance(volume, method, plane, factor, extras)
    out.metadata["mrisr_provenance"] = {**provenance, "map": "mean" if samples > 1 else "image"}
    if std_volume is not None:
        std_volume.metadata["mrisr_provenance"] = {**{k: v for k, v in provenance.items()
                                                      if k != "clipped_to_input_range"},
                                                   "map": f"standard deviation of {samples} samples"}
    return UpsampleResult(volume=out, plan=plan, method=method, device=str(dev), seconds=seconds,
                          network_evaluations=int(upsampler.network_evaluations), std_volume=std_volume,
                          extras=extras)


# --------------------------------------------------------------------------------------------
# natural images


@dataclass(frozen=True)
class ImagePlan:
    """What a method is told when it upsamples natural images: in-plane by ``factor``, images
    of ``channels`` channels (the volume loop passes an :class:`~mrisr.geometry.UpsamplingPlan`)."""

    factor: int
    channels: int = 3
    plane: str = "in"


def upsample_images(lowres: torch.Tensor, factor: int, method: str = "bicubic", device: str = "cpu",
                    batch_size: int = 8, seed: int = 0, first_index: int = 0,
                    **options: Any) -> tuple[torch.Tensor, PlaneUpsampler]:
    """Super-resolve natural images with any registered method: the same methods, samplers and
    models as for MRI planes, on ``C``-channel images in 0..255.

    Args:
        lowres: ``(B, C, h, w)`` low-resolution images, values 0..255 (C = 1 or 3).
        factor: the integer factor along both axes.
        method: a registered method; learned ones need ``model=`` (a natural-image model file
            or :class:`~mrisr.models.LoadedModel`: no natural-image models ship).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: images per call of the method.
        seed: seed of stochastic methods; image ``i`` draws from ``(seed, first_index + i)``,
            so results do not depend on the batch size or on how a folder is split into calls.
        first_index: the index of ``lowres[0]`` in the whole set.
        options: as for :func:`upsample_volume` (``model``, ``sampler``, ``steps``, ``k``,
            ``precision``, ``start``, ``start_model``).

    Returns:
        ``(B, C, h * factor, w * factor)`` float32 images in 0..255, and the method's upsampler
        (its ``network_evaluations`` and ``steps_run`` say what it cost).

    Raises:
        ConfigError: a learned method without a model, an MRI model, a channel mismatch or a
            bad option combination.
    """
    from mrisr.images import denormalise_image, normalise_image

    require_int(batch_size, "batch size")
    if lowres.ndim != 4 or lowres.shape[1] not in (1, 3):
        raise ConfigError(f"images must be (B, 1 or 3, H, W), got shape {tuple(lowres.shape)}")
    spec = get_method(method)
    given = sorted(k for k, v in options.items() if v is not None)
    if not spec.learned and given:
        raise ConfigError(f"--method {method} takes no {', '.join('--' + k for k in given)}")
    if spec.learned and options.get("model") is None:
        raise ConfigError(f"--method {method} on natural images needs a model (--model FILE): mrisr ships MRI "
                          "models only")
    dev = resolve_device(device)
    upsampler = spec.build(device=dev, seed=seed, plan=ImagePlan(factor=int(factor), channels=int(lowres.shape[1])),
                           **options)
    outs = []
    for lo in range(0, lowres.shape[0], batch_size):
        batch = normalise_image(lowres[lo:lo + batch_size].to(dev, torch.float32))
        seeds = [plane_seed(seed, 0, first_index + lo + i) for i in range(len(batch))]
        with torch.inference_mode():
            outs.append(denormalise_image(upsampler(batch, (int(factor), int(factor)), seeds).float()).cpu())
    return torch.cat(outs), upsampler
