"""The ``mrisr`` command line: thin, parses, calls the library, reports.

Heavy modules (torch, nibabel, SimpleITK) are imported inside the commands so ``--help`` is
instant. Every :class:`~mrisr.errors.MrisrError` becomes one line on stderr and exit code 2;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from mrisr import __version__
from mrisr.errors import ConfigError, GeometryError, InputError, MrisrError

EXIT_USAGE = 2

logger = logging.getLogger("mrisr")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other mrisr error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# the largest value any integer option takes: beyond it C longs overflow deep inside numpy / torch
_INT_MAX = 2**31 - 1


def _int_at_least(text: str, name: str, minimum: int, error: type[MrisrError] = ConfigError,
                  maximum: int = _INT_MAX) -> int:
    try:
        value = int(text)
    except ValueError:
        raise error(f"{name} must be an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise error(f"{name} must be an integer >= {minimum}, got {value}")
    if value > maximum:
        raise error(f"{name} must be an integer <= {maximum}, got {text if len(text) < 30 else text[:27] + '...'}")
    return value


# an integer factor beyond 64 turns a 0.5 mm voxel into 32 mm: no MRI use, and outputs of TB
MAX_FACTOR = 64


def _factor(text: str) -> int:
    return _int_at_least(text, "--factor", 2, GeometryError, MAX_FACTOR)


def _axis(text: str | None) -> int | None:
    if text is None:
        return None
    if text not in ("0", "1", "2"):
        raise GeometryError(f"--axis must be 0, 1 or 2, got {text!r}")
    return int(text)


def _positive_int(text: str, name: str) -> int:
    return _int_at_least(text, name, 1)


def _common(p: argparse.ArgumentParser, quiet: str = "no progress bar and no summary line") -> None:
    p.add_argument("--quiet", action="store_true", help=quiet)
    p.add_argument("--debug", action="store_true", help="log everything and show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mrisr", description="MRI super-resolution with Partial Diffusion Models.")
    parser.add_argument("--version", action="version", version=f"mrisr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    up = sub.add_parser("upsample", help="upsample a volume in-plane or through-plane",
                        description="Upsample a 3D MRI volume (NIfTI, NRRD, MHA or a DICOM folder) "
                                    "and write NIfTI with the exact output geometry.")
    up.add_argument("input", nargs="+", help="NIfTI / NRRD / MHA file or DICOM series folder; or several of them, "
                    "a folder of volumes, or a datalist .json (then -o is a folder)")
    up.add_argument("-o", "--output", help="output .nii.gz (default: <input stem>_sr.nii.gz in the current folder); "
                    "with several inputs, the output folder (default: the current folder)")
    up.add_argument("--plane", required=True, choices=["in", "through"],
                    help="'in': the two in-plane axes; 'through': the slice axis")
    up.add_argument("--factor", required=True, help="integer upsampling factor >= 2")
    up.add_argument("--axis", help="slice axis 0, 1 or 2 (default: the axis with the largest spacing)")
    up.add_argument("--series", help="SeriesInstanceUID when the DICOM folder holds several series")
    up.add_argument("--method", default="auto",
                    help="auto (default: the most accurate shipped model for the plane and factor, regression "
                    "where one ships; your --model's own objective; partdiff when a diffusion option such as "
                    "--samples, --sampler or --k is given), partdiff (the paper's method), sr3, regression, "
                    "bicubic, bspline")
    up.add_argument("--model", help="trained model (.safetensors, or a .pt checkpoint of mrisr train); "
                    "default: the shipped model for the plane and factor (see docs/models.md)")
    up.add_argument("--sampler", choices=["ancestral", "ddim"],
                    help="partdiff / sr3: ancestral (one network pass per step) or ddim (few steps); default: "
                    "what the shipped model's card recommends, ancestral for your own --model")
    up.add_argument("--steps", help="partdiff ancestral: K, the start step (default: the model's); "
                    "ddim: network evaluations (default: the shipped model's, else 8)")
    up.add_argument("--k", help="partdiff: K, the step the sampler starts from (default: the model's)")
    up.add_argument("--evaluations", help="ddim: network evaluations per plane (the same number --steps sets for "
                    "DDIM; default: the model's, else 8)")
    up.add_argument("--start", choices=["lowres", "regression"], help="partdiff: the image diffused to step K: "
                    "the bicubic-upsampled input (lowres, the paper's) or a regression model's output "
                    "(a start closer to the high-resolution image; pair it with a smaller --k)")
    up.add_argument("--start-model", help="with --start regression: the regression model (default: the shipped "
                    "one for the plane and factor)")
    up.add_argument("--consistent", action="store_true",
                    help="learned methods: make the output agree exactly with the input: each output plane is "
                    "replaced by the nearest image whose simulated low-resolution version (the model's "
                    "degradation: anti-aliased bicubic in-plane, the line average through-plane) is the "
                    "input plane (docs/models.md)")
    up.add_argument("--self-ensemble", action="store_true",
                    help="learned methods: average the model's outputs for the turned and flipped input (the "
                    "eight symmetries of the square in-plane, the four flips through-plane), at 8 / 4 times the "
                    "network evaluations (docs/models.md)")
    up.add_argument("--fuse-orientations", action=argparse.BooleanOptionalAction, default=None,
                    help="learned methods, through-plane: average the estimates from the planes along each in-plane "
                    "axis (the coronal and the sagittal planes of an axial scan), at twice the work; on by default "
                    "where the two in-plane axes are equally fine, --no-fuse-orientations keeps one (docs/cli.md)")
    up.add_argument("--aligned-jumps", action=argparse.BooleanOptionalAction, default=None,
                    help="partdiff with the DDIM sampler: each DDIM jump hands the next step the blend of high and "
                    "low resolution that step was trained on, instead of the blend of the step it leaves "
                    "(docs/method.md); on by default for the shipped PartDiff models' default sampler, "
                    "--no-aligned-jumps turns it off")
    up.add_argument("--adapt", nargs="?", const="auto", metavar="N",
                    help="fine-tune the model for N steps on pairs cut from this input's own slices before "
                         "upsampling (test-time self-supervision; N defaults to 400 on a GPU, 50 on a CPU); "
                         "the shipped model file is never changed (docs/adaptation.md)")
    up.add_argument("--save-adapted", metavar="PATH", help="with --adapt: also write the adapted model "
                    "(.safetensors, with the input name, steps and seed in its config)")
    up.add_argument("--samples", default="1", help="average N stochastic samples and also write their "
                    "per-voxel standard deviation to <output>_std.nii.gz (default 1)")
    up.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="network precision of learned "
                    "methods (default auto: bf16 autocast on GPUs and AVX-512 CPUs, where it is native; fp32 "
                    "elsewhere)")
    up.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    up.add_argument("--batch-size", default="8", help="2D planes per batch (default: 8)")
    up.add_argument("--seed", default="0", help="random seed of stochastic methods (default: 0)")
    up.add_argument("--nonfinite", default="error", choices=["error", "zero"],
                    help="NaN / Inf voxels: refuse the input (default) or replace them with 0")
    up.add_argument("--no-clip", action="store_true", help="keep the raw output; by default the output of a "
                    "non-negative (magnitude) input is clipped to the input's range")
    roi = up.add_mutually_exclusive_group()
    roi.add_argument("--roi", metavar="I0:I1,J0:J1,K0:K1", help="upsample only this box of input voxels (half-open "
                     "index ranges per array axis, an empty side is the edge, e.g. 100:220,80:200,:); the output "
                     "covers the box, placed where the whole-volume output has it, and the work shrinks with it")
    roi.add_argument("--roi-mm", metavar="X0:X1,Y0:Y1,Z0:Z1", help="the same box as world millimetres (RAS, as "
                     "`mrisr info` prints the volume's extent): the voxels whose centres lie inside")
    up.add_argument("--overwrite", action="store_true", help="replace an existing output")
    up.add_argument("--report", help="write a JSON report of the run here")
    up.add_argument("--preview", metavar="PNG", help="also write a picture: three orthogonal slices of the input "
                    "(nearest neighbour) and the output at the same window, an enlarged patch, 10 mm scale bars")
    _common(up)

    info = sub.add_parser("info", help="print a volume's geometry and the grids upsampling would give")
    info.add_argument("input", help="NIfTI / NRRD / MHA file or DICOM series folder")
    info.add_argument("--series", help="SeriesInstanceUID when the DICOM folder holds several series")
    info.add_argument("--factor", action="extend", nargs="+", help="factor(s) to show, e.g. --factor 3 5 "
                      "(default: 2, 4 and the through-plane factor that makes voxels near-isotropic)")
    info.add_argument("--axis", help="slice axis 0, 1 or 2 (default: the axis with the largest spacing)")
    _common(info, quiet="no warnings on stderr (the report is printed all the same)")

    tr = sub.add_parser("train", help="train a PartDiff, SR3 or regression model from a config",
                        description="Train a model (configs/*.yaml). Under torchrun the same command "
                                    "uses DistributedDataParallel: torchrun --nproc_per_node N -m mrisr.train CONFIG")
    tr.add_argument("config", help="training config (YAML or JSON, MONAI ConfigParser syntax)")
    tr.add_argument("-o", "--output", help="run folder (default: runs/<config name>)")
    tr.add_argument("--max-steps", help="stop at this step (default: optim.max_steps of the config)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="replace one config value, e.g. --set optim.batch_size=32 --set data.num_workers=3 "
                    "(VALUE is read as a YAML scalar or list; repeatable)")
    tr.add_argument("--max-minutes", help="also stop after this many minutes of training (checkpoint, validation "
                    "and model written; --resume continues); for a fixed budget on a lent machine")
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    tr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    tr.add_argument("--skip-bad", action="store_true", help="skip unreadable datalist entries with a warning")
    tr.add_argument("--init-from", help="start from this model's weights (e.g. PartDiff fine-tuned from an SR3 "
                    "model); replaces the config's init_from")
    _common(tr)

    an = sub.add_parser("analyze", help="analyses of the method on your data")
    an_sub = an.add_subparsers(dest="analysis", metavar="ANALYSIS", parser_class=_Parser, required=True)
    conv = an_sub.add_parser("convergence", help="PartDiff Fig. 3: where diffused LR and HR images meet",
                             description="PSNR(x_t^LR, x_0^HR) and PSNR(x_t^HR, x_0^HR) against t for the "
                                         "inference schedule, with the K at which the curves meet.")
    conv.add_argument("datalist", help="decathlon-format JSON datalist (e.g. configs/prostatex.json)")
    conv.add_argument("--plane", default="in", choices=["in", "through"],
                      help="in: in-plane pairs of every slice; through: row-averaged coronal / sagittal planes")
    conv.add_argument("--factor", action="extend", nargs="+",
                      help="factor(s), e.g. --factor 2 4 (default: 2 and 4 in-plane, 6 through-plane)")
    conv.add_argument("--split", default="validation", choices=["training", "validation", "all"])
    conv.add_argument("--tolerance", default="0.1", help="dB within which the curves count as met (default 0.1)")
    conv.add_argument("--start-model", help="a regression model (.safetensors) whose output is diffused "
                      "instead of the LR image: where the curves of --start regression meet")
    conv.add_argument("-o", "--output", default="convergence", help="output folder (default ./convergence)")
    conv.add_argument("--seed", default="0")
    _common(conv)
    orth = an_sub.add_parser("orthogonal", help="score through-plane outputs against a real coronal / sagittal scan",
                             description="Register the first super-resolved axial volume rigidly to a coronal or "
                                         "sagittal scan of the same examination, resample every volume given onto "
                                         "it with that scan's slice profile, and score the superior-inferior "
                                         "detail in the central region (docs/adaptation.md).")
    orth.add_argument("volumes", nargs="+", metavar="AXIAL_SR",
                      help="super-resolved axial volumes of one input (e.g. bicubic, partdiff, adapted)")
    orth.add_argument("reference", metavar="CORONAL_OR_SAGITTAL", help="the orthogonal scan (the reference)")
    orth.add_argument("--no-register", action="store_true", help="trust the scanner's frame of reference")
    orth.add_argument("--fraction", default="0.5", help="central fraction of the reference scored (default 0.5)")
    orth.add_argument("-o", "--output", help="also write the scores as JSON here")
    _common(orth)

    ev = sub.add_parser("evaluate", help="downstream evaluations of super-resolution")
    ev_sub = ev.add_subparsers(dest="evaluation", metavar="EVALUATION", parser_class=_Parser, required=True)
    seg = ev_sub.add_parser("segmentation", help="zonal segmentation Dice vs factor (PartDiff Sec. 5.5.1, Fig. 14-15)",
                            description="Degrade each volume, upsample it back with each method, segment the "
                                        "original and every output with the same segmenter, and report Dice per "
                                        "zone (PZ, TZ, whole gland) against the datalist's label, else against "
                                        "the segmenter on the original (docs/downstream.md).")
    seg.add_argument("datalist", help="decathlon-format JSON datalist; entries may name a 'label' map (0 "
                     "background, 1 PZ, 2 TZ) on the image's grid")
    seg.add_argument("--segmenter", required=True, nargs="+", help="a MONAI bundle folder (model-zoo layout) or "
                     "an mrisr segmenter .safetensors (pipelines/train_zonal_segmenter.py); several: every output "
                     "is made once and segmented by each, one report per segmenter in its own subfolder of -o, "
                     "and spread.md gives the mean Dice over them with the lowest and highest")
    seg.add_argument("--label-map", help="the segmenters' labels as zones, e.g. 1=TZ,2=PZ (default: 1 PZ, 2 TZ)")
    seg.add_argument("--plane", default="in", choices=["in", "through"])
    seg.add_argument("--factors", nargs="+", help="factors (default: 2 4 8 in-plane, 6 through-plane)")
    seg.add_argument("--methods", nargs="+", default=["bicubic", "bspline", "regression", "partdiff"],
                     help="methods (default: bicubic bspline regression partdiff; learned ones run where a "
                          "shipped model serves the factor)")
    seg.add_argument("--split", default="all", choices=["training", "validation", "all"])
    seg.add_argument("-o", "--out", default="segmentation_eval", help="output folder (default ./segmentation_eval)")
    seg.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    seg.add_argument("--batch-size", default="8", help="planes per network call (default 8)")
    seg.add_argument("--seed", default="0")
    seg.add_argument("--samples", default="1", help="diffusion methods (partdiff, sr3): segment the mean of N "
                     "samples instead of one (default 1); the other methods run once")
    _common(seg)

    bu = sub.add_parser("export-bundle", help="write a model as a MONAI bundle (model-zoo layout)",
                        description="Write a shipped or own model as a MONAI bundle that `python -m monai.bundle "
                                    "run --config_file OUT_DIR/configs/inference.json --dataset_dir IN "
                                    "--output_dir OUT` runs on whole volumes (docs/bundle.md).")
    bu.add_argument("out_dir", metavar="OUT_DIR", help="the bundle folder to create")
    bu.add_argument("--model", help="a shipped model's registry name (mrisr/weights/registry.json) or a "
                    ".safetensors file of mrisr train; default: the shipped model of --method/--plane/--factor")
    bu.add_argument("--method", choices=["partdiff", "sr3", "regression"],
                    help="what the bundle runs (default: what the model serves; for --plane/--factor the model "
                    "mrisr upsample runs by default, regression where one ships)")
    bu.add_argument("--plane", choices=["in", "through"], help="with --factor, chooses the shipped model")
    bu.add_argument("--factor", help="with --plane, chooses the shipped model")
    bu.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    _common(bu)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    import warnings

    level = logging.DEBUG if args.debug else (logging.ERROR if args.quiet else logging.WARNING)
    # one handler however often main() runs in a process (each writes to the current stderr)
    for old in [h for h in logger.handlers if getattr(h, "mrisr_cli", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.mrisr_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("mrisr: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    if not args.debug:
        # The one-line contract holds for warnings too: numpy / torch / nibabel / MONAI warnings
        # (ComplexWarning, overflow, torch.load's pickle advice, MONAI's probe for NVIDIA's DICOM
        # codec) are shown with --debug only; what matters reaches the user as mrisr's own
        # message. ITK's C++ warnings are switched off where SimpleITK is used (mrisr.io).
        warnings.simplefilter("ignore")
        logging.getLogger("monai").setLevel(logging.ERROR)
        logging.getLogger().setLevel(logging.ERROR)


def _fmt(values: Sequence[float], digits: int = 4) -> str:
    return " x ".join(f"{v:.{digits}g}" for v in values)


def _upsample_options(args: argparse.Namespace) -> dict[str, Any]:
    """The checked options of ``mrisr upsample`` shared by every case."""
    options = {
        "factor": _factor(args.factor), "axis": _axis(args.axis),
        "batch_size": _positive_int(args.batch_size, "--batch-size"),
        "samples": _positive_int(args.samples, "--samples"),
        "steps": _positive_int(args.steps, "--steps") if args.steps is not None else None,
        "k": _positive_int(args.k, "--k") if args.k is not None else None,
        "evaluations": _positive_int(args.evaluations, "--evaluations") if args.evaluations is not None else None,
        "seed": _int_at_least(args.seed, "--seed", 0),
        "adapt": None,
    }
    if args.adapt is not None:
        if args.adapt == "auto":
            from mrisr.adaptation import default_adapt_steps
            from mrisr.devices import resolve_device as _resolve

            options["adapt"] = default_adapt_steps(_resolve(args.device))
        else:
            options["adapt"] = _int_at_least(args.adapt, "--adapt", 1, maximum=1_000_000)
    if args.save_adapted is not None:
        if args.adapt is None:
            raise ConfigError("--save-adapted needs --adapt")
        if not args.save_adapted.endswith(".safetensors"):
            raise ConfigError(f"--save-adapted writes a .safetensors model, got {args.save_adapted}")
        from mrisr.io import check_output_path
        from mrisr.models import shipped_models

        target = Path(args.save_adapted).resolve()
        if any(target == m.path or target.parent == m.path.parent for m in shipped_models()):
            raise ConfigError("--save-adapted may not write into mrisr's shipped models; choose another path")
        check_output_path(args.save_adapted, [Path(p) for p in args.input], overwrite=args.overwrite,
                          suffixes=(".safetensors",))
    if args.start_model is not None and not Path(args.start_model).is_file():
        raise InputError(f"--start-model not found: {args.start_model}")
    if args.model is not None and not Path(args.model).is_file():
        raise InputError(f"model not found: {args.model}")

    from mrisr.inference import get_method, resolve_device

    if args.method == "auto":
        from mrisr.models import auto_method

        diffusion = options["samples"] > 1 or any(v is not None for v in (
            args.sampler, args.steps, args.k, args.evaluations, args.start, args.start_model))
        args.method = auto_method(args.plane, options["factor"], model=args.model, diffusion=diffusion)
    get_method(args.method)
    resolve_device(args.device)
    return options


def _batch_cases(inputs: list[Path], series: str | None) -> list[dict[str, Any]] | None:
    """The cases of several inputs, a folder of volumes or a datalist; None for one volume."""
    from mrisr.io import NIFTI_SUFFIXES, SITK_SUFFIXES, list_cases, output_stem, unique_names

    def holds_volume_files(folder: Path) -> bool:
        return any(p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES + SITK_SUFFIXES)
                   for p in folder.iterdir() if not p.name.startswith("."))

    first = inputs[0]
    single = len(inputs) == 1 and first.suffix.lower() != ".json" and not (first.is_dir() and holds_volume_files(first))
    if single:
        return None
    cases: list[dict[str, Any]] = []
    for src in inputs:
        if not src.exists():
            cases.append({"image": str(src), "series": None, "name": output_stem(src), "missing": True})
        elif src.suffix.lower() == ".json":
            from mrisr.data import load_datalist

            train, val = load_datalist(src)
            cases += [{"image": e.image, "series": e.series, "name": output_stem(e.image)} for e in train + val]
        elif src.is_dir() and holds_volume_files(src):
            cases += list_cases(src)
        else:
            cases.append({"image": str(src), "series": series, "name": output_stem(src.resolve())})
    if not cases:
        raise InputError("no volumes among the inputs")
    return unique_names(cases)


def _announce(args: argparse.Namespace, name: str, out: Path) -> Any:
    """A callback that prints, before any plane is computed, what the run will do."""
    def announce(info: dict[str, Any]) -> None:
        if args.quiet:
            return
        plan = info["plan"]
        what = info["method"]
        if info.get("model_name"):
            what += f" ({info['model_name']}"
            what += f", {info['sampler']} sampler" if info.get("sampler") else ""
            n = info.get("evaluations")
            what += f", {n} network evaluation{'s' if n != 1 else ''} per plane" if n else ""
            what += ", both in-plane orientations averaged)" if info.get("orientations", 1) > 1 else ")"
        region = ""
        if info.get("roi"):
            region = " (region " + ",".join(f"{lo}:{hi}" for lo, hi in info["roi"]) + ")"
        print(f"mrisr: {name}: {_fmt(plan.input_shape)} voxels{region} of {_fmt(plan.input_spacing)} mm -> "
              f"{_fmt(plan.output_shape)} of {_fmt(plan.output_spacing)} mm, {plan.n_planes} planes, {what}, "
              f"batch {info['batch_size']} -> {out}", file=sys.stderr, flush=True)
    return announce


def cmd_upsample(args: argparse.Namespace) -> int:
    options = _upsample_options(args)
    inputs = [Path(p) for p in args.input]
    cases = _batch_cases(inputs, args.series)
    if cases is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from mrisr.io import output_stem

        # under torchrun even one input is a batch: rank 0 takes it, -o is the output folder
        cases = [{"image": str(inputs[0]), "series": args.series, "name": output_stem(inputs[0].resolve()),
                  **({"missing": True} if not inputs[0].exists() else {})}]
    if cases is not None:
        if args.preview:
            raise ConfigError("--preview pictures one volume; give one input (or run it per case)")
        return _upsample_batch(args, options, cases)

    from mrisr.io import check_output_path, load_volume, output_stem, save_volume, write_json

    src = inputs[0]
    if not src.exists():
        raise InputError(f"input not found: {src}")
    out = Path(args.output) if args.output else Path.cwd() / f"{output_stem(src.resolve())}_sr.nii.gz"
    check_output_path(out, [src], overwrite=args.overwrite)
    std_out = None
    if options["samples"] > 1:
        std_out = out.with_name(f"{output_stem(out)}_std.nii.gz")
        check_output_path(std_out, [src], overwrite=args.overwrite)
    report = None
    if args.report:
        report = check_output_path(args.report, [src, out], overwrite=args.overwrite, suffixes=(".json",))
        if Path(args.report).resolve() == out.resolve():
            raise ConfigError("--report and --output name the same file")
    if args.preview:
        check_output_path(args.preview, [src, out], overwrite=args.overwrite, suffixes=(".png",))

    volume = load_volume(src, series=args.series, nonfinite=args.nonfinite)
    result = _upsample_one(args, options, volume, args.device, progress=not args.quiet,
                           save_adapted=args.save_adapted, on_start=_announce(args, src.name, out))
    save_volume(result.volume, out, overwrite=args.overwrite)
    if std_out is not None and result.std_volume is not None:
        save_volume(result.std_volume, std_out, overwrite=args.overwrite)
    if args.preview:
        from mrisr.preview import write_preview

        shown = volume if "roi" not in result.extras else volume.subvolume(result.extras["roi"]["voxels"])
        write_preview(shown, result.volume, result.plan, args.preview,
                      title=f"{src.name}: {args.method} x{options['factor']} {args.plane}-plane")
    if report is not None:
        extra = {"std_output": str(std_out)} if std_out is not None else {}
        write_json({"input": str(src), "output": str(out), **extra, **result.report(), **_run_stamp()},
                   report, overwrite=args.overwrite)
    if not args.quiet:
        evals = f", {result.network_evaluations} network evaluations" if result.network_evaluations else ""
        print(f"wrote {out} ({_fmt(result.plan.output_shape)} voxels of "
              f"{_fmt(result.plan.output_spacing)} mm, {args.method}, {result.seconds:.1f} s{evals})")
        if std_out is not None:
            print(f"wrote {std_out} (per-voxel standard deviation of {options['samples']} samples)")
    return 0


def _upsample_one(args: argparse.Namespace, options: dict[str, Any], volume: Any, device: str, progress: bool,
                  save_adapted: str | None = None, on_start: Any = None) -> Any:
    """``upsample_volume`` with the command line's options (one volume, or one case of a batch)."""
    from mrisr.geometry import parse_voxel_box, world_box_to_voxels
    from mrisr.inference import upsample_volume

    roi = None
    if args.roi is not None:
        roi = parse_voxel_box(args.roi, volume.shape)
    elif args.roi_mm is not None:
        roi = world_box_to_voxels(args.roi_mm, volume.affine, volume.shape)
    return upsample_volume(volume, args.plane, options["factor"], axis=options["axis"], method=args.method,
                           device=device, batch_size=options["batch_size"], seed=options["seed"],
                           samples=options["samples"], progress=progress, model=args.model, sampler=args.sampler,
                           steps=options["steps"], precision=args.precision, k=options["k"],
                           evaluations=options["evaluations"], start=args.start, start_model=args.start_model,
                           clip=not args.no_clip, consistent=True if args.consistent else None,
                           self_ensemble=True if args.self_ensemble else None,
                           aligned_jumps=args.aligned_jumps, fuse_orientations=args.fuse_orientations,
                           adapt=options["adapt"],
                           save_adapted=save_adapted, roi=roi,
                           on_start=on_start)


