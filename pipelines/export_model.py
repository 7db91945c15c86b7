"""Export the EMA weights of a training run as a compact safetensors model (bf16 by default).

Usage:
    python pipelines/export_model.py RUN_DIR OUTPUT.safetensors [--dtype bfloat16]
        [--register NAME --methods partdiff [sr3 ...] [--factors 4 2] [--sampler ddim --steps 8]
         [--description TEXT]] [--steps-before N]

RUN_DIR is an `mrisr train` output folder: its newest checkpoint is exported with the full
model config, the step it was taken at, and the steps behind its weights in all
(``trained_steps``: a run started with ``--init-from`` adds its steps to its start's). With
``--register`` the file is added to (or replaced in) ``mrisr/weights/registry.json`` with its
sha256, which makes it a default model of ``mrisr upsample`` for the methods named (and the
factors named: by default only the one it was trained for); ``--sampler`` / ``--steps`` set what
``--method partdiff`` runs when the user names neither. OUTPUT must then lie in ``mrisr/weights/``.

``--eval-from-validation`` stores the run's validation at the exported step (every whole plane of
the held-out patient, ``validation.csv``) as the entry's ``eval_metrics``: that of the float32 EMA
network, which the bf16 file can miss by about 0.01 dB, so benchmark the exported file
(``pipelines/benchmark_mri.py --slices 0 --crop 0``) and enter its numbers; otherwise a replaced
entry keeps its ``eval_metrics``. A replaced entry keeps its place in the registry and, unless
the model's config has its own, its ``input_spacing_mm``.

Absolute paths in the stored training config (the datalist, ``init_from``) become relative to the
repository when they lie inside it and their file name otherwise: a shipped model carries no
path of the machine that trained it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mrisr.models import save_model, sha256

REPO = Path(__file__).resolve().parents[1]
REGISTRY = REPO / "mrisr" / "weights" / "registry.json"


def portable_paths(value, repo: Path = REPO):
    """``value`` (a config: dicts, lists, strings) with every absolute path made relative to
    ``repo`` when inside it, else reduced to its file name."""
    if isinstance(value, dict):
        return {k: portable_paths(v, repo) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_paths(v, repo) for v in value]
    if isinstance(value, str) and Path(value).is_absolute():
        path = Path(value)
        return path.relative_to(repo).as_posix() if path.is_relative_to(repo) else path.name
    return value


PROTOCOL = "every whole plane of ProstateX-0218 (held out), benchmark degradation, docs/models.md"


def eval_metrics_from_validation(run: Path, step: int) -> dict:
    """The run's validation row of ``step`` (``validation.csv`` of ``mrisr train``) in the
    registry's ``eval_metrics`` layout."""
    import csv

    path = run / "validation.csv"
    rows = [r for r in csv.DictReader(path.open())] if path.is_file() else []
    row = next((r for r in rows if int(r["step"]) == step), None)
    if row is None:
        sys.exit(f"export_model: {path} has no validation at step {step} (validate at the step you export)")
    return {"psnr_db": round(float(row["psnr"]), 2), "psnr_gain_over_bicubic_db_mean": round(float(row["gain_db"]), 2),
            "psnr_gain_over_bicubic_db_worst_series": round(float(row["gain_worst_series_db"]), 2),
            "ssim": round(float(row["ssim"]), 3), "ssim_bicubic": round(float(row["ssim_bicubic"]), 3),
            "protocol": PROTOCOL}


def replace_entry(models: list[dict], entry: dict) -> list[dict]:
    """``models`` with ``entry`` in place of the one of the same name (same position, its
    ``eval_metrics`` and ``input_spacing_mm`` kept where ``entry`` has none), or appended."""
    names = [m["name"] for m in models]
    if entry["name"] not in names:
        return models + [entry]
    old = models[names.index(entry["name"])]
    merged = {**entry, **{k: old[k] for k in ("eval_metrics", "input_spacing_mm") if not entry.get(k) and k in old}}
    return [merged if m["name"] == entry["name"] else m for m in models]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--register", metavar="NAME")
    parser.add_argument("--methods", nargs="+", default=[])
    parser.add_argument("--factors", nargs="+", type=int, help="factors it serves (default: its own)")
    parser.add_argument("--sampler", choices=["ancestral", "ddim"], help="default sampler of --method partdiff")
    parser.add_argument("--steps", type=int, help="default --steps of --method partdiff")
    parser.add_argument("--aligned-jumps", action="store_true",
                        help="with --sampler ddim: the default sampler's jumps are latent-aligned")
    parser.add_argument("--description", default="")
    parser.add_argument("--steps-before", type=int, metavar="N",
                        help="steps behind the weights the run started from, for a checkpoint written before "
                             "mrisr counted them (default: the checkpoint's own count)")
    parser.add_argument("--eval-from-validation", action="store_true",
                        help="store the run's validation at the exported step as eval_metrics")
    args = parser.parse_args()

    checkpoints = sorted((args.run / "checkpoints").glob("step_*.pt"))
    if not checkpoints:
        sys.exit(f"export_model: no checkpoints in {args.run / 'checkpoints'}")
    blob = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)
    config = portable_paths(dict(blob["config"]))
    config["exported_from_step"] = int(blob["step"])
    # with the steps of the model the run started from (--init-from), which it carried on
    before = args.steps_before if args.steps_before is not None else int(blob.get("steps_before", 0))
    config["trained_steps"] = before + int(blob["step"])
    path = save_model(args.output, blob["ema"], config, dtype=args.dtype)
    digest = sha256(path)
    print(f"{path}: step {blob['step']} ({config['trained_steps']} in all), {path.stat().st_size / 1e6:.1f} MB, "
          f"sha256 {digest}")
    if args.register:
        if path.resolve().parent != REGISTRY.parent:
            sys.exit(f"export_model: registered models must lie in {REGISTRY.parent}")
        if not args.methods:
            sys.exit("export_model: --register needs --methods")
        registry = json.loads(REGISTRY.read_text())
        entry = {"name": args.register, "file": path.name, "sha256": digest, "methods": args.methods,
                 "plane": config["task"]["plane"], "factor": config["task"]["factor"],
                 "factors": args.factors or [config["task"]["factor"]], "sampler": args.sampler,
                 "steps": args.steps, **({"aligned_jumps": True} if args.aligned_jumps else {}),
                 "objective": config["inferer"]["objective"], "step": int(blob["step"]),
                 "trained_steps": config["trained_steps"],
                 "description": args.description}
        if args.eval_from_validation:
            entry["eval_metrics"] = eval_metrics_from_validation(args.run, int(blob["step"]))
        if config.get("input_spacing_mm"):
            entry["input_spacing_mm"] = config["input_spacing_mm"]
        registry["models"] = replace_entry(registry["models"], entry)
        tmp = REGISTRY.with_suffix(".tmp")
        tmp.write_text(json.dumps(registry, indent=2) + "\n")
        tmp.replace(REGISTRY)
        print(f"registered {args.register} for --method {' / '.join(args.methods)} in {REGISTRY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
