"""The paper's Fig. 3 on real data: where the diffused LR and HR images become indistinguishable.

For every step ``t`` of a schedule, both images of each pair are diffused with the same noise,
``x_t = g_t x_0 + sqrt(1 - g_t^2) eps``, and compared with the clean HR image:
``PSNR(x_t^LR, x_0^HR)`` and ``PSNR(x_t^HR, x_0^HR)``. The curves start apart (the LR image is
worse) and meet as noise dominates; the first step where they are within a tolerance is the
smallest K at which partial diffusion can start from the LR image without a visible gap.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mrisr.diffusion import NoiseSchedule, inference_schedule
from mrisr.metrics import psnr
from mrisr.transforms import plane_degradation

__all__ = ["ConvergenceCurve", "convergence_curve", "write_convergence_report"]


@dataclass
class ConvergenceCurve:
    """PSNR against the clean HR image of diffused LR and HR images, per step."""

    factor: int
    kind: str
    steps: np.ndarray  # (T + 1,) 0..T
    psnr_lr: np.ndarray  # mean over planes
    psnr_hr: np.ndarray
    tolerance_db: float
    n_planes: int
    start: str = "LR"  # what was diffused: the LR image, or e.g. a regression output

    @property
    def meeting_k(self) -> int | None:
        """First step where the two curves are within the tolerance (None if never)."""
        gap = np.abs(self.psnr_hr - self.psnr_lr)
        hits = np.nonzero(gap[1:] <= self.tolerance_db)[0]
        return int(hits[0] + 1) if hits.size else None

    def to_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "kind": self.kind, "n_planes": self.n_planes, "start": self.start,
                "tolerance_db": self.tolerance_db, "meeting_k": self.meeting_k,
                "steps": self.steps.tolist(), "psnr_lr": np.round(self.psnr_lr, 4).tolist(),
                "psnr_hr": np.round(self.psnr_hr, 4).tolist()}


def convergence_curve(planes: list[np.ndarray], factor: int, kind: str = "in",
                      schedule: NoiseSchedule | None = None, tolerance_db: float = 0.1,
                      seed: int = 0, start: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      start_name: str = "LR") -> ConvergenceCurve:
    """Fig. 3 for a set of normalised HR planes.

    Args:
        planes: ``(H, W)`` high-resolution planes, normalised to about [-1, 1].
        factor: the upsampling factor whose LR image is diffused.
        kind: ``"in"`` (bicubic downsampling, no blur) or ``"through"`` (row averaging).
        schedule: the schedule whose steps are plotted (default: the inference schedule).
        tolerance_db: how close (dB) the curves must be to count as met.
        seed: noise seed.
        start: maps the ``(1, 1, H, W)`` bicubic-upsampled LR image to the image that is diffused
            instead (e.g. a regression model's output, for ``--start regression``); the curves
            then show where *that* start and the HR image meet.
        start_name: how the report names the start (``"LR"``, ``"regression"``).

    PSNR uses the data range 2 of the normalised images.
    """
    schedule = schedule or inference_schedule()
    degrade, (fy, fx) = plane_degradation(kind, factor)
    gen = torch.Generator().manual_seed(seed)
    levels = schedule.noise_levels.numpy()
    sums_lr = np.zeros(len(levels))
    sums_hr = np.zeros(len(levels))
    used = 0
    for plane in planes:
        h, w = plane.shape
        hr = torch.from_numpy(np.ascontiguousarray(plane[: h - h % fy, : w - w % fx], dtype=np.float32))[None]
        lr = degrade(hr)
        if start is not None:
            with torch.no_grad():
                lr = start(lr[None].float())[0].float()
        hr_np, lr_np = hr[0].numpy().astype(np.float64), lr[0].numpy().astype(np.float64)
        eps = torch.randn(hr.shape[1:], generator=gen, dtype=torch.float64).numpy()
        for t, g in enumerate(levels):
            noise = np.sqrt(max(1.0 - g * g, 0.0)) * eps
            sums_hr[t] += psnr(g * hr_np + noise, hr_np, 2.0) if t else 0.0
            sums_lr[t] += psnr(g * lr_np + noise, hr_np, 2.0)
        used += 1
    if used == 0:
        raise ValueError("no planes to analyse")
    psnr_hr, psnr_lr = sums_hr / used, sums_lr / used
    psnr_hr[0] = np.inf  # the clean HR image against itself
    return ConvergenceCurve(factor=factor, kind=kind, steps=np.arange(len(levels)), psnr_lr=psnr_lr,
                            psnr_hr=psnr_hr, tolerance_db=tolerance_db, n_planes=used, start=start_name)


def write_convergence_report(curves: list[ConvergenceCurve], out_dir: str | os.PathLike,
                             schedule: NoiseSchedule | None = None, source: str = "") -> dict[str, Path]:
    """Write ``convergence.png`` (the plot), ``convergence.md`` (a table) and ``convergence.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schedule = schedule or inference_schedule()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for n, c in enumerate(curves):
        # solid HR curve under a thicker, translucent start curve: where they meet both stay visible
        line, = ax.plot(c.steps[1:], c.psnr_hr[1:], lw=1.2, label=f"x{c.factor} ({c.kind}): HR diffused")
        ax.plot(c.steps, c.psnr_lr, "--", lw=2.4, alpha=0.6, color=line.get_color(),
                label=f"x{c.factor} ({c.kind}): {c.start} diffused")
        if c.meeting_k is not None:
            ax.axvline(c.meeting_k, color=line.get_color(), alpha=0.3)
            ax.annotate(f"K = {c.meeting_k}", xy=(c.meeting_k, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -12 - 11 * n), textcoords="offset points", fontsize=7, color=line.get_color())
    ax.set_xlabel(f"step t of the inference schedule {repr(schedule).removeprefix('NoiseSchedule(')[:-1]}")
    ax.set_ylabel("PSNR(x_t, x_0^HR) dB")
    ax.set_title("Diffused LR and HR images converge (PartDiff Fig. 3)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = out / "convergence.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)

    marks = [1, 5, 10, 25, 50, 75, 100]
    marks = [m for m in marks if m <= schedule.num_steps]
    lines = [f"PSNR(x_t, x_0^HR) in dB, mean over planes{' of ' + source if source else ''}; "
             f"curves meet where they differ by at most the tolerance.", "",
             "| factor | kind | diffused start | planes | K where the curves meet | "
             + " | ".join(f"t={m} start / HR" for m in marks) + " |",
             "|---|---|---|---|---|" + "---|" * len(marks)]
    for c in curves:
        cells = " | ".join(f"{c.psnr_lr[m]:.2f} / {c.psnr_hr[m]:.2f}" for m in marks)
        met = f"{c.meeting_k} (within {c.tolerance_db} dB)" if c.meeting_k is not None else "never"
        lines.append(f"| x{c.factor} | {c.kind} | {c.start} | {c.n_planes} | {met} | {cells} |")
    md = out / "convergence.md"
    md.write_text("\n".join(lines) + "\n")
    js = out / "convergence.json"
    js.write_text(json.dumps({"schedule": schedule.config(), "source": source,
                              "curves": [c.to_dict() for c in curves]}, indent=1, default=str) + "\n")
    return {"png": png, "markdown": md, "json": js}