def _run_stamp() -> dict[str, str]:
    import datetime
    import shlex

    return {"command": shlex.join(["mrisr", *_CURRENT_ARGV]),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _distributed() -> tuple[int, int, Any]:
    """(rank, world size, device) under torchrun (WORLD_SIZE > 1): the process group joined
    (NCCL on GPUs, gloo on CPUs) and this rank's GPU (LOCAL_RANK); (0, 1, None) otherwise."""

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:  # torchrun with one process still joins
        return 0, 1, None
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if gpu else "gloo")
    return dist.get_rank(), dist.get_world_size(), "cuda" if gpu else "cpu"


def _output_complete(path: Path) -> bool:
    """Whether an existing output reads back whole (a file cut short by a crash elsewhere, or
    copied incompletely, is redone)."""
    try:
        import nibabel as nib
        import numpy as np

        np.asarray(nib.load(str(path)).dataobj)
        return True
    except Exception:  # truncated gzip, short data, not NIfTI: any of them means "redo"
        return False


def _upsample_batch(args: argparse.Namespace, options: dict[str, Any], cases: list[dict[str, Any]]) -> int:
    """Several volumes in one process (or in several under torchrun, each rank its shard):
    each case reported and skipped when it fails, outputs never colliding, a complete existing
    output kept (a rerun resumes) unless --overwrite; one summary of every case."""
    from mrisr.data import shard
    from mrisr.io import write_json

    if args.series is not None and not any(c.get("series") == args.series for c in cases):
        logger.info("--series applies to single DICOM folders among the inputs")
    out_dir = Path(args.output) if args.output else Path.cwd()
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"with several inputs -o names a folder, and {out_dir} is a file")
    if out_dir.name.lower().endswith((".nii", ".nii.gz")):
        raise ConfigError(f"with several inputs -o names a folder, not a NIfTI file ({out_dir})")
    rank, world, device = _distributed()
    out_dir.mkdir(parents=True, exist_ok=True)
    mine = shard(len(cases), rank, world)
    rows = _run_cases(args, options, [cases[i] for i in mine], out_dir, device or args.device,
                      quiet=args.quiet or rank != 0)
    for index, row in zip(mine, rows):
        row["index"], row["rank"] = index, rank
    if world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, rows)
        rows = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
        dist.barrier()
    failed = [r for r in rows if r["status"] == "failed"]
    if rank == 0:
        if args.report:
            write_json({"cases": rows, "failed": len(failed), "method": args.method, "plane": args.plane,
                        "factor": options["factor"], "world_size": world, **_run_stamp()}, args.report,
                       overwrite=True)
        if not args.quiet:
            width = max(len(Path(r["input"]).name) for r in rows)
            print(f"{'input':<{width}}  status   seconds  output")
            for r in rows:
                print(f"{Path(r['input']).name:<{width}}  {r['status']:<7}  {r['seconds']:>7.1f}  "
                      f"{r['output'] if r['status'] != 'failed' else r['error']}")
            kept = sum(r["status"] == "exists" for r in rows)
            print(f"{len(rows)} volumes: {len(rows) - len(failed) - kept} written, {kept} kept (output existed), "
                  f"{len(failed)} failed" + (f" ({world} processes)" if world > 1 else ""))
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return EXIT_USAGE if failed else 0


