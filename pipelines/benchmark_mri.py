"""The paper's MRI benchmark (Tables 3-4, Fig. 6) on held-out volumes.

For each validation volume of a datalist the script simulates the low-resolution acquisition,
runs every method through the same code path as ``mrisr upsample`` (mrisr.inference), and
compares the output with the real high-resolution volume:

* in-plane (``--plane in --factor 4``): each slice downsampled with anti-aliased bicubic
  interpolation (no blur), upsampled back;
* through-plane (``--plane through --factor 6``): coronal / sagittal volumes, every 6 lines
  along superior-inferior averaged into one thick line, upsampled back along that axis.

Methods: bicubic, bspline, regression, SR3 (ancestral, all 100 steps), partial sampling of the
SR3 model without alignment (Sec. 4.2) at K = 25, 50, 75, PartDiff with latent alignment
(Sec. 4.3, its own K) and the few-step DDIM partial sampler, the mean of 4 DDIM samples, and
(beyond the paper) PartDiff diffusing the regression model's output to K = 5, 10, 15 instead of
the LR image. Metrics per slice, averaged, with the spread of the gain over bicubic (worst
series, worst plane): PSNR and SSIM (normalised units, data range 2 = the volume's robust 0.5-99.5 percentile span),
the power spectrum above the LR Nyquist frequency relative to the reference's (dB; negative is
blur, positive invented energy; mrisr.metrics.spectral_error), consistency MSE (the output
degraded again against the low-resolution input), network
evaluations, seconds (measured on the slices run, and per whole volume by proportion).

Usage:
    python pipelines/benchmark_mri.py --plane in --factor 4 [--datalist configs/prostatex.json]
        [--sr3-model M] [--partdiff-model M] [--regression-model M] [--slices 6] [--crop 0] [--out DIR]
        [--methods bicubic sr3 ...] [--device auto]

Models default to the shipped ones for the plane and factor. Writes ``DIR/benchmark.json``,
``DIR/benchmark.md`` and ``DIR/patches.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrisr.errors import MrisrError
from mrisr.metrics import psnr, spectral_error, ssim
from mrisr.geometry import plan_upsampling
from mrisr.inference import upsample_volume
from mrisr.io import Volume, load_volume
from mrisr.transforms import robust_range

REPO = Path(__file__).resolve().parents[1]


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
            MethodRun("Regression", "regression", "regression")]
    if plane == "in":
        runs += [MethodRun("SR3 (T = 100)", "sr3", "sr3"),
                 *(MethodRun(f"SR3 partial, no alignment (K = {k})", "partdiff", "sr3", {"steps": k})
                   for k in (25, 50, 75))]
    runs += [MethodRun("PartDiff, latent alignment", "partdiff", "partdiff"),
             MethodRun("PartDiff, DDIM 8 steps", "partdiff", "partdiff", {"sampler": "ddim", "steps": 8}),
             MethodRun("PartDiff, DDIM 4 steps", "partdiff", "partdiff", {"sampler": "ddim", "steps": 4}),
             MethodRun("PartDiff, DDIM 2 steps", "partdiff", "partdiff", {"sampler": "ddim", "steps": 2}),
             MethodRun("PartDiff, DDIM 4 steps, mean of 4 samples", "partdiff", "partdiff",
                       {"sampler": "ddim", "steps": 4}, samples=4)]
    # beyond the paper: diffuse the regression output to a small K instead of the LR image
    runs += [MethodRun(f"PartDiff from regression start (K = {k}), DDIM {min(k, 4)}", "partdiff", "partdiff",
                       {"sampler": "ddim", "steps": min(k, 4), "k": k, "start": "regression"}, start_role="regression")
             for k in (5, 10, 15)]
    return runs


def _matches(name: str, run: MethodRun, plane: str) -> bool:
    """``--methods`` entries: an exact label (case-insensitive) picks that run alone; otherwise
    a method name or a substring of labels."""
    labels = {r.label.lower() for r in method_runs(plane)}
    if name.lower() in labels:
        return name.lower() == run.label.lower()
    return name == run.method or name.lower() in run.label.lower()


def degrade(volume: Volume, plane: str, factor: int) -> tuple[Volume, int]:
    """The simulated low-resolution volume and the axis ``mrisr upsample --axis`` must use
    (:func:`mrisr.transforms.simulate_lowres`, the training degradations on whole volumes)."""
    from mrisr.transforms import simulate_lowres

    return simulate_lowres(volume, plane, factor)


def reference_on_grid(hr: Volume, plan_shape: tuple[int, ...]) -> np.ndarray:
    """The HR volume cropped to the upsampled grid (identical geometry by construction)."""
    return hr.data[tuple(slice(0, n) for n in plan_shape)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plane", choices=["in", "through"], default="in")
    parser.add_argument("--factor", type=int, default=None)
    parser.add_argument("--datalist", default=str(REPO / "configs" / "prostatex.json"))
    parser.add_argument("--split", default="validation", choices=["training", "validation"])
    parser.add_argument("--sr3-model")
    parser.add_argument("--partdiff-model")
    parser.add_argument("--regression-model")
    parser.add_argument("--slices", type=int, default=6, help="central planes per volume (0: all)")
    parser.add_argument("--crop", type=int, default=0, help="central crop of each plane's long axes in HR "
                        "voxels (0: whole planes); a CPU budget knob, reported with the numbers")
    parser.add_argument("--methods", nargs="*", help="labels (substrings) of the methods to run; default all")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmark_mri")
    args = parser.parse_args()
    factor = args.factor or (4 if args.plane == "in" else 6)

    from mrisr.models import default_model
    from mrisr.data import load_datalist

    models: dict[str, str | None] = {"sr3": args.sr3_model, "partdiff": args.partdiff_model,
                                     "regression": args.regression_model}
    for role in models:
        if models[role] is None:
            try:
                models[role] = str(default_model(role, args.plane, factor).path)
            except MrisrError:
                models[role] = None
    train, val = load_datalist(args.datalist)
    entries = val if args.split == "validation" else train
    if args.plane == "through":
        entries = [e for e in entries if e.plane in (None, "cor", "sag")]
    wanted = [r for r in method_runs(args.plane) if not args.methods or any(_matches(m, r, args.plane)
                                                                             for m in args.methods)]
    runs = [r for r in wanted if (r.model_role is None or models[r.model_role])
            and (r.start_role is None or models[r.start_role])]
    skipped = [r.label for r in wanted if r not in runs]

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[float]]] = {r.label: {"psnr": [], "ssim": [], "consistency_mse": [],
                                                            "spectral_high_db": [], "spectral_low_db": [],
                                                            "seconds": [], "volume_seconds": [],
                                                            "network_evaluations": []} for r in runs}
    patches: dict[str, np.ndarray] = {}
    per_volume: dict[str, dict[str, float]] = {r.label: {} for r in runs}  # mean PSNR of each series
    for entry in entries:
        hr = load_volume(entry.image)
        whole_voxels = int(np.prod(hr.shape))
        if args.crop:  # the central crop of every axis longer than --crop (stacks of slices stay whole)
            hr = hr.crop([args.crop] * 3, multiple=[factor if n > args.crop else 1 for n in hr.shape])
        lr, axis = degrade(hr, args.plane, factor)
        plan = plan_upsampling(lr.shape, lr.affine, args.plane, factor, axis)
        ref = reference_on_grid(hr, plan.output_shape)
        norm = robust_range(ref)
        stack = plan.stack_axis
        n = lr.shape[stack]
        # whole-volume time: per-plane time scaled by voxels (a convolutional network's cost is
        # proportional to them; exact without --crop)
        to_whole = whole_voxels / int(np.prod(hr.shape)) * n
        keep = np.arange(n) if not args.slices or args.slices >= n else \
            np.linspace(n * 0.3, n * 0.7, args.slices).round().astype(int)
        keep = np.unique(keep)
        sub_lr = lr.with_data(np.take(lr.data, keep, axis=stack), lr.affine)
        sub_ref = np.take(ref, keep, axis=stack)
        for run in runs:
            opts = dict(run.options)
            if run.model_role:
                opts["model"] = models[run.model_role]
            if run.start_role:
                opts["start_model"] = models[run.start_role]
            t0 = time.perf_counter()
            res = upsample_volume(sub_lr, args.plane, factor, axis=axis, method=run.method, device=args.device,
                                  seed=args.seed, batch_size=4, samples=run.samples, **opts)
            seconds = time.perf_counter() - t0
            est = res.volume.data
            # consistency: the output degraded again vs the low-resolution input
            again, _ = degrade(res.volume.with_data(est, res.volume.affine), args.plane, factor)
            lr_planes = np.moveaxis(sub_lr.data, stack, 0)
            again_planes = np.moveaxis(again.data, stack, 0)
            for i in range(len(keep)):
                e = norm.normalise(np.moveaxis(est, stack, 0)[i])
                r = norm.normalise(np.moveaxis(sub_ref, stack, 0)[i])
                results[run.label]["psnr"].append(psnr(e, r, 2.0))
                results[run.label]["ssim"].append(ssim(e, r, 2.0))
                # through-plane: rows (the plane's first axis) are the upsampled slice axis
                spectral = spectral_error(e, r, 0.5 / factor, axis=None if args.plane == "in" else 0)
                results[run.label]["spectral_high_db"].append(spectral["high_db"])
                results[run.label]["spectral_low_db"].append(spectral["low_db"])
                results[run.label]["consistency_mse"].append(float(np.mean(
                    (norm.normalise(again_planes[i]) - norm.normalise(lr_planes[i])) ** 2)))
            per_volume[run.label][Path(entry.image).name] = float(np.mean(results[run.label]["psnr"][-len(keep):]))
            results[run.label]["seconds"].append(seconds / len(keep))
            results[run.label]["volume_seconds"].append(seconds / len(keep) * to_whole)
            # per plane: a batched network call runs several planes at once
            results[run.label]["network_evaluations"].append(float(res.extras.get("steps") or 0))
            if entry is entries[0]:
                mid = np.moveaxis(est, stack, 0)[len(keep) // 2]
                patches[run.label] = mid
            print(f"{Path(entry.image).name}: {run.label}: PSNR {np.mean(results[run.label]['psnr'][-len(keep):]):.2f}"
                  f" dB, {seconds / len(keep):.1f} s/slice", file=sys.stderr)
        if entry is entries[0]:
            patches["HR reference"] = np.moveaxis(sub_ref, stack, 0)[len(keep) // 2]
            lr_mid = np.moveaxis(sub_lr.data, stack, 0)[len(keep) // 2]
            fy, fx = plan.plane_factors
            patches["LR input"] = np.repeat(np.repeat(lr_mid, fy, axis=0), fx, axis=1)

    device = "cuda: " + torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available() else \
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    summary = {
        "date": date.today().isoformat(), "command": "python " + " ".join(sys.argv), "device": device,
        "plane": args.plane, "factor": factor, "datalist": args.datalist, "split": args.split,
        "volumes": [e.image for e in entries], "slices_per_volume": args.slices, "crop": args.crop,
        "models": models,
        "skipped_methods": skipped,
        "methods": {label: {k: float(np.mean(v)) for k, v in m.items()} | {"n_slices": len(m["psnr"])}
                    for label, m in results.items()},
        "per_volume_psnr": per_volume,
    }
    # the spread: gain over bicubic per plane and per series (a mean can hide a failing series)
    base = results.get("Bicubic")
    for label, m in results.items():
        if base is None or len(base["psnr"]) != len(m["psnr"]):
            continue
        gain = np.array(m["psnr"]) - np.array(base["psnr"])
        series = [per_volume[label][v] - per_volume["Bicubic"][v] for v in per_volume[label]]
        summary["methods"][label] |= {"gain_db": float(gain.mean()), "gain_worst_plane_db": float(gain.min()),
                                      "gain_worst_series_db": float(min(series)),
                                      "gain_best_series_db": float(max(series))}
    (out_dir / "benchmark.json").write_text(json.dumps(summary, indent=2) + "\n")
    per = "cropped slice" if args.crop else "slice"
    lines = [f"| method | PSNR dB | gain dB: mean / worst series / worst plane | SSIM | spectrum above LR Nyquist dB | "
             f"consistency MSE | network evals / slice | s / {per} | s / whole volume |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, m in summary["methods"].items():
        gain = (f"{m['gain_db']:+.2f} / {m['gain_worst_series_db']:+.2f} / {m['gain_worst_plane_db']:+.2f}"
                if "gain_db" in m else "-")
        lines.append(f"| {label} | {m['psnr']:.2f} | {gain} | {m['ssim']:.4f} | {m['spectral_high_db']:+.2f} | "
                     f"{m['consistency_mse']:.2e} | "
                     f"{m['network_evaluations']:.0f} | {m['seconds']:.2f} | {m['volume_seconds']:.0f} |")
    table = "\n".join(lines)
    (out_dir / "benchmark.md").write_text(table + "\n")
    save_patches(out_dir / "patches.png", patches)
    print(table)
    if skipped:
        print(f"\nskipped (no model): {', '.join(skipped)}")
    print(f"\nwrote {out_dir / 'benchmark.json'}, {out_dir / 'benchmark.md'}, {out_dir / 'patches.png'}")
    return 0


def save_patches(path: Path, panels: dict[str, np.ndarray], size: int = 96) -> None:
    """Fig. 6 style: the same enlarged central patch of each method's output."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ["LR input", *[k for k in panels if k not in ("LR input", "HR reference")], "HR reference"]
    order = [k for k in order if k in panels]
    ref = panels.get("HR reference")
    lo, hi = (np.percentile(ref, [0.5, 99.5]) if ref is not None else (None, None))
    cols = min(5, len(order))
    rows = int(np.ceil(len(order) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, order):
        img = panels[name]
        h, w = img.shape
        s = min(size, h, w)
        top, left = (h - s) // 2, (w - s) // 2
        ax.imshow(img[top:top + s, left:left + s], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(name, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
