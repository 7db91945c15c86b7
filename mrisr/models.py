"""Trained models on disk: weights plus the full config needed to rebuild and run them.

Two containers, both safe to open (no arbitrary unpickling):

* ``.safetensors``: weights, with the config as JSON in the file's metadata (``mrisr_config``).
  This is what ships.
* ``.pt`` / ``.pth``: a training checkpoint (``mrisr train``) read with
  ``torch.load(weights_only=True)``: a dict with ``config``, ``model`` and optionally ``ema``
  state dicts (EMA weights are preferred for inference).

The config holds ``network`` (keyword arguments of :class:`~mrisr.networks.SR3UNet`),
``inferer`` (objective, schedules, K threshold, loss, clipping), ``normalisation`` (robust
percentiles) and ``task`` (plane, factor, degradation).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mrisr.diffusion.inferer import PartialDiffusionInferer
from mrisr.errors import ConfigError, InputError
from mrisr.io import output_mode
from mrisr.networks import SR3UNet
from mrisr.transforms import ROBUST_PERCENTILES

__all__ = ["FORMAT", "LoadedModel", "ShippedModel", "model_config", "save_model", "load_model", "sha256",
           "shipped_models", "default_model", "auto_method", "AUTO_PREFERENCE", "read_model_config", "trained_steps"]

logger = logging.getLogger(__name__)

FORMAT = "mrisr-model/1"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def model_config(network: dict[str, Any], inferer: PartialDiffusionInferer, plane: str, factor: int,
                 normalisation: dict[str, Any] | None = None, degradation: dict[str, Any] | None = None,
                 **extra: Any) -> dict[str, Any]:
    """Assemble a model config from its parts (the layout :func:`load_model` expects)."""
    return {
        "format": FORMAT,
        "network": dict(network),
        "inferer": inferer.config(),
        "normalisation": normalisation or {"kind": "robust", "lower": ROBUST_PERCENTILES[0],
                                           "upper": ROBUST_PERCENTILES[1]},
        "task": {"plane": plane, "factor": int(factor), "degradation": degradation or {}},
        **extra,
    }


@dataclass
class LoadedModel:
    """A network ready for inference, with its config and an inferer built from it."""

    network: torch.nn.Module
    config: dict[str, Any]
    inferer: PartialDiffusionInferer
    path: Path

    @property
    def objective(self) -> str:
        return self.inferer.objective

    @property
    def plane(self) -> str:
        return self.config["task"]["plane"]

    @property
    def factor(self) -> int:
        return int(self.config["task"]["factor"])


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def trained_steps(config: dict[str, Any]) -> int:
    """The optimiser steps behind a model file's weights, those of the runs it was continued from
    included (``trained_steps``, written by ``mrisr train`` and ``pipelines/export_model.py``).
    A file from before that count knows only the step of its last run (``exported_from_step``),
    a hand-made one nothing (0)."""
    for key in ("trained_steps", "exported_from_step"):
        if config.get(key) is not None:
            return int(config[key])
    return 0


def save_model(path: str | os.PathLike, network: torch.nn.Module | dict[str, torch.Tensor], config: dict[str, Any],
               dtype: str = "float32") -> Path:
    """Write weights and config to ``.safetensors``, atomically.

    Args:
        path: output file (``.safetensors``).
        network: the module or its state dict.
        config: from :func:`model_config`.
        dtype: ``float32``, ``float16`` or ``bfloat16`` for the stored weights.
    """
    from safetensors.torch import save_file

    out = Path(path)
    if out.suffix != ".safetensors":
        raise ConfigError(f"model files are .safetensors, got {out.name}")
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    state = network.state_dict() if isinstance(network, torch.nn.Module) else network
    tensors = {k: v.detach().to("cpu", _DTYPES[dtype] if v.is_floating_point() else v.dtype).contiguous()
               for k, v in state.items()}
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"mrisr_config": json.dumps(config, sort_keys=True)})
        os.chmod(tmp, output_mode(out))  # the user's umask (or the replaced file's mode), not safetensors' 0600
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if path.suffix == ".safetensors":
        return _read_safetensors(path, tensors=True)
    if path.suffix in (".pt", ".pth"):
        try:
            blob = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"{path} is not a readable mrisr checkpoint: {str(exc).splitlines()[0]}") from exc
        if not isinstance(blob, dict) or "config" not in blob or "model" not in blob:
            raise InputError(f"{path} is not an mrisr checkpoint (needs 'config' and 'model')")
        state = blob.get("ema") or blob["model"]
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise InputError(f"{path}: its 'model' entry is not a state dict of named tensors")
        config = blob["config"]
        if isinstance(config, str):
            config = _config_json(config, path)
        if not isinstance(config, dict):
            raise InputError(f"{path}: its 'config' entry is not a mapping")
        return config, state
    raise InputError(f"model {path} must be .safetensors, .pt or .pth")


def read_model_config(path: str | os.PathLike) -> dict[str, Any]:
    """A model file's config without building its network (a .safetensors file's metadata alone;
    a checkpoint is read whole, with ``weights_only``: reading never runs code).

    Raises:
        InputError: missing or not an mrisr model.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"model not found: {p}")
    if p.suffix == ".safetensors":
        return _read_safetensors(p, tensors=False)[0]
    return _read(p)[0]