def _run_cases(args: argparse.Namespace, options: dict[str, Any], cases: list[dict[str, Any]], out_dir: Path,
               device: str, quiet: bool) -> list[dict[str, Any]]:
    import time

    from tqdm.auto import tqdm

    from mrisr.errors import MrisrError
    from mrisr.io import load_volume, save_volume

    rows: list[dict[str, Any]] = []
    bar = tqdm(cases, desc="volumes", unit="volume", disable=quiet, delay=1.0)
    for case in bar:
        out = out_dir / f"{case['name']}_sr.nii.gz"
        std_out = out_dir / f"{case['name']}_sr_std.nii.gz" if options["samples"] > 1 else None
        row: dict[str, Any] = {"input": case["image"], "series": case.get("series"), "output": str(out)}
        t0 = time.perf_counter()
        try:
            if case.get("missing"):
                raise InputError(f"input not found: {case['image']}")
            if out.exists() and not args.overwrite and _output_complete(out):
                row.update(status="exists", note="kept; --overwrite replaces it", seconds=0.0)
                rows.append(row)
                continue
            volume = load_volume(case["image"], series=case.get("series"), nonfinite=args.nonfinite)
            result = _upsample_one(args, options, volume, device, progress=False)
            redo = args.overwrite or out.exists()  # an incomplete output is replaced
            save_volume(result.volume, out, overwrite=redo)
            if std_out is not None and result.std_volume is not None:
                save_volume(result.std_volume, std_out, overwrite=redo or std_out.exists())
                row["std_output"] = str(std_out)
            row.update(status="ok", output_shape=list(result.plan.output_shape),
                       model=result.extras.get("model_name"))
        except Exception as exc:  # noqa: BLE001 -- one case must not end the batch (or hang other ranks)
            if isinstance(exc, MrisrError):
                message = str(exc)
            elif isinstance(exc, MemoryError):
                message = "out of memory; lower --batch-size"
            else:
                message = f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            row.update(status="failed", error=message)
            where = "" if str(case["image"]) in message else f"{case['image']}: "
            bar.write(f"mrisr: error: {where}{message} (skipped)", file=sys.stderr)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
    return rows


