"""The per-volume method comparison behind ``pipelines/benchmark_mri.py`` (the paper's Tables 3-4,
Fig. 6): simulate the low-resolution acquisition of a high-resolution volume, run every method
through ``mrisr upsample``'s code path, and score each plane against the real volume.

Metrics per plane (normalised units, data range 2 = the reference volume's robust span): PSNR,
SSIM, the power spectrum above the LR Nyquist frequency relative to the reference's
(:func:`~mrisr.metrics.spectral_error`), the MSE split into the band the input samples and the band
above it (:func:`~mrisr.metrics.band_errors`, the error budget), consistency (the output degraded
again against the input); per reference plane its noise level (:func:`~mrisr.metrics.noise_sigma`);
per run also seconds per plane and per whole volume, network evaluations per plane.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mrisr.degradation import simulate_lowres
from mrisr.geometry import plan_upsampling
from mrisr.inference import upsample_volume
from mrisr.io import Volume
from mrisr.metrics import band_errors, noise_sigma, psnr, spectral_error, ssim
from mrisr.transforms import robust_range

__all__ = ["MethodRun", "method_runs", "matches_run", "VolumeComparison", "compare_on_volume", "gain_spread",
           "METRICS"]

#: what each run records per plane (or per volume for the timings)
METRICS = ("psnr", "ssim", "consistency_mse", "spectral_high_db", "spectral_low_db", "error_low", "error_high",
           "seconds", "volume_seconds", "network_evaluations")


@dataclass
class MethodRun:
    label: str
    method: str
    model_role: str | None = None  # which model: sr3, partdiff, regression
    options: dict[str, Any] = field(default_factory=dict)
    start_role: str | None = None  # a model whose output partdiff diffuses (--start regression)
    samples: int = 1


def method_runs(plane: str) -> list[MethodRun]:
    runs = [MethodRun("Bicubic", "bicubic"), MethodRun("B-spline", "bspline"),
            MethodRun("Regression", "regression", "regression"),
            MethodRun("Regression, self-ensemble", "regression", "regression", {"self_ensemble": True})]
    if plane == "in":
        runs += [MethodRun("SR3 (T = 100)", "sr3", "sr3"),
                 *(MethodRun(f"SR3 partial, no alignment (K = {k})", "partdiff", "sr3", {"steps": k})
                   for k in (25, 50, 75))]
    runs += [MethodRun("PartDiff, latent alignment", "partdiff", "partdiff"),
             MethodRun("PartDiff, DDIM 8 steps", "partdiff", "partdiff", {"sampler": "ddim", "steps": 8}),
             MethodRun("PartDiff, DDIM 4 steps", "partdiff", "partdiff", {"sampler": "ddim", "steps": 4}),
             MethodRun("PartDiff, DDIM 4 steps, aligned jumps", "partdiff", "partdiff",
                       {"sampler": "ddim", "steps": 4, "aligned_jumps": True}),
             MethodRun("PartDiff, DDIM 2 steps", "partdiff", "partdiff", {"sampler": "ddim", "steps": 2}),
             MethodRun("PartDiff, DDIM 4 steps, mean of 4 samples", "partdiff", "partdiff",
                       {"sampler": "ddim", "steps": 4}, samples=4)]
    # beyond the paper: diffuse the regression output to a small K instead of the LR image
    runs += [MethodRun(f"PartDiff from regression start (K = {k}), DDIM {min(k, 4)}", "partdiff", "partdiff",
                       {"sampler": "ddim", "steps": min(k, 4), "k": k, "start": "regression"}, start_role="regression")
             for k in (5, 10, 15)]
    runs += [MethodRun("PartDiff from regression start (K = 10), DDIM 4, aligned jumps", "partdiff", "partdiff",
                       {"sampler": "ddim", "steps": 4, "k": 10, "start": "regression", "aligned_jumps": True},
                       start_role="regression")]
    return runs


def matches_run(name: str, run: MethodRun, plane: str) -> bool:
    """``--methods`` entries: an exact label (case-insensitive) picks that run alone; otherwise
    a method name or a substring of labels."""
    labels = {r.label.lower() for r in method_runs(plane)}
    if name.lower() in labels:
        return name.lower() == run.label.lower()
    return name == run.method or name.lower() in run.label.lower()


@dataclass
class VolumeComparison:
    """Every run's scores on one volume.

    Attributes:
        metrics: per run label, :data:`METRICS` -> values (one per plane; timings and
            evaluations one per volume).
        planes: how many planes were scored.
        patches: the central plane of each output, the reference ("HR reference") and the input
            ("LR input", nearest neighbour on the output grid), for Fig. 6-style pictures.
        noise_sigma: per plane, the reference's estimated white-noise level (normalised units):
            no method can predict the reference's noise above the input's band.
    """

    metrics: dict[str, dict[str, list[float]]]
    planes: int
    patches: dict[str, np.ndarray]
    noise_sigma: list[float] = field(default_factory=list)


def compare_on_volume(hr: Volume, plane: str, factor: int, runs: list[MethodRun], models: dict[str, str | None],
                      slices: int = 0, crop: int = 0, device: str = "auto", seed: int = 0,
                      on_run: Any = None, precision: str = "auto") -> VolumeComparison:
    """Degrade ``hr`` as the training pairs are degraded, upsample it with every run and score the
    planes (``slices`` evenly spaced central planes, 0: all; ``crop``: the central crop of every
    axis longer than it, a CPU budget knob; ``precision``: the learned methods' network precision,
    as ``mrisr upsample --precision``). ``on_run(label, psnr, seconds_per_plane)`` is called after
    each run."""
    metrics: dict[str, dict[str, list[float]]] = {r.label: {k: [] for k in METRICS} for r in runs}
    patches: dict[str, np.ndarray] = {}
    whole_voxels = int(np.prod(hr.shape))
    if crop:  # the central crop of every axis longer than crop (stacks of slices stay whole)
        hr = hr.crop([crop] * 3, multiple=[factor if n > crop else 1 for n in hr.shape])
    lr, axis = simulate_lowres(hr, plane, factor)
    plan = plan_upsampling(lr.shape, lr.affine, plane, factor, axis)
    ref = hr.data[tuple(slice(0, n) for n in plan.output_shape)]  # identical geometry by construction
    norm = robust_range(ref)
    stack = plan.stack_axis
    n = lr.shape[stack]
    # whole-volume time: per-plane time scaled by voxels (a convolutional network's cost is
    # proportional to them; exact without crop)
    to_whole = whole_voxels / int(np.prod(hr.shape)) * n
    # the plane's axis along which the input was degraded (through-plane; in-plane: both)
    band_axis = None if plane == "in" else [a for a in range(3) if a != stack].index(axis)
    keep = np.arange(n) if not slices or slices >= n else np.linspace(n * 0.3, n * 0.7, slices).round().astype(int)
    keep = np.unique(keep)
    sub_lr = lr.with_data(np.take(lr.data, keep, axis=stack), lr.affine)
    sub_ref = np.take(ref, keep, axis=stack)
    lr_planes = np.moveaxis(sub_lr.data, stack, 0)
    ref_planes = np.moveaxis(sub_ref, stack, 0)
    for run in runs:
        opts = dict(run.options)
        if run.model_role:
            opts["model"] = models[run.model_role]
            opts["precision"] = precision
        if run.start_role:
            opts["start_model"] = models[run.start_role]
        t0 = time.perf_counter()
        res = upsample_volume(sub_lr, plane, factor, axis=axis, method=run.method, device=device, seed=seed,
                              batch_size=4, samples=run.samples, **opts)
        seconds = time.perf_counter() - t0
        est = np.moveaxis(res.volume.data, stack, 0)
        # consistency: the output degraded again vs the low-resolution input
        again, _ = simulate_lowres(res.volume, plane, factor)
        again_planes = np.moveaxis(again.data, stack, 0)
        m = metrics[run.label]
        for i in range(len(keep)):
            e, r = norm.normalise(est[i]), norm.normalise(ref_planes[i])
            m["psnr"].append(psnr(e, r, 2.0))
            m["ssim"].append(ssim(e, r, 2.0))
            spectral = spectral_error(e, r, 0.5 / factor, axis=band_axis)
            m["spectral_high_db"].append(spectral["high_db"])
            m["spectral_low_db"].append(spectral["low_db"])
            bands = band_errors(e, r, 0.5 / factor, axis=band_axis)
            m["error_low"].append(bands["low"])
            m["error_high"].append(bands["high"])
            m["consistency_mse"].append(float(np.mean((norm.normalise(again_planes[i])
                                                       - norm.normalise(lr_planes[i])) ** 2)))
        m["seconds"].append(seconds / len(keep))
        m["volume_seconds"].append(seconds / len(keep) * to_whole)
        # per plane: a batched network call runs several planes at once
        m["network_evaluations"].append(float(res.extras.get("steps") or 0))
        patches[run.label] = est[len(keep) // 2]
        if on_run is not None:
            on_run(run.label, float(np.mean(m["psnr"])), seconds / len(keep))
    patches["HR reference"] = ref_planes[len(keep) // 2]
    fy, fx = plan.plane_factors
    patches["LR input"] = np.repeat(np.repeat(lr_planes[len(keep) // 2], fy, axis=0), fx, axis=1)
    noise = [noise_sigma(norm.normalise(r)) for r in ref_planes]
    return VolumeComparison(metrics, len(keep), patches, noise)


def gain_spread(psnr_by_plane: list[float], bicubic_by_plane: list[float], series_means: dict[str, float],
                bicubic_series_means: dict[str, float]) -> dict[str, float]:
    """The gain over bicubic: mean and worst plane, worst and best series (a mean can hide a
    failing series)."""
    gain = np.array(psnr_by_plane) - np.array(bicubic_by_plane)
    series = [series_means[v] - bicubic_series_means[v] for v in series_means]
    return {"gain_db": float(gain.mean()), "gain_worst_plane_db": float(gain.min()),
            "gain_worst_series_db": float(min(series)), "gain_best_series_db": float(max(series))}
