"""Through-plane x6 against reality: each patient's axial T2 super-resolved by several methods
and scored against the coronal and sagittal T2 of the same examination (``mrisr analyze
orthogonal``; docs/adaptation.md).

    python pipelines/orthogonal_check.py --out runs/orthogonal [--patients ProstateX-0218] [--adapt 50] \
        [--orientations]

Methods: bicubic, the shipped regression model, the shipped PartDiff model (DDIM 4) and, with
``--adapt N``, the shipped PartDiff model adapted to the axial volume itself for N steps; the
learned methods run as ``mrisr upsample`` does by default (through-plane, both in-plane
orientations averaged), and with ``--orientations`` also on the coronal planes alone and on
the sagittal planes alone. One rigid registration per reference (from the bicubic output),
applied to every method.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SERIES = {"ProstateX-0218": ("tra_s5", ["cor_s6", "sag_s4"]), "ProstateX-0000": ("tra_s4", ["cor_s5", "sag_s3"]),
          "ProstateX-0001": ("tra_s6", ["cor_s5", "sag_s4"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/orthogonal")
    parser.add_argument("--patients", nargs="+", default=["ProstateX-0218"], choices=sorted(SERIES))
    parser.add_argument("--adapt", type=int, default=0, help="also the shipped PartDiff adapted for N steps")
    parser.add_argument("--orientations", action="store_true",
                        help="also each learned method on one orientation of planes (coronal, sagittal) alone")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from mrisr.inference import upsample_volume
    from mrisr.io import load_volume, save_volume
    from mrisr.orthogonal import compare_orthogonal

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    runs = {"bicubic": {"method": "bicubic"}, "regression": {"method": "regression"},
            "partdiff": {"method": "partdiff"}}
    if args.adapt:
        runs[f"partdiff adapted {args.adapt}"] = {"method": "partdiff", "adapt": args.adapt}
    if args.orientations:
        for method in ("regression", "partdiff"):
            for swap in (False, True):
                runs[f"{method} one orientation {'B' if swap else 'A'}"] = {
                    "method": method, "fuse_orientations": False, "swap": swap}
    for patient in args.patients:
        axial_name, references = SERIES[patient]
        axial = load_volume(SHARED / "prostatex" / "nifti" / f"{patient}_t2_{axial_name}.nii.gz")
        estimates, seconds = {}, {}
        for name, options in runs.items():
            path = out / f"{patient}_{name.replace(' ', '_')}.nii.gz"
            t0 = time.perf_counter()
            if path.exists():  # resume: outputs are written atomically, so an existing one is whole
                estimates[name] = load_volume(path)
            else:
                options = dict(options)
                swap = options.pop("swap", False)
                res = upsample_volume(_swap_in_plane_axes(axial) if swap else axial, "through", 6,
                                      device=args.device, seed=args.seed, **options)
                estimates[name] = _swap_in_plane_axes(res.volume) if swap else res.volume
                save_volume(estimates[name], path)
            seconds[name] = round(time.perf_counter() - t0, 1)
            print(f"{patient} {name}: {seconds[name]} s", flush=True)
        names = _orientation_names(axial)
        if args.orientations:
            print(f"{patient}: orientation A is {names[0]} planes, B {names[1]} planes", flush=True)
        for ref_name in references:
            reference = load_volume(SHARED / "prostatex" / "nifti" / f"{patient}_t2_{ref_name}.nii.gz")
            scores = compare_orthogonal(estimates, reference, register=True, seed=args.seed)
            results[f"{patient} vs {ref_name}"] = {"scores": scores, "seconds": seconds,
                                                   "orientations": {"A": names[0], "B": names[1]}}
            for name in runs:
                r = scores[name]
                print(f"{patient} vs {ref_name} {name}: NCC {r['si_gradient_ncc']:.4f}, PSNR {r['psnr_db']:.2f}, "
                      f"SSIM {r['ssim']:.4f}", flush=True)
    (out / "orthogonal.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    lines = [f"`python pipelines/orthogonal_check.py {' '.join(argv or sys.argv[1:])}`, {platform.machine()}, "
             f"{time.strftime('%Y-%m-%d')}", "", "| axial vs reference | method | SI-gradient NCC | PSNR dB | SSIM |",
             "|---|---|---|---|---|"]
    for key, blob in results.items():
        for name in runs:
            r = blob["scores"][name]
            lines.append(f"| {key} | {name} | {r['si_gradient_ncc']:.4f} | {r['psnr_db']:.2f} | {r['ssim']:.4f} |")
    (out / "orthogonal.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'orthogonal.md'}")
    return 0


def _swap_in_plane_axes(volume):
    """The same voxels with the first two array axes exchanged: run one-orientation, the
    through-plane planes then hold the other in-plane axis."""
    import numpy as np

    from mrisr.io import Volume

    affine = volume.affine.copy()
    affine[:, [0, 1]] = affine[:, [1, 0]]
    return Volume(np.ascontiguousarray(volume.data.transpose(1, 0, 2)), affine, dict(volume.metadata))


def _orientation_names(axial) -> tuple[str, str]:
    """What the planes of orientation A (columns along array axis 0) and B (axis 1) are: a plane
    holding the left-right axis is coronal, one holding anterior-posterior sagittal."""
    plane = {"L": "coronal", "R": "coronal", "A": "sagittal", "P": "sagittal"}
    codes = axial.orientation
    return plane.get(codes[0], codes[0]), plane.get(codes[1], codes[1])


if __name__ == "__main__":
    sys.exit(main())
