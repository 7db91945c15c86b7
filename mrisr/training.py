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
import glob
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrisr.diffusion import INFERENCE_SCHEDULE, OBJECTIVES, TRAINING_SCHEDULE, PartialDiffusionInferer
from mrisr.errors import ConfigError, InputError, MrisrError
from mrisr.evaluation import psnr, ssim
from mrisr.models import model_config, save_model
from mrisr.networks import SR3UNet, network_config
from mrisr.transforms import (PAIR_KINDS, InPlaneDegrade, InPlanePaird, MrisrReader, RobustNormalised,
                              ThroughPlaneDegrade, ThroughPlanePaird, training_planes)

__all__ = ["DEFAULTS", "load_config", "load_datalist", "read_datalist", "DataEntry", "PlaneBank", "batch_indices", "Trainer",
           "train"]

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "name": "mrisr",
    "seed": 0,
    "objective": "partdiff",
    "k_noise_level": 0.25,
    "task": {"plane": "in", "factor": 4, "pairs": "in", "blur_sigma_max": 1.5},
    "data": {"datalist": None, "glob": None, "validation_glob": None, "planes": None,
             "normalisation": {"kind": "robust", "lower": 0.5, "upper": 99.5}, "crop": 96},
    "network": {"preset": "small"},
    "schedules": {"train": dict(TRAINING_SCHEDULE), "inference": dict(INFERENCE_SCHEDULE)},
    "optim": {"lr": 1e-4, "weight_decay": 0.0, "batch_size": 8, "grad_accum": 1, "ema_decay": 0.999,
              "precision": "bf16", "max_steps": 10000, "loss": "l1", "grad_clip": 1.0},
    "checkpoint": {"every": 200, "keep": 3},
    "validation": {"every": 1000, "slices": 4, "crop": 128, "sampler": "ddim", "steps": 8},
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


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a training config (YAML or JSON, MONAI ``ConfigParser`` syntax: ``@ref``, ``$expr``)
    and fill in the defaults.

    Raises:
        ConfigError: missing file, unknown keys or invalid values.
    """
    from monai.bundle import ConfigParser

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config not found: {p}")
    parser = ConfigParser()
    try:
        parser.read_config(str(p))
        raw = parser.get_parsed_content(instantiate=True)
    except Exception as exc:
        raise ConfigError(f"{p} is not a valid config: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must hold a mapping of settings")
    # ConfigParser adds its own "_meta_"; keys starting with "_" are MONAI's, not settings
    config = _merge(DEFAULTS, {k: v for k, v in raw.items() if not str(k).startswith("_")})
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
    crop = config["data"]["crop"]
    if not isinstance(crop, int) or crop < 8 or crop % task["factor"]:
        raise ConfigError(f"data.crop must be an integer >= 8 divisible by task.factor {task['factor']}, got {crop!r}")
    optim = config["optim"]
    for key in ("batch_size", "grad_accum", "max_steps"):
        if not isinstance(optim[key], int) or optim[key] < 1:
            raise ConfigError(f"optim.{key} must be an integer >= 1, got {optim[key]!r}")
    if optim["precision"] not in ("bf16", "fp32"):
        raise ConfigError(f"optim.precision must be bf16 or fp32, got {optim['precision']!r}")
    if not 0.0 <= float(optim["ema_decay"]) < 1.0:
        raise ConfigError(f"optim.ema_decay must be in [0, 1), got {optim['ema_decay']}")
    for key in ("every", "keep"):
        if not isinstance(config["checkpoint"][key], int) or config["checkpoint"][key] < 1:
            raise ConfigError(f"checkpoint.{key} must be an integer >= 1")
    if not config["data"]["datalist"] and not config["data"]["glob"]:
        raise ConfigError("the config needs data.datalist (decathlon JSON) or data.glob")


# --------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class DataEntry:
    """One volume of a datalist."""

    image: str
    patient: str
    plane: str | None = None
    series: str | None = None


def _entries(items: list[Any], base: Path, what: str) -> list[DataEntry]:
    out = []
    for n, item in enumerate(items):
        if isinstance(item, str):
            item = {"image": item}
        if not isinstance(item, dict) or "image" not in item:
            raise ConfigError(f"datalist {what} entry {n} needs an 'image' path")
        image = Path(item["image"])
        image = image if image.is_absolute() else (base / image)
        patient = str(item.get("patient") or image.parent.name)
        out.append(DataEntry(str(image), patient, item.get("plane"), item.get("series")))
    return out


def load_datalist(path: str | os.PathLike) -> tuple[list[DataEntry], list[DataEntry]]:
    """The ``training`` and ``validation`` entries of a decathlon-format JSON datalist."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"datalist not found: {path}")
    try:
        blob = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"datalist {path} is not valid JSON: {exc}") from exc
    if not isinstance(blob, dict):
        raise ConfigError(f"datalist {path} must be a JSON object with 'training' / 'validation' lists")
    return (_entries(blob.get("training", []), path.parent, "training"),
            _entries(blob.get("validation", []), path.parent, "validation"))


