"""Sampling study on held-out planes: the guard, the mean of N samples, and the start image.

For evenly spaced whole planes of each validation series (degraded as the benchmark degrades
them), one table of PSNR / SSIM / spectral error (above the LR Nyquist frequency) and the gain
over bicubic for:

* regression (one pass), and the mean of its outputs over the plane's symmetries that the
  degradation shares (test-time augmentation: through-plane the 4 flips of rows and columns,
  in-plane also the transposes, 8 in all);
* PartDiff DDIM 4 from the model's K, with the sampling guard (default) and without it;
* the mean of N = 2 and 4 DDIM samples (different noise at step K);
* PartDiff DDIM from the diffused *regression output* at K = 5, 10, 15 instead of the diffused
  LR image (beyond the paper: a start closer to the high-resolution image);
* the regression output and the default PartDiff sample projected onto the images consistent
  with the input (``mrisr.degradation.project_consistent``: the nearest image whose degradation
  is exactly the low-resolution plane), which shows how much of their error the input itself
  could still remove.

Usage:
    python pipelines/sampling_study.py --plane in --factor 4 --partdiff-model M --regression-model M
        [--planes-per-series 3] [--datalist configs/prostatex.json] [--device auto] [--out DIR]
        [--regression-only]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch

from mrisr.data import PlaneBank, load_datalist
from mrisr.degradation import project_consistent
from mrisr.transforms import ROBUST_PERCENTILES
from mrisr.devices import resolve_device, resolve_precision
from mrisr.metrics import psnr, spectral_error, ssim
from mrisr.models import load_model
from mrisr.transforms import plane_degradation

REPO = Path(__file__).resolve().parents[1]


def symmetries(kind: str) -> list[tuple[bool, bool, bool]]:
    """(flip rows, flip columns, transpose) for every symmetry of the plane that the degradation
    shares: through-plane the 4 flips (six thick rows per block, blocks aligned with the plane's
    ends); in-plane also the transposes (the same factor along both axes)."""
    flips = [(fy, fx, False) for fy in (False, True) for fx in (False, True)]
    return flips + [(fy, fx, True) for fy, fx, _ in flips] if kind == "in" else flips


def symmetric_mean(run, image: torch.Tensor, kind: str) -> torch.Tensor:
    """The mean of ``run`` over :func:`symmetries`, each output mapped back."""
    outs = []
    for fy, fx, tr in symmetries(kind):
        x = image.flip(-2) if fy else image
        x = x.flip(-1) if fx else x
        y = run(x.transpose(-1, -2) if tr else x)
        y = y.transpose(-1, -2) if tr else y
        y = y.flip(-1) if fx else y
        outs.append(y.flip(-2) if fy else y)
    return torch.stack(outs).mean(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plane", choices=["in", "through"], default="in")
    parser.add_argument("--factor", type=int)
    parser.add_argument("--partdiff-model", required=True)
    parser.add_argument("--regression-model", required=True)
    parser.add_argument("--planes-per-series", type=int, default=3)
    parser.add_argument("--datalist", default=str(REPO / "configs" / "prostatex.json"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("sampling_study"))
    parser.add_argument("--regression-only", action="store_true", help="only bicubic and the regression rows")
    args = parser.parse_args()
    factor = args.factor or (4 if args.plane == "in" else 6)
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if resolve_precision("auto", device) == "bf16" else None
    pd = load_model(args.partdiff_model, device=device, autocast_dtype=dtype)
    reg = load_model(args.regression_model, device=device, autocast_dtype=dtype)
    _, val = load_datalist(args.datalist)
    kind = "in" if args.plane == "in" else "through"
    if kind == "through":
        val = [e for e in val if e.plane in (None, "cor", "sag")]
    bank = PlaneBank(val, kind, *ROBUST_PERCENTILES)
    degrade, (fh, fw) = plane_degradation(kind, factor)
    picks: list[int] = []
    for source in dict.fromkeys(bank.sources):
        idx = [i for i, s in enumerate(bank.sources) if s == source]
        picks += [idx[int(round(p))] for p in np.linspace(0.2 * (len(idx) - 1), 0.8 * (len(idx) - 1),
                                                              args.planes_per_series)]
    rows: dict[str, list[dict[str, float]]] = {}

    def score(label: str, out: torch.Tensor, hr: torch.Tensor) -> None:
        a, r = out[0, 0].float().cpu().numpy(), hr[0, 0].numpy()
        spec = spectral_error(a, r, 0.5 / factor, axis=None if kind == "in" else 0)
        rows.setdefault(label, []).append({"psnr": psnr(a, r, 2.0), "ssim": ssim(a, r, 2.0),
                                           "high_db": spec["high_db"]})

    for n, i in enumerate(picks):
        plane = bank.planes[i]
        h, w = plane.shape[0] // fh * fh, plane.shape[1] // fw * fw
        hr = torch.from_numpy(plane[:h, :w])[None, None].float()
        cond = degrade(hr).to(device)
        gens = lambda s: [torch.Generator(device).manual_seed(1000 * s + i)]  # noqa: E731
        lowres = degrade.lowres(hr).to(device)
        score("Bicubic", cond, hr)
        regression = reg.inferer.sample(cond, reg.network, method="regression")
        score("Regression", regression, hr)
        score("Regression, projected onto the input", project_consistent(regression, lowres, degrade.lowres), hr)
        score(f"Regression, mean over {len(symmetries(kind))} flips"
              + (" and transposes" if kind == "in" else ""),
              symmetric_mean(lambda c: reg.inferer.sample(c, reg.network, method="regression"), cond, kind), hr)
        if args.regression_only:
            print(f"plane {n + 1}/{len(picks)} done", file=sys.stderr, flush=True)
            continue
        samples = [pd.inferer.sample(cond, pd.network, sampler="ddim", steps=4, generators=gens(s)) for s in range(4)]
        score("PartDiff DDIM 4 (guarded, the default)", samples[0], hr)
        score("PartDiff DDIM 4, projected onto the input", project_consistent(samples[0], lowres, degrade.lowres), hr)
        score("PartDiff DDIM 4, mean of 2 samples", torch.stack(samples[:2]).mean(0), hr)
        score("PartDiff DDIM 4, mean of 4 samples", torch.stack(samples).mean(0), hr)
        guard = pd.inferer.clip_denoised
        pd.inferer.clip_denoised = "off"
        score("PartDiff DDIM 4, no guard", pd.inferer.sample(cond, pd.network, sampler="ddim", steps=4,
                                                             generators=gens(0)), hr)
        pd.inferer.clip_denoised = guard
        for k in (5, 10, 15):
            out = pd.inferer.sample(cond, pd.network, sampler="ddim", steps=min(4, k), k=k, generators=gens(0),
                                    start=regression)
            score(f"PartDiff from regression start, K = {k}, DDIM {min(4, k)}", out, hr)
        print(f"plane {n + 1}/{len(picks)} done", file=sys.stderr, flush=True)

    base = np.array([r["psnr"] for r in rows["Bicubic"]])
    summary = {label: {"psnr": float(np.mean([r["psnr"] for r in rs])), "ssim": float(np.mean([r["ssim"] for r in rs])),
                       "spectral_high_db": float(np.mean([r["high_db"] for r in rs])),
                       "gain_db": float(np.mean(np.array([r["psnr"] for r in rs]) - base)),
                       "gain_worst_plane_db": float(np.min(np.array([r["psnr"] for r in rs]) - base))}
               for label, rs in rows.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"date": date.today().isoformat(), "command": "python " + " ".join(sys.argv), "device": str(device),
            "planes": len(picks), "partdiff_k": pd.inferer.k}
    (args.out / "sampling_study.json").write_text(json.dumps({**meta, "methods": summary}, indent=2) + "\n")
    lines = ["| method | PSNR dB | gain dB mean / worst plane | SSIM | spectrum above LR Nyquist dB |",
             "|---|---|---|---|---|"]
    for label, m in summary.items():
        lines.append(f"| {label} | {m['psnr']:.2f} | {m['gain_db']:+.2f} / {m['gain_worst_plane_db']:+.2f} | "
                     f"{m['ssim']:.4f} | {m['spectral_high_db']:+.2f} |")
    (args.out / "sampling_study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
