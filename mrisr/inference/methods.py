"""The registry of upsampling methods: the classical ``bicubic`` and ``bspline`` and the learned
``partdiff``, ``sr3`` and ``regression`` (a trained model run through
:class:`~mrisr.diffusion.PartialDiffusionInferer`), all built the same way behind the
:class:`PlaneUpsampler` interface, and the checks of which model serves which data and options."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from mrisr.devices import resolve_precision
from mrisr.errors import ConfigError, require_int
from mrisr.geometry import UpsamplingPlan
from mrisr.interpolation import bicubic_upsample, bspline_upsample
from mrisr.transforms import model_percentiles

__all__ = ["PlaneUpsampler", "MethodSpec", "register_method", "get_method", "available_methods", "OBJECTIVES_FOR",
           "ImagePlan", "plane_seed", "PlaneWindow", "plane_symmetries"]

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

    def __call__(self, planes: torch.Tensor, factors: tuple[int, int], seeds: list[int],
                 window: PlaneWindow | None = None) -> torch.Tensor:
        """Upsample ``(B, 1, H, W)`` planes by ``factors`` to ``(B, 1, H * fh, W * fw)``,
        drawing plane ``i``'s randomness from ``seeds[i]``; ``window``: the planes are windows
        of larger ones, whose result there they must reproduce."""
        ...


@dataclass(frozen=True)
class PlaneWindow:
    """Planes that are windows of larger ones (a region of interest of a volume).

    A stochastic method draws the whole planes' noise and keeps the window's part of it; the
    sampling guard keeps the whole planes' bounds. Together with enough context around the
    window, the window's result is then the whole planes' result there.

    Attributes:
        full: ``(H, W)`` of the whole output planes.
        offset: the window's first output row and column in them.
        condition_bounds: the guard's per-plane ``(lo, hi)``, each ``(B, 1, 1, 1)``, from the
            whole planes' condition (:func:`mrisr.diffusion.samplers.condition_range`).
    """

    full: tuple[int, int]
    offset: tuple[int, int]
    condition_bounds: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class MethodSpec:
    """A registered upsampling method.

    Attributes:
        name: the name ``--method`` takes.
        summary: one line for ``--help`` and docs.
        build: ``build(device=..., seed=..., plan=..., **options)`` -> :class:`PlaneUpsampler`.
        learned: whether the method runs a trained network.
        stochastic: whether its result depends on the seed (the diffusion samplers), so that
            ``samples > 1`` averages different results.
    """

    name: str
    summary: str
    build: Callable[..., PlaneUpsampler]
    learned: bool = False
    stochastic: bool = False


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, summary: str, learned: bool = False, stochastic: bool = False) -> Callable:
    """Decorator that registers a builder under ``name``."""

    def deco(build: Callable[..., PlaneUpsampler]) -> Callable[..., PlaneUpsampler]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        _REGISTRY[name] = MethodSpec(name=name, summary=summary, build=build, learned=learned, stochastic=stochastic)
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

    def __call__(self, planes: torch.Tensor, factors: tuple[int, int], seeds: list[int],
                 window: PlaneWindow | None = None) -> torch.Tensor:
        return bicubic_upsample(planes.to(self.device, torch.float32), factors)


@dataclass
class _BSpline:
    network_evaluations: int = 0
    intensity: tuple[float, float] | None = None
    stochastic: bool = False

    def __call__(self, planes: torch.Tensor, factors: tuple[int, int], seeds: list[int],
                 window: PlaneWindow | None = None) -> torch.Tensor:
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

#: one symmetry of a plane: (transpose, flip rows, flip columns), applied in that order
Symmetry = tuple[bool, bool, bool]


def plane_symmetries(factors: tuple[int, int]) -> list[Symmetry]:
    """The symmetries of a plane that commute with its degradation, identity first: all eight
    turns and flips of the square where both axes have the same factor (in-plane), the four
    flips where they differ (through-plane: a transpose would move the thick axis). Flips
    commute with anti-aliased bicubic downsampling and with the line average because the plane
    is a whole number of low-resolution samples long."""
    transposes = (False, True) if factors[0] == factors[1] else (False,)
    return [(t, r, c) for t in transposes for r in (False, True) for c in (False, True)]


def _apply_symmetry(x: torch.Tensor, sym: Symmetry) -> torch.Tensor:
    transpose, rows, cols = sym
    x = x.transpose(-2, -1) if transpose else x
    x = x.flip(-2) if rows else x
    return x.flip(-1) if cols else x


def _undo_symmetry(x: torch.Tensor, sym: Symmetry) -> torch.Tensor:
    transpose, rows, cols = sym
    x = x.flip(-1) if cols else x
    x = x.flip(-2) if rows else x
    return x.transpose(-2, -1) if transpose else x


def _window_under(window: PlaneWindow, size: tuple[int, int], sym: Symmetry) -> tuple[tuple[int, int],
                                                                                      tuple[int, int]]:
    """The whole plane's size and the window's offset in it once ``sym`` is applied to both
    (``size``: the window's output size before)."""
    (fh, fw), (r, c), (h, w) = window.full, window.offset, size
    transpose, rows, cols = sym
    if transpose:
        fh, fw, r, c, h, w = fw, fh, c, r, w, h
    if rows:
        r = fh - r - h
    if cols:
        c = fw - c - w
    return (fh, fw), (r, c)


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
    # --consistent: the degradation the model was trained with (mrisr.transforms.plane_degradation's
    # lowres); each output is projected onto the images it maps to the input
    consistent_with: Callable[[torch.Tensor], torch.Tensor] | None = None
    # --self-ensemble: how many symmetries of the plane (plane_symmetries) each output averages
    ensemble: int = 1
    # --aligned-jumps: DDIM jumps of a latent-aligned model rescale the blend they hand on
    aligned: bool = False

    @property
    def consistent(self) -> bool:
        return self.consistent_with is not None

    @property
    def steps_run(self) -> int:
        """Network evaluations per plane: the sampling plan's, plus one for a regression start,
        times the symmetries of --self-ensemble."""
        extra = 1 if self.start_model is not None else 0
        once = extra + self.model.inferer.plan(self.method, self.sampler, self.steps, self.k).network_evaluations
        return once * self.ensemble

    def __call__(self, planes: torch.Tensor, factors: tuple[int, int], seeds: list[int],
                 window: PlaneWindow | None = None) -> torch.Tensor:
        planes = planes.to(self.device, torch.float32)
        generators: list[Any] = [torch.Generator(self.device).manual_seed(int(s)) for s in seeds]
        bounds = None
        if window is not None and window.condition_bounds is not None:
            bounds = tuple(b.to(self.device) for b in window.condition_bounds)
        symmetries = plane_symmetries(factors) if self.ensemble > 1 else [(False, False, False)]
        size = (planes.shape[-2] * factors[0], planes.shape[-1] * factors[1])
        total = None
        # one generator stream per plane across the symmetries: a window draws, symmetry by
        # symmetry, the noise the whole plane draws under the same symmetry
        for sym in symmetries:
            gens = generators
            if window is not None:
                from mrisr.diffusion import NoiseWindow

                full, offset = _window_under(window, size, sym)
                gens = [NoiseWindow(g, full, offset) for g in generators]
            sym_factors = (factors[1], factors[0]) if sym[0] else factors
            out = _undo_symmetry(self._once(_apply_symmetry(planes, sym), sym_factors, gens, bounds), sym)
            total = out if total is None else total + out
        out = total if len(symmetries) == 1 else total / len(symmetries)
        if self.consistent_with is not None:
            from mrisr.degradation import project_consistent

            with torch.inference_mode(False), torch.no_grad():  # the projection's adjoint runs autograd
                out = project_consistent(out.clone(), planes.clone(), self.consistent_with)
        return out

    def _once(self, planes: torch.Tensor, factors: tuple[int, int], generators: list[Any],
              bounds: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        condition = bicubic_upsample(planes, factors)
        start = None
        if self.start_model is not None:
            start = self.start_model.inferer.sample(condition, self.start_model.network, method="regression",
                                                    condition_bounds=bounds)
            self.network_evaluations += 1
        out = self.model.inferer.sample(condition, self.model.network, method=self.method, sampler=self.sampler,
                                        steps=self.steps, k=self.k, generators=generators, start=start,
                                        condition_bounds=bounds, aligned=self.aligned)
        self.network_evaluations += self.model.inferer.network_evaluations
        return out


def _build_learned(method: str, device: torch.device, plan: UpsamplingPlan, model: Any = None,
                   sampler: str | None = None, steps: int | None = None, precision: Precision | None = None,
                   k: int | None = None, start: str | None = None, start_model: str | None = None,
                   evaluations: int | None = None, consistent: bool | None = None, self_ensemble: bool | None = None,
                   aligned_jumps: bool | None = None, **_: Any) -> PlaneUpsampler:
    from mrisr.diffusion import SAMPLERS
    from mrisr.models import LoadedModel, default_model, load_model, load_start_model, shipped_models

    expected_sha256 = None
    # a model runs at the factor it was trained for, or at those the registry says it serves
    if isinstance(model, LoadedModel):  # built in memory (a MONAI bundle's weights and config)
        served = False
    elif model is None:
        shipped = default_model(method, plan.plane, plan.factor)
        model, expected_sha256, served = str(shipped.path), shipped.sha256, True
        sampler, steps, aligned_jumps = default_sampling(method, shipped.sampling_defaults, sampler, steps, k,
                                                         evaluations, aligned_jumps, start)
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
        sampler, steps, aligned_jumps = default_sampling(method, loaded.config.get("defaults") or {}, sampler,
                                                         steps, k, evaluations, aligned_jumps, start)
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
    if aligned_jumps and (method != "partdiff" or sampler != "ddim" or loaded.objective != "partdiff"):
        raise ConfigError("--aligned-jumps applies to DDIM sampling (--method partdiff --sampler ddim) of a "
                          f"latent-aligned model; {loaded.path.name} runs {method} with the {sampler} sampler "
                          f"and was trained for {loaded.objective}")
    consistent_with = None
    if consistent:
        from mrisr.transforms import plane_degradation

        degradation = (loaded.config.get("task") or {}).get("degradation") or {}
        if float(degradation.get("blur_sigma_max") or 0) > 0:
            raise ConfigError(f"--consistent needs a model trained on one known degradation; {loaded.path.name} "
                              f"was trained with a random blur (blur_sigma_max {degradation['blur_sigma_max']:g})")
        consistent_with = plane_degradation(plan.plane, plan.factor)[0].lowres
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
                       k=k, start_model=start_loaded, consistent_with=consistent_with,
                       ensemble=len(plane_symmetries(getattr(plan, "plane_factors", (plan.factor, plan.factor))))
                       if self_ensemble else 1,
                       aligned=bool(aligned_jumps),
                       intensity=model_percentiles(loaded.config),
                       # ancestral steps add noise; DDIM is deterministic given its noisy start
                       stochastic=get_method(method).stochastic)
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


def default_sampling(method: str, defaults: dict[str, Any], sampler: str | None, steps: int | None,
                     k: int | None, evaluations: int | None = None, aligned_jumps: bool | None = None,
                     start: str | None = None) -> tuple[str | None, int | None, bool | None]:
    """The one rule for PartDiff's default sampler (docs/cli.md): the model's default sampler
    (the registry's for a shipped model, the file's for your own) whenever no ``--sampler`` is
    given; its step count only when no ``--steps`` / ``--evaluations`` is given either (at most
    ``--k``); its aligned jumps only from the start they were measured on, the diffused LR image
    at the model's own K (not with ``--k`` or ``--start regression``, where they cost 0.2-0.3 dB,
    docs/ablations.md), and unless ``--aligned-jumps`` / ``--no-aligned-jumps`` says otherwise.
    Returns ``(sampler, steps, aligned_jumps)``."""
    if method != "partdiff" or sampler is not None or not defaults.get("sampler"):
        return sampler, steps, aligned_jumps
    default_steps = defaults.get("steps")
    if steps is None and evaluations is None and default_steps is not None:
        steps = int(default_steps) if k is None else min(int(default_steps), k)
    if (aligned_jumps is None and defaults.get("aligned_jumps") and defaults["sampler"] == "ddim" and k is None
            and start in (None, "lowres")):
        aligned_jumps = True
    return defaults["sampler"], steps, aligned_jumps


@register_method("partdiff", "Partial Diffusion: start at step K from the diffused LR image (--model)", learned=True,
                 stochastic=True)
def _build_partdiff(**kwargs: Any) -> PlaneUpsampler:
    return _build_learned("partdiff", **kwargs)


@register_method("sr3", "SR3: ancestral sampling from pure noise through the whole schedule (--model)", learned=True,
                 stochastic=True)
def _build_sr3(**kwargs: Any) -> PlaneUpsampler:
    return _build_learned("sr3", **kwargs)


@register_method("regression", "the same network predicting the HR image in one pass (--model)", learned=True)
def _build_regression(**kwargs: Any) -> PlaneUpsampler:
    return _build_learned("regression", **kwargs)


@dataclass(frozen=True)
class ImagePlan:
    """What a method is told when it upsamples natural images: in-plane by ``factor``, images
    of ``channels`` channels (the volume loop passes an :class:`~mrisr.geometry.UpsamplingPlan`)."""

    factor: int
    channels: int = 3
    plane: str = "in"


def plane_seed(seed: int, sample: int, plane: int, orientation: int = 0) -> int:
    """The seed of one plane's generator: independent of the batch the plane runs in; the
    second orientation of a fused through-plane run (``orientation=1``) draws other noise."""
    entropy = [seed, sample, plane] + ([orientation] if orientation else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])
