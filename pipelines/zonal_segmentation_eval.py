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
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
NIFTI = {"ProstateX-0000": "ProstateX-0000_t2_tra_s4.nii.gz", "ProstateX-0001": "ProstateX-0001_t2_tra_s6.nii.gz",
         "ProstateX-0218": "ProstateX-0218_t2_tra_s5.nii.gz"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segmenters", default="runs/zonal_segmenter", help="output of train_zonal_segmenter.py")
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
    shared, seg_dir, out = Path(args.shared), Path(args.segmenters), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    every = seg_dir / "segmenter_all.safetensors"
    runs = {
        "ProstateX-0000": (seg_dir / "segmenter_fold_ProstateX-0000.safetensors" if args.held_out else every, True),
        "ProstateX-0001": (seg_dir / "segmenter_fold_ProstateX-0001.safetensors" if args.held_out else every, True),
        "ProstateX-0218": (every, False),
    }
    sections, status = [], 0
    for case in args.cases:
        segmenter, labelled = runs[case]
        entry = {"image": str((shared / "prostatex" / "nifti" / NIFTI[case]).resolve()), "patient": case}
        if labelled:
            entry["label"] = str((shared / "picai_zonal_labels" / f"{case}_zonal_{args.labels}.nii.gz").resolve())
        datalist = out / f"{case}.json"
        datalist.write_text(json.dumps({"validation": [entry]}, indent=1) + "\n")
        command = [sys.executable, "-m", "mrisr", "evaluate", "segmentation", str(datalist), "--segmenter",
                   str(segmenter), "--factors", *args.factors, "--methods", *args.methods, "-o", str(out / case),
                   "--device", args.device, "--quiet"]
        t0 = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if result.returncode != 0:
            status = result.returncode
            print(result.stderr, file=sys.stderr)
            continue
        table = (out / case / "dice.md").read_text()
        sections.append(f"## {case} ({'PI-CAI label' if labelled else 'segmenter on the original'}; "
                        f"segmenter {segmenter.name}; {seconds:.0f} s)\n\n"
                        f"`mrisr evaluate segmentation {datalist.name} --segmenter {segmenter.name} --factors "
                        f"{' '.join(args.factors)} --methods {' '.join(args.methods)}`\n\n{table}")
    header = (f"# Zonal segmentation vs in-plane factor\n\n`python pipelines/zonal_segmentation_eval.py "
              f"{' '.join(argv or sys.argv[1:])}` on {platform.node() or 'this machine'} "
              f"({platform.processor() or platform.machine()}), {time.strftime('%Y-%m-%d')}.\n\n")
    folds = seg_dir / "folds.json"
    if folds.is_file():
        held = json.loads(folds.read_text())["held_out_dice"]
        header += ("Leave-one-patient-out Dice of the segmenter on the original volumes (trained on the other "
                   "patient only): " + "; ".join(f"{p}: " + ", ".join(f"{z} {d:.2f}" for z, d in v.items())
                                              for p, v in held.items()) + ".\n\n")
    (out / "summary.md").write_text(header + "\n".join(sections))
    print(f"wrote {out / 'summary.md'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
