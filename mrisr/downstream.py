"""Downstream evaluation: what super-resolution does to zonal segmentation (PartDiff Sec. 5.5.1,
Fig. 14-15).

For each volume and factor: the low-resolution volume is simulated with the library's
degradation (:func:`mrisr.degradation.simulate_lowres`), brought back to the original grid by
each method, and the original and every output are segmented by the same segmenter. Dice per
zone (PZ, TZ, whole gland) is measured against the datalist's label map where there is one,
else against the segmenter's result on the original volume (the output says which).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrisr.data import DataEntry
from mrisr.errors import ConfigError, MrisrError
from mrisr.io import Volume, load_volume, write_bytes, write_json
from mrisr.segmentation import ZONES, Segmenter, resample_labels, zone_dice
from mrisr.transforms import ROBUST_PERCENTILES

__all__ = ["SegmentationRow", "SegmentationEvaluation", "evaluate_segmentation", "evaluate_segmenters",
           "write_segmentation_report", "spread_table"]

logger = logging.getLogger(__name__)

ORIGINAL = "original"  # the method name of the high-resolution volume itself (the upper bound)


@dataclass
class SegmentationRow:
    volume: str
    factor: int
    method: str
    zone: str
    dice: float
    reference: str  # "label" or "segmenter on the original"


@dataclass
class SegmentationEvaluation:
    rows: list[SegmentationRow] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (volume, reason)
    skipped: list[str] = field(default_factory=list)  # method x factor without a model, once each
    examples: list[dict[str, Any]] = field(default_factory=list)  # one slice of the first volume
    plane: str = "in"
    seconds: float = 0.0
    samples: int = 1  # the stochastic methods' outputs are the mean of this many samples

    def mean(self, factor: int, method: str, zone: str) -> tuple[float, int]:
        values = [r.dice for r in self.rows if (r.factor, r.method, r.zone) == (factor, method, zone)
                  and not math.isnan(r.dice)]
        return (float(np.mean(values)) if values else float("nan")), len(values)


def _label(entry: DataEntry, hr: Volume) -> np.ndarray | None:
    """The datalist's label map on the image's grid, or None where the entry has none (the
    reference is then each segmenter's result on the original)."""
    if entry.label is None:
        return None
    from mrisr.segmentation import apply_label_map

    label = load_volume(entry.label, nonfinite="zero")
    labels = apply_label_map(np.rint(label.data), {})
    if labels.shape != hr.shape or not np.allclose(label.affine, hr.affine, atol=1e-4):
        labels = resample_labels(labels, label.affine, hr.shape, hr.affine)
    return labels


def _on_grid(reference: np.ndarray, hr: Volume, out: Volume) -> np.ndarray:
    """The reference labels on an output's grid: a crop of the original grid by construction
    (the low-resolution volume was cut to a multiple of the factor), resampled otherwise."""
    crop = reference[tuple(slice(0, n) for n in out.shape)]
    if crop.shape == out.shape and np.allclose(out.affine, hr.affine, atol=1e-4):
        return crop
    return resample_labels(reference, hr.affine, out.shape, out.affine)


def _example(hr: Volume, reference: np.ndarray, outputs: dict[str, tuple[Volume, np.ndarray]]) -> dict[str, Any]:
    """The slice with the most gland (along the slice axis), of the original and every output."""
    from mrisr.geometry import slice_axis

    axis = slice_axis(hr.affine)
    area = np.moveaxis(reference > 0, axis, 0).reshape(reference.shape[axis], -1).sum(1)
    k = int(np.argmax(area))
    take = (lambda a: np.take(a, k, axis=axis))  # noqa: E731
    panels = {name: (take(vol.data), take(mask)) for name, (vol, mask) in outputs.items() if k < vol.shape[axis]}
    return {"slice": k, "axis": axis, "reference": take(reference), "panels": panels}


def evaluate_segmentation(entries: Sequence[DataEntry], segmenter: Segmenter, plane: str, factors: Sequence[int],
                          methods: Sequence[str], device: str = "cpu", seed: int = 0, batch_size: int = 8,
                          progress: Callable[[str], None] | None = None, samples: int = 1) -> SegmentationEvaluation:
    """Dice of the segmenter on each method's output, per volume, factor and zone.

    ``samples > 1``: the stochastic methods (the diffusion samplers) are segmented on the mean of
    that many samples (closer to the posterior mean); the others run once, as they give one result.

    A volume that fails (unreadable image or label, a segmenter error) is recorded in
    ``failures`` and skipped; a learned method without a model for a factor is skipped for that
    factor (``skipped``) and is not a failure.
    """
    return evaluate_segmenters(entries, {"segmenter": segmenter}, plane, factors, methods, device=device, seed=seed,
                               batch_size=batch_size, progress=progress, samples=samples)["segmenter"]


def evaluate_segmenters(entries: Sequence[DataEntry], segmenters: Mapping[str, Segmenter], plane: str,
                        factors: Sequence[int], methods: Sequence[str], device: str = "cpu", seed: int = 0,
                        batch_size: int = 8, progress: Callable[[str], None] | None = None,
                        samples: int = 1) -> dict[str, SegmentationEvaluation]:
    """:func:`evaluate_segmentation` for several segmenters at once, one evaluation per name: each
    volume is degraded and upsampled once per factor and method, and every segmenter segments the
    same outputs (a segmenter trained on two patients is a noisy instrument, docs/downstream.md;
    the upsampling, not the segmenting, is the cost).

    A volume that fails for one segmenter (or before any segmenting) is recorded in every
    evaluation's ``failures`` and skipped for all of them, so their rows cover the same volumes.
    """
    from mrisr.inference import get_method, upsample_volume
    from mrisr.degradation import simulate_lowres

    if not segmenters:
        raise ConfigError("no segmenter given")
    for m in methods:
        get_method(m)  # unknown names fail before any work
    results = {name: SegmentationEvaluation(plane=plane, samples=samples) for name in segmenters}
    t0 = time.perf_counter()
    for n, entry in enumerate(entries):
        name = Path(entry.image).name
        try:
            hr = load_volume(entry.image, series=entry.series)
            label_map = _label(entry, hr)  # read once, whatever the number of segmenters
            ref_name = "segmenter on the original" if label_map is None else "label"
            per: dict[str, dict[str, Any]] = {}
            for label, segmenter in segmenters.items():
                hr_labels = segmenter(hr)
                reference = hr_labels if label_map is None else label_map
                per[label] = {"reference": reference,
                              "rows": [SegmentationRow(name, 1, ORIGINAL, z, d, ref_name)
                                       for z, d in zone_dice(hr_labels, reference).items()],
                              "examples": {ORIGINAL: (hr, hr_labels)}}
            skipped: list[str] = []
            for factor in factors:
                lr, axis = simulate_lowres(hr, plane, factor)
                for method in methods:
                    if progress is not None:
                        progress(f"{name}: x{factor} {method}")
                    try:
                        n_samples = samples if get_method(method).stochastic else 1
                        out = upsample_volume(lr, plane, factor, axis=axis, method=method, device=device, seed=seed,
                                              batch_size=batch_size, samples=n_samples).volume
                    except ConfigError as exc:
                        if get_method(method).learned and "no default" in str(exc):
                            skipped.append(f"{method} x{factor} (no shipped model serves --plane {plane} "
                                           f"--factor {factor})")
                            continue
                        raise
                    shared_ref = None if label_map is None else _on_grid(label_map, hr, out)
                    for label, segmenter in segmenters.items():
                        labels = segmenter(out)
                        ref = _on_grid(per[label]["reference"], hr, out) if shared_ref is None else shared_ref
                        per[label]["rows"] += [SegmentationRow(name, factor, method, z, d, ref_name)
                                               for z, d in zone_dice(labels, ref).items()]
                        if n == 0:
                            per[label]["examples"][f"{method} x{factor}"] = (out, labels)
            for label, result in results.items():
                result.rows += per[label]["rows"]
                result.skipped += [note for note in skipped if note not in result.skipped]
                if n == 0:
                    result.examples.append(_first_example(name, ref_name, hr, factors, per[label]))
        except (MrisrError, OSError, ValueError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            for result in results.values():
                result.failures.append((entry.image, reason))
            logger.warning("skipping %s: %s", entry.image, reason)
    for result in results.values():
        result.seconds = time.perf_counter() - t0
    return results


def _first_example(name: str, ref_name: str, hr: Volume, factors: Sequence[int],
                   per: dict[str, Any]) -> dict[str, Any]:
    """The figure of the first volume: the factor at which the most methods ran (the largest of ties)."""
    example_outputs = per["examples"]
    counts = {f: sum(key.endswith(f" x{f}") for key in example_outputs) for f in factors}
    shown = max(factors, key=lambda f: (counts[f], f)) if factors else None
    chosen = {key: value for key, value in example_outputs.items()
              if key == ORIGINAL or key.endswith(f" x{shown}")}
    return {"volume": name, "reference_name": ref_name,
            "codes": hr.orientation, **_example(hr, per["reference"], chosen)}


def _atomic_text(path: Path, text: str) -> None:
    write_bytes(text.encode("utf-8"), path)


def _atomic_figure(path: Path, fig: Any) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    write_bytes(buf.getvalue(), path)


def write_segmentation_report(result: SegmentationEvaluation, out_dir: str | os.PathLike, segmenter_name: str,
                              command: str = "") -> dict[str, Path]:
    """``dice.csv`` (every volume x factor x method x zone), ``dice.md`` (means), ``dice.json``,
    ``dice_vs_factor_{PZ,TZ,gland}.png`` (Fig. 14) and ``examples.png`` (Fig. 15)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["volume", "factor", "method", "zone", "dice", "reference"])
    for r in result.rows:
        writer.writerow([r.volume, r.factor, r.method, r.zone, f"{r.dice:.4f}", r.reference])
    paths["csv"] = out / "dice.csv"
    _atomic_text(paths["csv"], buf.getvalue())

    factors = sorted({r.factor for r in result.rows if r.method != ORIGINAL})
    methods = [m for m in dict.fromkeys(r.method for r in result.rows) if m != ORIGINAL]
    references = sorted({r.reference for r in result.rows})
    lines = [f"Dice of `{segmenter_name}` on each method's output ({result.plane}-plane), mean over volumes; "
             f"reference: {', '.join(references) or 'none'}. `original`: the segmenter on the original "
             "volume (the upper bound when the reference is a label)."
             + (f" The diffusion methods' outputs are the mean of {result.samples} samples."
                if result.samples > 1 else ""),
             ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += ["| factor | method | " + " | ".join(f"Dice {z}" for z in ZONES) + " | volumes |",
              "|---|---|" + "---|" * len(ZONES) + "---|"]
    row_keys = [(1, ORIGINAL)] + [(f, m) for f in factors for m in methods]
    for f, m in row_keys:
        cells, count = [], 0
        for z in ZONES:
            mean, count = result.mean(f, m, z)
            cells.append("n/a" if math.isnan(mean) else f"{mean:.3f}")
        if count or any(c != "n/a" for c in cells):
            lines.append(f"| {'-' if m == ORIGINAL else f'x{f}'} | {m} | " + " | ".join(cells) + f" | {count} |")
    if result.skipped:
        lines += ["", "Not run (no model for that factor): " + "; ".join(result.skipped)]
    if result.failures:
        lines += ["", "Failed volumes: " + "; ".join(f"{Path(p).name}: {why}" for p, why in result.failures)]
    paths["markdown"] = out / "dice.md"
    _atomic_text(paths["markdown"], "\n".join(lines) + "\n")

    summary = {zone: {m: {str(f): result.mean(f, m, zone)[0] for f in factors} for m in methods} for zone in ZONES}
    paths["json"] = write_json({"plane": result.plane, "segmenter": segmenter_name, "references": references,
                                "mean_dice": summary,
                                "original": {z: result.mean(1, ORIGINAL, z)[0] for z in ZONES},
                                "samples": result.samples, "skipped": result.skipped,
                                "failures": [{"volume": p, "reason": why} for p, why in result.failures],
                                "seconds": round(result.seconds, 1)}, out / "dice.json")

    for zone in ZONES:
        fig, ax = plt.subplots(figsize=(5.2, 3.8))
        for m in methods:
            xs = [f for f in factors if not math.isnan(result.mean(f, m, zone)[0])]
            if xs:
                ax.plot(xs, [result.mean(f, m, zone)[0] for f in xs], "o-", label=m)
        original = result.mean(1, ORIGINAL, zone)[0]
        if not math.isnan(original):
            ax.axhline(original, color="k", ls="--", lw=1, label="original")
        ax.set_xscale("log", base=2)
        ax.set_xticks(factors or [1])
        ax.set_xticklabels([f"x{f}" for f in factors] or ["x1"])
        ax.set_xlabel(f"{result.plane}-plane upsampling factor")
        ax.set_ylabel(f"Dice {zone}")
        ax.set_title(f"{zone}: segmentation of super-resolved volumes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths[f"png_{zone}"] = out / f"dice_vs_factor_{zone}.png"
        _atomic_figure(paths[f"png_{zone}"], fig)
        plt.close(fig)

    if result.examples:
        ex = result.examples[0]
        panels = ex["panels"]
        fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
        from mrisr.preview import _display_axes

        _, _, transpose, flips = _display_axes(tuple(ex["codes"]), ex["axis"])

        def show(a: np.ndarray) -> np.ndarray:  # radiological orientation, as --preview shows it
            a = a.T if transpose else a
            for dim, flip in enumerate(flips):
                a = np.flip(a, dim) if flip else a
            return a

        for ax, (title, (image, mask)) in zip(axes[0], panels.items()):
            lo, hi = np.percentile(image, ROBUST_PERCENTILES)
            ax.imshow(show(image), cmap="gray", vmin=lo, vmax=hi)
            for code, colour in ((1, "#ffcc00"), (2, "#33ccff")):
                if (mask == code).any():
                    ax.contour(show(mask == code), levels=[0.5], colors=colour, linewidths=0.8)
            ref = ex["reference"]
            if ref.shape == mask.shape:
                ax.contour(show(ref > 0), levels=[0.5], colors="#ff3333", linewidths=0.6, linestyles="dotted")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        fig.suptitle(f"{ex['volume']}, slice {ex['slice']}: PZ yellow, TZ blue, reference gland red dotted "
                     f"({ex['reference_name']})", fontsize=8)
        fig.tight_layout()
        paths["examples"] = out / "examples.png"
        _atomic_figure(paths["examples"], fig)
        plt.close(fig)
    return paths


def spread_table(per_segmenter: Mapping[str, dict]) -> str:
    """Markdown table of the mean Dice over segmenters, with the lowest and highest, from the
    ``dice.json`` of each segmenter's ``mrisr evaluate segmentation`` run on one case. Rows: the
    original, then each factor and method in the order of the first run; a method a run skipped
    (NaN) is left out of that row's statistics."""
    runs = list(per_segmenter.values())
    zones = list(runs[0]["original"])

    def cell(values: list[float]) -> str:
        v = np.array([x for x in values if np.isfinite(x)], dtype=float)
        return "-" if v.size == 0 else f"{v.mean():.3f} [{v.min():.3f}, {v.max():.3f}]"

    lines = ["| factor | method | " + " | ".join(f"Dice {z}" for z in zones) + " |",
             "|---|---|" + "---|" * len(zones),
             "| - | original | " + " | ".join(cell([r["original"][z] for r in runs]) for z in zones) + " |"]
    methods = runs[0]["mean_dice"][zones[0]]
    factors = sorted({f for m in methods.values() for f in m}, key=float)
    for factor in factors:
        for method in methods:
            values = {z: [r["mean_dice"][z].get(method, {}).get(factor, float("nan")) for r in runs] for z in zones}
            if all(cell(v) == "-" for v in values.values()):
                continue
            lines.append(f"| x{factor} | {method} | " + " | ".join(cell(values[z]) for z in zones) + " |")
    return "\n".join(lines) + "\n"
