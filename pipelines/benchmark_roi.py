"""`--roi` against the whole volume on the simulated through-plane benchmark (docs/benchmarks.md).

    python pipelines/benchmark_roi.py --series cor_s6 sag_s4 --json roi.json

ProstateX-0218's coronal and sagittal T2 (held out of training), 6 superior-inferior lines
averaged (the benchmark's degradation), brought back through-plane x6 twice by each method: the
whole volume, and only the central half of the two other axes (``roi``, all superior-inferior
rows). Both are scored against the original inside the box (PSNR, peak = the original's
0.5-99.5 percentile span); the box's agreement with the whole volume's output is reported as a
PSNR of one against the other (None where they are identical), and the seconds of each run.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def central_box(shape: tuple[int, int, int], keep_axis: int) -> tuple[tuple[int, int], ...]:
    """The central half of every axis but ``keep_axis``, which is kept whole."""
    return tuple((0, n) if a == keep_axis else (n // 4, n - n // 4) for a, n in enumerate(shape))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", nargs="+", default=["cor_s6", "sag_s4"], choices=["cor_s6", "sag_s4"])
    parser.add_argument("--methods", nargs="+", default=["partdiff"])
    parser.add_argument("--patient", default="ProstateX-0218")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    import numpy as np

    from mrisr.degradation import simulate_lowres
    from mrisr.inference import upsample_volume
    from mrisr.io import load_volume, write_json
    from mrisr.metrics import psnr

    command = ["python", "pipelines/benchmark_roi.py", *(sys.argv[1:] if argv is None else argv)]
    results: dict[str, object] = {"command": " ".join(command),
                                  "machine": platform.processor() or platform.machine(), "series": {}}
    for series in args.series:
        hr = load_volume(SHARED / "prostatex" / "nifti" / f"{args.patient}_t2_{series}.nii.gz")
        lr, axis = simulate_lowres(hr, "through", 6)
        box = central_box(lr.shape, axis)
        lo, hi = np.percentile(hr.data, [0.5, 99.5])
        rows: dict[str, dict[str, float]] = {}
        for method in args.methods:
            outputs = {}
            for name, roi in (("whole", None), ("roi", box)):
                start = time.perf_counter()
                res = upsample_volume(lr, "through", 6, axis=axis, method=method, device=args.device, roi=roi)
                seconds = time.perf_counter() - start
                f = res.plan.axis_factors
                inside = tuple(slice(a * k, b * k) for (a, b), k in zip(box, f))
                outputs[name] = res.volume.data if roi is not None else res.volume.data[inside]
                rows[f"{method} {name}"] = {"psnr_db": psnr(outputs[name], hr.data[inside], hi - lo),
                                            "seconds": round(seconds, 1)}
                print(f"{series} {method} {name}: {rows[f'{method} {name}']}", flush=True)
            agreement = psnr(outputs["roi"], outputs["whole"], hi - lo)
            rows[f"{method} roi vs whole"] = {"agreement_db": agreement if np.isfinite(agreement) else None,
                                              "identical": bool(np.array_equal(outputs["roi"], outputs["whole"]))}
            print(f"{series} {method} roi vs whole: {rows[f'{method} roi vs whole']}", flush=True)
        results["series"][series] = {"box": [list(b) for b in box], "rows": rows}  # type: ignore[index]
    if args.json:
        write_json(results, args.json, overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
