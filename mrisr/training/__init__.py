"""Training: configs (:mod:`~mrisr.training.config`) and the step loop with checkpoints that
survive SIGKILL, validation and DDP (:mod:`~mrisr.training.trainer`).

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

from mrisr.data import DataEntry, PlaneBank, batch_indices, load_datalist, read_datalist
from mrisr.training.config import DEFAULTS, LR_SCHEDULES, learning_rate, load_config
from mrisr.training.trainer import Trainer, train

# the data names stay importable from here (they moved to mrisr.data)
__all__ = ["DEFAULTS", "LR_SCHEDULES", "load_config", "learning_rate", "load_datalist", "read_datalist", "DataEntry",
           "PlaneBank", "batch_indices", "Trainer", "train"]
