"""Test-time self-supervised adaptation (``mrisr upsample --adapt N``): fine-tune a model on
pairs cut from the input volume itself before super-resolving it.

Through-plane: the input's in-plane slices are sharp along both in-plane axes, so averaging
``factor`` lines along either of them simulates the thick-slice profile on this very patient,
scanner and contrast (the ``selfsup`` pairs of the trainer; the idea of SMORE / ECLARE, here as
a fine-tune of the diffusion prior, with the model's own objective: latent alignment for
PartDiff). In-plane: the input's slices degraded by the model's in-plane degradation, which is
only meaningful when the input is itself high-resolution (say, a 0.5 mm scan to be taken to
0.125 mm), because the pairs teach the step from its resolution to a finer one by analogy.

The adapted weights live in memory (``--save-adapted`` writes them); the shipped model file is
never touched.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import replace
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mrisr.errors import ConfigError
from mrisr.io import Volume

__all__ = ["adaptation_planes", "adapt_model", "default_adapt_steps"]

logger = logging.getLogger(__name__)


def default_adapt_steps(device: torch.device) -> int:
    """``--adapt`` without a number: 400 steps on a GPU (seconds), 50 on a CPU (a few minutes)."""
    return 400 if device.type == "cuda" else 50


def adaptation_planes(volume: Volume, plane: str, percentiles: tuple[float, float] | None = None
                      ) -> tuple[list[np.ndarray], str]:
    """The normalised 2D planes the volume offers for self-supervision, and their pair kind.

    Through-plane: every slice (the slice axis is the thick one), once with rows along each
    in-plane axis (``selfsup``). In-plane: every slice (``in``).
    """
    from mrisr.transforms import ROBUST_PERCENTILES, robust_range, training_planes

    data = robust_range(volume.data, *(percentiles or ROBUST_PERCENTILES)).normalise(volume.data).astype(np.float32)
    kind = "selfsup" if plane == "through" else "in"
    return training_planes(data, volume.affine, kind), kind  # type: ignore[arg-type]


def adapt_model(loaded: Any, volume: Volume, plane: str, factor: int, steps: int, seed: int = 0,
                batch_size: int = 4, crop: int = 96, lr: float = 5e-5, device: torch.device | str = "cpu",
                progress: bool = False, callback: Callable[[int, Any], None] | None = None) -> Any:
    """A copy of ``loaded`` fine-tuned for ``steps`` steps on the volume's own pairs.

    Args:
        loaded: a :class:`mrisr.models.LoadedModel`.
        volume: the input volume (its own high-resolution planes are the training data).
        plane, factor: the upsampling the model will do.
        steps: optimiser steps (AdamW, gradient norm clipped at 1).
        seed: crops, flips, noise levels and noise are drawn from it: the same seed, the same
            adapted weights.
        batch_size, crop: pairs per step and their size (memory is bounded by both).
        lr: the learning rate (small: the prior should move, not be replaced).
        device: where to train.
        progress: show a progress bar.
        callback: called as ``callback(step, model)`` after each step with the model so far (a
            LoadedModel sharing the training network: copy what it must keep); for curves.

    Returns:
        A LoadedModel whose config records the adaptation (input, steps, seed, ...).
    """
    from tqdm.auto import tqdm

    from mrisr.data import PairBatches, PairCropper, step_seed
    from mrisr.diffusion import PartialDiffusionInferer

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--adapt takes a number of steps >= 1, got {steps!r}")
    dev = torch.device(device)
    from mrisr.transforms import model_percentiles

    planes, kind = adaptation_planes(volume, plane, model_percentiles(loaded.config))
    size = max(factor * 2, crop - crop % factor)
    cropper = PairCropper(kind, factor, size)
    batches = PairBatches(planes, cropper, batch_size, seed)
    network = copy.deepcopy(loaded.network).float().to(dev)
    for p in network.parameters():
        p.requires_grad_(True)
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr)
    inferer = loaded.inferer
    losses = []
    t0 = time.perf_counter()
    for step in tqdm(range(steps), desc="adapting to the input", unit="step", disable=not progress, delay=1.0,
                     leave=False):
        torch.manual_seed(step_seed(seed, step, 0, 2))
        hr, cond = batches[step]
        gen = torch.Generator(dev).manual_seed(step_seed(seed, step, 0, 3))
        loss = inferer(hr.to(dev), network, condition=cond.to(dev), generator=gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if callback is not None:
            network.eval()
            callback(step + 1, replace(loaded, network=network))
            network.train()
    network.eval()
    for p in network.parameters():
        p.requires_grad_(False)
    seconds = time.perf_counter() - t0
    record = {"input": Path(str(volume.metadata.get("path", ""))).name or None, "steps": steps, "seed": seed,
              "batch_size": batch_size, "crop": size, "lr": lr, "pairs": kind, "planes": len(planes),
              "from_model": loaded.path.name, "loss_first": losses[0], "loss_last": float(np.mean(losses[-10:])),
              "seconds": round(seconds, 1)}
    logger.info("adapted %s to %s: %d steps in %.1f s, loss %.4f -> %.4f", loaded.path.name, record["input"],
                steps, seconds, record["loss_first"], record["loss_last"])
    config = {**loaded.config, "adaptation": record}
    fresh = PartialDiffusionInferer(**inferer.config(), autocast_dtype=inferer.autocast_dtype)
    return replace(loaded, network=network, config=config, inferer=fresh,
                   path=loaded.path.with_name(f"{loaded.path.stem}.adapted{loaded.path.suffix}"))
