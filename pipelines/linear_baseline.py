"""The best *linear* super-resolution filter, fitted on the training series by least squares: how
much of a learned model's gain a linear filter already gets, and so how much is the network's
non-linear prior (docs/ablations.md, issue #9).

Each output phase (in-plane x F: F x F sub-pixel positions; through-plane x F: F row positions)
gets its own filter over a window of the low-resolution input (in-plane a (2R+1) x (2R+1)
window; through-plane 2R+1 thick rows x 3 columns) plus a constant, fitted on every plane of
the training series (the planes, normalisation and degradation that training and validation
use) and scored on every plane of the validation series
against bicubic: gain in dB, mean and worst plane, per series.

Usage:
    python pipelines/linear_baseline.py --plane in --factor 4 [--radius 3]
        [--datalist configs/prostatex.json] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def plane_pairs(entries: list, plane: str, factor: int) -> dict[str, list[tuple[np.ndarray, ...]]]:
    """Per volume, ``(lr, hr, bicubic)`` for each of its planes, ``(1, h, w)`` / ``(1, H, W)``
    float64: the planes, normalisation and degradation that training and validation use
    (:class:`mrisr.data.PlaneBank`, :func:`mrisr.transforms.plane_degradation`; through-plane the
    rows are the superior-inferior axis)."""
    import torch

    from mrisr.data import PlaneBank
    from mrisr.transforms import ROBUST_PERCENTILES, plane_degradation

    bank = PlaneBank(entries, plane, *ROBUST_PERCENTILES)
    degrade, (fh, fw) = plane_degradation(plane, factor)
    out: dict[str, list[tuple[np.ndarray, ...]]] = {}
    for image, source in zip(bank.planes, bank.sources):
        h, w = image.shape[0] // fh * fh, image.shape[1] // fw * fw
        hr = torch.from_numpy(np.ascontiguousarray(image[:h, :w]))[None, None].float()
        arrays = (degrade.lowres(hr), hr, degrade(hr))
        out.setdefault(source, []).append(tuple(a[0].double().numpy() for a in arrays))
    return out


def features(lr: np.ndarray, plane: str, radius: int) -> np.ndarray:
    """Per low-resolution pixel, the window of inputs around it and a constant: ``(N, h, w, taps)``
    (edges repeated beyond the border)."""
    n, h, w = lr.shape
    if plane == "in":
        padded = np.pad(lr, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
        offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
        cols = [padded[:, radius + dy: radius + dy + h, radius + dx: radius + dx + w] for dy, dx in offsets]
    else:
        padded = np.pad(lr, ((0, 0), (radius, radius), (1, 1)), mode="edge")
        cols = [padded[:, radius + dy: radius + dy + h, 1 + dx: 1 + dx + w]
                for dy in range(-radius, radius + 1) for dx in (-1, 0, 1)]
    return np.stack([*cols, np.ones_like(lr)], axis=-1)


def phases(plane: str, factor: int) -> list[tuple[int, int]]:
    return [(py, px) for py in range(factor) for px in range(factor)] if plane == "in" else \
        [(py, 0) for py in range(factor)]


def _phase_view(hr: np.ndarray, phase: tuple[int, int], plane: str, factor: int) -> tuple[slice, ...]:
    py, px = phase
    return (slice(None), slice(py, None, factor), slice(px, None, factor) if plane == "in" else slice(None))


def fit(pairs: list[tuple[np.ndarray, np.ndarray]], plane: str, factor: int, radius: int,
        ridge: float = 1e-6) -> dict[tuple[int, int], np.ndarray]:
    """Least-squares filters, one per phase, from ``(lr, hr)`` plane stacks (normal equations
    accumulated over the stacks; a tiny ridge keeps them solvable)."""
    gram: dict[tuple[int, int], np.ndarray] = {}
    moment: dict[tuple[int, int], np.ndarray] = {}
    for lr, hr in pairs:
        feats = features(lr, plane, radius)
        flat = feats.reshape(-1, feats.shape[-1])
        for phase in phases(plane, factor):
            target = hr[_phase_view(hr, phase, plane, factor)].reshape(-1)
            gram[phase] = gram.get(phase, 0) + flat.T @ flat
            moment[phase] = moment.get(phase, 0) + flat.T @ target
    return {p: np.linalg.solve(gram[p] + ridge * np.eye(len(gram[p])), moment[p]) for p in gram}


def apply(weights: dict[tuple[int, int], np.ndarray], lr: np.ndarray, plane: str, factor: int,
          radius: int) -> np.ndarray:
    """The fitted filters on a stack of low-resolution planes."""
    feats = features(lr, plane, radius)
    n, h, w = lr.shape
    out = np.zeros((n, h * factor, w * factor if plane == "in" else w))
    for phase, wts in weights.items():
        out[_phase_view(out, phase, plane, factor)] = feats @ wts
    return out


def main(argv: list[str] | None = None) -> int:
    from mrisr.data import load_datalist
    from mrisr.metrics import psnr

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plane", choices=["in", "through"], default="in")
    parser.add_argument("--factor", type=int, default=None)
    parser.add_argument("--radius", type=int, default=None, help="window half-width in input pixels "
                        "(default 3 in-plane, 4 through-plane)")
    parser.add_argument("--datalist", default=str(REPO / "configs" / "prostatex.json"))
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    factor = args.factor or (4 if args.plane == "in" else 6)
    radius = args.radius if args.radius is not None else (3 if args.plane == "in" else 4)
    train, val = load_datalist(args.datalist)
    if args.plane == "through":
        train, val = ([e for e in entries if e.plane in (None, "cor", "sag")] for entries in (train, val))
    weights = fit([(lr, hr) for planes in plane_pairs(train, args.plane, factor).values() for lr, hr, _ in planes],
                  args.plane, factor, radius)
    command = shlex.join(["python", "pipelines/linear_baseline.py", *(sys.argv[1:] if argv is None else argv)])
    report: dict = {"date": date.today().isoformat(), "command": command, "plane": args.plane, "factor": factor,
                    "radius": radius, "taps": int(next(iter(weights.values())).size),
                    "training": [e.image for e in train], "series": {}}
    gains: list[float] = []
    for source, planes in plane_pairs(val, args.plane, factor).items():
        g = [psnr(apply(weights, lr, args.plane, factor, radius)[0], hr[0], 2.0) - psnr(bic[0], hr[0], 2.0)
             for lr, hr, bic in planes]
        gains += g
        report["series"][Path(source).name] = {"gain_db": float(np.mean(g)), "worst_plane_db": float(np.min(g)),
                                               "planes": len(g)}
        print(f"{Path(source).name}: learned linear filter {np.mean(g):+.2f} dB over bicubic "
              f"(worst plane {np.min(g):+.2f}, {len(g)} planes)")
    report["gain_db"] = float(np.mean(gains))
    report["worst_series_db"] = min(s["gain_db"] for s in report["series"].values())
    print(f"all {len(gains)} planes: {report['gain_db']:+.2f} dB (worst series {report['worst_series_db']:+.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
