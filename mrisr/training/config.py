"""Training configs: the defaults, merging a YAML / JSON file and ``--set`` overrides into them,
and checking every value before any work starts. A config file is data: it is read with the safe
YAML loader, and MONAI's code-running syntax is refused, not evaluated."""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mrisr.data import AUGMENTATIONS, DATA_KINDS, ZOOM_AXES, ZOOM_KINDS
from mrisr.diffusion import INFERENCE_SCHEDULE, OBJECTIVES, PREDICTIONS, TRAINING_SCHEDULE
from mrisr.errors import ConfigError, require_int
from mrisr.transforms import PAIR_KINDS, ROBUST_PERCENTILES

__all__ = ["DEFAULTS", "SCHEMA", "Field", "LR_SCHEDULES", "load_config", "learning_rate"]

DEFAULTS: dict[str, Any] = {
    "name": "mrisr",
    "seed": 0,
    "objective": "partdiff",
    # what a diffusion network predicts: eps (the noise, the paper's) or x0 (the clean image as a
    # residual on the condition, so a diffusion model can start from a regression model's weights)
    "prediction": "eps",
    "k_noise_level": 0.25,
    "task": {"plane": "in", "factor": 4, "pairs": "in", "blur_sigma_max": 1.5},
    # kind "images": PNG / JPEG natural images with `channels` 1 or 3, resized to `image_size`
    # (the shorter edge for training, centre squares for validation; None keeps them as they are)
    "data": {"kind": "volumes", "channels": 1, "image_size": None,
             "datalist": None, "glob": None, "validation_glob": None, "planes": None,
             "normalisation": {"kind": "robust", "lower": ROBUST_PERCENTILES[0], "upper": ROBUST_PERCENTILES[1]},
             "crop": 96, "num_workers": 0,
             "augment": "flips",
             # below 1: planes shrunk by s ~ U(zoom_min, 1) first; above 1: intensities through a
             # random gamma in [1 / gamma_max, gamma_max] (log-uniform); 1: off (mrisr.data.PairCropper);
             # zoom_axes: both (one factor), each (one per axis) or columns (rows keep their spacing);
             # zoom_kind: bicubic (anti-aliased) or fourier (the spectrum's centre: a coarser acquisition)
             "zoom_min": 1.0, "zoom_axes": "both", "zoom_kind": "bicubic", "gamma_max": 1.0,
             # above 0: planes turned by a random angle in [-rotate_max, rotate_max] degrees
             "rotate_max": 0.0,
             # above 0: the probability of a CutBlur pair (a box of the high-resolution crop in the
             # condition, or the reverse; mrisr.data.PairCropper); 0: off
             "cutblur": 0.0,
             # grey natural images mixed into the training planes (volumes only): "skimage" (the
             # photographs bundled with scikit-image, mrisr.data.SKIMAGE_PHOTOS) or a PNG / JPEG file,
             # folder or glob relative to this file; mix_fraction the share of draws they make
             "mix_images": None, "mix_fraction": 0.0},
    "network": {"preset": "small"},
    "schedules": {"train": dict(TRAINING_SCHEDULE), "inference": dict(INFERENCE_SCHEDULE)},
    "optim": {"lr": 1e-4, "weight_decay": 0.0, "batch_size": 8, "grad_accum": 1, "ema_decay": 0.999,
              "precision": "auto", "max_steps": 10000, "loss": "l1", "grad_clip": 1.0,
              "lr_schedule": "constant", "warmup_steps": 0,
              # cosine only: decay over the last decay_steps steps, constant before them (0: decay
              # over every step after the warm-up)
              "decay_steps": 0,
              # speed only: the network and batches in channels-last memory format; the training
              # forward and backward through torch.compile (compiles on the first step)
              "channels_last": False, "compile": False},
    "checkpoint": {"every": 200, "keep": 3},
    # slices: planes per validation series (0: every plane); crop is no longer used (whole planes)
    # aligned_jumps: DDIM validation of a latent-aligned model with aligned jumps (mrisr upsample
    # --aligned-jumps), to choose checkpoints by the sampler they will ship with
    "validation": {"every": 1000, "slices": 0, "crop": 128, "sampler": "ddim", "steps": 4, "batch_size": 4,
                   "aligned_jumps": False},
    "log": {"every": 10},
    "init_from": None,
}