def cmd_info(args: argparse.Namespace) -> int:
    axis = _axis(args.axis)
    factors = [_factor(f) for f in args.factor] if args.factor else None

    from mrisr.geometry import isotropic_factor, plan_upsampling, slice_axis, voxel_spacing, world_extent_text
    from mrisr.io import load_volume

    src = Path(args.input)
    volume = load_volume(src, series=args.series, nonfinite="zero")
    spacing = voxel_spacing(volume.affine)
    s_axis = slice_axis(volume.affine) if axis is None else axis
    meta = volume.metadata
    lines = [
        f"input:        {src}",
        f"format:       {meta.get('format')} (stored as {meta.get('stored_dtype')})",
    ]
    if meta.get("series_uid"):
        lines.append(f"series:       {meta['series_uid']} ({meta.get('series_description') or 'no description'})")
    lines += [
        f"shape:        {_fmt(volume.shape)}",
        f"spacing mm:   {_fmt(spacing)}",
        f"orientation:  {''.join(volume.orientation)} (direction each array axis points to, RAS world)",
        f"slice axis:   {s_axis}" + (" (largest spacing)" if axis is None else " (--axis)"),
        f"intensity:    {float(volume.data.min()):.6g} to {float(volume.data.max()):.6g}",
        "affine (voxel -> RAS mm):",
        *(f"  {row[0]:10.4f} {row[1]:10.4f} {row[2]:10.4f} {row[3]:10.4f}" for row in volume.affine),
        f"voxel centres: {world_extent_text(volume.affine, volume.shape)} (RAS; the form --roi-mm takes)",
        "output grids:",
    ]
    iso = isotropic_factor(volume.affine, s_axis)
    for plane in ("in", "through"):
        plane_factors = factors or sorted({2, 4} | ({iso} if plane == "through" else set()))
        for f in plane_factors:
            plan = plan_upsampling(volume.shape, volume.affine, plane, f, s_axis)
            lines.append(f"  --plane {plane:<7} --factor {f}: shape {_fmt(plan.output_shape)}, "
                         f"spacing {_fmt(plan.output_spacing)} mm, planes on axes {plan.plane_axes}")
    if meta.get("nonfinite_replaced"):
        lines.append(f"warning:      {meta['nonfinite_replaced']} NaN or Inf voxels (upsample refuses them "
                     "unless --nonfinite zero)")
    print("\n".join(lines))
    return 0


