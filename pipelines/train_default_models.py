"""Train every default model side by side for a fixed time, export them, and benchmark them.

Made for a lent GPU machine (one call of at most 10 minutes): every run trains for
``--minutes`` in its own process (batches built in DataLoader workers), then each run's EMA
weights are exported as a compact model, and ``pipelines/benchmark_mri.py`` scores them on every
whole plane of the held-out patient. Everything lands in ``--out``; ``--archive`` packs the logs,
validation tables and benchmark reports into one tar file (the models stay separate files).

Usage:
    python pipelines/train_default_models.py --out runs/gpu --minutes 6 --device cuda \
        [--datalist configs/prostatex.json] [--batch-size 32] [--crop 128] [--workers 3] \
        [--models inplane_x4_regression ...] [--no-benchmark] [--archive runs/gpu/logs.tar.gz]

On the CPU, ``--minutes 0.3 --batch-size 2 --crop 48 --models ...`` checks the whole script in a
minute or two. Runs start from the shipped models where the table below says so (fine-tuning
on the current recipe); the others start from scratch. ``--widen N``: every run starts from its
shipped model widened N times (``pipelines/widen_model.py``: the same outputs, N times the
channels), so a lent GPU trains wider networks from where the CPU chains left the narrow ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "mrisr" / "weights"


@dataclass(frozen=True)
class Run:
    name: str
    config: str
    init_from: str | None  # a shipped model file to fine-tune, or None (from scratch)
    role: str  # the benchmark_mri.py model option it fills
    plane: str
    factor: int
    # validate on these planes of the datalist only (a run whose training pairs use every series
    # still validates as the benchmark scores it: through-plane on 0218's coronal and sagittal)
    validation_planes: tuple[str, ...] | None = None


RUNS = [
    Run("inplane_x4_regression", "prostatex_inplane_x4_regression.yaml", None, "regression", "in", 4),
    Run("inplane_x4_partdiff", "prostatex_inplane_x4_partdiff.yaml", "prostatex_inplane_x4_partdiff.safetensors",
        "partdiff", "in", 4),
    Run("inplane_x4_sr3", "prostatex_inplane_x4_sr3.yaml", "prostatex_inplane_x4_sr3.safetensors", "sr3", "in", 4),
    Run("inplane_x2_regression", "prostatex_inplane_x2_regression.yaml", "prostatex_inplane_x2_regression.safetensors",
        "regression", "in", 2),
    Run("inplane_x2_partdiff", "prostatex_inplane_x2_partdiff.yaml", "prostatex_inplane_x2_partdiff.safetensors",
        "partdiff", "in", 2),
    Run("through_x6_partdiff", "prostatex_through_x6_partdiff.yaml", "prostatex_through_x6_partdiff.safetensors",
        "partdiff", "through", 6, validation_planes=("cor", "sag")),
    Run("through_x6_regression", "prostatex_through_x6_regression.yaml", None, "regression", "through", 6,
        validation_planes=("cor", "sag")),
]


def datalist_for(run: Run, datalist: Path, out: Path) -> Path:
    """``datalist``, or for a run with ``validation_planes`` a copy in ``out`` whose validation
    keeps those planes only (image paths made absolute: the copy lies elsewhere)."""
    if not run.validation_planes:
        return datalist
    blob = json.loads(datalist.read_text())

    def absolute(entry: dict) -> dict:
        return {**entry, "image": str((datalist.parent / entry["image"]).resolve())}

    blob["training"] = [absolute(e) for e in blob["training"]]
    blob["validation"] = [absolute(e) for e in blob["validation"] if e.get("plane") in run.validation_planes]
    target = out / f"datalist_{run.name}.json"
    target.write_text(json.dumps(blob, indent=1) + "\n")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--datalist", default=str(REPO / "configs" / "prostatex.json"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--workers", type=int, default=3, help="DataLoader workers per run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--models", nargs="*", help=f"runs to do (default all: {', '.join(r.name for r in RUNS)})")
    parser.add_argument("--set", action="append", default=[], help="extra mrisr train --set for every run")
    parser.add_argument("--widen", type=int, default=1, help="start every run from its shipped model with "
                        "N times the channels (default 1: as the table says)")
    parser.add_argument("--no-benchmark", action="store_true")
    parser.add_argument("--benchmark-slices", type=int, default=0, help="planes per series (0: all)")
    parser.add_argument("--benchmark-methods", nargs="*", help="benchmark_mri.py --methods (default all)")
    parser.add_argument("--archive", type=Path, help="tar.gz of logs, validation tables and reports (written "
                        "after training and again after the benchmark)")
    parser.add_argument("--export-dir", type=Path, help="where the exported models go (default OUT/models)")
    args = parser.parse_args()

    runs = [r for r in RUNS if not args.models or r.name in args.models]
    unknown = set(args.models or []) - {r.name for r in RUNS}
    if unknown:
        sys.exit(f"train_default_models: unknown runs {sorted(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    from mrisr.models import read_model_config

    wide: dict[str, Path] = {}  # --widen: each run's shipped model widened, made before any run starts
    for run in runs if args.widen > 1 else []:
        wide[run.name] = args.out / f"wide_{run.name}.safetensors"
        if (args.out / run.name / "checkpoints").exists():
            continue  # resumed: the run's checkpoints hold its weights
        res = subprocess.run([sys.executable, str(REPO / "pipelines" / "widen_model.py"),
                              str(WEIGHTS / f"prostatex_{run.name}.safetensors"), str(wide[run.name]),
                              "--factor", str(args.widen)], env=env, capture_output=True, text=True)
        print(res.stdout.strip() or res.stderr.strip(), flush=True)
        if res.returncode != 0:
            return 2
    procs = {}
    t0 = time.time()
    for run in runs:
        cmd = [sys.executable, "-m", "mrisr.cli", "train", str(REPO / "configs" / run.config),
               "-o", str(args.out / run.name), "--device", args.device, "--quiet",
               "--max-minutes", str(args.minutes), "--resume",
               "--set", f"data.datalist={datalist_for(run, Path(args.datalist).resolve(), args.out)}",
               "--set", f"optim.batch_size={args.batch_size}", "--set", f"data.crop={args.crop}",
               "--set", f"data.num_workers={args.workers}", "--set", "optim.warmup_steps=200",
               "--set", "checkpoint.every=500", "--set", "log.every=50",
               "--set", "optim.max_steps=60000"]  # the clock ends every run (some configs stop at 400 CPU steps)
        for extra in args.set:
            cmd += ["--set", extra]
        resumed = (args.out / run.name / "checkpoints").exists()
        if run.name in wide:
            if not resumed:
                cmd += ["--init-from", str(wide[run.name])]
            channels = read_model_config(wide[run.name])["network"]["channels"]
            cmd += ["--set", f"network.channels={channels}"]
        elif run.init_from and not resumed:
            cmd += ["--init-from", str(WEIGHTS / run.init_from)]
        log = open(args.out / f"{run.name}.log", "w")
        procs[run.name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
        print(f"started {run.name}: {' '.join(cmd)}", flush=True)
    failed = []
    for name, (proc, log) in procs.items():
        if proc.wait() != 0:
            failed.append(name)
        log.close()
    print(f"training done in {time.time() - t0:.0f} s; failed: {failed or 'none'}", flush=True)

    models: dict[str, Path] = {}
    for run in runs:
        if run.name in failed:
            continue
        target = (args.export_dir or args.out / "models") / f"prostatex_{run.name}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        res = subprocess.run([sys.executable, str(REPO / "pipelines" / "export_model.py"), str(args.out / run.name),
                              str(target)], env=env, capture_output=True, text=True)
        print(res.stdout.strip() or res.stderr.strip(), flush=True)
        if res.returncode == 0:
            models[run.name] = target

    summary: dict = {"minutes": args.minutes, "device": args.device, "batch_size": args.batch_size, "crop": args.crop,
                     "runs": {}}
    for run in runs:
        folder = args.out / run.name
        rows = (folder / "log.csv").read_text().splitlines() if (folder / "log.csv").exists() else []
        val = (folder / "validation.csv").read_text().splitlines() if (folder / "validation.csv").exists() else []
        summary["runs"][run.name] = {"last_log": rows[-1] if rows else None, "log_header": rows[0] if rows else None,
                                     "validation": val, "model": str(models.get(run.name, ""))}
    write_archive(args)
    if not args.no_benchmark:
        for plane, factor in sorted({(r.plane, r.factor) for r in runs}):
            chosen = [r for r in runs if (r.plane, r.factor) == (plane, factor) and r.name in models]
            if not chosen:
                continue
            cmd = [sys.executable, str(REPO / "pipelines" / "benchmark_mri.py"), "--plane", plane, "--factor",
                   str(factor), "--datalist", args.datalist, "--slices", str(args.benchmark_slices), "--crop", "0",
                   "--device", args.device, "--out", str(args.out / f"benchmark_{plane}_x{factor}")]
            for r in chosen:
                cmd += [f"--{r.role}-model", str(models[r.name])]
            if args.benchmark_methods:
                cmd += ["--methods", *args.benchmark_methods]
            t1 = time.time()
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            (args.out / f"benchmark_{plane}_x{factor}.log").write_text(res.stdout + res.stderr)
            print(res.stdout[-3000:], flush=True)
            summary[f"benchmark_{plane}_x{factor}_seconds"] = time.time() - t1
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_archive(args)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}), flush=True)
    return 1 if failed else 0


def write_archive(args: argparse.Namespace) -> None:
    if not args.archive:
        return
    tmp = args.archive.with_name(args.archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(args.out.rglob("*")):
            if path.is_file() and path.suffix in (".csv", ".json", ".md", ".log", ".png"):
                tar.add(path, arcname=str(path.relative_to(args.out)))
    tmp.replace(args.archive)


if __name__ == "__main__":
    sys.exit(main())
