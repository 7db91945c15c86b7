"""The training loop: set-up, steps, checkpoints, validation and logs of one run (see the
package docstring for the reproducibility rules)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrisr.data import (ImageBank, PairBatches, PairCropper, PlaneBank, mix_image_files, mix_images, read_datalist,
                        step_seed)
from mrisr.devices import resolve_device, resolve_precision
from mrisr.diffusion import PartialDiffusionInferer
from mrisr.errors import ConfigError, MrisrError
from mrisr.images import IMAGE_NORMALISATION
from mrisr.models import model_config, save_model, trained_steps
from mrisr.networks import SR3UNet, network_config
from mrisr.training.checkpoints import list_checkpoints, read_latest_checkpoint, write_checkpoint
from mrisr.training.config import learning_rate, load_config
from mrisr.training.logs import append_row, drop_rows_after
from mrisr.training.validation import validate_network

__all__ = ["Trainer", "train"]

logger = logging.getLogger(__name__)

#: keys of a model file's config that describe where its weights came from and stay true of every
#: model continued from them (``pipelines/widen_model.py`` writes ``widened_from``)
INHERITED_KEYS = ("widened_from",)


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
        if config["optim"]["lr_schedule"] == "cosine" and self.max_steps > int(config["optim"]["max_steps"]):
            raise ConfigError(f"the cosine schedule reaches lr 0 at optim.max_steps = {config['optim']['max_steps']}; "
                              f"steps beyond it up to --max-steps {self.max_steps} would learn nothing: raise "
                              f"optim.max_steps instead (--set optim.max_steps={self.max_steps})")
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
            loss=config["optim"]["loss"], prediction=config["prediction"])
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
            if data["mix_images"]:
                files = mix_image_files(data["mix_images"], config.get("config_dir", "."))
                planes, sources = mix_images(files, len(self.train_bank), float(data["mix_fraction"]))
                logger.info("mixing %d natural images (%d planes) into %d training planes: %.1f %% of draws",
                            len(files), len(planes), len(self.train_bank), 100.0 * len(planes)
                            / (len(planes) + len(self.train_bank)))
                self.train_bank.planes += planes
                self.train_bank.sources += sources
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
        self.memory_format = torch.channels_last if config["optim"]["channels_last"] else torch.contiguous_format
        self.network = self.network.to(memory_format=self.memory_format)
        self.ema = copy.deepcopy(self.network).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        optim = config["optim"]
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=float(optim["lr"]),
                                           weight_decay=float(optim["weight_decay"]))
        self.step = 0
        #: optimiser steps behind the weights this run started from (``init_from``), so that a
        #: model continued from another one says how long its weights were trained in all
        self.steps_before = 0
        self._stream: Any = None
        cropper = PairCropper(task["pairs"], task["factor"], int(config["data"]["crop"]), task["blur_sigma_max"],
                              config["data"]["augment"], config["data"]["zoom_min"], config["data"]["gamma_max"],
                              config["data"]["zoom_axes"], config["data"]["rotate_max"], config["data"]["zoom_kind"],
                              config["data"]["cutblur"])
        self.batches = PairBatches(self.train_bank.planes, cropper, int(optim["batch_size"]), self.seed,
                                   self.rank, self.world)
        self.model = self.network
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.network, device_ids=[self.device.index]
                                                 if self.device.type == "cuda" else None)
        if optim["compile"]:
            # the parameters stay self.network's: checkpoints and the EMA never see the wrapper
            self.model = torch.compile(self.model)

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
        return list_checkpoints(self.checkpoint_dir)

    def save_checkpoint(self) -> Path:
        blob = {
            "config": self.model_config,
            "model": self.network.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "steps_before": self.steps_before,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
        }
        return write_checkpoint(self.checkpoint_dir, self.step, blob, int(self.config["checkpoint"]["keep"]))

    def load_checkpoint(self) -> bool:
        blob = read_latest_checkpoint(self.checkpoint_dir, self.device)
        if blob is None:
            return False
        self.network.load_state_dict(blob["model"])
        self.ema.load_state_dict(blob["ema"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.step = int(blob["step"])
        self.steps_before = int(blob.get("steps_before", 0))
        self._inherit(blob["config"])
        torch.set_rng_state(blob["rng"]["torch"].cpu())
        return True

    def init_from(self, path: str) -> None:
        """Start from another model's weights (e.g. PartDiff fine-tuned from an SR3 model)."""
        from mrisr.models import load_model

        p = Path(path)
        p = p if p.is_absolute() else Path(self.config["config_dir"]) / p
        loaded = load_model(p)
        def weights_of(kwargs: dict[str, Any]) -> dict[str, Any]:  # dropout has no weights: it may change
            return {k: v for k, v in kwargs.items() if k != "dropout"}

        if weights_of(loaded.config["network"]) != weights_of(self.net_kwargs):
            raise ConfigError(f"init_from {p}: its network config differs from this one")
        state = loaded.network.state_dict()
        if loaded.objective == "regression" and self.inferer.objective != "regression":
            # a regression model saw zeros in the noisy channels: its weights there never learnt
            # anything. Zeroed, the start computes exactly what the regression model computed at
            # level 0 whatever the noisy image (its output still shifts with the level embedding)
            half = self.net_kwargs["in_channels"] // 2
            state = dict(state)
            state["stem.weight"] = state["stem.weight"].clone()
            state["stem.weight"][:, half:] = 0
            logger.info("the noisy-image inputs of the regression model's first convolution set to zero")
        self.network.load_state_dict(state)
        self.ema.load_state_dict(state)
        self.steps_before = trained_steps(loaded.config)
        self._inherit(loaded.config)
        logger.info("initialised from %s", p)

    def _inherit(self, config: dict[str, Any]) -> None:
        """Carry the provenance of the weights this run started from (``INHERITED_KEYS``: e.g. the
        narrow model a widened file was made from) into this run's model file."""
        for key in INHERITED_KEYS:
            if config.get(key) is not None:
                self.model_config[key] = config[key]

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
                                        int(optim["warmup_steps"]), int(optim["max_steps"]),
                                        int(optim.get("decay_steps", 0)))
        total = 0.0
        for micro in range(accum):
            sub = self.step * accum + micro
            torch.manual_seed(step_seed(self.seed, sub, self.rank, 2))  # dropout
            hr, cond = next(self._stream) if self._stream is not None else self.batches[sub]
            hr = hr.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            cond = cond.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
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
        return {"method": method, "sampler": cfg["sampler"], "steps": cfg["steps"],
                "aligned": bool(cfg["aligned_jumps"]) and cfg["sampler"] == "ddim"}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation of the EMA network on every held-out plane (:func:`validate_network`)."""
        return validate_network(self.ema, self.val_bank, self.config, self.inferer, self._validation_sampling(),
                                self.device, self.precision)

    def _csv(self, name: str, row: dict[str, Any]) -> None:
        append_row(self.output / name, row)

    def _truncate_logs(self) -> None:
        """After a resume, drop log rows past the checkpoint (they will be redone)."""
        for name in ("log.csv", "validation.csv"):
            drop_rows_after(self.output / name, self.step)

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
            model_path = save_model(self.output / "model.safetensors", self.ema,
                                    {**self.model_config, "trained_steps": self.steps_before + self.step})
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
