"""Whole-volume upsampling: the loop over a volume's 2D planes (batches sized from memory,
per-plane seeds, the mean and standard deviation of several samples, intensities back in the
input's units), test-time adaptation, the training-spacing warning and the provenance of the output."""

from __future__ import annotations

import inspect
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrisr.devices import available_memory, resolve_device
from mrisr.errors import ConfigError, require_int
from mrisr.geometry import (ORIENTATION_TOLERANCE, Plane, UpsamplingPlan, VoxelBox, from_planes, plan_upsampling,
                            through_orientations, to_planes)
from mrisr.inference.methods import PlaneUpsampler, PlaneWindow, default_sampling, get_method, plane_seed
from mrisr.io import Volume

__all__ = ["UpsampleResult", "upsample_volume", "fit_batch_size", "SPACING_TOLERANCE", "ROI_CONTEXT"]

logger = logging.getLogger(__name__)


# Peak memory, measured (docs/benchmarks.md): the `small` UNet (base width 32) in fp32 inference
# takes 2.3-2.9 kB per output pixel of a plane (ru_maxrss at 320 x 320 and 640 x 640); scale by
# the base width, with a margin. The volume loop holds the input, the mean (and with samples
# the squared deviations) in float64 and the output volume: ~40 bytes per output voxel.
_NET_BYTES_PER_PIXEL_PER_CHANNEL = 100
_LOOP_BYTES_PER_VOXEL = 40
# leave room for the rest of the process and the machine
_MEMORY_FRACTION = 0.7


def fit_batch_size(plan: UpsamplingPlan, upsampler: PlaneUpsampler, device: torch.device, batch_size: int,
                   samples: int = 1, orientations: int = 1) -> int:
    """The batch size that fits the memory of ``device``, known before any work is done.

    The requested batch is lowered (with a warning) when its planes would not fit; a job whose
    volume or single plane does not fit at all is refused up front instead of being killed by
    the out-of-memory killer half way (a native 320 x 320 axial scan in-plane x4 took 24 GB with
    batches of 8 planes of 1280 x 1280). A run fusing ``orientations`` holds each one's result
    until the end.

    Raises:
        ConfigError: not even one plane (or the output volume) fits.
    """
    free = available_memory(device)
    host = available_memory(torch.device("cpu")) if device.type == "cuda" else free
    out_voxels = int(np.prod(plan.output_shape))
    gib = 1024**3
    loop_bytes = out_voxels * _LOOP_BYTES_PER_VOXEL * (2 if samples > 1 else 1) * max(1, int(orientations))
    if host is not None and loop_bytes > _MEMORY_FRACTION * host:
        raise ConfigError(f"the output ({' x '.join(map(str, plan.output_shape))} voxels) needs about "
                          f"{loop_bytes / gib:.1f} GiB, but only {host / gib:.1f} GiB of "
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
        defaults = shipped.sampling_defaults
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device, expected_sha256=expected)
    out["sampler"], out["steps"], out["aligned_jumps"] = default_sampling(
        method, defaults or loaded.config.get("defaults") or {}, out.get("sampler"), out.get("steps"), out.get("k"),
        aligned_jumps=out.get("aligned_jumps"), start=out.get("start"))
    if (loaded.plane, loaded.factor) != (plan.plane, plan.factor):
        raise ConfigError(f"{loaded.path.name} was trained for --plane {loaded.plane} --factor {loaded.factor}, "
                          f"not --plane {plan.plane} --factor {plan.factor}")
    out["model"] = adapt_model(loaded, volume, plan.plane, plan.factor, steps, seed=seed, device=device,
                               progress=progress)
    return out


#: input voxels of context computed around a region of interest along each plane axis (and then
#: cropped away), so that the region's border planes see the same neighbourhood as in a whole-volume run
ROI_CONTEXT = 16


def _context_box(roi: VoxelBox, shape: tuple[int, int, int], plan: UpsamplingPlan) -> VoxelBox:
    """``roi`` widened by :data:`ROI_CONTEXT` voxels along the plane axes, inside the volume."""
    box = []
    for a, ((lo, hi), n) in enumerate(zip(roi, shape)):
        if not 0 <= lo < hi <= n:
            raise ConfigError(f"the region of interest {lo}:{hi} on axis {a} is not inside 0:{n}")
        margin = ROI_CONTEXT if a in plan.plane_axes else 0
        box.append((max(0, lo - margin), min(n, hi + margin)))
    return tuple(box)  # type: ignore[return-value]


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


