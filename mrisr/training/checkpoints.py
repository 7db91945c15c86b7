"""Checkpoints that survive SIGKILL: written to a temporary file, made durable, renamed into
place, the oldest beyond ``keep`` removed; read back newest first, skipping a damaged one."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["list_checkpoints", "write_checkpoint", "read_latest_checkpoint"]

logger = logging.getLogger(__name__)


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``step_*.pt`` files in ``folder``, oldest first."""
    found = []
    for p in folder.glob("step_*.pt"):
        m = re.fullmatch(r"step_(\d+)\.pt", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def write_checkpoint(folder: Path, step: int, blob: dict[str, Any], keep: int) -> Path:
    """Write ``blob`` as ``folder/step_<step>.pt`` atomically and durably; keep the newest ``keep``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:08d}.pt"
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(blob, tmp)
    with open(tmp, "rb") as fh:  # make the bytes durable before the rename publishes them
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    for _, old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def read_latest_checkpoint(folder: Path, device: torch.device | str) -> dict[str, Any] | None:
    """The newest readable checkpoint in ``folder`` (tensors only: ``weights_only``), or None."""
    for step, path in reversed(list_checkpoints(folder)):
        try:
            blob = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # a damaged file: fall back to the one before
            logger.warning("cannot read checkpoint %s (%s); trying an older one", path, exc)
            continue
        logger.info("resumed from %s (step %d)", path, step)
        return blob
    return None
