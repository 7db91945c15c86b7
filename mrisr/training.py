"""Training: configs, datalists, the step loop, checkpoints that survive SIGKILL, and DDP.

Design choices that make runs reproducible and resumable:

* Every step draws its randomness from seeds derived from ``(seed, step, rank)``: which planes
  form the batch (a DistributedSampler-style walk through per-epoch permutations, each rank
  taking its own shard), crops, flips, blur, noise levels and noise. A run resumed from a
  checkpoint therefore continues exactly as if it had never stopped: same next batch, same
  next loss, same weights.
* Checkpoints are written to a temporary file and renamed into place, so a kill at any moment
  leaves the previous checkpoint intact and loses at most the steps since it.
* Under ``torchrun`` the same code uses DistributedDataParallel (NCCL on GPUs, gloo on CPUs);
  rank 0 writes checkpoints, logs and the final model.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrisr.data import (AUGMENTATIONS, DATA_KINDS, DataEntry, ImageBank, PairBatches, PairCropper, PlaneBank,
                        batch_indices, load_datalist, read_datalist, step_seed)
from mrisr.devices import resolve_device, resolve_precision
from mrisr.diffusion import INFERENCE_SCHEDULE, OBJECTIVES, TRAINING_SCHEDULE, PartialDiffusionInferer
from mrisr.errors import ConfigError, MrisrError, require_int
from mrisr.evaluation import psnr, ssim
from mrisr.images import IMAGE_NORMALISATION
from mrisr.models import model_config, save_model
from mrisr.networks import SR3UNet, network_config
from mrisr.transforms import PAIR_KINDS, ROBUST_PERCENTILES, plane_degradation

# the data names stay importable from here (they moved to mrisr.data)
__all__ = ["DEFAULTS", "load_config", "load_datalist", "read_datalist", "DataEntry", "PlaneBank", "batch_indices", "Trainer",
           "train"]

logger = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------------------------
# the trainer

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


def _state_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Trainer:
    """Trains one model from a config; see :func:`train` for the arguments."""

    def __init__(self, config: dict[str, Any], output: Path, device: str = "auto", resume: bool = False,
                 max_steps: int | None = None, skip_bad: bool = False, progress: bool = True,
                 max_seconds: float | None = None) -> None:
        import torch.distributed as dist

        self.config = config
        self.output = Path(output)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        kind = resolve_device(device).type
        self.device = torch.device(f"cuda:{local_rank}" if kind == "cuda" else "cpu")
        # autocast in bf16 where it is native; "auto" is resolved here, per machine
        self.precision = resolve_precision(config["optim"]["precision"], self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.distributed = self.world > 1
        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        self.max_steps = int(max_steps or config["optim"]["max_steps"])
        if max_seconds is not None and (max_seconds <= 0 or self.distributed):
            raise ConfigError("a time limit needs a positive number of seconds and a single process (not torchrun)")
        self.max_seconds = max_seconds
        self.skip_bad = skip_bad
        self.resume = resume
        self.seed = int(config["seed"])

        task = config["task"]
        data = config["data"]
        images = data["kind"] == "images"
        norm = IMAGE_NORMALISATION if images else config["data"]["normalisation"]
        # the network sees the condition and the noisy image: 2 x the image's channels in, its channels out
        channels = int(data["channels"])
        self.net_kwargs = network_config(**{"in_channels": 2 * channels, "out_channels": channels,
                                            **config["network"]})
        self.inferer = PartialDiffusionInferer(
            objective=config["objective"], train_schedule=config["schedules"]["train"],
            inference_schedule=config["schedules"]["inference"], k_noise_level=config["k_noise_level"],
            loss=config["optim"]["loss"])
        self.model_config = model_config(
            self.net_kwargs, self.inferer, plane=task["plane"], factor=task["factor"],
            normalisation=dict(norm),
            degradation={"pairs": task["pairs"], "blur_sigma_max": task["blur_sigma_max"] if task["pairs"] == "in" else 0,
                         "description": (("anti-aliased bicubic downsampling" + (
                                             f" + Gaussian blur sigma ~ U(0, {task['blur_sigma_max']})"
                                             if task["blur_sigma_max"] else "")) if task["pairs"] == "in"
                                         else f"average of {task['factor']} lines along rows")},
            training={k: v for k, v in config.items() if k != "config_dir"})

        train_entries, val_entries = read_datalist(config)
        self.train_bank: PlaneBank | ImageBank
        self.val_bank: PlaneBank | ImageBank
        if images:
            self.train_bank = ImageBank(train_entries, channels, data["image_size"], False, skip_bad)
            self.val_bank = ImageBank(val_entries, channels, data["image_size"], True, skip_bad)
        else:
            self.train_bank = PlaneBank(train_entries, task["pairs"], norm["lower"], norm["upper"], skip_bad)
            val_kind = "through" if task["pairs"] == "selfsup" and any(e.plane in ("cor", "sag") for e in val_entries) \
                else task["pairs"]
            self.val_bank = PlaneBank(val_entries, val_kind, norm["lower"], norm["upper"], skip_bad)
        # what the model serves, stored in its file: the low-resolution input spacing it was trained
        # for (warned about when an input is far outside) and the sampler mrisr upsample defaults to
        if self.train_bank.degraded_spacings:
            f = int(task["factor"])
            self.model_config["input_spacing_mm"] = [round(min(self.train_bank.degraded_spacings) * f, 4),
                                                     round(max(self.train_bank.degraded_spacings) * f, 4)]
        if config["objective"] == "partdiff":
            # the shipped PartDiff models' rule: DDIM with 4 evaluations beat 8 and the ancestral
            # sampler from K on every plane of 0218 (docs/ablations.md)
            self.model_config["defaults"] = {"sampler": "ddim", "steps": 4}

        torch.manual_seed(self.seed)
        self.network = SR3UNet(**self.net_kwargs).to(self.device)
        self.ema = copy.deepcopy(self.network).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        optim = config["optim"]
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=float(optim["lr"]),
                                           weight_decay=float(optim["weight_decay"]))
        self.step = 0
        self._stream: Any = None
        cropper = PairCropper(task["pairs"], task["factor"], int(config["data"]["crop"]), task["blur_sigma_max"],
                              config["data"]["augment"])
        self.batches = PairBatches(self.train_bank.planes, cropper, int(optim["batch_size"]), self.seed,
                                   self.rank, self.world)
        self.model = self.network
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.network, device_ids=[self.device.index]
                                                 if self.device.type == "cuda" else None)

    # ---------------------------------------------------------------------------- batches

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (high-resolution, condition) batch of this rank at micro-step ``step``:
        ``(B, 1, crop, crop)`` each, on the training device."""
        hr, cond = self.batches[step]
        return hr.to(self.device), cond.to(self.device)

    def _batch_stream(self, first: int) -> Any:
        """Batches of micro-steps ``first, first + 1, ...``: built in ``data.num_workers``
        DataLoader worker processes (0: in this process); the same tensors either way."""
        workers = int(self.config["data"]["num_workers"])
        total = self.max_steps * int(self.config["optim"]["grad_accum"])
        if workers == 0:
            return (self.batches[i] for i in range(first, total))
        loader = torch.utils.data.DataLoader(
            self.batches, batch_size=None, sampler=range(first, total), num_workers=workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=4, persistent_workers=False,
            multiprocessing_context="fork" if "fork" in torch.multiprocessing.get_all_start_methods() else None)
        return iter(loader)

    # ---------------------------------------------------------------------------- checkpoints

    @property
    def checkpoint_dir(self) -> Path:
        return self.output / "checkpoints"

    def checkpoints(self) -> list[tuple[int, Path]]:
        found = []
        for p in self.checkpoint_dir.glob("step_*.pt"):
            m = re.fullmatch(r"step_(\d+)\.pt", p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def save_checkpoint(self) -> Path:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"step_{self.step:08d}.pt"
        blob = {
            "config": self.model_config,
            "model": self.network.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
        }
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(blob, tmp)
        with open(tmp, "rb") as fh:  # make the bytes durable before the rename publishes them
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        for _, old in self.checkpoints()[: -int(self.config["checkpoint"]["keep"])]:
            old.unlink(missing_ok=True)
        return path

    def load_checkpoint(self) -> bool:
        for step, path in reversed(self.checkpoints()):
            try:
                blob = torch.load(path, map_location=self.device, weights_only=True)
            except Exception as exc:  # a damaged file: fall back to the one before
                logger.warning("cannot read checkpoint %s (%s); trying an older one", path, exc)
                continue
            self.network.load_state_dict(blob["model"])
            self.ema.load_state_dict(blob["ema"])
            self.optimizer.load_state_dict(blob["optimizer"])
            self.step = int(blob["step"])
            torch.set_rng_state(blob["rng"]["torch"].cpu())
            logger.info("resumed from %s (step %d)", path, step)
            return True
        return False

    def init_from(self, path: str) -> None:
        """Start from another model's weights (e.g. PartDiff fine-tuned from an SR3 model)."""
        from mrisr.models import load_model

        p = Path(path)
        p = p if p.is_absolute() else Path(self.config["config_dir"]) / p
        loaded = load_model(p)
        if loaded.config["network"] != self.net_kwargs:
            raise ConfigError(f"init_from {p}: its network config differs from this one")
        self.network.load_state_dict(loaded.network.state_dict())
        self.ema.load_state_dict(loaded.network.state_dict())
        logger.info("initialised from %s", p)

    # ---------------------------------------------------------------------------- loop

    def _update_ema(self) -> None:
        decay = min(float(self.config["optim"]["ema_decay"]), (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.network.parameters()):
                e.lerp_(p.detach(), 1.0 - decay)
            for e, b in zip(self.ema.buffers(), self.network.buffers()):
                e.copy_(b)

    def train_step(self) -> float:
        """One optimiser step (with gradient accumulation); returns the mean loss."""
        optim = self.config["optim"]
        accum = int(optim["grad_accum"])
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, float(optim["lr"]), optim["lr_schedule"],
                                        int(optim["warmup_steps"]), int(optim["max_steps"]))
        total = 0.0
        for micro in range(accum):
            sub = self.step * accum + micro
            torch.manual_seed(step_seed(self.seed, sub, self.rank, 2))  # dropout
            hr, cond = next(self._stream) if self._stream is not None else self.batches[sub]
            hr = hr.to(self.device, non_blocking=True)
            cond = cond.to(self.device, non_blocking=True)
            gen = torch.Generator(self.device).manual_seed(step_seed(self.seed, sub, self.rank, 3))
            sync = micro == accum - 1 or not self.distributed
            ctx = self.model.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                    loss = self.inferer(hr, self.model, condition=cond, generator=gen)
                (loss / accum).backward()
            total += float(loss.detach())
        if optim["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), float(optim["grad_clip"]))
        self.optimizer.step()
        self.step += 1
        self._update_ema()
        return total / accum

    def _validation_sampling(self) -> dict[str, Any]:
        """How validation samples: the configured sampler, as ``mrisr upsample`` would run it."""
        cfg = self.config["validation"]
        objective = self.inferer.objective
        if objective == "regression":
            return {"method": "regression", "sampler": "ancestral", "steps": None}
        method = "sr3" if objective == "sr3" and cfg["sampler"] == "ancestral" else "partdiff"
        return {"method": method, "sampler": cfg["sampler"], "steps": cfg["steps"]}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """PSNR / SSIM of the EMA network and of bicubic on whole held-out planes, in normalised
        units (data range 2, the robust [-1, 1] span).

        Every plane of every validation series is used (``validation.slices`` > 0 takes that
        many evenly spaced planes per series instead; for natural images, that many images),
        whole and degraded exactly as the benchmark degrades them, so borders and background
        count as they do for ``mrisr upsample``. Besides the means, the worst plane and the worst series (lowest mean gain
        over bicubic) are reported: a model chosen on a few central crops can fail elsewhere.
        """
        cfg = self.config["validation"]
        task = self.config["task"]
        if len(self.val_bank) == 0:
            return {}
        f = int(task["factor"])
        degrade, (fh, fw) = plane_degradation("in" if task["pairs"] == "in" else "through", f)
        series: dict[str, list[int]] = {}
        for i, source in enumerate(self.val_bank.sources):
            series.setdefault(source, []).append(i)
        wanted = int(cfg["slices"] or 0)
        # natural images: each image is its own "series"; validation.slices > 0 takes that many
        # evenly spaced images, batched by size
        groups = series
        if isinstance(self.val_bank, ImageBank):
            idx = list(range(len(self.val_bank)))
            if 0 < wanted < len(idx):
                idx = [idx[int(round(p))] for p in np.linspace(0, len(idx) - 1, wanted)]
            groups = {}
            for i in idx:
                groups.setdefault(str(self.val_bank.planes[i].shape), []).append(i)
            series = {self.val_bank.sources[i]: [i] for i in idx}
            wanted = 0
        sampling = self._validation_sampling()
        inferer = PartialDiffusionInferer(**self.inferer.config(), autocast_dtype=torch.bfloat16
                                          if self.precision == "bf16" else None)
        rows: list[dict[str, Any]] = []
        evaluations = inferer.plan(**sampling).network_evaluations  # per plane, whatever the batch
        batch = int(cfg["batch_size"])
        for idx in groups.values():
            if 0 < wanted < len(idx):
                idx = [idx[int(round(p))] for p in np.linspace(0, len(idx) - 1, wanted)]
            for lo in range(0, len(idx), batch):
                chunk = idx[lo:lo + batch]
                planes = [self.val_bank.planes[i] for i in chunk]
                h, w = planes[0].shape[-2] // fh * fh, planes[0].shape[-1] // fw * fw
                hr = torch.stack([torch.from_numpy(p[..., :h, :w]) for p in planes]).float()
                hr = hr[:, None] if hr.ndim == 3 else hr  # (B, C, H, W); C = 3 for RGB images
                cond = degrade(hr)
                gens = [torch.Generator(self.device).manual_seed(1000 + i) for i in chunk]
                out = inferer.sample(cond.to(self.device), self.ema, generators=gens, **sampling)
                for j, i in enumerate(chunk):
                    # (H, W) for one channel, (C, H, W) otherwise: SSIM is then the mean over channels
                    a, b, r = (t[j].squeeze(0).float().cpu().numpy() for t in (out, cond, hr))
                    rows.append({"series": self.val_bank.sources[i], "psnr": psnr(a, r, 2.0), "ssim": ssim(a, r, 2.0),
                                 "psnr_bicubic": psnr(b, r, 2.0), "ssim_bicubic": ssim(b, r, 2.0)})
        gains = np.array([r["psnr"] - r["psnr_bicubic"] for r in rows])
        per_series = {s: float(np.mean([r["psnr"] - r["psnr_bicubic"] for r in rows if r["series"] == s]))
                      for s in series}
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic")}
        return {**mean, "gain_db": float(gains.mean()), "gain_worst_plane_db": float(gains.min()),
                "gain_worst_series_db": float(min(per_series.values())), "planes": len(rows),
                "network_evaluations": evaluations}

    def _csv(self, name: str, row: dict[str, Any]) -> None:
        path = self.output / name
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _truncate_logs(self) -> None:
        """After a resume, drop log rows past the checkpoint (they will be redone)."""
        for name in ("log.csv", "validation.csv"):
            path = self.output / name
            if not path.exists():
                continue
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            if not rows:
                continue
            keep = [r for r in rows if int(r["step"]) <= self.step]
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(keep)
            os.replace(tmp, path)

    def run(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        if self.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            for stale in self.checkpoint_dir.glob(".*.tmp"):
                stale.unlink(missing_ok=True)  # a save interrupted by a kill
        if self.checkpoints() and not self.resume:
            raise ConfigError(f"{self.output} already holds checkpoints; pass --resume to continue that run "
                              "or choose another --output")
        resumed = self.resume and self.load_checkpoint()
        if not resumed and self.config["init_from"]:
            self.init_from(self.config["init_from"])
        if self.is_main:
            self._truncate_logs()
            (self.output / "config.json").write_text(json.dumps(self.model_config, indent=2) + "\n")
        writer = None
        if self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.output / "tensorboard"), purge_step=self.step or None)
            except ImportError:  # tensorboard is optional
                writer = None
        log_every = int(self.config["log"]["every"])
        ckpt_every = int(self.config["checkpoint"]["every"])
        val_every = int(self.config["validation"]["every"])
        losses: list[float] = []
        last_loss = float("nan")
        start_step, t0 = self.step, time.perf_counter()
        self._stream = self._batch_stream(self.step * int(self.config["optim"]["grad_accum"]))
        bar = tqdm(total=self.max_steps, initial=self.step, disable=not self.progress, desc="train", unit="step")
        try:
            while self.step < self.max_steps:
                loss = self.train_step()
                if not math.isfinite(loss):
                    raise MrisrError(f"the loss became {loss} at step {self.step}; lower optim.lr or use fp32")
                losses.append(loss)
                last_loss = loss
                bar.update(1)
                rate = (self.step - start_step) / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{loss:.4f}", steps_per_h=f"{3600 * rate:.0f}")
                last = self.step == self.max_steps or (
                    self.max_seconds is not None and time.perf_counter() - t0 >= self.max_seconds)
                if self.is_main and (self.step % log_every == 0 or last):
                    row = {"step": self.step, "loss": float(np.mean(losses)), "lr": self.optimizer.param_groups[0]["lr"],
                           "steps_per_hour": 3600 * rate}
                    self._csv("log.csv", row)
                    if writer is not None:
                        writer.add_scalar("train/loss", row["loss"], self.step)
                    losses = []
                if self.is_main and (self.step % ckpt_every == 0 or last):
                    self.save_checkpoint()
                if self.is_main and (self.step % val_every == 0 or last):
                    metrics = self.validate()
                    if metrics:
                        self._csv("validation.csv", {"step": self.step, **metrics})
                        if writer is not None:
                            for k, v in metrics.items():
                                writer.add_scalar(f"val/{k}", v, self.step)
                        logger.info("step %d validation: %s", self.step, metrics)
                if last:
                    break
        finally:
            self._stream = None
            bar.close()
            if writer is not None:
                writer.close()
        digest = _state_digest(self.network)
        ranks = self.output / "ranks"
        ranks.mkdir(parents=True, exist_ok=True)
        (ranks / f"rank{self.rank}.json").write_text(json.dumps({"rank": self.rank, "step": self.step,
                                                                 "weights_sha256": digest}) + "\n")
        summary: dict[str, Any] = {"step": self.step, "last_loss": last_loss, "weights_sha256": digest}
        if self.is_main:
            model_path = save_model(self.output / "model.safetensors", self.ema, self.model_config)
            summary["model"] = str(model_path)
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()
        return summary


def train(config_path: str | os.PathLike, output: str | os.PathLike | None = None, max_steps: int | None = None,
          resume: bool = False, device: str = "auto", skip_bad: bool = False, progress: bool = True,
          overrides: dict[str, Any] | None = None, max_seconds: float | None = None) -> dict[str, Any]:
    """Train a model from a config file.

    Args:
        config_path: YAML / JSON config (see configs/ and docs/training.md).
        output: run folder (default ``runs/<config name>``).
        max_steps: stop at this step (default ``optim.max_steps``).
        resume: continue from the newest checkpoint in ``output``.
        device: ``auto``, ``cpu`` or ``cuda``.
        skip_bad: skip unreadable datalist entries with a warning instead of stopping.
        progress: show a progress bar (rank 0).
        overrides: config values replacing the file's.
        max_seconds: also stop (with a checkpoint, validation and the exported model) once this
            much training time has passed; the run resumes like any other.

    Returns:
        ``step``, ``last_loss``, ``weights_sha256`` and, on rank 0, ``model`` (the exported
        ``model.safetensors``).
    """
    config = load_config(config_path, overrides)
    out = Path(output) if output else Path("runs") / Path(config_path).stem
    trainer = Trainer(config, out, device=device, resume=resume, max_steps=max_steps, skip_bad=skip_bad,
                      progress=progress, max_seconds=max_seconds)
    return trainer.run()


