"""The paper's natural-image benchmark (Sec. 5.3, Tables 5-6, Figs. 10-12) on a folder of test images.

Each image's centre square is resized to ``--size`` (the reference); its anti-aliased bicubic
downsampling by ``--factor``, rounded to 8-bit values, is the input (``mrisr.images.reference_and_input``).
Every method then upsamples the inputs through ``mrisr.inference.upsample_images`` (the same
samplers and models as MRI) and is scored against the references:

* PSNR (dB, data range 255, all channels) and SSIM (mean over channels);
* consistency: MSE between the output downsampled again and the input, 0..255 units (the
  paper's "Consist");
* LPIPS (``--lpips-weights``: torchvision's AlexNet file), FID and IS (``--inception-weights``:
  torch-fidelity's Inception-v3 file), through torchmetrics, only when the files are given
  (mrisr downloads nothing). FID compares each method's outputs with the references; it needs
  thousands of images to mean what published FIDs mean.

Methods (each where its model is given): bicubic; regression; SR3 (T = 100); SR3 partial
sampling with no alignment from K = 25 and 50; PartDiff with latent alignment from its own K
(one row per ``--partdiff-model``, e.g. a K = 25 and a K = 50 model) and with DDIM.

Outputs in ``--out``: results.csv (per image and method), summary.json, summary.md (the table),
grid.png (the first images: input, methods, reference, as Figs. 10-11).

Usage:
    python pipelines/benchmark_natural.py --images FOLDER --size 128 --factor 8
        [--regression-model M] [--sr3-model M] [--partdiff-model M [M ...]] [--ddim-steps 4]
        [--lpips-weights alexnet-owt-7be5be79.pth] [--inception-weights pt_inception-2015-12-05-6726825d.pth]
        [--max-images N] [--channels 3] [--device auto] [--out runs/benchmark_natural]
"""

from __future__ import annotations

import argparse
import csv
import io
import platform
import sys
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrisr.errors import MrisrError
from mrisr.metrics import consistency_mse, psnr, ssim
from mrisr.images import list_images
from mrisr.io import write_bytes
from mrisr.natural import add_run_arguments, load_test_pairs, runs_from_arguments, super_resolve, write_summary


def save_grid(path: Path, lowres: torch.Tensor, outputs: dict[str, torch.Tensor], reference: torch.Tensor,
              rows: int = 4) -> None:
    """Input (nearest neighbour), each method and the reference side by side, one image per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(rows, reference.shape[0])
    factor = reference.shape[-1] // lowres.shape[-1]
    panels = {"input (nearest)": lowres.repeat_interleave(factor, -1).repeat_interleave(factor, -2),
              **outputs, "reference": reference}
    fig, axes = plt.subplots(n, len(panels), figsize=(2.0 * len(panels), 2.1 * n), squeeze=False)
    for r in range(n):
        for c, (name, images) in enumerate(panels.items()):
            img = images[r].clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            axes[r][c].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255,
                              interpolation="nearest")
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(name, fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes(buffer.getvalue(), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="folder (searched recursively), glob or file of PNG / JPEG")
    parser.add_argument("--size", type=int, default=128,
                        help="reference side in pixels (0: the centre square as it is)")
    parser.add_argument("--factor", type=int, default=8)
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3)
    add_run_arguments(parser, batch_size=8)
    parser.add_argument("--lpips-weights", help="torchvision's AlexNet ImageNet weights (alexnet-owt-7be5be79.pth)")
    parser.add_argument("--inception-weights", help="torch-fidelity's Inception-v3 weights for FID and IS")
    parser.add_argument("--max-images", type=int)
    parser.add_argument("--out", default="runs/benchmark_natural")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except MrisrError as exc:
        print(f"benchmark_natural: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from mrisr.devices import resolve_device
    from mrisr.perceptual import Lpips, frechet_distance_metric, inception_score_metric

    device = resolve_device(args.device)
    # the weight files are checked (and each network built once) before any image is read or sampled
    lpips = Lpips(args.lpips_weights, device) if args.lpips_weights else None
    fid = frechet_distance_metric(args.inception_weights, device=device) if args.inception_weights else None
    inception = inception_score_metric(args.inception_weights, device) if args.inception_weights else None
    files = [str(f) for f in list_images(args.images)[: args.max_images or None]]
    hr, lr = load_test_pairs(files, args.size or None, args.factor, args.channels)
    runs = runs_from_arguments(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    summary: dict[str, dict[str, Any]] = {}
    outputs: dict[str, torch.Tensor] = {}
    reference_scores: dict[str, Any] = {}
    if fid is not None and inception is not None:
        fid.update(hr.to(device), real=True)
        inception.update(hr.to(device))
        reference_scores["is"] = float(inception.compute()[0])
    for run_, sr, cost in tqdm(super_resolve(runs, lr, args.factor, str(device), args.batch_size, args.seed),
                               total=len(runs), desc="methods", unit="method"):
        outputs[run_.label] = sr
        lp = lpips(sr, hr) if lpips is not None else None
        for i, f in enumerate(files):
            a, r = sr[i].numpy(), hr[i].numpy()
            rows.append({"image": f, "method": run_.label, "psnr": psnr(a, r, 255.0), "ssim": ssim(a, r, 255.0),
                         "consistency_mse": consistency_mse(a, lr[i].numpy(), args.factor),
                         "lpips": float(lp[i]) if lp is not None else None})
        mine = rows[-len(files):]
        entry: dict[str, Any] = {k: float(np.mean([r[k] for r in mine])) for k in ("psnr", "ssim", "consistency_mse")}
        entry["lpips"] = float(np.mean([r["lpips"] for r in mine])) if lpips is not None else None
        entry.update(cost)
        if fid is not None and inception is not None:
            for metric in (fid, inception):
                metric.reset()
            fid.update(sr.to(device), real=False)
            entry["fid"] = float(fid.compute())
            inception.update(sr.to(device))
            entry["is"] = float(inception.compute()[0])
        summary[run_.label] = entry

    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(table.getvalue().encode(), out_dir / "results.csv")
    meta = {"images": args.images, "n_images": len(files), "size": int(hr.shape[-1]), "factor": args.factor,
            "channels": args.channels, "device": str(device), "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "date": date.today().isoformat(), "command": " ".join(sys.argv),
            "reference": reference_scores, "methods": summary}
    lines = [f"{len(files)} images of {args.images}, {hr.shape[-1] // args.factor} -> {hr.shape[-1]} (x{args.factor}), "
             f"{device}, {meta['date']}", "",
             "| method | PSNR dB | SSIM | consistency MSE | LPIPS | FID | IS | network evaluations | s / image |",
             "|---|---|---|---|---|---|---|---|---|"]
    if reference_scores:
        lines.append(f"| reference | | | | | | {reference_scores['is']:.1f} | | |")
    for label, e in summary.items():
        def fmt(key: str, spec: str) -> str:
            return format(e[key], spec) if e.get(key) is not None else "-"

        lines.append(f"| {label} | {e['psnr']:.2f} | {e['ssim']:.3f} | {e['consistency_mse']:.2f} "
                     f"| {fmt('lpips', '.3f')} | {fmt('fid', '.1f')} | {fmt('is', '.1f')} "
                     f"| {e['network_evaluations']} | {e['seconds_per_image']:.2f} |")
    write_summary(out_dir, meta, lines)
    save_grid(out_dir / "grid.png", lr, outputs, hr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