def read_datalist(config: dict[str, Any]) -> tuple[list[DataEntry], list[DataEntry]]:
    """Training and validation entries from ``data.datalist`` (MONAI decathlon JSON: lists
    ``training`` and ``validation`` of ``{"image": path, "patient": id, "plane": ...}``, paths
    relative to the JSON file) or ``data.glob`` / ``data.validation_glob``.

    Entries are filtered by ``data.planes`` when set. A patient may not be in both lists.
    """
    data = config["data"]
    base = Path(config.get("config_dir", "."))
    if data["datalist"]:
        path = Path(data["datalist"])
        train, val = load_datalist(path if path.is_absolute() else base / path)
    else:
        def expand(pattern: str | None) -> list[str]:
            if not pattern:
                return []
            pat = pattern if Path(pattern).is_absolute() else str(base / pattern)
            return sorted(glob.glob(pat))

        train = _entries(expand(data["glob"]), base, "training")
        val = _entries(expand(data["validation_glob"]), base, "validation")
    if data["planes"]:
        wanted = set(data["planes"])
        train = [e for e in train if e.plane in wanted]
        val = [e for e in val if e.plane in wanted]
    overlap = {e.patient for e in train} & {e.patient for e in val}
    if overlap:
        raise ConfigError(f"patients in both training and validation: {', '.join(sorted(overlap))}")
    if not train:
        raise ConfigError("the datalist has no training entries (after filtering by data.planes)")
    return train, val


class PlaneBank:
    """The normalised 2D planes of a list of volumes, held in memory.

    Volumes are read by MONAI's ``LoadImaged`` with :class:`~mrisr.transforms.MrisrReader`
    (the readers of :mod:`mrisr.io`) and normalised by ``RobustNormalised``, so each arrives as
    a MetaTensor carrying its affine, from which the planes are cut. Every entry is read and
    checked before training starts, so a bad file is reported with its path at once, not hours
    later.
    """

    def __init__(self, entries: list[DataEntry], kind: str, lower: float, upper: float, skip_bad: bool = False):
        from monai.transforms import Compose, LoadImaged

        self.planes: list[np.ndarray] = []
        self.sources: list[str] = []
        problems = []
        for entry in entries:
            reader = MrisrReader(series=entry.series)
            load = Compose([LoadImaged("image", reader=reader, image_only=True),
                            RobustNormalised("image", lower=lower, upper=upper)])
            try:
                image = load({"image": entry.image})["image"]
            except Exception as exc:  # LoadImage hides the reader's error behind a generic one
                problems.append(f"{entry.image}: {reader.last_error or str(exc).splitlines()[0]}")
                continue
            affine = image.affine.numpy()
            for plane in training_planes(image.numpy(), affine, kind):  # type: ignore[arg-type]
                self.planes.append(plane)
                self.sources.append(entry.image)
        if problems:
            if not skip_bad:
                raise InputError(f"{len(problems)} datalist entries cannot be used (pass --skip-bad to skip them): "
                                 + "; ".join(problems))
            for problem in problems:
                logger.warning("skipping %s", problem)
        if entries and not self.planes:
            raise InputError("no usable volumes in the datalist")

    def __len__(self) -> int:
        return len(self.planes)


def batch_indices(step: int, rank: int, world: int, batch: int, n: int, seed: int) -> list[int]:
    """Plane indices of one rank's batch at ``step``: consecutive positions of a stream of
    per-epoch permutations, each rank taking its own shard (DistributedSampler semantics),
    computed from the step alone so a resumed run draws the same batches."""
    out = []
    for j in range(batch):
        position = (step * world + rank) * batch + j
        epoch, offset = divmod(position, n)
        perm = np.random.default_rng([seed, epoch, 0xDA7A]).permutation(n)
        out.append(int(perm[offset]))
    return out


def _step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(1)[0])


# --------------------------------------------------------------------------------------------
# the trainer