def _config_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-4", ...]`` -> nested overrides; values are YAML scalars or flow lists
    (read with the safe loader: data, never code)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set takes KEY=VALUE with a dotted KEY such as optim.lr=1e-4, got {pair!r}")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: {text!r} is not a YAML value") from None
        if isinstance(value, dict):
            raise ConfigError(f"--set {key}: give one value per key, not a mapping")
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as text
            try:
                value = float(value)
            except ValueError:
                pass
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is set to a value above")
        node[leaf] = value
    return out


def cmd_train(args: argparse.Namespace) -> int:
    max_steps = _positive_int(args.max_steps, "--max-steps") if args.max_steps is not None else None
    max_seconds = None
    if args.max_minutes is not None:
        try:
            max_seconds = 60.0 * float(args.max_minutes)
        except ValueError:
            raise ConfigError(f"--max-minutes must be a number, got {args.max_minutes!r}") from None
        if not max_seconds > 0 or max_seconds == float("inf"):
            raise ConfigError(f"--max-minutes must be a positive number, got {args.max_minutes!r}")

    from mrisr.training import train

    if args.init_from is not None and not Path(args.init_from).is_file():
        raise InputError(f"--init-from model not found: {args.init_from}")
    overrides = _config_overrides(args.set)
    if args.init_from:
        overrides["init_from"] = str(Path(args.init_from).resolve())
    summary = train(args.config, output=args.output, max_steps=max_steps, resume=args.resume,
                    device=args.device, skip_bad=args.skip_bad, progress=not args.quiet, overrides=overrides,
                    max_seconds=max_seconds)
    if not args.quiet and "model" in summary:
        print(f"trained to step {summary['step']} (last loss {summary['last_loss']:.4f}); "
              f"model: {summary['model']}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    if args.analysis == "orthogonal":
        return _cmd_orthogonal(args)
    factors = [_factor(f) for f in args.factor] if args.factor else ([2, 4] if args.plane == "in" else [6])
    try:
        tolerance = float(args.tolerance)
    except ValueError:
        raise ConfigError(f"--tolerance must be a number, got {args.tolerance!r}") from None
    if not 0 < tolerance < float("inf"):
        raise ConfigError(f"--tolerance must be a positive number of dB, got {args.tolerance!r}")
    seed = _int_at_least(args.seed, "--seed", 0)

    from mrisr.analysis import convergence_curve, write_convergence_report
    from mrisr.data import PlaneBank, load_datalist

    train, val = load_datalist(args.datalist)
    entries = {"training": train, "validation": val, "all": train + val}[args.split]
    kind = "in"
    if args.plane == "through":
        kind = "through"
        entries = [e for e in entries if e.plane in (None, "cor", "sag")]
    if not entries:
        raise InputError(f"{args.datalist} has no {args.split} entries for --plane {args.plane}")
    from mrisr.transforms import ROBUST_PERCENTILES

    bank = PlaneBank(entries, kind, *ROBUST_PERCENTILES)
    start, start_name = None, "LR"
    if args.start_model is not None:
        import functools

        from mrisr.models import load_start_model

        if not Path(args.start_model).is_file():
            raise InputError(f"--start-model not found: {args.start_model}")
        reg = load_start_model(args.start_model, args.plane, None)
        if reg.factor not in factors:
            raise ConfigError(f"--start-model {reg.path.name} serves --factor {reg.factor}, not "
                              f"{' or '.join(map(str, factors))}")
        factors = [reg.factor]
        start = functools.partial(reg.inferer.sample, network=reg.network, method="regression")
        start_name = "regression"
    curves = [convergence_curve(bank.planes, f, kind, tolerance_db=tolerance, seed=seed, start=start,
                                start_name=start_name) for f in factors]
    paths = write_convergence_report(curves, args.output, source=f"{args.split} split of {args.datalist}")
    if not args.quiet:
        print(paths["markdown"].read_text(), end="")
        print(f"plot: {paths['png']}\ntable: {paths['markdown']}\ndata: {paths['json']}")
    return 0


def _cmd_orthogonal(args: argparse.Namespace) -> int:
    try:
        fraction = float(args.fraction)
    except ValueError:
        raise ConfigError(f"--fraction must be a number in (0, 1], got {args.fraction!r}") from None
    if not 0 < fraction <= 1:
        raise ConfigError(f"--fraction must be a number in (0, 1], got {args.fraction!r}")

    from mrisr.io import check_output_path, load_volume, output_stem, write_json
    from mrisr.orthogonal import compare_orthogonal

    if args.output:
        check_output_path(args.output, [*args.volumes, args.reference], overwrite=True, suffixes=(".json",))
    reference = load_volume(args.reference)
    names = [output_stem(p) for p in args.volumes]
    if len(set(names)) != len(names):
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    estimates = {name: load_volume(p) for name, p in zip(names, args.volumes)}
    scores = compare_orthogonal(estimates, reference, register=not args.no_register, fraction=fraction)
    width = max(len(n) for n in names)
    print(f"against {Path(args.reference).name} (central {fraction:g} of its field of view, "
          f"{'registered rigidly' if not args.no_register else 'scanner frame'}):")
    print(f"{'volume':<{width}}  SI-gradient NCC  PSNR dB   SSIM")
    for name in names:
        r = scores[name]
        print(f"{name:<{width}}  {r['si_gradient_ncc']:15.4f}  {r['psnr_db']:7.2f}  {r['ssim']:.4f}")
    if args.output:
        write_json({"reference": str(args.reference), "fraction": fraction, "scores": scores}, args.output)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    default = ["2", "4", "8"] if args.plane == "in" else ["6"]
    factors = [_factor(f) for f in (args.factors or default)]
    seed = _int_at_least(args.seed, "--seed", 0)
    batch_size = _positive_int(args.batch_size, "--batch-size")
    samples = _positive_int(args.samples, "--samples")

    from tqdm.auto import tqdm

    from mrisr.data import load_datalist
    from mrisr.devices import resolve_device
    from mrisr.downstream import evaluate_segmenters, spread_table, write_segmentation_report
    from mrisr.inference import get_method
    from mrisr.io import write_bytes
    from mrisr.segmentation import load_segmenter

    for m in args.methods:
        get_method(m)
    device = resolve_device(args.device)
    train, val = load_datalist(args.datalist)
    entries = {"training": train, "validation": val, "all": train + val}[args.split]
    if not entries:
        raise InputError(f"{args.datalist} has no {args.split} entries")
    labels = _segmenter_labels(args.segmenter)
    segmenters = {label: load_segmenter(spec, args.label_map, device=device)
                  for label, spec in zip(labels, args.segmenter)}
    total = len(entries) * len(factors) * len(args.methods)
    with tqdm(total=total, desc="segmentation", unit="run", disable=args.quiet, delay=1.0, leave=False) as bar:
        def progress(text: str) -> None:
            bar.set_postfix_str(text, refresh=False)
            bar.update(1)

        results = evaluate_segmenters(entries, segmenters, args.plane, factors, args.methods, device=str(device),
                                      seed=seed, batch_size=batch_size, progress=progress, samples=samples)
    import json
    import shlex

    command = shlex.join(["mrisr", *_CURRENT_ARGV])
    out = Path(args.out)
    several = len(segmenters) > 1
    written, reports = [], {}
    for label, result in results.items():
        paths = write_segmentation_report(result, out / label if several else out, segmenters[label].name,
                                          command=command)
        written += paths.values()
        reports[label] = paths
    first = next(iter(results.values()))
    for path, why in first.failures:
        print(f"mrisr: error: {path}: {why} (skipped)", file=sys.stderr)
    if several:
        dice = {label: json.loads(paths["json"].read_text()) for label, paths in reports.items()}
        text = (f"Dice over {len(dice)} segmenters ({', '.join(dice)}; each one's report in its subfolder): "
                f"the mean [lowest, highest], {args.plane}-plane, mean over volumes.\n\nCommand: `{command}`\n\n"
                + spread_table(dice))
        spread = out / "spread.md"
        write_bytes(text.encode("utf-8"), spread)
        written.append(spread)
    if not args.quiet:
        print((spread if several else reports[labels[0]]["markdown"]).read_text(), end="")
        print(f"wrote {', '.join(str(p) for p in written)}")
    return EXIT_USAGE if first.failures else 0


def _segmenter_labels(specs: list[str]) -> list[str]:
    """Names for the segmenters' report folders: their file (or bundle folder) names without the
    suffix; where those repeat (segmenter_all.safetensors of several training runs), the folders
    they lie in."""
    paths = [Path(s) for s in specs]
    for labels in ([p.stem if p.suffix == ".safetensors" else p.name for p in paths],
                   [p.resolve().parent.name for p in paths]):
        if len(set(labels)) == len(labels):
            return labels
    if len(set(p.resolve() for p in paths)) < len(paths):
        raise InputError("--segmenter names the same segmenter twice")
    return [f"segmenter{n}" for n in range(len(paths))]


def cmd_export_bundle(args: argparse.Namespace) -> int:
    factor = _factor(args.factor) if args.factor is not None else None
    if (args.plane is None) != (factor is None) and args.model is None:
        raise ConfigError("--plane and --factor choose a shipped model together; give both, or --model")

    from mrisr.bundle import export_bundle

    out = export_bundle(args.out_dir, model=args.model, method=args.method, plane=args.plane, factor=factor,
                        overwrite=args.overwrite)
    if not args.quiet:
        print(f"wrote bundle {out}; run it with: python -m monai.bundle run --config_file "
              f"{out / 'configs' / 'inference.json'} --bundle_root {out} --dataset_dir IN --output_dir OUT")
    return 0


COMMANDS = {"upsample": cmd_upsample, "info": cmd_info, "train": cmd_train, "analyze": cmd_analyze,
            "evaluate": cmd_evaluate, "export-bundle": cmd_export_bundle}


class _Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, Slurm, docker stop) turned into an interrupt, so every ``finally`` and
    ``except BaseException`` clean-up runs as for Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


