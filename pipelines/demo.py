"""`make demo`: through-plane x6 super-resolution with the shipped models.

The demo volume is a real high-resolution MRI whose superior-inferior axis is made 6 times
coarser by averaging every 6 lines, as an axial acquisition with thick slices samples it;
``mrisr upsample --plane through --factor 6`` (its default: the shipped regression model, the
most accurate; and ``--method partdiff``, the paper's method, with its shipped model) brings it
back onto exactly the original grid (the cell-centred convention), so the original is a true
reference. It is, in order of preference:

* ProstateX-0218's sagittal T2 from ../shared/data (the patient held out of training; 0.625 mm
  in-plane, so the thick slices are 3.75 mm, like the 3.6 mm of the paper's axial series);
* otherwise the MNI ICBM152 T1 template from nilearn's package data (brain T1: outside the
  prostate T2 domain the models were trained on; classical methods are the fairer bar there).

Both run exactly as ``mrisr upsample`` runs them (PartDiff with its shipped model's sampler: 4
DDIM steps from the partial start). To finish within about two minutes on a 2-core CPU whatever the
volume, the demo takes a central 192 x 192 voxel crop of at most 24 planes; ``--full`` runs the
whole volume.

Usage: python pipelines/demo.py [--output-dir demo_output] [--volume PATH] [--full]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mrisr.degradation import thick_slice_volume
from mrisr.metrics import psnr, ssim
from mrisr.geometry import downsampled_affine, plan_upsampling, superior_inferior_axis
from mrisr.io import load_volume, save_volume

FACTOR = 6
REPO = Path(__file__).resolve().parents[1]
PROSTATEX_SAG = REPO.parent / "shared" / "data" / "prostatex" / "nifti" / "ProstateX-0218_t2_sag_s4.nii.gz"
CROP, MAX_PLANES = 192, 24


def mni152_path() -> Path | None:
    """The T1 template inside nilearn's package data (found without importing nilearn)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    return path if path.is_file() else None