# --------------------------------------------------------------------------------------------
# configuration


# sections replaced as a whole rather than merged key by key
_WHOLE = {"network", "train", "inference"}


def _merge(base: dict[str, Any], update: dict[str, Any], path: str = "", whole: bool = True,
           free: bool = False) -> dict[str, Any]:
    """``base`` updated by ``update``, key by key. A file's ``network`` (and schedule) section
    replaces the default one as a whole (``whole``); ``--set`` overrides (``whole=False``) replace
    one value in it and keep the rest. Keys unknown to ``base`` are refused, except inside such a
    section (``free``: its keys are the network's or schedule's arguments, checked where built)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in base:
            if not free:
                raise ConfigError(f"unknown config key {path + key!r}; allowed: {', '.join(sorted(base))}")
            out[key] = value
            continue
        if isinstance(base[key], dict) and isinstance(value, dict) and (key not in _WHOLE or not whole):
            out[key] = _merge(base[key], value, f"{path}{key}.", whole, free or key in _WHOLE)
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
    config = _merge(config, overrides or {}, whole=False)  # --set: one value, the section's others kept
    config["config_dir"] = str(p.resolve().parent)
    _validate(config)
    return config


LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Field:
    """What one config value may be: an integer or a number in ``[minimum, maximum]`` (a number
    above ``below`` when it is given, strictly), one of ``choices``, true or false (``bool``), or
    None when ``optional``."""

    kind: Literal["int", "number", "choice", "bool"]
    minimum: float | None = None
    maximum: float | None = None
    below: float | None = None
    choices: tuple[Any, ...] = ()
    optional: bool = False

    def check(self, key: str, value: Any) -> None:
        if value is None and self.optional:
            return
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{key} must be true or false, got {value!r}")
            return
        if self.kind == "choice":
            if isinstance(value, bool) or value not in self.choices:
                raise ConfigError(f"{key} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
            return
        if self.kind == "int":
            require_int(value, key, int(self.minimum or 0) if self.minimum is not None else -(2**63),
                        None if self.maximum is None else int(self.maximum))
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum) \
                or (self.below is not None and value >= self.below):
            low = "-inf" if self.minimum is None else f"{self.minimum:g}"
            high = f"{self.below:g})" if self.below is not None else ("inf]" if self.maximum is None
                                                                      else f"{self.maximum:g}]")
            raise ConfigError(f"{key} must be in [{low}, {high}, got {value!r}")


#: the one schema of the single-valued settings (dotted keys); rules across settings follow in _validate
SCHEMA: dict[str, Field] = {
    "seed": Field("int", minimum=0),
    "objective": Field("choice", choices=OBJECTIVES),
    "prediction": Field("choice", choices=PREDICTIONS),
    "k_noise_level": Field("number", minimum=1e-6, below=1.0),
    "task.plane": Field("choice", choices=("in", "through")),
    "task.pairs": Field("choice", choices=PAIR_KINDS),
    "task.factor": Field("int", minimum=2),
    "task.blur_sigma_max": Field("number", minimum=0.0),
    "data.kind": Field("choice", choices=DATA_KINDS),
    "data.channels": Field("choice", choices=(1, 3)),
    "data.image_size": Field("int", minimum=8, optional=True),
    "data.crop": Field("int", minimum=8),
    "data.num_workers": Field("int", minimum=0),
    "data.augment": Field("choice", choices=AUGMENTATIONS),
    "data.zoom_min": Field("number", minimum=0.1, maximum=1.0),
    "data.zoom_axes": Field("choice", choices=ZOOM_AXES),
    "data.zoom_kind": Field("choice", choices=ZOOM_KINDS),
    "data.rotate_max": Field("number", minimum=0.0, maximum=45.0),
    "data.gamma_max": Field("number", minimum=1.0, maximum=10.0),
    "data.cutblur": Field("number", minimum=0.0, maximum=1.0),
    "data.mix_fraction": Field("number", minimum=0.0, below=1.0),
    "optim.lr": Field("number", minimum=0.0),
    "optim.weight_decay": Field("number", minimum=0.0),
    "optim.batch_size": Field("int", minimum=1),
    "optim.grad_accum": Field("int", minimum=1),
    "optim.max_steps": Field("int", minimum=1),
    "optim.ema_decay": Field("number", minimum=0.0, below=1.0),
    "optim.precision": Field("choice", choices=("auto", "bf16", "fp32")),
    "optim.loss": Field("choice", choices=("l1", "l2")),
    "optim.grad_clip": Field("number", minimum=0.0, optional=True),
    "optim.lr_schedule": Field("choice", choices=LR_SCHEDULES),
    "optim.warmup_steps": Field("int", minimum=0),
    "optim.decay_steps": Field("int", minimum=0),
    "optim.channels_last": Field("bool"),
    "optim.compile": Field("bool"),
    "checkpoint.every": Field("int", minimum=1),
    "checkpoint.keep": Field("int", minimum=1),
    "validation.every": Field("int", minimum=1),
    "validation.slices": Field("int", minimum=0),
    "validation.sampler": Field("choice", choices=("ancestral", "ddim")),
    "validation.steps": Field("int", minimum=1, optional=True),
    "validation.batch_size": Field("int", minimum=1),
    "validation.aligned_jumps": Field("bool"),
    "log.every": Field("int", minimum=1),
}


def _value(config: dict[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = value[part]
    return value


def _validate(config: dict[str, Any]) -> None:
    for key, field_ in SCHEMA.items():
        field_.check(key, _value(config, key))
    task, data = config["task"], config["data"]
    if config["objective"] == "regression" and config["prediction"] != "eps":
        raise ConfigError("prediction applies to the diffusion objectives (partdiff, sr3); the regression "
                          "objective always predicts the image")
    if (task["plane"] == "in") != (task["pairs"] == "in"):
        raise ConfigError(f"task.pairs {task['pairs']!r} does not train task.plane {task['plane']!r} "
                          "(in-plane models use 'in' pairs; through-plane ones 'through' or 'selfsup')")
    if data["kind"] == "volumes" and data["channels"] != 1:
        raise ConfigError(f"data.channels must be 1 (volumes, grey images) or 3 (RGB images), got {data['channels']!r}")
    if data["kind"] == "images":
        if task["pairs"] != "in":
            raise ConfigError("natural images (data.kind: images) train in-plane pairs: task.plane in, task.pairs in")
        size = data["image_size"]
        if size is not None and (size % task["factor"] or size < data["crop"]):
            raise ConfigError(f"data.image_size {data['image_size']} must be divisible by task.factor "
                              f"{task['factor']} and at least data.crop {data['crop']}")
    elif data["image_size"] is not None:
        raise ConfigError("data.image_size applies to data.kind: images only")
    if data["crop"] % task["factor"]:
        raise ConfigError(f"data.crop must be an integer >= 8 divisible by task.factor {task['factor']}, "
                          f"got {data['crop']!r}")
    if data["mix_images"] is not None and not isinstance(data["mix_images"], str):
        raise ConfigError(f"data.mix_images must be 'skimage' or a path, got {data['mix_images']!r}")
    if bool(data["mix_images"]) != bool(data["mix_fraction"]):
        raise ConfigError("data.mix_images and data.mix_fraction go together: images to mix in and the share "
                          f"of draws they make (got {data['mix_images']!r} and {data['mix_fraction']!r})")
    if data["mix_images"] and data["kind"] != "volumes":
        raise ConfigError("data.mix_images mixes natural images into volumes' planes (data.kind: volumes)")
    if not data["datalist"] and not data["glob"]:
        raise ConfigError("the config needs data.datalist (decathlon JSON) or data.glob")


def learning_rate(step: int, base: float, schedule: str, warmup: int, total: int, decay: int = 0) -> float:
    """The learning rate of optimiser step ``step`` (0-based): linear warm-up over ``warmup``
    steps, then constant or a cosine decay to 0 at ``total``; with ``decay`` > 0 the cosine
    spans only the last ``decay`` steps and the rate is constant before them (warm-up, stable,
    decay: a run trained at a constant rate can be annealed by resuming it with a later
    ``total``)."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "cosine":
        begin = max(warmup, total - decay) if decay else warmup
        span = max(1, total - begin)
        return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0, step - begin) / span)))
    return base