_CURRENT_ARGV: list[str] = []  # the arguments of the running command (for reports)


def _join_negative_boxes(argv: list[str]) -> list[str]:
    """``--roi-mm -30:30,...`` as ``--roi-mm=-30:30,...``: argparse would read a value that starts
    with a minus sign as an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--roi-mm", "--roi") and arg[:1] == "-" and (arg[1:2].isdigit() or arg[1:2] == "."):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_join_negative_boxes(raw))
    _CURRENT_ARGV[:] = raw
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(args)
    import signal
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[args.command](args)
    except MrisrError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"mrisr: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print("mrisr: error: out of memory; lower --batch-size, use a smaller factor or a GPU", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, _Terminated)
        print(f"mrisr: {'terminated (SIGTERM)' if terminated else 'interrupted'}; no partial output was left"
              + ("; mrisr train continues from its last checkpoint with --resume" if args.command == "train" else ""),
              file=sys.stderr)
        return 143 if terminated else 130
    except Exception as exc:  # a bug in mrisr, not bad input -- but for a full disk
        import errno

        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" for {exc.filename}" if exc.filename else ""
            print(f"mrisr: error: no space left on the device{where}; free space or write the output elsewhere "
                  "(nothing partial was left)", file=sys.stderr)
            return EXIT_USAGE
        if args.debug:
            traceback.print_exc()
        print(f"mrisr: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              "(rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def entry_point() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