def _duration(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _provenance(volume: Volume, method: str, plane: str, factor: int, extras: dict[str, Any]) -> dict[str, Any]:
    """What made an output, for its header (no time stamp: the same run gives the same bytes)."""
    from mrisr import __version__

    prov: dict[str, Any] = {"software": "mrisr", "version": __version__, "method": method, "plane": plane,
                            "factor": int(factor), "input": Path(str(volume.metadata.get("path", ""))).name or None}
    for key in ("model_name", "model_sha256", "adaptation", "sampler", "steps", "k", "start", "seed", "samples",
                "precision", "self_ensemble", "aligned_jumps", "consistent_with_input", "fused_orientations",
                "clipped_to_input_range", "roi"):
        if extras.get(key) is not None:
            prov["network_evaluations_per_plane" if key == "steps" else key] = extras[key]
    return prov


class _WholePlanes:
    """The :class:`PlaneWindow` of each batch of a region of interest: the whole planes' output
    size, the window's offset in it, and the sampling guard's bounds from the whole planes."""

    def __init__(self, whole: np.ndarray, whole_plan: UpsamplingPlan, context: VoxelBox) -> None:
        self.whole, self.factors = whole, whole_plan.plane_factors
        self.full = tuple(int(whole_plan.output_shape[a]) for a in whole_plan.plane_axes)
        self.offset = tuple(int(context[a][0] * whole_plan.axis_factors[a]) for a in whole_plan.plane_axes)

    def __call__(self, first: int, n: int) -> PlaneWindow:
        from mrisr.diffusion.samplers import condition_range
        from mrisr.interpolation import bicubic_upsample

        planes = torch.from_numpy(np.ascontiguousarray(self.whole[first:first + n], dtype=np.float32))[:, None]
        bounds = condition_range(bicubic_upsample(planes, self.factors))
        return PlaneWindow(full=self.full, offset=self.offset, condition_bounds=bounds)  # type: ignore[arg-type]


def _output_box(box: VoxelBox | None, context: VoxelBox | None, plan: UpsamplingPlan) -> list[tuple[int, int]] | None:
    """Where the box lies in the output of the box computed with context (None: no box)."""
    if box is None or context is None:
        return None
    f = plan.axis_factors
    return [((lo - c) * f[a], (hi - c) * f[a]) for a, ((lo, hi), (c, _)) in enumerate(zip(box, context))]


def _pool(means: list[np.ndarray], m2s: list[np.ndarray] | None, samples: int
          ) -> tuple[np.ndarray, np.ndarray | None]:
    """The mean and the sum of squared deviations of all samples of several groups of
    ``samples`` each, from each group's mean and sum (Chan et al.'s parallel Welford update)."""
    if len(means) == 1:
        return means[0], None if m2s is None else m2s[0]
    mean = sum(means) / len(means)
    if m2s is None:
        return mean, None
    return mean, sum(m2s) + samples * sum((m - mean) ** 2 for m in means)


def _fused_orientations(plan: UpsamplingPlan, learned: bool, fuse: bool | None) -> list[UpsamplingPlan]:
    """The plans whose outputs a run averages: through-plane with a learned method, by default
    (``fuse`` None) both orientations where the volume's two in-plane axes are equally fine
    (:func:`mrisr.geometry.through_orientations`), else ``plan`` alone.

    Raises:
        ConfigError: ``fuse`` asked for where there is only one orientation.
    """
    orientations = through_orientations(plan)
    if fuse and len(orientations) < 2:
        why = ("it is for through-plane upsampling" if plan.plane != "through" else
               "this volume has one fine in-plane axis (the other is more than "
               f"{ORIENTATION_TOLERANCE:.0%} coarser)")
        raise ConfigError(f"--fuse-orientations averages the planes along both in-plane axes, but {why}")
    if fuse is None:
        fuse = learned
    return orientations if fuse else orientations[:1]


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
                    roi: VoxelBox | None = None, on_start: Callable[[dict[str, Any]], None] | None = None,
                    **options: Any) -> UpsampleResult:
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
        roi: upsample only this half-open box of input voxels (``((i0, i1), (j0, j1), (k0, k1))``,
            :func:`mrisr.geometry.parse_voxel_box`): the work shrinks with the box, the output
            covers the box on the output grid (its affine puts every voxel where the whole-volume
            output has it), and the result matches the whole-volume run there: the box is computed
            with :data:`ROI_CONTEXT` voxels of context along the plane axes, with the whole
            volume's intensity normalisation and clipping range, and a stochastic method draws the
            whole planes' noise (the same seeds) and keeps the box's part of it.
        on_start: called once the run is planned, before any plane is computed, with ``plan``,
            ``method``, ``model_name``, ``sampler``, ``evaluations`` (per plane) and
            ``batch_size`` (the CLI prints them at once).
        options: for learned methods: ``model`` (a path, or a :class:`mrisr.models.LoadedModel`
            built in memory), ``sampler``, ``steps``, ``precision``; for partdiff also ``k`` (the
            start step) and ``start="regression"`` (diffuse the output of a regression model,
            ``start_model`` or the shipped one, instead of the low-resolution image: a start
            closer to the high-resolution image); ``consistent=True`` projects each output plane
            onto the images whose simulated low-resolution version (the model's degradation:
            anti-aliased bicubic in-plane, the line average through-plane) is exactly the input
            plane (:func:`mrisr.degradation.project_consistent`), before the clip to the input's
            range; with ``roi`` the projection covers the box and its context;
            ``self_ensemble=True`` averages the output over the plane's symmetries that commute with
            the degradation (:func:`mrisr.inference.methods.plane_symmetries`: eight in-plane, four
            through-plane), at that many times the network evaluations; ``aligned_jumps=True``
            (partdiff, DDIM, a latent-aligned model) rescales the blend each DDIM jump hands on
            (:meth:`mrisr.diffusion.PartialDiffusionInferer.sample`'s ``aligned``);
            ``fuse_orientations`` (through-plane): average the estimates from the planes along each
            in-plane axis (e.g. coronal and sagittal planes of an axial scan; the second draws
            its own noise), at twice the work. None (the default) does so for learned methods
            where the two in-plane axes are equally fine (:func:`mrisr.geometry.through_orientations`);
            False keeps one orientation, the finest axis's (the lower index on a tie).

    Returns:
        The result, whose volume has the plan's output shape and affine (with ``roi``: the plan of
        the box).

    Raises:
        GeometryError, ConfigError, InputError: bad plane, factor, axis, method, device, batch
            size, model or option combination.
    """
    from tqdm.auto import tqdm

    require_int(batch_size, "batch size")
    require_int(samples, "samples")
    whole_plan = plan_upsampling(volume.shape, volume.affine, plane, factor, axis)
    box = None
    if roi is not None:
        box = tuple((int(lo), int(hi)) for lo, hi in roi)
        _context_box(box, volume.shape, whole_plan)  # type: ignore[arg-type]  # refuses a box outside the volume
    result_plan = whole_plan if box is None else plan_upsampling(
        tuple(hi - lo for lo, hi in box), volume.offset_affine([lo for lo, _ in box]), plane, factor,
        whole_plan.slice_axis)
    spec = get_method(method)
    given = sorted(k for k, v in options.items() if v is not None)
    if not spec.learned and given:
        raise ConfigError(f"--method {method} takes no {', '.join('--' + k.replace('_', '-') for k in given)} "
                          "(those are for partdiff, sr3 and regression)")
    orientations = _fused_orientations(whole_plan, spec.learned, options.pop("fuse_orientations", None))
    dev = resolve_device(device)
    adapt_steps, save_adapted = options.pop("adapt", None), options.pop("save_adapted", None)
    if save_adapted is not None and not adapt_steps:
        raise ConfigError("--save-adapted needs --adapt")
    if adapt_steps:
        options = _adapted_options(volume, whole_plan, method, dev, seed, int(adapt_steps), progress, options)
        if save_adapted is not None:
            from mrisr.models import save_model

            adapted = options["model"]
            save_model(save_adapted, adapted.network, adapted.config)
    # each orientation's planes (with a region of interest: of the box and its context)
    works = []
    for whole in orientations:
        context, plan = None, whole
        if box is not None:
            context = _context_box(box, volume.shape, whole)  # type: ignore[arg-type]
            work = volume.subvolume(context)
            plan = plan_upsampling(work.shape, work.affine, plane, factor, whole.slice_axis,
                                   column_axis=whole.plane_axes[1] if plane == "through" else None)
        works.append((whole, context, plan))
    upsampler = spec.build(device=dev, seed=seed, plan=works[0][2], **options)
    _warn_outside_training_spacing(whole_plan, getattr(upsampler, "input_spacing_mm", None))
    if samples > 1 and not upsampler.stochastic:
        raise ConfigError(f"--samples {samples} needs a stochastic method; {method} gives the same result every time")
    # one batch size for every orientation, from the one with the largest planes (one warning if lowered)
    largest = max((plan for _, _, plan in works),
                  key=lambda p: p.output_shape[p.plane_axes[0]] * p.output_shape[p.plane_axes[1]])
    batch_size = fit_batch_size(largest, upsampler, dev, batch_size, samples, len(works))
    # a sampler, start step and seed belong to diffusion; regression is one deterministic pass
    diffusion = spec.learned and upsampler.stochastic
    if on_start is not None:
        on_start({"plan": result_plan, "roi": box, "method": method,
                  "model_name": getattr(upsampler, "model_name", None),
                  "sampler": getattr(upsampler, "sampler", None) if diffusion else None,
                  "evaluations": getattr(upsampler, "steps_run", None), "batch_size": batch_size,
                  "orientations": len(works)})

    start = time.perf_counter()
    intensity = None
    if upsampler.intensity is not None:
        from mrisr.transforms import robust_range

        intensity = robust_range(volume.data, *upsampler.intensity)  # the whole volume's, with or without roi
    takes_window = "window" in inspect.signature(upsampler.__call__).parameters  # methods registered before it
    desc = f"{method} x{factor} {plane}-plane" + (f", {samples} samples" if samples > 1 else "")
    desc += f", {len(works)} orientations" if len(works) > 1 else ""
    batches = sum(-(-plan.n_planes // batch_size) for _, _, plan in works) * samples
    # the whole volume normalised once (pointwise): every orientation's planes, or its box and
    # context, are cut from it, and so are a region of interest's whole-plane windows
    normalised = volume.data if intensity is None else intensity.normalise(volume.data)
    windowed = box is not None and spec.learned and takes_window
    means, m2s, affine = [], [], None
    with tqdm(total=sum(plan.n_planes for _, _, plan in works) * samples, desc=desc, unit="plane",
              disable=not progress, delay=1.0, leave=False) as bar:
        for orientation, (whole, context, plan) in enumerate(works):
            data = normalised if context is None else normalised[tuple(slice(lo, hi) for lo, hi in context)]
            planes = torch.from_numpy(np.ascontiguousarray(to_planes(data, plan), dtype=np.float32))  # (N, H, W)
            windows = _WholePlanes(to_planes(normalised, whole), whole, context) if windowed else None
            out_shape = (plan.n_planes, *(plan.output_shape[a] for a in plan.plane_axes))
            mean = np.zeros(out_shape, np.float64)
            m2 = np.zeros(out_shape, np.float64) if samples > 1 else None
            first_plane = context[plan.stack_axis][0] if context is not None else 0  # seeds follow the whole volume
            for lo in range(0, plan.n_planes, batch_size):
                batch = planes[lo:lo + batch_size, None].to(dev)
                for s in range(samples):
                    seeds = [plane_seed(seed, s, first_plane + lo + i, orientation) for i in range(len(batch))]
                    with torch.inference_mode():
                        if windows is None:
                            up = upsampler(batch, plan.plane_factors, seeds)
                        else:
                            up = upsampler(batch, plan.plane_factors, seeds,
                                           window=windows(first_plane + lo, len(batch)))
                        up = up[:, 0].float().cpu().numpy()
                    # Welford's running mean and sum of squared deviations
                    delta = up - mean[lo:lo + len(batch)]
                    mean[lo:lo + len(batch)] += delta / (s + 1)
                    if m2 is not None:
                        m2[lo:lo + len(batch)] += delta * (up - mean[lo:lo + len(batch)])
                    bar.update(len(batch))
                    if progress and spec.learned and orientation == 0 and lo == 0 and s == 0 and batches > 1:
                        took = time.perf_counter() - start
                        bar.write(f"mrisr: first batch of {len(batch)} planes in {took:.1f} s: about "
                                  f"{_duration(took * batches)} for all {plan.n_planes} planes"
                                  + (f" x {samples} samples" if samples > 1 else "")
                                  + (f" x {len(works)} orientations" if len(works) > 1 else ""), file=sys.stderr)
            # back to array axes, cropped to the box: every orientation now has the output's layout
            full = Volume(from_planes(mean, plan), plan.output_affine)
            crop = _output_box(box, context, plan)
            index = (slice(None),) * 3 if crop is None else tuple(slice(lo, hi) for lo, hi in crop)
            means.append(full.data[index])
            if m2 is not None:
                m2s.append(from_planes(m2, plan)[index])
            if affine is None:
                affine = full.affine if crop is None else full.offset_affine([lo for lo, _ in crop])
    mean, m2 = _pool(means, m2s or None, samples)
    if intensity is not None:
        mean = intensity.denormalise(mean)
    clipped = bool(clip) and volume.data.size > 0 and float(volume.data.min()) >= 0.0
    if clipped:
        mean = np.clip(mean, float(volume.data.min()), float(volume.data.max()))
    std_volume = None
    if m2 is not None:
        std = np.sqrt(m2 / (len(means) * samples - 1))  # sample standard deviation of all samples
        if intensity is not None:
            std = std * intensity.scale  # back to the input's units (scale only, no offset)
        std_volume = volume.with_data(std, affine, mrisr_method=method, mrisr_map="std")
    seconds = time.perf_counter() - start
    logger.info("%s x%d %s-plane: %s -> %s in %.2f s, %d network evaluations", method, factor, plane,
                result_plan.input_shape, result_plan.output_shape, seconds, upsampler.network_evaluations)
    out = volume.with_data(mean, affine, mrisr_method=method, mrisr_plane=plane, mrisr_factor=factor)
    extras: dict[str, Any] = {"clipped_to_input_range": clipped}
    if box is not None:
        extras["roi"] = {"voxels": [list(b) for b in box], "context_voxels": ROI_CONTEXT}
    if spec.learned:
        extras.update({"sampler": getattr(upsampler, "sampler", None) if diffusion else None,
                       "steps": getattr(upsampler, "steps_run", None),
                       "k": getattr(upsampler, "k", None) if diffusion else None,
                       "start": "regression" if getattr(upsampler, "start_model", None) is not None else None,
                       "seed": seed if diffusion else None, "samples": samples,
                       "model": str(upsampler.model.path),  # type: ignore[attr-defined]
                       "model_name": getattr(upsampler, "model_name", None),
                       "model_sha256": getattr(upsampler, "model_sha256", None),
                       "adaptation": {k: v for k, v in (upsampler.model.config.get("adaptation") or {}).items()  # type: ignore[attr-defined]
                                      if k in ("steps", "seed", "pairs", "from_model")} or None,
                       "precision": getattr(upsampler, "precision", None),
                       "self_ensemble": (getattr(upsampler, "ensemble", 1) if getattr(upsampler, "ensemble", 1) > 1
                                         else None),
                       "aligned_jumps": True if getattr(upsampler, "aligned", False) else None,
                       "consistent_with_input": True if getattr(upsampler, "consistent", False) else None,
                       "fused_orientations": ([list(whole.plane_axes) for whole, _, _ in works]
                                              if len(works) > 1 else None)})
    provenance = _provenance(volume, method, plane, factor, extras)
    out.metadata["mrisr_provenance"] = {**provenance, "map": "mean" if samples > 1 else "image"}
    if std_volume is not None:
        std_volume.metadata["mrisr_provenance"] = {**{k: v for k, v in provenance.items()
                                                      if k != "clipped_to_input_range"},
                                                   "map": f"standard deviation of {samples} samples"}
    return UpsampleResult(volume=out, plan=result_plan, method=method, device=str(dev), seconds=seconds,
                          network_evaluations=int(upsampler.network_evaluations), std_volume=std_volume,
                          extras=extras)
