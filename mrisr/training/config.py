"""Training configs: the defaults, merging a YAML / JSON file and ``--set`` overrides into them,
and checking every value before any work starts. A config file is data: it is read with the safe
YAML loader, and MONAI's code-running syntax is refused, not evaluated."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

from mrisr.data import AUGMENTATIONS, DATA_KINDS
from mrisr.diffusion import INFERENCE_SCHEDULE, OBJECTIVES, TRAINING_SCHEDULE
from mrisr.errors import ConfigError, require_int
from mrisr.transforms import PAIR_KINDS, ROBUST_PERCENTILES

__all__ = ["DEFAULTS", "LR_SCHEDULES", "load_config", "learning_rate"]

DEFAULTS: dict[str, Any] = {
    "name": "mrisr",
    "seed": 0,
    "objective": "partdiff",
    "k_noise_level": 0.25,
    "task": {"plane": "in", "factor": 4, "pairs": "in", "blur_sigma_max": 1.5},
    # kind "images": PNG / JPEG natural images with `channels` 1 or 3, resized to `image_size`
    # (the shorter edge for training, centre squares for validation; None keeps them as they are)
    "data": {"kind": "volumes", "channels": 1, "image_size": None,
             "datalist": None, "glob": None, "validation_glob": None, "planes": None,
             "normalisation": {"kind": "robust", "lower": ROBUST_PERCENTILES[0], "upper": ROBUST_PERCENTILES[1]},
             "crop": 96, "num_workers": 0,
             "augment": "flips"},
    "network": {"preset": "small"},
    "schedules": {"train": dict(TRAINING_SCHEDULE), "inference": dict(INFERENCE_SCHEDULE)},
    "optim": {"lr": 1e-4, "weight_decay": 0.0, "batch_size": 8, "grad_accum": 1, "ema_decay": 0.999,
              "precision": "auto", "max_steps": 10000, "loss": "l1", "grad_clip": 1.0,
              "lr_schedule": "constant", "warmup_steps": 0},
    "checkpoint": {"every": 200, "keep": 3},
    # slices: planes per validation series (0: every plane); crop is no longer used (whole planes)
    "validation": {"every": 1000, "slices": 0, "crop": 128, "sampler": "ddim", "steps": 4, "batch_size": 4},
    "log": {"every": 10},
    "init_from": None,
}


# --------------------------------------------------------------------------------------------
# configuration


# sections replaced as a whole rather than merged key by key
_WHOLE = {"network", "train", "inference"}


def _merge(base: dict[str, Any], update: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in base:
            raise ConfigError(f"unknown config key {path + key!r}; allowed: {', '.join(sorted(base))}")
        if isinstance(base[key], dict) and isinstance(value, dict) and key not in _WHOLE:
            out[key] = _merge(base[key], value, f"{path}{key}.")
        else:
            out[key] = value
    return out


def _read_data_file(p: Path) -> Any:
    """A YAML or JSON file read as plain data: no tags that build objects (safe loader), and
    MONAI's code-running syntax (``$`` expressions, ``_target_`` mappings) refused, not run."""
    import yaml

    try:
        text = p.read_text()
        raw = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p} is not a valid config: {str(exc).splitlines()[0]}") from exc

    def check(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if str(key) in ("_target_", "_requires_", "_disabled_", "_mode_"):
                    raise ConfigError(f"{p}: {where}{key} would instantiate code; mrisr configs are data "
                                      "(a MONAI bundle is run with python -m monai.bundle, not mrisr train)")
                check(item, f"{where}{key}.")
        elif isinstance(value, list):
            for n, item in enumerate(value):
                check(item, f"{where}{n}.")
        elif isinstance(value, str) and value.startswith("$"):
            raise ConfigError(f"{p}: {where.rstrip('.')} is a MONAI expression ({value[:40]!r}); mrisr configs are "
                              "data and never evaluate code")

    check(raw, "")
    return raw


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a training config (YAML or JSON, plain data) and fill in the defaults.

    The file is data: it is parsed with the safe YAML loader (or JSON), and MONAI's
    ``$expression`` values and ``_target_`` mappings are refused rather than evaluated.

    Raises:
        ConfigError: missing file, code in the file, unknown keys or invalid values.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config not found: {p}")
    raw = _read_data_file(p)
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must hold a mapping of settings")
    config = _merge(DEFAULTS, raw)
    config = _merge(config, overrides or {})
    config["config_dir"] = str(p.resolve().parent)
    _validate(config)
    return config


def _validate(config: dict[str, Any]) -> None:
    if config["objective"] not in OBJECTIVES:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {config['objective']!r}")
    task = config["task"]
    if task["plane"] not in ("in", "through"):
        raise ConfigError(f"task.plane must be in or through, got {task['plane']!r}")
    if task["pairs"] not in PAIR_KINDS:
        raise ConfigError(f"task.pairs must be one of {', '.join(PAIR_KINDS)}, got {task['pairs']!r}")
    if (task["plane"] == "in") != (task["pairs"] == "in"):
        raise ConfigError(f"task.pairs {task['pairs']!r} does not train task.plane {task['plane']!r} "
                          "(in-plane models use 'in' pairs; through-plane ones 'through' or 'selfsup')")
    if not isinstance(task["factor"], int) or task["factor"] < 2:
        raise ConfigError(f"task.factor must be an integer >= 2, got {task['factor']!r}")
    data = config["data"]
    if data["kind"] not in DATA_KINDS:
        raise ConfigError(f"data.kind must be one of {', '.join(DATA_KINDS)}, got {data['kind']!r}")
    if data["channels"] not in (1, 3) or (data["kind"] == "volumes" and data["channels"] != 1):
        raise ConfigError(f"data.channels must be 1 (volumes, grey images) or 3 (RGB images), got {data['channels']!r}")
    if data["kind"] == "images":
        if task["pairs"] != "in":
            raise ConfigError("natural images (data.kind: images) train in-plane pairs: task.plane in, task.pairs in")
        if data["image_size"] is not None:
            require_int(data["image_size"], "data.image_size", 8)
            if data["image_size"] % task["factor"] or data["image_size"] < data["crop"]:
                raise ConfigError(f"data.image_size {data['image_size']} must be divisible by task.factor "
                                  f"{task['factor']} and at least data.crop {data['crop']}")
    elif data["image_size"] is not None:
        raise ConfigError("data.image_size applies to data.kind: images only")
    crop = config["data"]["crop"]
    if not isinstance(crop, int) or crop < 8 or crop % task["factor"]:
        raise ConfigError(f"data.crop must be an integer >= 8 divisible by task.factor {task['factor']}, got {crop!r}")
    optim = config["optim"]
    for key in ("batch_size", "grad_accum", "max_steps"):
        if not isinstance(optim[key], int) or optim[key] < 1:
            raise ConfigError(f"optim.{key} must be an integer >= 1, got {optim[key]!r}")
    if optim["lr_schedule"] not in LR_SCHEDULES:
        raise ConfigError(f"optim.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {optim['lr_schedule']!r}")
    if not isinstance(optim["warmup_steps"], int) or optim["warmup_steps"] < 0:
        raise ConfigError(f"optim.warmup_steps must be an integer >= 0, got {optim['warmup_steps']!r}")
    if config["data"]["augment"] not in AUGMENTATIONS:
        raise ConfigError(f"data.augment must be one of {', '.join(AUGMENTATIONS)}, got {config['data']['augment']!r}")
    workers = config["data"]["num_workers"]
    require_int(workers, "data.num_workers", 0)
    if optim["precision"] not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"optim.precision must be auto, bf16 or fp32, got {optim['precision']!r}")
    if not 0.0 <= float(optim["ema_decay"]) < 1.0:
        raise ConfigError(f"optim.ema_decay must be in [0, 1), got {optim['ema_decay']}")
    for key in ("every", "keep"):
        if not isinstance(config["checkpoint"][key], int) or config["checkpoint"][key] < 1:
            raise ConfigError(f"checkpoint.{key} must be an integer >= 1")
    if not config["data"]["datalist"] and not config["data"]["glob"]:
        raise ConfigError("the config needs data.datalist (decathlon JSON) or data.glob")


LR_SCHEDULES = ("constant", "cosine")


def learning_rate(step: int, base: float, schedule: str, warmup: int, total: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based): linear warm-up over ``warmup``
    steps, then constant or a cosine decay to 0 at ``total``."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "cosine":
        span = max(1, total - warmup)
        return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))
    return base
