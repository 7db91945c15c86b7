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
Given several ``--segmenters`` folders, each case is still one run: every output is made once and
segmented by each segmenter (their reports in ``OUT/CASE/FOLDER/``), and ``summary.md`` gives per
case the mean Dice over the segmenters with its range, then each one's table (docs/downstream.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from mrisr.downstream import spread_table

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
    for case in args.cases:
        labelled = case != "ProstateX-0218"  # 0218 has no label map: the segmenters' answers on the original
        held_out = args.held_out and labelled
        segmenters = [d / (f"segmenter_fold_{case}.safetensors" if held_out else "segmenter_all.safetensors")
                      for d in seg_dirs]
        entry = {"image": str((shared / "prostatex" / "nifti" / NIFTI[case]).resolve()), "patient": case}
        if labelled:
            entry["label"] = str((shared / "picai_zonal_labels" / f"{case}_zonal_{args.labels}.nii.gz").resolve())
        datalist = out / f"{case}.json"
        datalist.write_text(json.dumps({"validation": [entry]}, indent=1) + "\n")
        # one run per case: each output is made once and segmented by every segmenter
        command = [sys.executable, "-m", "mrisr", "evaluate", "segmentation", str(datalist), "--segmenter",
                   *map(str, segmenters), "--factors", *args.factors, "--methods", *args.methods, "-o",
                   str(out / case), "--device", args.device, "--quiet"]
        t0 = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if result.returncode != 0:
            status = result.returncode
            print(result.stderr, file=sys.stderr)
            continue
        shown = (f"`mrisr evaluate segmentation {datalist.name} --segmenter "
                 f"{' '.join(f'{s.parent.name}/{s.name}' for s in segmenters)} --factors {' '.join(args.factors)} "
                 f"--methods {' '.join(args.methods)}` ({seconds:.0f} s)")
        kind = "PI-CAI label" if labelled else "segmenter on the original"
        if len(seg_dirs) == 1:
            results.setdefault(case, {})[str(seg_dirs[0])] = json.loads((out / case / "dice.json").read_text())
            sections.append(f"## {case} ({kind}; segmenter {seg_dirs[0].name}/{segmenters[0].name})\n\n"
                            f"{shown}\n\n{(out / case / 'dice.md').read_text()}")
            continue
        per = {d.name: json.loads((out / case / d.name / "dice.json").read_text()) for d in seg_dirs}
        results[case] = per
        sections.append(f"## {case} ({kind}): mean over {len(per)} segmenters [lowest, highest]\n\n{shown}\n\n"
                        f"{spread_table(per)}")
        sections += [f"### {case}, segmenter {d.name}/{s.name}\n\n{(out / case / d.name / 'dice.md').read_text()}"
                     for d, s in zip(seg_dirs, segmenters)]
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


if __name__ == "__main__":
    sys.exit(main())
