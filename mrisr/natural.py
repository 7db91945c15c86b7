"""Natural-image comparisons behind the pipelines of the paper's Sec. 5.3 and 5.5.2-5.5.3.

The benchmark (``pipelines/benchmark_natural.py``) and the downstream pipelines
(``pipelines/downstream_classification.py``, ``pipelines/downstream_face_verification.py``)
share these steps: the test protocol (centre square -> reference, anti-aliased bicubic
downsampling -> 8-bit input, :func:`mrisr.images.reference_and_input`), the rows of the paper's tables
(:func:`natural_runs`) and running each row on a set of inputs (:func:`super_resolve`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mrisr.errors import ConfigError, InputError, first_line
from mrisr.images import read_image, reference_and_input
from mrisr.inference import upsample_images

__all__ = ["NaturalRun", "natural_runs", "add_run_arguments", "runs_from_arguments", "load_test_pairs", "super_resolve",
           "load_user_network", "network_input", "write_summary"]


@dataclass
class NaturalRun:
    """One row of a natural-image table: a method, its model and sampling options."""

    label: str
    method: str
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def natural_runs(regression_model: str | None = None, sr3_model: str | None = None,
                 partdiff_models: list[str] | None = None, ddim_steps: int = 4,
                 sr3_partial_k: tuple[int, ...] = (25, 50), self_ensemble: bool = False) -> list[NaturalRun]:
    """The paper's rows for the models given: bicubic; regression (``self_ensemble``: also the
    mean of its outputs over the image's eight turns and flips); SR3 with T = 100; SR3 sampled
    partially from ``sr3_partial_k`` with no alignment; each PartDiff model from its own K
    (ancestral, the paper's) and with DDIM ``ddim_steps`` (0: not)."""
    from mrisr.models import load_model

    runs = [NaturalRun("Bicubic", "bicubic")]
    if regression_model:
        runs.append(NaturalRun("Regression", "regression", regression_model))
        if self_ensemble:
            runs.append(NaturalRun("Regression, self-ensemble", "regression", regression_model,
                                   {"self_ensemble": True}))
    if sr3_model:
        runs.append(NaturalRun("SR3 (T = 100)", "sr3", sr3_model))
        runs += [NaturalRun(f"SR3 partial, no alignment (K = {k})", "partdiff", sr3_model, {"steps": k})
                 for k in sr3_partial_k]
    for path in partdiff_models or []:
        k = load_model(path).inferer.k
        runs.append(NaturalRun(f"PartDiff (K = {k})", "partdiff", path, {"sampler": "ancestral"}))
        if ddim_steps:
            runs.append(NaturalRun(f"PartDiff (K = {k}), DDIM {min(ddim_steps, k)}", "partdiff", path,
                                   {"sampler": "ddim", "steps": min(ddim_steps, k)}))
    return runs


def add_run_arguments(parser: Any, batch_size: int = 8) -> None:
    """The options every natural-image pipeline takes: the models of the rows
    (:func:`natural_runs`), DDIM steps, batch size, seed and device."""
    parser.add_argument("--regression-model", help="a natural-image regression model (.safetensors)")
    parser.add_argument("--sr3-model", help="a natural-image SR3 model (also sampled partially from K = 25, 50)")
    parser.add_argument("--partdiff-model", nargs="+", help="PartDiff models, each run from its own K")
    parser.add_argument("--ddim-steps", type=int, default=4, help="also run PartDiff with DDIM (0: not)")
    parser.add_argument("--self-ensemble", action="store_true",
                        help="also run the regression model as the mean over the image's eight turns and flips "
                             "(8 network passes per image)")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")


def runs_from_arguments(args: Any) -> list[NaturalRun]:
    """:func:`natural_runs` for the options of :func:`add_run_arguments`."""
    return natural_runs(args.regression_model, args.sr3_model, args.partdiff_model, args.ddim_steps,
                        self_ensemble=args.self_ensemble)


def load_test_pairs(files: list[str | os.PathLike], size: int | None, factor: int, channels: int = 3
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """References ``(N, C, S, S)`` and inputs ``(N, C, S / f, S / f)`` (0..255) of image files.

    Raises:
        InputError: an unreadable file (named), or references of different sizes without ``size``.
    """
    pairs = [reference_and_input(read_image(f, channels), size, factor) for f in files]
    shapes = sorted({p[0].shape for p in pairs})
    if len(shapes) > 1:
        raise InputError(f"the images' centre squares differ in size ({shapes[0][-1]} to {shapes[-1][-1]} pixels); "
                         "give a size to resize them to one")
    return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))


