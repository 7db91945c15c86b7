"""Where and in what precision networks run: the one place these choices are made."""

from __future__ import annotations

from typing import Literal

import torch

from mrisr.errors import ConfigError

__all__ = ["Device", "Precision", "resolve_device", "resolve_precision", "native_bf16", "available_memory"]

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "bf16", "fp32"]


def resolve_device(device: str) -> torch.device:
    """Turn ``auto`` / ``cpu`` / ``cuda`` into a torch device.

    Raises:
        ConfigError: an unknown name, or ``cuda`` on a machine without a usable GPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but torch sees no CUDA GPU here; use --device cpu or auto")
        return torch.device("cuda")
    raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 runs natively (fast) on ``device``: CUDA GPUs with bf16 support, and CPUs
    with AVX-512 (their bf16 kernels); on an AVX2-only CPU PyTorch emulates bf16 convolutions
    about 25 times slower than fp32 (measured on the project's AMD EPYC, docs/benchmarks.md)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return "AVX512" in torch.backends.cpu.get_cpu_capability()


def resolve_precision(precision: str | None, device: torch.device) -> Literal["bf16", "fp32"]:
    """``auto`` (or None) -> ``bf16`` where it is native on ``device``, else ``fp32``.

    Raises:
        ConfigError: a name other than auto, bf16 or fp32.
    """
    if precision in (None, "auto"):
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in ("bf16", "fp32"):
        raise ConfigError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return precision  # type: ignore[return-value]


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``: free GPU memory, or the kernel's
    MemAvailable on the CPU (None where it cannot be read)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
