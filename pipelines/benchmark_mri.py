"""The paper's MRI benchmark (Tables 3-4, Fig. 6) on held-out volumes: argument parsing and
reports around :func:`mrisr.comparison.compare_on_volume`.

For each validation volume of a datalist the script simulates the low-resolution acquisition,
runs every method through the same code path as ``mrisr upsample`` (mrisr.inference), and
compares the output with the real high-resolution volume:

* in-plane (``--plane in --factor 4``): each slice downsampled with anti-aliased bicubic
  interpolation (no blur), upsampled back;
* through-plane (``--plane through --factor 6``): coronal / sagittal volumes, every 6 lines
  along superior-inferior averaged into one thick line, upsampled back along that axis.

Methods: bicubic, bspline, regression (alone and as the mean over the plane's symmetries,
``--self-ensemble``), SR3 (ancestral, all 100 steps), partial sampling of the
SR3 model without alignment (Sec. 4.2) at K = 25, 50, 75, PartDiff with latent alignment
(Sec. 4.3, its own K) and the few-step DDIM partial sampler, the mean of 4 DDIM samples, and
(beyond the paper) PartDiff diffusing the regression model's output to K = 5, 10, 15 instead of
the LR image. Metrics per slice, averaged, with the spread of the gain over bicubic (worst
series, worst plane): PSNR and SSIM (normalised units, data range 2 = the volume's robust 0.5-99.5 percentile span),
the power spectrum above the LR Nyquist frequency relative to the reference's (dB; negative is
blur, positive invented energy; mrisr.metrics.spectral_error), consistency MSE (the output
degraded again against the low-resolution input), network
evaluations, seconds (measured on the slices run, and per whole volume by proportion).

The error budget (the second table): each method's MSE split into the band the low-resolution
input samples and the band above it (mrisr.metrics.band_errors; through-plane along the
upsampled axis only), and two reference points for the gain over bicubic, per plane then
averaged: a method that got the input's band exactly right and kept bicubic's error above it,
and the noise floor, the reference's own white noise above the input's band (its level from
mrisr.metrics.noise_sigma), which no method can predict.

Usage:
    python pipelines/benchmark_mri.py --plane in --factor 4 [--datalist configs/prostatex.json]
        [--sr3-model M] [--partdiff-model M] [--regression-model M] [--slices 6] [--crop 0] [--out DIR]
        [--methods bicubic sr3 ...] [--device auto] [--precision auto]

Models default to the shipped ones for the plane and factor. Writes ``DIR/benchmark.json``,
``DIR/benchmark.md`` and ``DIR/patches.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch

from mrisr.comparison import METRICS, compare_on_volume, gain_spread, matches_run, method_runs
from mrisr.devices import resolve_device, resolve_precision
from mrisr.errors import MrisrError
from mrisr.io import load_volume

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="network precision of the learned methods, as mrisr upsample's (auto: bf16 where it "
                        "is native, on GPUs and AVX-512 CPUs); the one used is recorded with the numbers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmark_mri")
    args = parser.parse_args(argv)
    factor = args.factor or (4 if args.plane == "in" else 6)
    dev = resolve_device(args.device)  # the device the methods will run on, as upsample_volume resolves it

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
    wanted = [r for r in method_runs(args.plane) if not args.methods or any(matches_run(m, r, args.plane)
                                                                             for m in args.methods)]
    runs = [r for r in wanted if (r.model_role is None or models[r.model_role])
            and (r.start_role is None or models[r.start_role])]
    skipped = [r.label for r in wanted if r not in runs]

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[float]]] = {r.label: {k: [] for k in METRICS} for r in runs}
    patches: dict[str, np.ndarray] = {}
    per_volume: dict[str, dict[str, float]] = {r.label: {} for r in runs}  # mean PSNR of each series
    noise: list[float] = []  # the reference's noise level per plane
    for entry in entries:
        name = Path(entry.image).name

        def report(label: str, mean_psnr: float, seconds: float, name: str = name) -> None:
            print(f"{name}: {label}: PSNR {mean_psnr:.2f} dB, {seconds:.1f} s/slice", file=sys.stderr)

        found = compare_on_volume(load_volume(entry.image), args.plane, factor, runs, models, args.slices, args.crop,
                                  args.device, args.seed, on_run=report, precision=args.precision)
        for label, values in found.metrics.items():
            for key, v in values.items():
                results[label][key] += v
            per_volume[label][name] = float(np.mean(values["psnr"]))
        noise += found.noise_sigma
        if entry is entries[0]:
            patches = found.patches

    device = "cuda: " + torch.cuda.get_device_name() if dev.type == "cuda" else \
        f"{platform.machine()} CPU ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads"
    precision = resolve_precision(args.precision, dev)
    command = shlex.join(["python", "pipelines/benchmark_mri.py", *(sys.argv[1:] if argv is None else argv)])
    summary = {
        "date": date.today().isoformat(), "command": command, "device": device, "precision": precision,
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
        if base is not None and len(base["psnr"]) == len(m["psnr"]):
            summary["methods"][label] |= gain_spread(m["psnr"], base["psnr"], per_volume[label], per_volume["Bicubic"])
    budget = error_budget(results, noise, args.plane, factor)
    summary["error_budget"] = budget
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
    lines += ["", *budget_table(budget), "",
              f"{summary['date']}, {summary['device']}, learned methods in {summary['precision']}: `{command}`"]
    table = "\n".join(lines)
    (out_dir / "benchmark.md").write_text(table + "\n")
    save_patches(out_dir / "patches.png", patches)
    print(table)
    if skipped:
        print(f"\nskipped (no model): {', '.join(skipped)}")
    print(f"\nwrote {out_dir / 'benchmark.json'}, {out_dir / 'benchmark.md'}, {out_dir / 'patches.png'}")
    return 0


def error_budget(results: dict[str, dict[str, list[float]]], noise: list[float], plane: str,
                 factor: int) -> dict:
    """Where each method's error lies, and what the bicubic baseline's error says is left (see
    the module docstring); MSE in normalised units, gains in dB over bicubic per plane, averaged."""
    # white noise's share of the frequencies above the input's band
    above = 1.0 - 1.0 / factor**2 if plane == "in" else 1.0 - 1.0 / factor
    budget: dict = {"noise_sigma": float(np.mean(noise)) if noise else None, "noise_share_above_band": above,
                    "methods": {}, "bounds_gain_db": {}}
    for label, m in results.items():
        low, high = np.array(m["error_low"]), np.array(m["error_high"])
        budget["methods"][label] = {"mse": float(np.mean(low + high)), "error_low": float(np.mean(low)),
                                    "error_high": float(np.mean(high))}
    base = results.get("Bicubic")
    if base is not None and base["error_low"] and len(noise) == len(base["error_low"]):
        b_low, b_high = np.array(base["error_low"]), np.array(base["error_high"])
        b_total = b_low + b_high
        for label, m in results.items():
            if len(m["error_low"]) == len(b_low):
                budget["methods"][label]["removed_low"] = float(1.0 - np.sum(m["error_low"]) / np.sum(b_low))
                budget["methods"][label]["removed_high"] = float(1.0 - np.sum(m["error_high"]) / np.sum(b_high))
        floor = np.maximum(np.square(noise) * above, 1e-12)
        budget["bounds_gain_db"] = {
            "input band exact, bicubic above it": float(np.mean(10 * np.log10(b_total / b_high))),
            "noise floor": float(np.mean(10 * np.log10(b_total / floor))),
        }
    return budget


def budget_table(budget: dict) -> list[str]:
    """The error budget as markdown lines."""
    lines = ["| error budget (MSE x 1e-3, normalised units) | MSE | in the input's band | above it | "
             "bicubic's error removed: in band / above |", "|---|---|---|---|---|"]
    for label, m in budget["methods"].items():
        removed = (f"{100 * m['removed_low']:.0f} % / {100 * m['removed_high']:.0f} %"
                   if "removed_low" in m else "-")
        lines.append(f"| {label} | {1e3 * m['mse']:.2f} | {1e3 * m['error_low']:.2f} | {1e3 * m['error_high']:.2f} | "
                     f"{removed} |")
    if budget["bounds_gain_db"]:
        bounds = budget["bounds_gain_db"]
        lines += ["", f"Gain over bicubic if the input's band were exact and bicubic's error above it stayed: "
                  f"{bounds['input band exact, bicubic above it']:+.2f} dB; the noise floor (the reference's white "
                  f"noise above the input's band, sigma {budget['noise_sigma']:.4f}): "
                  f"{bounds['noise floor']:+.2f} dB."]
    return lines


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
    try:
        sys.exit(main())
    except MrisrError as exc:  # bad input: one line and exit code 2, as mrisr's own commands
        print(f"benchmark_mri: {exc}", file=sys.stderr)
        sys.exit(2)
