"""The downstream demonstration of docs/downstream.md: zonal-segmentation Dice against the
in-plane upsampling factor on the shared ProstateX data (PartDiff Sec. 5.5.1, Fig. 14-15).

    python pipelines/train_zonal_segmenter.py --out runs/zonal_segmenter
    python pipelines/zonal_segmentation_eval.py --segmenters runs/zonal_segmenter --out runs/zonal_eval

Three runs of ``mrisr evaluate segmentation``, all with the segmenter trained on both labelled
patients (``segmenter_all``; ``--held-out`` uses the leave-one-patient-out segmenters instead):

* ProstateX-0000 and ProstateX-0001 against their PI-CAI labels: a segmenter that works on the
  original volumes (it saw them), so what the degradation and each method do to its Dice shows;
* ProstateX-0218 (never trained on by any model) against that segmenter's result on the
  original volume (0218 has no label map): how far each method keeps the segmenter's answer.

Each writes its own folder (CSV, table, Dice-vs-factor plots, example masks); ``summary.md``
puts the three tables together with the command, machine and date.

A segmenter trained on two patients is itself a noisy instrument: two trained by the same
command with other seeds (``train_zonal_segmenter.py --seed N``) can rank the methods differently.
Given several ``--segmenters`` folders, each is run in its own subfolder and ``summary.md`` adds,
per case, the mean Dice over the segmenters with its range (docs/downstream.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
NIFTI = {"ProstateX-0000": "ProstateX-0000_t2_tra_s4.nii.gz", "ProstateX-0001": "ProstateX-0001_t2_tra_s6.nii.gz",
         "ProstateX-0218": "ProstateX-0218_t2_tra_s5.nii.gz"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segmenters", nargs="+", default=["runs/zonal_segmenter"],
                        help="output folders of train_zonal_segmenter.py (several: the spread over segmenters)")
    parser.add_argument("--out", default="runs/zonal_eval")
    parser.add_argument("--factors", nargs="+", default=["2", "4", "8"])
    parser.add_argument("--methods", nargs="+", default=["bicubic", "bspline", "regression", "partdiff"])
    parser.add_argument("--labels", default="Yuan23")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--cases", nargs="+", default=sorted(NIFTI), choices=sorted(NIFTI))
    parser.add_argument("--held-out", action="store_true",
                        help="labelled cases with the segmenter that did not see them (leave-one-patient-out)")
    args = parser.parse_args(argv)
    shared, out = Path(args.shared), Path(args.out)
    seg_dirs = [Path(d) for d in args.segmenters]
    if len({d.name for d in seg_dirs}) < len(seg_dirs):
        print("zonal_segmentation_eval: --segmenters folders need distinct names", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    sections, status = [], 0
    results: dict[str, dict[str, dict]] = {}
    for seg_dir in seg_dirs:
        seg_out = out if len(seg_dirs) == 1 else out / seg_dir.name
        every = seg_dir / "segmenter_all.safetensors"
        runs = {
            "ProstateX-0000": (seg_dir / "segmenter_fold_ProstateX-0000.safetensors" if args.held_out else every, True),
            "ProstateX-0001": (seg_dir / "segmenter_fold_ProstateX-0001.safetensors" if args.held_out else every, True),
            "ProstateX-0218": (every, False),
        }
        for case in args.cases:
            segmenter, labelled = runs[case]
            entry = {"image": str((shared / "prostatex" / "nifti" / NIFTI[case]).resolve()), "patient": case}
            if labelled:
                entry["label"] = str((shared / "picai_zonal_labels" / f"{case}_zonal_{args.labels}.nii.gz").resolve())
            seg_out.mkdir(parents=True, exist_ok=True)
            datalist = seg_out / f"{case}.json"
            datalist.write_text(json.dumps({"validation": [entry]}, indent=1) + "\n")
            command = [sys.executable, "-m", "mrisr", "evaluate", "segmentation", str(datalist), "--segmenter",
                       str(segmenter), "--factors", *args.factors, "--methods", *args.methods, "-o",
                       str(seg_out / case), "--device", args.device, "--quiet"]
            t0 = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if result.returncode != 0:
                status = result.returncode
                print(result.stderr, file=sys.stderr)
                continue
            results.setdefault(case, {})[str(seg_dir)] = json.loads((seg_out / case / "dice.json").read_text())
            table = (seg_out / case / "dice.md").read_text()
            sections.append(f"## {case} ({'PI-CAI label' if labelled else 'segmenter on the original'}; "
                            f"segmenter {seg_dir.name}/{segmenter.name}; {seconds:.0f} s)\n\n"
                            f"`mrisr evaluate segmentation {datalist.name} --segmenter {segmenter.name} --factors "
                            f"{' '.join(args.factors)} --methods {' '.join(args.methods)}`\n\n{table}")
    if len(seg_dirs) > 1:
        spread = [f"## {case}: mean over {len(per)} segmenters [lowest, highest]\n\n{spread_table(per)}"
                  for case, per in results.items()]
        sections = spread + sections
    header = (f"# Zonal segmentation vs in-plane factor\n\n`python pipelines/zonal_segmentation_eval.py "
              f"{' '.join(argv or sys.argv[1:])}` on {platform.node() or 'this machine'} "
              f"({platform.processor() or platform.machine()}), {time.strftime('%Y-%m-%d')}.\n\n")
    folds = seg_dirs[0] / "folds.json"
    if len(seg_dirs) == 1 and folds.is_file():
        held = json.loads(folds.read_text())["held_out_dice"]
        header += ("Leave-one-patient-out Dice of the segmenter on the original volumes (trained on the other "
                   "patient only): " + "; ".join(f"{p}: " + ", ".join(f"{z} {d:.2f}" for z, d in v.items())
                                              for p, v in held.items()) + ".\n\n")
    partial = out / ".summary.md.partial"
    partial.write_text(header + "\n".join(sections))
    partial.replace(out / "summary.md")  # atomic: a reader sees the old summary or the new one
    print(f"wrote {out / 'summary.md'}")
    return status


def spread_table(per_segmenter: dict[str, dict]) -> str:
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


if __name__ == "__main__":
    sys.exit(main())
