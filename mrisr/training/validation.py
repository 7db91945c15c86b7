"""Validation of a network being trained: every held-out plane (or image), whole, degraded and
sampled exactly as ``mrisr upsample`` and the benchmarks do, with the spread reported."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mrisr.data import ImageBank, PlaneBank
from mrisr.diffusion import PartialDiffusionInferer
from mrisr.metrics import psnr, ssim
from mrisr.transforms import plane_degradation

__all__ = ["validate_network"]


@torch.no_grad()
def validate_network(network: torch.nn.Module, val_bank: PlaneBank | ImageBank, config: dict[str, Any],
                     inferer: PartialDiffusionInferer, sampling: dict[str, Any], device: torch.device,
                     precision: str) -> dict[str, float]:
    """PSNR / SSIM of ``network`` and of bicubic on whole held-out planes, in normalised
    units (data range 2, the robust [-1, 1] span).

    Every plane of every validation series is used (``validation.slices`` > 0 takes that
    many evenly spaced planes per series instead; for natural images, that many images),
    whole and degraded exactly as the benchmark degrades them, so borders and background
    count as they do for ``mrisr upsample``. Besides the means, the worst plane and the worst
    series (lowest mean gain over bicubic) are reported: a model chosen on a few central crops
    can fail elsewhere.
    """
    cfg = config["validation"]
    task = config["task"]
    if len(val_bank) == 0:
        return {}
    f = int(task["factor"])
    degrade, (fh, fw) = plane_degradation("in" if task["pairs"] == "in" else "through", f)
    series: dict[str, list[int]] = {}
    for i, source in enumerate(val_bank.sources):
        series.setdefault(source, []).append(i)
    wanted = int(cfg["slices"] or 0)
    # natural images: each image is its own "series"; validation.slices > 0 takes that many
    # evenly spaced images, batched by size
    groups = series
    if isinstance(val_bank, ImageBank):
        idx = list(range(len(val_bank)))
        if 0 < wanted < len(idx):
            idx = [idx[int(round(p))] for p in np.linspace(0, len(idx) - 1, wanted)]
        groups = {}
        for i in idx:
            groups.setdefault(str(val_bank.planes[i].shape), []).append(i)
        series = {val_bank.sources[i]: [i] for i in idx}
        wanted = 0
    # the inferer's own class (a subclass may change how it samples), in the validation's precision
    inferer = type(inferer)(**inferer.config(), autocast_dtype=torch.bfloat16 if precision == "bf16" else None)
    rows: list[dict[str, Any]] = []
    plan = {k: v for k, v in sampling.items() if k != "aligned"}
    evaluations = inferer.plan(**plan).network_evaluations  # per plane, whatever the batch
    batch = int(cfg["batch_size"])
    for idx in groups.values():
        if 0 < wanted < len(idx):
            idx = [idx[int(round(p))] for p in np.linspace(0, len(idx) - 1, wanted)]
        for lo in range(0, len(idx), batch):
            chunk = idx[lo:lo + batch]
            planes = [val_bank.planes[i] for i in chunk]
            h, w = planes[0].shape[-2] // fh * fh, planes[0].shape[-1] // fw * fw
            hr = torch.stack([torch.from_numpy(p[..., :h, :w]) for p in planes]).float()
            hr = hr[:, None] if hr.ndim == 3 else hr  # (B, C, H, W); C = 3 for RGB images
            cond = degrade(hr)
            gens = [torch.Generator(device).manual_seed(1000 + i) for i in chunk]
            out = inferer.sample(cond.to(device), network, generators=gens, **sampling)
            for j, i in enumerate(chunk):
                # (H, W) for one channel, (C, H, W) otherwise: SSIM is then the mean over channels
                a, b, r = (t[j].squeeze(0).float().cpu().numpy() for t in (out, cond, hr))
                rows.append({"series": val_bank.sources[i], "psnr": psnr(a, r, 2.0), "ssim": ssim(a, r, 2.0),
                             "psnr_bicubic": psnr(b, r, 2.0), "ssim_bicubic": ssim(b, r, 2.0)})
    gains = np.array([r["psnr"] - r["psnr_bicubic"] for r in rows])
    per_series = {s: float(np.mean([r["psnr"] - r["psnr_bicubic"] for r in rows if r["series"] == s]))
                  for s in series}
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "psnr_bicubic", "ssim_bicubic")}
    return {**mean, "gain_db": float(gains.mean()), "gain_worst_plane_db": float(gains.min()),
            "gain_worst_series_db": float(min(per_series.values())), "planes": len(rows),
            "network_evaluations": evaluations}

