"""MONAI bundles of mrisr models: export, and the components their configs instantiate.

``mrisr export-bundle OUT_DIR --model NAME`` writes a bundle in the model-zoo layout::

    OUT_DIR/
      LICENSE
      configs/metadata.json   the MONAI Bundle Specification's keys, eval metrics, tensor formats
      configs/inference.json  whole volumes in, NIfTI out: ``python -m monai.bundle run``
      configs/train.json      fine-tuning through mrisr's Trainer
      configs/logging.conf
      models/model.pt         the network's state dict (float32)
      docs/README.md          the model card

The configs are data for MONAI's ``ConfigParser``; the work is done here, by the library: the
inferer below calls :func:`mrisr.inference.upsample_volume` (the same plan, normalisation,
seeds and sampler as ``mrisr upsample``, so the outputs are identical voxel for voxel), and
the writer :func:`mrisr.io.save_volume` (exact affine, atomic). Reading a bundle's
``model.pt`` unpickles nothing but tensors (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrisr import __version__
from mrisr.errors import ConfigError, InputError, MrisrError, OutputError
from mrisr.io import Volume, list_cases, output_mode, output_stem, save_volume
from mrisr.transforms import model_percentiles

__all__ = ["export_bundle", "list_inputs", "LoadVolumed", "VolumeInferer", "VolumeWriter", "VolumeEvaluator",
           "FineTune", "SCHEMA_PATH", "OFFICIAL_SCHEMA_URL"]

logger = logging.getLogger(__name__)

#: mrisr's restatement of the MONAI Bundle Specification's metadata keys, for offline checks
SCHEMA_PATH = Path(__file__).resolve().parent / "bundle_schema.json"
#: the model-zoo schema the metadata names (MONAI fetches it when online; not checked here)
OFFICIAL_SCHEMA_URL = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                       "meta_schema_20240725.json")
BUNDLE_VERSION = "0.1.0"
_PARTIAL = ".mrisr-partial-"


# --------------------------------------------------------------------------------------------
# export


def _resolve_model(model: str | None, method: str | None, plane: str | None, factor: int | None
                   ) -> tuple[Path, Any]:
    """(file, its ShippedModel or None) for a registry name, a path, or the default model."""
    from mrisr.models import auto_method, default_model, shipped_models

    shipped = shipped_models()
    if model is None:
        if plane is None or factor is None:
            raise ConfigError("name a model (--model NAME or PATH) or give --plane and --factor")
        entry = default_model(method or auto_method(plane, factor), plane, factor)
        return entry.path, entry
    by_name = {m.name: m for m in shipped}
    if model in by_name:
        return by_name[model].path, by_name[model]
    p = Path(model)
    if not p.is_file():
        names = ", ".join(sorted(by_name)) or "none"
        raise InputError(f"model not found: {model} (neither a file nor a shipped model; shipped: {names})")
    same = [m for m in shipped if m.path == p.resolve()]
    return p, same[0] if same else None


def _eval_metrics(entry: Any) -> dict[str, Any]:
    return dict(getattr(entry, "eval_metrics", None) or {})


def _network_data_format(config: dict[str, Any]) -> dict[str, Any]:
    net = config["network"]
    multiple = 2 ** (len(net["channels"]) - 1)
    spatial = ["*"] * int(net.get("spatial_dims", 2))
    inputs = {
        "image": {
            "type": "image", "format": "magnitude", "modality": "MR", "num_channels": int(net["in_channels"]),
            "spatial_shape": spatial, "dtype": "float32", "value_range": [-1, 1], "is_patch_data": False,
            "channel_def": {"0": "condition: the bicubic-upsampled low-resolution plane, normalised to [-1, 1] "
                                 "by the volume's {:g} / {:g} percentiles".format(*model_percentiles(config)),
                            "1": "the noisy high-resolution plane x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) "
                                 "noise (zeros for the regression objective)"},
        },
        "noise_level": {
            "type": "tuples", "format": "latent", "modality": "n/a", "num_channels": 1, "spatial_shape": [],
            "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
            "channel_def": {"0": "the continuous noise level sqrt(alpha_bar), one per batch item"},
        },
    }
    objective = config["inferer"]["objective"]
    residual = "the high-resolution plane x_0 minus the condition (channel 0), in normalised units"
    predicts = {"regression": residual, "sr3": "the noise added to x_0",
                "partdiff": "the noise added to x_0"}[objective]
    if objective != "regression" and config["inferer"].get("prediction", "eps") == "x0":
        predicts = residual + (" (under latent alignment, of the blend of x_0 and the condition the noisy plane "
                               "was made from)" if objective == "partdiff" else "")
    outputs = {"pred": {
        "type": "image", "format": "magnitude", "modality": "MR", "num_channels": int(net["out_channels"]),
        "spatial_shape": spatial, "dtype": "float32", "value_range": [], "is_patch_data": False,
        "channel_def": {"0": predicts},
    }}
    return {"inputs": inputs, "outputs": outputs,
            "mrisr_notes": f"any plane size: the network pads to a multiple of {multiple} and crops back; "
                           "the inferer runs it on every 2D plane of a whole volume"}


def _versions() -> dict[str, str]:
    import monai

    return {"monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
            "numpy_version": np.__version__}


def _metadata(config: dict[str, Any], name: str, entry: Any, method: str, sampler: str | None,
              steps: int | None, aligned: bool = False) -> dict[str, Any]:
    task = config["task"]
    plane, factor = task["plane"], int(task["factor"])
    what = ("thinner slices (through-plane)" if plane == "through" else "sharper in-plane detail")
    degradation = task.get("degradation", {}).get("description", "")
    training = config.get("training", {})
    sampling = ("one network pass" if method == "regression" else
                f"{sampler or 'ancestral'} sampler" + (f", {steps} network evaluations per plane" if steps else "")
                + (", latent-aligned jumps" if aligned else ""))
    from mrisr.bundle_text import AUTHORS, COPYRIGHT, DATA_SOURCE, INTENDED_USE, REFERENCES
    from mrisr.models import trained_steps

    return {
        "schema": OFFICIAL_SCHEMA_URL,
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: f"exported by mrisr {__version__} from {name}"},
        **_versions(),
        # (MONAI reads the older optional_packages_version as this key, with a warning)
        "required_packages_version": {"mrisr": __version__, "nibabel": _version_of("nibabel"),
                                      "pydicom": _version_of("pydicom"), "SimpleITK": _version_of("SimpleITK"),
                                      "fire": _version_of("fire")},
        "name": f"mrisr {name}",
        "task": f"MRI super-resolution, {plane}-plane x{factor}: {what}",
        "description": (f"{config['inferer']['objective']} model of mrisr (Partial Diffusion Models for MRI "
                        f"super-resolution); trained on pairs made by {degradation or 'the library degradation'}; "
                        f"run with --method {method}, {sampling}."),
        "authors": AUTHORS,
        "copyright": COPYRIGHT,
        "data_source": DATA_SOURCE,
        "data_type": "dicom and nifti",
        "image_classes": "single-channel magnitude MR volume, any orientation, in the input's units",
        "pred_classes": f"the super-resolved volume on the {plane}-plane x{factor} grid, in the input's units",
        "eval_metrics": _eval_metrics(entry),
        "intended_use": INTENDED_USE,
        "references": REFERENCES,
        "network_data_format": _network_data_format(config),
        "mrisr": {"model": name, "method": method, "plane": plane, "factor": factor, "sampler": sampler,
                  "steps": steps, "aligned_jumps": aligned, "objective": config["inferer"]["objective"],
                  "trained_steps": trained_steps(config) or None,
                  "training_recipe": {k: training.get(k) for k in ("optim", "task", "data") if k in training}},
    }


def _version_of(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _config_base(config: dict[str, Any], device: str, output_dir: str) -> dict[str, Any]:
    """The keys inference.json and train.json share: imports, folders, the model and its network."""
    return {
        "imports": ["$import torch", "$import mrisr.bundle as mrisr_bundle"],
        "bundle_root": ".",
        "device": device,
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": f"$@bundle_root + '/{output_dir}'",
        "model_path": "$@bundle_root + '/models/model.pt'",
        "mrisr_model": config,
        "network_def": {"_target_": "mrisr.networks.SR3UNet", **config["network"]},
    }


def _inference_config(config: dict[str, Any], method: str, sampler: str | None, steps: int | None,
                      aligned: bool = False) -> dict[str, Any]:
    task = config["task"]
    return {
        **_config_base(config, "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')", "eval"),
        "plane": task["plane"],
        "factor": int(task["factor"]),
        "method": method,
        "sampler": sampler,
        "steps": steps,
        "aligned_jumps": aligned,
        "k": None,
        "seed": 0,
        "samples": 1,
        "self_ensemble": False,
        "consistent": False,
        "fuse_orientations": None,
        "batch_size": 8,
        "precision": "auto",
        "overwrite": False,
        "network": "$@network_def.to(@device)",
        "dataset_data": "$mrisr_bundle.list_inputs(@dataset_dir)",
        "preprocessing": {"_target_": "Compose",
                          "transforms": [{"_target_": "mrisr.bundle.LoadVolumed", "keys": "image"}]},
        "dataset": {"_target_": "Dataset", "data": "@dataset_data", "transform": "@preprocessing"},
        "inferer": {"_target_": "mrisr.bundle.VolumeInferer", "network": "@network", "model_config": "@mrisr_model",
                    "checkpoint": "@model_path", "plane": "@plane", "factor": "@factor", "method": "@method",
                    "sampler": "@sampler", "steps": "@steps", "aligned_jumps": "@aligned_jumps", "k": "@k",
                    "seed": "@seed", "samples": "@samples",
                    "self_ensemble": "@self_ensemble", "consistent": "@consistent",
                    "fuse_orientations": "@fuse_orientations", "batch_size": "@batch_size",
                    "precision": "@precision", "device": "@device"},
        "postprocessing": {"_target_": "mrisr.bundle.VolumeWriter", "output_dir": "@output_dir", "postfix": "sr",
                           "overwrite": "@overwrite"},
        "evaluator": {"_target_": "mrisr.bundle.VolumeEvaluator", "dataset": "@dataset", "inferer": "@inferer",
                      "postprocessing": "@postprocessing"},
        "initialize": [],
        "run": ["$@evaluator.run()"],
        "finalize": [],
    }


def _train_config(config: dict[str, Any]) -> dict[str, Any]:
    return {
        **_config_base(config, "$'cuda' if torch.cuda.is_available() else 'cpu'", "runs/finetune"),
        "datalist": "$@dataset_dir + '/datalist.json'",
        "max_steps": 1000,
        "max_minutes": None,
        "overrides": {},
        "trainer": {"_target_": "mrisr.bundle.FineTune", "model_config": "@mrisr_model",
                    "checkpoint": "@model_path", "datalist": "@datalist", "output_dir": "@output_dir",
                    "max_steps": "@max_steps", "max_minutes": "@max_minutes", "overrides": "@overrides",
                    "device": "@device"},
        "initialize": [],
        "run": ["$@trainer.run()"],
        "finalize": [],
    }


_LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def _torchscript_note(network: torch.nn.Module) -> str | None:
    """None if ``torch.jit.script`` compiles the network, else why not (one line)."""
    try:
        torch.jit.script(network)
    except Exception as exc:  # TorchScript raises several types; only the reason matters here
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return first
    return None


def export_bundle(out_dir: str | os.PathLike, model: str | None = None, method: str | None = None,
                  plane: str | None = None, factor: int | None = None, overwrite: bool = False) -> Path:
    """Write a MONAI bundle of an mrisr model to ``out_dir`` (built in a temporary folder, then
    renamed: never half-written).

    Args:
        out_dir: the bundle folder to create.
        model: a shipped model's registry name, a ``.safetensors`` file, or None for the default
            model of ``method`` / ``plane`` / ``factor``.
        method: ``partdiff``, ``sr3`` or ``regression`` (default: what the model serves first).
        plane, factor: choose the shipped default model when ``model`` is None.
        overwrite: replace an existing ``out_dir`` (only one that is itself a bundle).

    Raises:
        InputError, ConfigError, OutputError: unknown model, bad options, unwritable or existing
            ``out_dir``.
    """
    from mrisr.models import _read, build_model

    path, entry = _resolve_model(model, method, plane, factor)
    config, state = _read(path)
    loaded = build_model(config, state, path)  # refuses a config that does not build
    name = entry.name if entry is not None else output_stem(path)
    from mrisr.inference import OBJECTIVES_FOR
    from mrisr.inference.methods import default_sampling

    # what the model can run (OBJECTIVES_FOR: the one table), its registry's choice first
    runs = [m for m, objectives in OBJECTIVES_FOR.items() if loaded.objective in objectives]
    methods = list(entry.methods) if entry is not None else sorted(runs, key=lambda m: m != loaded.objective)
    method = method or methods[0]
    if method not in runs:
        raise ConfigError(f"{name} (objective {loaded.objective}) runs --method {' or '.join(runs)}, not {method}")
    # the sampler mrisr upsample would choose: the registry's, or what an own model's file stores
    defaults = entry.sampling_defaults if entry is not None else config.get("defaults") or {}
    sampler, steps, aligned = default_sampling(method, defaults, None, None, None)

    out = Path(out_dir)
    if out.exists():
        if not overwrite:
            raise OutputError(f"{out} exists; pass --overwrite to replace it")
        if not (out / "configs" / "metadata.json").is_file():
            raise OutputError(f"{out} exists and is not a bundle; refusing to replace it")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"{'not a folder' if parent.exists() else 'folder not found'}: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in {parent} (permission denied)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{_PARTIAL}{os.getpid()}-", dir=parent))
    try:
        _write_bundle(tmp, config, state, loaded.network, name, entry, method, sampler, steps, bool(aligned))
        mode = output_mode(out / "x")  # the user's umask for files; folders also get execute
        for root, dirs, files in os.walk(tmp):
            os.chmod(root, mode | ((mode & 0o444) >> 2))
            for f in files:
                os.chmod(os.path.join(root, f), mode)
        if out.exists():
            aside = parent / f".{out.name}{_PARTIAL}old-{os.getpid()}"
            os.replace(out, aside)
            os.replace(tmp, out)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote bundle %s", out)
    return out


def _write_bundle(root: Path, config: dict[str, Any], state: dict[str, torch.Tensor], network: torch.nn.Module,
                  name: str, entry: Any, method: str, sampler: str | None, steps: int | None,
                  aligned: bool = False) -> None:
    from mrisr.bundle_text import license_text, readme

    for sub in ("configs", "models", "docs"):
        (root / sub).mkdir()
    metadata = _metadata(config, name, entry, method, sampler, steps, aligned)
    # the weights as the model file stores them (the shipped ones are bf16; mrisr runs them in fp32)
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, root / "models" / "model.pt")
    size = (root / "models" / "model.pt").stat().st_size
    if size > 25_000_000:
        raise ConfigError(f"{name}: model.pt would be {size / 1e6:.1f} MB; bundles keep files under 25 MB "
                          "(export the model with dtype bfloat16)")
    script_note = _torchscript_note(network)
    dump = {"indent": 2, "sort_keys": False}
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata, **dump) + "\n")
    (root / "configs" / "inference.json").write_text(
        json.dumps(_inference_config(config, method, sampler, steps, aligned), **dump) + "\n")
    (root / "configs" / "train.json").write_text(json.dumps(_train_config(config), **dump) + "\n")
    (root / "configs" / "logging.conf").write_text(_LOGGING_CONF)
    (root / "LICENSE").write_text(license_text())
    (root / "docs" / "README.md").write_text(readme(metadata, config, script_note))


# --------------------------------------------------------------------------------------------
# components the bundle's configs instantiate


def list_inputs(dataset_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The cases of the bundle's ``dataset_dir``: :func:`mrisr.io.list_cases`."""
    return list_cases(dataset_dir, what="dataset_dir")