def _state_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Trainer:
    """Trains one model from a config; see :func:`train` for the arguments."""

    def __init__(self, config: dict[str, Any], output: Path, device: str = "auto", resume: bool = False,
                 max_steps: int | None = None, skip_bad: bool = False, progress: bool = True) -> None:
        import torch.distributed as dist

        self.config = config
        self.output = Path(output)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but torch sees no CUDA GPU here")
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")
        self.device = torch.device(f"cuda:{local_rank}" if device == "cuda" else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.distributed = self.world > 1
        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        self.max_steps = int(max_steps or config["optim"]["max_steps"])
        self.skip_bad = skip_bad
        self.resume = resume
        self.seed = int(config["seed"])

        task = config["task"]
        norm = config["data"]["normalisation"]
        self.net_kwargs = network_config(**{k: v for k, v in config["network"].items()})
        self.inferer = PartialDiffusionInferer(
            objective=config["objective"], train_schedule=config["schedules"]["train"],
            inference_schedule=config["schedules"]["inference"], k_noise_level=config["k_noise_level"],
            loss=config["optim"]["loss"])
        self.model_config = model_config(
            self.net_kwargs, self.inferer, plane=task["plane"], factor=task["factor"],
            normalisation=dict(norm),
            degradation={"pairs": task["pairs"], "blur_sigma_max": task["blur_sigma_max"] if task["pairs"] == "in" else 0,
                         "description": ("anti-aliased bicubic downsampling + Gaussian blur" if task["pairs"] == "in"
                                         else f"average of {task['factor']} lines along rows")},
            training={k: v for k, v in config.items() if k != "config_dir"})

        train_entries, val_entries = read_datalist(config)
        self.train_bank = PlaneBank(train_entries, task["pairs"], norm["lower"], norm["upper"], skip_bad)
        val_kind = "through" if task["pairs"] == "selfsup" and any(e.plane in ("cor", "sag") for e in val_entries) \
            else task["pairs"]
        self.val_bank = PlaneBank(val_entries, val_kind, norm["lower"], norm["upper"], skip_bad)

        torch.manual_seed(self.seed)
        self.network = SR3UNet(**self.net_kwargs).to(self.device)
        self.ema = copy.deepcopy(self.network).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        optim = config["optim"]
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=float(optim["lr"]),
                                           weight_decay=float(optim["weight_decay"]))
        self.step = 0
        self.pair = self._pair_transform(task)
        self.model = self.network
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.network, device_ids=[self.device.index]
                                                 if self.device.type == "cuda" else None)

    # ---------------------------------------------------------------------------- pairs

    def _pair_transform(self, task: dict[str, Any]) -> Any:
        from monai.transforms import Compose, RandFlipd, RandSpatialCropd, SpatialPadd

        crop = int(self.config["data"]["crop"])
        keys = ["hr", "condition"]
        if task["pairs"] == "in":
            pair = InPlanePaird("hr", task["factor"], blur_sigma_max=task["blur_sigma_max"])
            flips = [RandFlipd(keys, prob=0.5, spatial_axis=1)]
        else:
            pair = ThroughPlanePaird("hr", task["factor"])
            # rows run S->I in coronal / sagittal planes and I->S in axial reformats: flip both ways
            flips = [RandFlipd(keys, prob=0.5, spatial_axis=1), RandFlipd(keys, prob=0.5, spatial_axis=0)]
        return Compose([pair, SpatialPadd(keys, spatial_size=(crop, crop), mode="reflect"),
                        RandSpatialCropd(keys, roi_size=(crop, crop), random_size=False), *flips])

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (high-resolution, condition) batch of this rank at ``step``: ``(B, 1, crop, crop)``."""
        bs = int(self.config["optim"]["batch_size"])
        idx = batch_indices(step, self.rank, self.world, bs, len(self.train_bank), self.seed)
        self.pair.set_random_state(seed=_step_seed(self.seed, step, self.rank, 1) % (2**32))
        hrs, conds = [], []
        for i in idx:
            d = self.pair({"hr": torch.from_numpy(self.train_bank.planes[i])[None]})
            hrs.append(torch.as_tensor(d["hr"]))
            conds.append(torch.as_tensor(d["condition"]))
        return (torch.stack(hrs).float().to(self.device), torch.stack(conds).float().to(self.device))

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
        total = 0.0
        for micro in range(accum):
            sub = self.step * accum + micro
            torch.manual_seed(_step_seed(self.seed, sub, self.rank, 2))  # dropout
            hr, cond = self.batch(sub)
            gen = torch.Generator(self.device).manual_seed(_step_seed(self.seed, sub, self.rank, 3))
            sync = micro == accum - 1 or not self.distributed
            ctx = self.model.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=optim["precision"] == "bf16"):
                    loss = self.inferer(hr, self.model, condition=cond, generator=gen)
                (loss / accum).backward()
            total += float(loss.detach())
        if optim["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), float(optim["grad_clip"]))
        self.optimizer.step()
        self.step += 1
        self._update_ema()
        return total / accum

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """PSNR / SSIM of samples from the EMA network and of bicubic on held-out planes, in
        normalised units (data range 2, the robust [-1, 1] span), on centre crops."""
        cfg = self.config["validation"]
        task = self.config["task"]
        n = len(self.val_bank)
        if n == 0:
            return {}
        picks = np.linspace(0.2 * n, 0.8 * n, num=min(int(cfg["slices"]), n)).astype(int)
        crop = int(cfg["crop"]) // task["factor"] * task["factor"]
        if task["pairs"] == "in":
            degrade: Any = InPlaneDegrade(task["factor"], blur_sigma_max=0.0)
        else:
            degrade = ThroughPlaneDegrade(task["factor"])
        hrs, conds = [], []
        for i in picks:
            plane = torch.from_numpy(self.val_bank.planes[i])
            h, w = plane.shape
            c = min(crop, h // task["factor"] * task["factor"], w // task["factor"] * task["factor"])
            top, left = (h - c) // 2 // task["factor"] * task["factor"], (w - c) // 2
            hr = plane[top:top + c, left:left + c][None]
            hrs.append(hr)
            conds.append(degrade(hr))
        if len({tuple(h.shape) for h in hrs}) > 1:
            side = min(min(h.shape[-2:]) for h in hrs)
            hrs = [h[..., :side, :side] for h in hrs]
            conds = [c[..., :side, :side] for c in conds]
        hr = torch.stack(hrs).float().to(self.device)
        cond = torch.stack(conds).float().to(self.device)
        method = "regression" if self.inferer.objective == "regression" else \
            ("sr3" if self.inferer.objective == "sr3" and cfg["sampler"] == "ancestral" else "partdiff")
        gens = [torch.Generator(self.device).manual_seed(1000 + i) for i in range(len(hr))]
        inferer = PartialDiffusionInferer(**self.inferer.config(), autocast_dtype=torch.bfloat16
                                          if self.config["optim"]["precision"] == "bf16" else None)
        out = inferer.sample(cond, self.ema, method=method, sampler=cfg["sampler"], steps=cfg["steps"],
                             generators=gens)
        a, b, r = out[:, 0].cpu().numpy(), cond[:, 0].cpu().numpy(), hr[:, 0].cpu().numpy()
        return {"psnr": psnr(a, r, 2.0), "ssim": ssim(a, r, 2.0), "psnr_bicubic": psnr(b, r, 2.0),
                "ssim_bicubic": ssim(b, r, 2.0), "network_evaluations": inferer.network_evaluations}

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
                if self.is_main and (self.step % log_every == 0 or self.step == self.max_steps):
                    row = {"step": self.step, "loss": float(np.mean(losses)), "lr": self.optimizer.param_groups[0]["lr"],
                           "steps_per_hour": 3600 * rate}
                    self._csv("log.csv", row)
                    if writer is not None:
                        writer.add_scalar("train/loss", row["loss"], self.step)
                    losses = []
                if self.is_main and (self.step % ckpt_every == 0 or self.step == self.max_steps):
                    self.save_checkpoint()
                if self.is_main and (self.step % val_every == 0 or self.step == self.max_steps):
                    metrics = self.validate()
                    if metrics:
                        self._csv("validation.csv", {"step": self.step, **metrics})
                        if writer is not None:
                            for k, v in metrics.items():
                                writer.add_scalar(f"val/{k}", v, self.step)
                        logger.info("step %d validation: %s", self.step, metrics)
        finally:
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
          overrides: dict[str, Any] | None = None) -> dict[str, Any]:
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

    Returns:
        ``step``, ``last_loss``, ``weights_sha256`` and, on rank 0, ``model`` (the exported
        ``model.safetensors``).
    """
    config = load_config(config_path, overrides)
    out = Path(output) if output else Path("runs") / Path(config_path).stem
    trainer = Trainer(config, out, device=device, resume=resume, max_steps=max_steps, skip_bad=skip_bad,
                      progress=progress)
    return trainer.run()