def super_resolve(runs: list[NaturalRun], lowres: torch.Tensor, factor: int, device: str = "cpu",
                  batch_size: int = 8, seed: int = 0) -> Iterator[tuple[NaturalRun, torch.Tensor, dict[str, Any]]]:
    """Each run's outputs for ``lowres`` ``(N, C, h, w)`` (0..255), with ``network_evaluations``
    per image and ``seconds_per_image``. Image ``i`` draws its noise from ``(seed, i)`` whatever
    the batch size."""
    for run in runs:
        t0 = time.perf_counter()
        # one call per run: the model is loaded once, upsample_images batches the images
        out, upsampler = upsample_images(lowres, factor, run.method, device=device, batch_size=batch_size, seed=seed,
                                         **({"model": run.model} if run.model else {}), **run.options)
        evaluations = int(getattr(upsampler, "steps_run", 0)) if run.model else 0
        yield run, out, {"network_evaluations": evaluations,
                         "seconds_per_image": (time.perf_counter() - t0) / max(1, lowres.shape[0])}


def load_user_network(path: str | os.PathLike | None = None, arch: str | None = None,
                      weights: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A downstream network the user brings (a classifier, a face-embedding network).

    Either a TorchScript file (``path``: ``torch.jit.load``, no Python pickle), or a torchvision
    architecture name (``arch``, e.g. ``resnet50``) with a local state-dict file (``weights``,
    read with ``weights_only=True``). Nothing is downloaded.

    Raises:
        ConfigError: neither or both forms given; torchvision missing or no such architecture.
        InputError: a missing or unreadable file, or weights that do not fit the architecture.
    """
    from pathlib import Path

    if (path is None) == (arch is None):
        raise ConfigError("give a TorchScript network file, or a torchvision architecture name with --weights")
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{p}: no such file")
        try:
            net = torch.jit.load(str(p), map_location=device)
        except Exception as exc:  # not a TorchScript archive
            raise InputError(f"{p}: not a TorchScript network ({first_line(exc, 200)})") from None
        return net.eval()
    if weights is None:
        raise ConfigError(f"--arch {arch} needs --weights FILE (its state dict; nothing is downloaded)")
    try:
        import torchvision
    except Exception as exc:  # missing, or built for another torch
        raise ConfigError(f"--arch needs torchvision matching your torch ({first_line(exc, 120)}); "
                          "or export the network to TorchScript") from None
    build = getattr(torchvision.models, str(arch), None)
    if not callable(build):
        raise ConfigError(f"torchvision has no architecture {arch!r}")
    w = Path(weights)
    if not w.is_file():
        raise InputError(f"--weights {w}: no such file")
    try:
        state = torch.load(w, map_location="cpu", weights_only=True)
        net = build(weights=None)
        net.load_state_dict(state)
    except Exception as exc:
        raise InputError(f"--weights {w}: not weights of {arch} ({first_line(exc, 200)})") from None
    return net.to(device).eval()


def network_input(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                  size: int | None = None) -> torch.Tensor:
    """Images (0..255) as a downstream network takes them: scaled to 0..1, optionally resized
    (anti-aliased bicubic) to ``size``, then ``(x - mean) / std`` per channel."""
    import torch.nn.functional as F

    x = images.float() / 255.0
    if size and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    m = torch.tensor(mean, dtype=x.dtype).reshape(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).reshape(1, -1, 1, 1)
    return (x - m) / s


def write_summary(out_dir: str | os.PathLike, meta: dict[str, Any], lines: list[str]) -> None:
    """A pipeline's ``summary.json`` (``meta``) and ``summary.md`` (``lines``, also printed),
    written atomically into ``out_dir``."""
    from pathlib import Path

    from mrisr.io import write_bytes, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(meta, out / "summary.json")
    write_bytes(("\n".join(lines) + "\n").encode(), out / "summary.md")
    print("\n".join(lines))