class LoadVolumed:
    """MONAI ``LoadImaged`` with :class:`mrisr.transforms.MrisrReader`, per item: a DICOM folder
    holding several series reads the one its ``series`` key names.

    Args:
        keys: the image key(s).
        series_key: the item key holding a DICOM SeriesInstanceUID (or None).
    """

    def __init__(self, keys: str | Sequence[str], series_key: str = "series") -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.series_key = series_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.transforms import LoadImage

        from mrisr.transforms import MrisrReader

        out = dict(data)
        reader = MrisrReader(series=data.get(self.series_key))
        loader = LoadImage(reader=reader, image_only=True)
        for key in self.keys:
            try:
                out[key] = loader(data[key])
            except Exception as exc:
                if reader.last_error is not None:  # MONAI replaces the reader's error with a generic one
                    raise reader.last_error from None
                raise InputError(f"{data[key]}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                                 ) from None
        return out


def _to_volume(image: Any) -> Volume:
    """A MetaTensor from :class:`LoadVolumed` back to a :class:`Volume` (same array, same affine)."""
    data = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    affine = image.affine.detach().cpu().numpy().astype(np.float64)
    meta = dict(getattr(image, "meta", {}).get("mrisr", {}) or {})
    return Volume(data=np.ascontiguousarray(data, dtype=np.float32), affine=affine, metadata=meta)


class VolumeInferer:
    """Super-resolve a whole volume with an mrisr model: :func:`mrisr.inference.upsample_volume`
    with a model built from the bundle's config and weights.

    Args:
        network: the network ``network_def`` built (its weights are loaded from ``checkpoint``).
        model_config: the model's mrisr config (``mrisr_model`` in the configs).
        checkpoint: ``models/model.pt``, a state dict.
        plane, factor, method, sampler, steps, k, seed, samples, self_ensemble, consistent, batch_size,
            precision, device: as for ``mrisr upsample`` (``self_ensemble`` and ``consistent``: its
            ``--self-ensemble`` and ``--consistent``).
        aligned_jumps: ``mrisr upsample --aligned-jumps`` (the export sets it where the model's
            default sampler has it).
        fuse_orientations: ``mrisr upsample --fuse-orientations`` (None, the default: as it
            decides, both in-plane orientations through-plane where they are equally fine).
    """

    def __init__(self, network: torch.nn.Module, model_config: dict[str, Any], checkpoint: str | os.PathLike,
                 plane: str, factor: int, method: str, sampler: str | None = None, steps: int | None = None,
                 k: int | None = None, seed: int = 0, samples: int = 1, self_ensemble: bool = False,
                 consistent: bool = False, batch_size: int = 8, precision: str = "auto",
                 device: str | torch.device = "cpu", aligned_jumps: bool = False,
                 fuse_orientations: bool | None = None) -> None:
        from mrisr.devices import resolve_precision
        from mrisr.models import build_model

        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise InputError(f"model weights not found: {ckpt}")
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"{ckpt} is not a state dict mrisr can read: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise InputError(f"{ckpt} does not hold a state dict of tensors")
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        dtype = torch.bfloat16 if self.precision == "bf16" else None
        self.model = build_model(model_config, state, ckpt, device=self.device, autocast_dtype=dtype)
        self.network = network  # the instance MONAI built; the model holds the same weights
        self.network.load_state_dict(self.model.network.state_dict())
        self.plane, self.factor, self.method = plane, int(factor), method
        self.options = {"sampler": sampler, "steps": steps, "k": k, "precision": self.precision,
                        "aligned_jumps": True if aligned_jumps else None,
                        # as the command line passes its flags: None when off
                        "self_ensemble": True if self_ensemble else None, "consistent": True if consistent else None,
                        "fuse_orientations": None if fuse_orientations is None else bool(fuse_orientations)}
        self.seed, self.samples, self.batch_size = int(seed), int(samples), int(batch_size)

    def __call__(self, image: Any) -> Any:
        """``image``: a MetaTensor (or a :class:`Volume`); returns the :class:`UpsampleResult`."""
        from mrisr.inference import upsample_volume

        volume = image if isinstance(image, Volume) else _to_volume(image)
        return upsample_volume(volume, self.plane, self.factor, method=self.method, device=str(self.device),
                               batch_size=self.batch_size, seed=self.seed, samples=self.samples,
                               model=self.model, **self.options)


class VolumeWriter:
    """Write an :class:`UpsampleResult` as ``OUTPUT_DIR/NAME_POSTFIX.nii.gz`` (exact affine,
    atomic, the user's permissions), and its standard-deviation map when it has one."""

    def __init__(self, output_dir: str | os.PathLike, postfix: str = "sr", overwrite: bool = False) -> None:
        self.output_dir = Path(output_dir)
        self.postfix = postfix
        self.overwrite = bool(overwrite)

    def target(self, name: str) -> Path:
        return self.output_dir / f"{name}_{self.postfix}.nii.gz"

    def __call__(self, result: Any, name: str) -> list[Path]:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        written = [save_volume(result.volume, self.target(name), overwrite=self.overwrite)]
        if result.std_volume is not None:
            written.append(save_volume(result.std_volume, self.output_dir / f"{name}_{self.postfix}_std.nii.gz",
                                       overwrite=self.overwrite))
        return written


def _reason(exc: BaseException) -> str:
    """One line for a failed case: mrisr's own error where MONAI wrapped it ("applying
    transform ..."), else the innermost cause."""
    chain, seen = [exc], {id(exc)}
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and id(nxt) not in seen:
        chain.append(nxt)
        seen.add(id(nxt))
    chosen = next((e for e in chain if isinstance(e, MrisrError)), chain[-1])
    text = str(chosen).strip()
    return text.splitlines()[0] if text else type(chosen).__name__


class VolumeEvaluator:
    """Run the bundle over its dataset: each case loaded, super-resolved and written; a case
    that fails is reported in one line and skipped, and the run ends with exit code 2 if any
    failed. ``summary.json`` in the output folder lists every case."""

    def __init__(self, dataset: Any, inferer: VolumeInferer, postprocessing: VolumeWriter) -> None:
        self.dataset = dataset
        self.inferer = inferer
        self.postprocessing = postprocessing

    def run(self) -> list[dict[str, Any]]:
        from tqdm.auto import tqdm

        from mrisr.io import write_json

        items = list(self.dataset.data)
        rows: list[dict[str, Any]] = []
        for index in tqdm(range(len(items)), desc="mrisr bundle", unit="volume", delay=1.0):
            item = items[index]
            row: dict[str, Any] = {"input": item["image"], "series": item.get("series"), "status": "ok"}
            t0 = time.perf_counter()
            try:
                target = self.postprocessing.target(item["name"])
                if target.exists() and not self.postprocessing.overwrite:
                    raise OutputError(f"output {target} exists; set overwrite true to replace it")
                loaded = self.dataset[index]
                result = self.inferer(loaded["image"])
                row["outputs"] = [str(p) for p in self.postprocessing(result, item["name"])]
                row.update({"method": result.method, "output_shape": list(result.plan.output_shape),
                            "network_evaluations_per_plane": result.extras.get("steps"),
                            "planes": result.plan.n_planes})
            except (MrisrError, OSError, ValueError, RuntimeError) as exc:
                message = _reason(exc)
                row.update({"status": "failed", "error": message})
                print(f"mrisr bundle: skipped {item['image']}: {message}", file=sys.stderr)
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
        failed = [r for r in rows if r["status"] != "ok"]
        self.postprocessing.output_dir.mkdir(parents=True, exist_ok=True)
        write_json({"mrisr_version": __version__, "cases": rows, "failed": len(failed)},
                   self.postprocessing.output_dir / "summary.json")
        if failed:
            print(f"mrisr bundle: {len(failed)} of {len(rows)} inputs failed (see "
                  f"{self.postprocessing.output_dir / 'summary.json'})", file=sys.stderr)
            raise SystemExit(2)
        return rows


class FineTune:
    """Fine-tune the bundle's model with mrisr's Trainer on a user's datalist.

    The training config is the one the model was trained with (stored in its config), with the
    user's datalist, ``max_steps`` and ``overrides``; the run starts from the bundle's weights
    and resumes when run again with the same ``output_dir``. The fine-tuned model is
    ``OUTPUT_DIR/model.safetensors`` (use it with ``mrisr upsample --model`` or export it as a
    bundle again).
    """

    def __init__(self, model_config: dict[str, Any], checkpoint: str | os.PathLike, datalist: str | os.PathLike,
                 output_dir: str | os.PathLike, max_steps: int = 1000, max_minutes: float | None = None,
                 overrides: dict[str, Any] | None = None, device: str = "auto") -> None:
        self.model_config = model_config
        self.checkpoint = Path(checkpoint)
        self.datalist = Path(datalist)
        self.output_dir = Path(output_dir)
        self.max_steps = int(max_steps)
        self.max_minutes = max_minutes
        self.overrides = dict(overrides or {})
        self.device = device

    def config(self, init_from: Path) -> dict[str, Any]:
        from mrisr.training import DEFAULTS

        base = dict(self.model_config.get("training") or {})
        if not base:  # a model file without its recipe: rebuild the essentials from its config
            inferer, task = self.model_config["inferer"], self.model_config["task"]
            base = {"objective": inferer["objective"], "k_noise_level": inferer.get("k_noise_level"),
                    "prediction": inferer.get("prediction", "eps"),
                    "task": {"plane": task["plane"], "factor": task["factor"],
                             "pairs": task.get("degradation", {}).get("pairs", "in" if task["plane"] == "in"
                                                                      else "through"),
                             "blur_sigma_max": 0.0}}
        base = {k: v for k, v in base.items() if k in DEFAULTS or k == "name"}
        base["data"] = {**base.get("data", {}), "datalist": str(self.datalist.resolve()), "glob": None,
                        "validation_glob": None}
        base["network"] = dict(self.model_config["network"])
        base["init_from"] = str(init_from)
        base["optim"] = {**base.get("optim", {}), "max_steps": self.max_steps}
        base["name"] = f"{base.get('name', 'model')}_finetune"
        return base

    def run(self) -> dict[str, Any]:
        from mrisr.models import save_model
        from mrisr.training import train

        if not self.datalist.is_file():
            raise InputError(f"datalist not found: {self.datalist}")
        if not self.checkpoint.is_file():
            raise InputError(f"model weights not found: {self.checkpoint}")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        init = self.output_dir / "init.safetensors"
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        save_model(init, state, {k: v for k, v in self.model_config.items() if k != "training"})
        config_path = self.output_dir / "finetune.json"
        config_path.write_text(json.dumps(self.config(init), indent=2) + "\n")
        max_seconds = 60.0 * float(self.max_minutes) if self.max_minutes else None
        return train(config_path, self.output_dir / "run", resume=True, device=self.device,
                     overrides=self.overrides or None, max_seconds=max_seconds)