def save_comparison(path: Path, panels: dict[str, np.ndarray], reference: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.8))
    lo, hi = np.percentile(panels[reference], [0.5, 99.5])
    for ax, (title, img) in zip(axes, panels.items()):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle("middle plane, superior at the top; PSNR / SSIM against the reference (the original volume)",
                 fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def display_plane(data: np.ndarray, stack: int, si: int, superior_up: bool) -> np.ndarray:
    """The middle plane across the stack axis, superior at the top of the page."""
    plane = np.take(data, data.shape[stack] // 2, axis=stack)
    rows_axis = [a for a in range(3) if a != stack].index(si)
    plane = plane if rows_axis == 0 else plane.T
    return plane[::-1] if superior_up else plane


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="demo_output", type=Path)
    parser.add_argument("--volume", type=Path, help="a high-resolution volume to use instead")
    parser.add_argument("--full", action="store_true", help="the whole volume instead of a central crop")
    args = parser.parse_args()
    out_dir: Path = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    source = args.volume or (PROSTATEX_SAG if PROSTATEX_SAG.is_file() else mni152_path())
    if source is None:
        sys.exit("demo: neither ../shared/data nor nilearn's MNI152 template is here; run `make demo` "
                 "(it installs the demo extras) or pass --volume")
    is_mni = source.name.startswith("mni_icbm152")
    reference = load_volume(source)
    si = superior_inferior_axis(reference.affine)
    superior_up = bool(reference.affine[2, si] > 0)  # the index grows superior: flip for display
    # whole thick slices only, then (fast mode) a central crop
    reference = reference.crop([None] * 3, multiple=[FACTOR if a == si else 1 for a in range(3)])
    if not args.full:
        reference = reference.crop([CROP] * 3, multiple=[FACTOR if a == si else 1 for a in range(3)])
    # the axis the planes stack along, from the thick-slice geometry (no need to average yet)
    thick_factors = tuple(FACTOR if a == si else 1 for a in range(3))
    thick_shape = tuple(n // f for n, f in zip(reference.shape, thick_factors))
    stack = plan_upsampling(thick_shape, downsampled_affine(reference.affine, thick_factors), "through", FACTOR,
                            si).stack_axis
    if not args.full:
        reference = reference.crop([MAX_PLANES if a == stack else None for a in range(3)])
    thick = thick_slice_volume(reference, si, FACTOR)
    name = "mni152_t1" if is_mni else source.name.split(".")[0]
    thick_path = out_dir / f"{name}_thick.nii.gz"
    save_volume(thick, thick_path, overwrite=True)
    print(f"volume: {source}" + ("  (brain T1: outside the prostate T2 training domain)" if is_mni else ""))
    print(f"input:  {thick_path}  ({' x '.join(map(str, thick.shape))} voxels of "
          f"{' x '.join(f'{s:.3g}' for s in thick.spacing)} mm: every {FACTOR} superior-inferior lines averaged"
          + ("" if args.full else f"; central crop of {CROP} voxels and {MAX_PLANES} planes for a ~2 min CPU run")
          + ")")

    runs = {"bicubic": ["--method", "bicubic"], "bspline": ["--method", "bspline"],
            "regression": [],  # the default of `mrisr upsample` (--method auto)
            "partdiff": ["--method", "partdiff"]}
    results = {}
    panels = {f"input ({FACTOR}x thicker)": display_plane(np.repeat(thick.data, FACTOR, axis=si), stack, si, superior_up)}
    data_range = float(np.percentile(reference.data, 99.5) - np.percentile(reference.data, 0.5))
    ref_planes = np.moveaxis(reference.data, stack, 0)
    for method, extra in runs.items():
        out = out_dir / f"{name}_{method}_x{FACTOR}.nii.gz"
        report = out_dir / f"{name}_{method}_x{FACTOR}.json"
        cmd = [sys.executable, "-m", "mrisr", "upsample", str(thick_path), "--plane", "through",
               "--factor", str(FACTOR), "--axis", str(si), *extra, "-o", str(out), "--report", str(report),
               "--overwrite"]
        print("$ mrisr " + " ".join(cmd[3:]), flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd)
        if done.returncode != 0:
            return done.returncode
        up = load_volume(out)
        blob = json.loads(report.read_text())
        # the cell-centred output grid is the original grid, voxel for voxel
        up_planes = np.moveaxis(up.data, stack, 0)
        results[method] = {
            "psnr_db": psnr(up.data, reference.data, data_range),
            "ssim": float(np.mean([ssim(u, r, data_range) for u, r in zip(up_planes, ref_planes)])),
            "affine_error_mm": float(np.abs(up.affine - reference.affine).max()),
            "network_evaluations": blob["network_evaluations"],
            "seconds_with_startup": time.perf_counter() - start,
            **({"sampler": blob.get("sampler"), "steps": blob.get("steps")} if method == "partdiff" else {}),
        }
        label = f"{method}: {results[method]['psnr_db']:.2f} dB, SSIM {results[method]['ssim']:.3f}"
        panels[label] = display_plane(up.data, stack, si, superior_up)
    panels["reference"] = display_plane(reference.data, stack, si, superior_up)

    png = out_dir / "comparison.png"
    save_comparison(png, panels, "reference")
    (out_dir / "metrics.json").write_text(json.dumps({"volume": str(source), "full": args.full, **results},
                                                     indent=2) + "\n")
    print("\nagainst the original (data range: 0.5-99.5 percentiles):")
    print(f"{'method':<10} {'PSNR dB':>8} {'SSIM':>7} {'grid error mm':>14} {'seconds':>8}")
    for method, r in results.items():
        print(f"{method:<10} {r['psnr_db']:8.2f} {r['ssim']:7.4f} {r['affine_error_mm']:14.2e} "
              f"{r['seconds_with_startup']:8.1f}")
    bic = results["bicubic"]
    pd, reg = results["partdiff"], results["regression"]
    print(f"\nregression (the default, one network evaluation per plane) vs bicubic: "
          f"{reg['psnr_db'] - bic['psnr_db']:+.2f} dB PSNR, {reg['ssim'] - bic['ssim']:+.4f} SSIM")
    print(f"partdiff ({pd['sampler']}, {pd['steps']} network evaluations per plane) vs bicubic: "
          f"{pd['psnr_db'] - bic['psnr_db']:+.2f} dB PSNR, {pd['ssim'] - bic['ssim']:+.4f} SSIM")
    print(f"outputs:    {out_dir.resolve()}/{name}_<method>_x{FACTOR}.nii.gz")
    print(f"comparison: {png.resolve()} (middle plane: input, methods, reference)")
    if not args.full:
        print("the whole volume: .venv/bin/python pipelines/demo.py --full")
    print("your own scans: .venv/bin/mrisr upsample SCAN --plane through --factor 6 "
          "(or `source .venv/bin/activate`, then mrisr ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