def _read_safetensors(path: Path, tensors: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A .safetensors model's config (its metadata) and, with ``tensors``, its state, in one open."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()} if tensors and "mrisr_config" in meta else {}
    except Exception as exc:
        raise InputError(f"{path} is not a readable safetensors model: {exc}") from exc
    if "mrisr_config" not in meta:
        raise InputError(f"{path} has no mrisr config in its metadata; was it written by mrisr?")
    return _config_json(meta["mrisr_config"], path), state


def _config_json(text: str, path: Path) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise InputError(f"{path}: its mrisr config is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: its mrisr config is not a JSON object")
    return config


def _check_size(config: dict[str, Any], state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a config whose network would not be the stored one before allocating it: the
    parameter count of the config (built on the meta device, no memory) must equal the file's."""
    try:
        with torch.device("meta"):
            shape_only = SR3UNet(**config["network"])
    except (TypeError, ValueError, KeyError, ConfigError) as exc:
        raise InputError(f"{path} has a network config mrisr cannot build: {exc}") from exc
    wanted = sum(p.numel() for p in shape_only.parameters()) + sum(b.numel() for b in shape_only.buffers())
    stored = sum(int(v.numel()) for v in state.values())
    if wanted != stored:
        raise InputError(f"{path}: its config describes a network of {wanted:,} values but the file stores "
                         f"{stored:,}; the file is damaged or was not written by mrisr")


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu", expected_sha256: str | None = None,
               autocast_dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a model for inference (eval mode, float32 weights on ``device``).

    Args:
        path: ``.safetensors`` or a training checkpoint ``.pt``.
        device: where to put the network.
        expected_sha256: refuse the file if its checksum differs (shipped models).
        autocast_dtype: precision the inferer runs the network in while sampling.

    Raises:
        InputError: missing, unreadable, wrong checksum, or a config that does not build.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"model not found: {p}")
    if expected_sha256 is not None:
        actual = sha256(p)
        if actual != expected_sha256:
            raise InputError(f"model {p} fails its checksum (sha256 {actual[:12]}..., expected "
                             f"{expected_sha256[:12]}...); reinstall mrisr")
    config, state = _read(p)
    return build_model(config, state, p, device=device, autocast_dtype=autocast_dtype)


def build_model(config: dict[str, Any], state: dict[str, torch.Tensor], path: str | os.PathLike,
                device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None) -> LoadedModel:
    """A model for inference from its mrisr config and state dict (what a model file holds;
    a MONAI bundle holds them as ``configs/inference.json`` and ``models/model.pt``).

    Args:
        config: the model config (:func:`model_config`).
        state: the network's weights.
        path: where they came from (named in errors and reports).
        device, autocast_dtype: as for :func:`load_model`.

    Raises:
        InputError: a config that does not build, or weights that do not fit it.
    """
    p = Path(path)
    if config.get("format") != FORMAT:
        raise InputError(f"{p} has model format {config.get('format')!r}; this mrisr reads {FORMAT}")
    for key in ("network", "inferer", "task"):
        if not isinstance(config.get(key), dict):
            raise InputError(f"{p}: its mrisr config lacks the '{key}' section")
    _check_size(config, state, p)
    try:
        network = SR3UNet(**config["network"])
        inferer = PartialDiffusionInferer(**config["inferer"], autocast_dtype=autocast_dtype)
    except (TypeError, ValueError, KeyError, ConfigError) as exc:
        raise InputError(f"{p} has a config mrisr cannot build: {exc}") from exc
    try:
        network.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        raise InputError(f"{p}: weights do not match its network config: {str(exc).splitlines()[0]}") from exc
    network.to(device).eval()
    for param in network.parameters():
        param.requires_grad_(False)
    logger.info("loaded %s model %s (%s x%s)", inferer.objective, p, config["task"]["plane"], config["task"]["factor"])
    return LoadedModel(network=network, config=config, inferer=inferer, path=p)


# --------------------------------------------------------------------------------------------
# default models shipped in the package


@dataclass(frozen=True)
class ShippedModel:
    """One entry of ``mrisr/weights/registry.json``.

    Attributes:
        name: registry name.
        file: the safetensors file next to the registry.
        sha256: its checksum, verified on every load.
        methods: the ``--method`` values it serves.
        plane: ``in`` or ``through``.
        factor: the factor it was trained for.
        factors: the factors it serves (its own, plus any the benchmark showed it also serves well).
        sampler, steps: what ``mrisr upsample`` runs when the user names neither (None: ancestral
            sampling from the model's own K).
        aligned_jumps: with that default DDIM sampler, whether its jumps are latent-aligned
            (``mrisr upsample --aligned-jumps``; measured on the model before it is set).
        description: one line for docs and errors.
        eval_metrics: what was measured on held-out data, with its protocol (docs/models.md).
        input_spacing_mm: the range of low-resolution spacing (along the upsampled axes) it was
            trained for; inputs far outside get a warning.
    """

    name: str
    file: str
    sha256: str
    methods: tuple[str, ...]
    plane: str
    factor: int
    factors: tuple[int, ...] = ()
    sampler: str | None = None
    steps: int | None = None
    aligned_jumps: bool = False
    description: str = ""
    eval_metrics: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    input_spacing_mm: tuple[float, float] | None = None

    @property
    def path(self) -> Path:
        return Path(__file__).resolve().parent / "weights" / self.file

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """What :func:`mrisr.inference.methods.default_sampling` applies for this model."""
        return {"sampler": self.sampler, "steps": self.steps, "aligned_jumps": self.aligned_jumps}

    def serves(self, method: str, plane: str, factor: int) -> bool:
        return method in self.methods and plane == self.plane and factor in (self.factors or (self.factor,))


def shipped_models() -> list[ShippedModel]:
    """The models in the package's registry."""
    registry = Path(__file__).resolve().parent / "weights" / "registry.json"
    if not registry.is_file():
        return []
    blob = json.loads(registry.read_text())
    return [ShippedModel(name=m["name"], file=m["file"], sha256=m["sha256"], methods=tuple(m["methods"]),
                         plane=m["plane"], factor=int(m["factor"]),
                         factors=tuple(int(f) for f in m.get("factors", [m["factor"]])),
                         sampler=m.get("sampler"), steps=m.get("steps"),
                         aligned_jumps=bool(m.get("aligned_jumps", False)), description=m.get("description", ""),
                         eval_metrics=dict(m.get("eval_metrics", {})),
                         input_spacing_mm=tuple(m["input_spacing_mm"]) if m.get("input_spacing_mm") else None)
            for m in blob.get("models", [])]


def default_model(method: str, plane: str, factor: int) -> ShippedModel:
    """The shipped model that serves ``--method method --plane plane --factor factor``.

    Raises:
        ConfigError: none ships for that combination; the message lists what does.
    """
    models = shipped_models()
    for model in models:
        if model.serves(method, plane, factor):
            return model
    offered = [f"--method {m} --plane {s.plane} --factor {f}" for s in models for m in s.methods
               for f in (s.factors or (s.factor,))]
    listing = "; ".join(offered) if offered else "none yet"
    raise ConfigError(f"no default {method} model ships for --plane {plane} --factor {factor} (shipped: "
                      f"{listing}); pass --model PATH with a model trained by mrisr train, or --method bicubic")


#: The order ``--method auto`` prefers shipped models in: the most accurate on the held-out
#: patient first (docs/models.md: regression beats PartDiff DDIM 4 in PSNR, SSIM and high-band
#: power on the held-out ProstateX-0218, with a quarter of the network evaluations).
AUTO_PREFERENCE = ("regression", "partdiff", "sr3")


def auto_method(plane: str, factor: int, model: str | os.PathLike | None = None, diffusion: bool = False) -> str:
    """What ``--method auto`` (the default of ``mrisr upsample``) runs.

    Args:
        plane, factor: the upsampling asked for.
        model: a model file (``--model``): then its own objective (``regression``, ``partdiff``
            or ``sr3``), whatever ships.
        diffusion: an option only diffusion has was given (``--samples`` > 1, ``--sampler``,
            ``--steps``, ``--k``, ``--evaluations``, ``--start``): then ``partdiff``.

    Otherwise the first of :data:`AUTO_PREFERENCE` that ships for ``plane`` and ``factor``, or
    ``partdiff`` when none does (whose missing model is then reported, with what ships, once the
    input has been checked).

    Raises:
        InputError: ``model`` is not a readable mrisr model.
    """
    if model is not None:
        inferer = read_model_config(model).get("inferer")
        objective = str(inferer.get("objective", "")) if isinstance(inferer, dict) else ""
        if objective not in AUTO_PREFERENCE:
            raise InputError(f"{Path(model).name}: unknown objective {objective!r} in its config; give --method")
        return objective
    if diffusion:
        return "partdiff"
    models = shipped_models()
    return next((method for method in AUTO_PREFERENCE if any(m.serves(method, plane, factor) for m in models)),
                "partdiff")


def load_start_model(path: str | os.PathLike | None, plane: str, factor: int | None,
                     device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None) -> LoadedModel:
    """The regression model whose output partial diffusion starts from (``--start regression``).

    Args:
        path: a model file, or None for the shipped regression model of ``plane`` and ``factor``.
        plane: the plane it must serve.
        factor: the factor it must serve (None: any; the caller then uses the model's own).

    Raises:
        ConfigError: no shipped model for the combination, or the file is not a regression model
            for it.
    """
    if path is None:
        if factor is None:
            raise ConfigError("a shipped start model needs a factor")
        shipped = default_model("regression", plane, factor)
        return load_model(shipped.path, device=device, autocast_dtype=autocast_dtype, expected_sha256=shipped.sha256)
    loaded = load_model(path, device=device, autocast_dtype=autocast_dtype)
    if loaded.objective != "regression" or loaded.plane != plane or factor not in (None, loaded.factor):
        wanted = f"--plane {plane}" + (f" --factor {factor}" if factor is not None else "")
        raise ConfigError(f"--start-model {loaded.path.name} must be a regression model for {wanted} (it is "
                          f"{loaded.objective}, --plane {loaded.plane} --factor {loaded.factor})")
    return loaded
