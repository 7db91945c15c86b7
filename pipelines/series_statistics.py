"""What sets the held-out series apart from the training series: a table per series of a datalist.

For each series, on the intensities the models see (the volume's robust 0.5-99.5 percentile span
mapped to [-1, 1], mrisr.transforms.robust_range):

* spacing (and shape, in the JSON), and the raw value at the upper percentile (where the span ends);
* the spread of the normalised voxels (standard deviation, median, 75th percentile): a few
  very bright voxels compress the tissue's contrast;
* per in-plane slice, the share of the slice's power above the band an in-plane x``factor`` input
  samples (``|f_y|, |f_x| <= 0.5 / factor``; mrisr.metrics.band_errors), what a model has to
  restore, and how much of that power is the reference's white noise (its level from
  mrisr.metrics.noise_sigma), which no model can predict; powers are means over the slices,
  shares ratios of their sums.

With ``--dicom ROOT`` it also lists every DICOM series under ROOT with the acquisition fields of
its first file (scanner model, field strength, acquisition and image matrices, pixel spacing, slice
thickness, averages): the NIfTI files keep none of them.

Usage:
    python pipelines/series_statistics.py [--datalist configs/prostatex.json] [--factor 4]
        [--dicom ../shared/data/prostatex/dicom] [--out DIR]

Prints markdown tables; with ``--out`` also writes ``DIR/series_statistics.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mrisr.errors import InputError, MrisrError

REPO = Path(__file__).resolve().parents[1]

#: DICOM header fields listed with --dicom (keyword, column title)
ACQUISITION_FIELDS = (("ManufacturerModelName", "scanner"), ("MagneticFieldStrength", "T"),
                      ("AcquisitionMatrix", "acquisition matrix"), ("Rows", "rows"), ("Columns", "columns"),
                      ("PixelSpacing", "pixel mm"), ("SliceThickness", "slice mm"),
                      ("PercentSampling", "% sampling"), ("NumberOfAverages", "averages"))


def plane_statistics(plane: np.ndarray, factor: int) -> dict[str, float]:
    """The power of a (normalised) plane about its mean, the part above an x``factor`` input's band,
    and the white-noise power in that part (``sigma^2`` times the share of frequencies above it)."""
    from mrisr.metrics import band_errors, noise_sigma

    plane = np.asarray(plane, dtype=np.float64)
    centred = plane - plane.mean()
    bands = band_errors(centred, np.zeros_like(centred), 0.5 / factor)
    fy = np.abs(np.fft.fftfreq(plane.shape[0]))[:, None]
    fx = np.abs(np.fft.fftfreq(plane.shape[1]))[None, :]
    above = 1.0 - float(((fy <= 0.5 / factor + 1e-9) & (fx <= 0.5 / factor + 1e-9)).mean())
    return {"power": bands["low"] + bands["high"], "above": bands["high"],
            "noise_above": noise_sigma(plane) ** 2 * above}


def series_statistics(path: Path, factor: int) -> dict[str, Any]:
    """The statistics of one volume (module docstring); slices along its third voxel axis."""
    from mrisr.io import load_volume
    from mrisr.transforms import robust_range

    volume = load_volume(path)
    span = robust_range(volume.data)
    data = span.normalise(volume.data.astype(np.float64))
    planes = [plane_statistics(data[:, :, k], factor) for k in range(data.shape[2])]
    power, above, noise = (float(np.sum([p[key] for p in planes])) for key in ("power", "above", "noise_above"))
    median, p75 = np.percentile(data, [50, 75])
    return {"shape": list(volume.shape), "spacing_mm": [round(float(s), 4) for s in volume.spacing],
            "upper_raw": span.high, "std": float(data.std()), "median": float(median), "p75": float(p75),
            "power": power / len(planes), "above_band": above / len(planes), "share_above": above / power,
            "noise_share_of_above": noise / above if above > 0 else float("nan")}


def _plain(value: Any) -> Any:
    """A header value as JSON: None, a number, a list of numbers or a string."""
    if value is None or isinstance(value, (int, str)):
        return value
    if hasattr(value, "__iter__") and not isinstance(value, bytes):  # lists and pydicom's MultiValue
        return [float(v) for v in value]
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def dicom_acquisitions(root: Path) -> list[dict[str, Any]]:
    """Every DICOM series under ``root`` with the fields of :data:`ACQUISITION_FIELDS`."""
    import pydicom

    from mrisr.io.dicom import list_dicom_series

    rows = []
    for series in list_dicom_series(root):
        ds = pydicom.dcmread(series.files[0], stop_before_pixels=True)
        row: dict[str, Any] = {"patient": str(getattr(ds, "PatientID", "")),
                               "series": str(getattr(ds, "SeriesNumber", "")),
                               "description": series.description, "slices": len(series.files)}
        for keyword, _ in ACQUISITION_FIELDS:
            row[keyword] = _plain(getattr(ds, keyword, None))
        rows.append(row)
    return sorted(rows, key=lambda r: (r["patient"], int(r["series"]) if r["series"].isdigit() else 0))


def main(argv: list[str] | None = None) -> int:
    from mrisr.data import load_datalist

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datalist", default=str(REPO / "configs" / "prostatex.json"))
    parser.add_argument("--factor", type=int, default=4, help="the in-plane factor whose input band is used")
    parser.add_argument("--dicom", help="also list the acquisition of every DICOM series under this folder")
    parser.add_argument("--out", help="also write DIR/series_statistics.json")
    args = parser.parse_args(argv)
    if args.factor < 2:
        raise InputError(f"--factor must be at least 2, got {args.factor}")
    if args.dicom and not Path(args.dicom).is_dir():
        raise InputError(f"--dicom {args.dicom}: no such folder")
    training, validation = load_datalist(args.datalist)
    blob: dict[str, Any] = {"datalist": str(args.datalist), "factor": args.factor, "series": []}
    print(f"| split | series | spacing mm | upper percentile (raw) | std | median | 75th pct | power x 1e-3 | "
          f"above the x{args.factor} band | share above | noise share of it |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for split, entries in (("training", training), ("validation", validation)):
        for entry in entries:
            s = series_statistics(Path(entry.image), args.factor)
            s.update(split=split, image=Path(entry.image).name)
            blob["series"].append(s)
            spacing = " x ".join(f"{v:g}" for v in s["spacing_mm"])
            print(f"| {split} | {s['image']} | {spacing} | {s['upper_raw']:.0f} | {s['std']:.3f} | "
                  f"{s['median']:+.2f} | {s['p75']:+.2f} | {1e3 * s['power']:.0f} | {1e3 * s['above_band']:.1f} | "
                  f"{100 * s['share_above']:.1f} % | {100 * s['noise_share_of_above']:.1f} % |")
    if args.dicom:
        blob["dicom"] = dicom_acquisitions(Path(args.dicom))
        print()
        print("| patient | series | description | slices | " + " | ".join(t for _, t in ACQUISITION_FIELDS) + " |")
        print("|---" * (4 + len(ACQUISITION_FIELDS)) + "|")
        for r in blob["dicom"]:
            cells = [r["patient"], r["series"], r["description"], str(r["slices"])]
            cells += ["-" if r[k] is None else " x ".join(f"{v:g}" for v in r[k]) if isinstance(r[k], list)
                      else f"{r[k]:g}" if isinstance(r[k], float) else str(r[k]) for k, _ in ACQUISITION_FIELDS]
            print("| " + " | ".join(cells) + " |")
    if args.out:
        from mrisr.io.writers import write_json

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(blob, out / "series_statistics.json")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MrisrError as exc:  # bad input: one line and exit code 2, as mrisr's own commands
        print(f"series_statistics: {exc}", file=sys.stderr)
        sys.exit(2)
