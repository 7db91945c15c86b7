"""Through-plane x6 against reality: each patient's axial T2 super-resolved by several methods
and scored against the coronal and sagittal T2 of the same examination (``mrisr analyze
orthogonal``; docs/adaptation.md).

    python pipelines/orthogonal_check.py --out runs/orthogonal [--patients ProstateX-0218] [--adapt 50]

Methods: bicubic, the shipped regression model, the shipped PartDiff model (DDIM 4) and, with
``--adapt N``, the shipped PartDiff model adapted to the axial volume itself for N steps. One
rigid registration per reference (from the bicubic output), applied to every method.
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
                res = upsample_volume(axial, "through", 6, device=args.device, seed=args.seed, **options)
                save_volume(res.volume, path)
                estimates[name] = res.volume
            seconds[name] = round(time.perf_counter() - t0, 1)
            print(f"{patient} {name}: {seconds[name]} s", flush=True)
        for ref_name in references:
            reference = load_volume(SHARED / "prostatex" / "nifti" / f"{patient}_t2_{ref_name}.nii.gz")
            scores = compare_orthogonal(estimates, reference, register=True, seed=args.seed)
            results[f"{patient} vs {ref_name}"] = {"scores": scores, "seconds": seconds}
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


if __name__ == "__main__":
    sys.exit(main())
