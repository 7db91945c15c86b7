"""Does test-time adaptation help? PSNR / SSIM / high-band spectrum against adaptation steps on
through-plane cases built from the shared data (docs/adaptation.md).

    python pipelines/adaptation_study.py --out runs/adaptation [--steps 0 50 100 200] [--crop 160]

Each case is a coronal or sagittal T2 (rows superior-inferior, 0.56-0.6 mm) made 6 times
thicker along superior-inferior (6 lines averaged, as the benchmark does), then brought back
with ``--plane through --factor 6`` by: bicubic; the shipped PartDiff model adapted for N steps
to the thick volume itself (N = 0: the shipped model); the shipped regression model adapted
likewise; and a regression network of the same size trained from scratch on the thick volume
alone for the largest N (the SMORE setting). One adaptation run per model, evaluated at each N
(the curve of one run, not independent runs). The self-supervised pairs come from the thick
volume's own slices, perpendicular to superior-inferior: for a coronal scan those planes have
0.6 mm along left-right but the coronal slice spacing (3-3.6 mm) along anterior-posterior, so
half of the pairs are far blurrier than an axial scan's would be: a harder test than the real
use (axial T2 with 0.6 x 0.6 mm slices). In-plane central crop of ``--crop`` voxels to keep CPU time
in minutes. Writes ``adaptation.csv``, ``adaptation.md`` and ``adaptation.png``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CASES = {"0218-cor": "ProstateX-0218_t2_cor_s6.nii.gz", "0218-sag": "ProstateX-0218_t2_sag_s4.nii.gz",
         "0000-cor": "ProstateX-0000_t2_cor_s5.nii.gz", "0001-sag": "ProstateX-0001_t2_sag_s4.nii.gz"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/adaptation")
    parser.add_argument("--cases", nargs="+", default=["0218-cor"], choices=sorted(CASES))
    parser.add_argument("--steps", nargs="+", type=int, default=[0, 50, 100, 200])
    parser.add_argument("--crop", type=int, default=160, help="central in-plane crop (voxels); 0: whole planes")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-scratch", action="store_true", help="skip the from-scratch regression baseline")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from mrisr.adaptation import adapt_model
    from mrisr.degradation import thick_slice_volume
    from mrisr.devices import resolve_device
    from mrisr.diffusion import PartialDiffusionInferer
    from mrisr.metrics import psnr, spectral_error, ssim
    from mrisr.geometry import slice_axis, superior_inferior_axis
    from mrisr.inference import upsample_volume
    from mrisr.io import load_volume
    from mrisr.models import LoadedModel, default_model, load_model
    from mrisr.networks import SR3UNet, network_config
    from mrisr.transforms import robust_range

    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    marks = sorted(set(args.steps))
    for case in args.cases:
        hr = load_volume(SHARED / "prostatex" / "nifti" / CASES[case])
        si = superior_inferior_axis(hr.affine)
        if args.crop:
            sizes = [None if a == si or a == slice_axis(hr.affine) else args.crop for a in range(3)]
            hr = hr.crop(sizes)
        hr = hr.crop([None if a != si else hr.shape[a] - hr.shape[a] % 6 for a in range(3)])
        thick = thick_slice_volume(hr, si, 6)
        thick.metadata["path"] = CASES[case]
        span = robust_range(hr.data)
        data_range = span.high - span.low

        def score(result_volume, method: str, steps: int, seconds: float) -> None:
            est = result_volume.data
            ref = hr.data[tuple(slice(0, n) for n in est.shape)]
            # 2D planes holding the superior-inferior rows: the scan's own slices (coronal / sagittal)
            stack = slice_axis(hr.affine)
            planes = [(np.take(est, k, axis=stack), np.take(ref, k, axis=stack)) for k in range(est.shape[stack])]
            row_axis = 0 if [a for a in range(3) if a != stack][0] == si else 1
            rows.append({"case": case, "method": method, "steps": steps,
                         "psnr_db": psnr(est, ref, data_range),
                         "ssim": float(np.mean([ssim(e, r, data_range) for e, r in planes])),
                         "high_band_db": float(np.mean([spectral_error(e, r, 0.5 / 6, axis=row_axis)["high_db"]
                                                        for e, r in planes])),
                         "seconds": round(seconds, 1)})
            print(f"{case} {method} N={steps}: {rows[-1]['psnr_db']:.2f} dB, SSIM {rows[-1]['ssim']:.3f}, "
                  f"high band {rows[-1]['high_band_db']:.2f} dB ({seconds:.0f} s)", flush=True)

        t0 = time.perf_counter()
        bic = upsample_volume(thick, "through", 6, axis=si, method="bicubic").volume
        score(bic, "bicubic", 0, time.perf_counter() - t0)

        def run(method: str, base: LoadedModel, label: str, evaluate_at: list[int]) -> None:
            t_start = time.perf_counter()
            if 0 in evaluate_at:
                t1 = time.perf_counter()
                res = upsample_volume(thick, "through", 6, axis=si, method=method, model=base, device=str(device),
                                      seed=args.seed, **({"sampler": "ddim", "steps": 4} if method == "partdiff" else {}))
                score(res.volume, label, 0, time.perf_counter() - t1)

            def at(step: int, model: LoadedModel) -> None:
                if step not in evaluate_at:
                    return
                frozen = copy.deepcopy(model)
                res = upsample_volume(thick, "through", 6, axis=si, method=method, model=frozen, device=str(device),
                                      seed=args.seed, **({"sampler": "ddim", "steps": 4} if method == "partdiff" else {}))
                score(res.volume, label, step, time.perf_counter() - t_start)

            last = max(evaluate_at)
            if last > 0:
                adapt_model(base, thick, "through", 6, last, seed=args.seed, batch_size=args.batch_size,
                            device=device, callback=at)

        run("partdiff", load_model(default_model("partdiff", "through", 6).path, device=device),
            "PartDiff (shipped, adapted)", marks)
        run("regression", load_model(default_model("regression", "through", 6).path, device=device),
            "regression (shipped, adapted)", marks)
        if not args.no_scratch and max(marks) > 0:
            torch.manual_seed(args.seed)
            net = SR3UNet(**network_config("small")).to(device).eval()
            shipped = load_model(default_model("regression", "through", 6).path)
            scratch = LoadedModel(network=net, config={**shipped.config, "training": {}},
                                  inferer=PartialDiffusionInferer(**shipped.inferer.config()),
                                  path=Path("scratch_regression.safetensors"))
            run("regression", scratch, "regression from scratch on the volume (SMORE setting)", [max(marks)])

    with open(out / "adaptation.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"`python pipelines/adaptation_study.py {' '.join(argv or sys.argv[1:])}`, {platform.machine()} CPU, "
             f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}", "",
             "| case | method | adaptation steps | PSNR dB | SSIM | high band dB | seconds |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['method']} | {r['steps']} | {r['psnr_db']:.2f} | {r['ssim']:.3f} | "
              f"{r['high_band_db']:.2f} | {r['seconds']} |" for r in rows]
    (out / "adaptation.md").write_text("\n".join(lines) + "\n")
    (out / "adaptation.json").write_text(json.dumps(rows, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.cases), figsize=(5.5 * len(args.cases), 3.8), squeeze=False)
    for ax, case in zip(axes[0], args.cases):
        for method in dict.fromkeys(r["method"] for r in rows if r["case"] == case):
            pts = [(r["steps"], r["psnr_db"]) for r in rows if r["case"] == case and r["method"] == method]
            if method == "bicubic":
                ax.axhline(pts[0][1], color="k", ls="--", lw=1, label="bicubic")
            else:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, "o-", label=method)
        ax.set_xlabel("adaptation steps on the input itself")
        ax.set_ylabel("PSNR dB (through-plane x6)")
        ax.set_title(case, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "adaptation.png", dpi=110)
    print(f"wrote {out}/adaptation.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
