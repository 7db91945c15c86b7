"""Super-resolution for face verification (the paper's Sec. 5.5.2, Table 7).

A face-embedding network trained on high-resolution faces (yours, e.g. an ArcFace model
exported to TorchScript, or a torchvision architecture with a local weights file; nothing is
downloaded) embeds the references, the bicubic upsampling and each method's output of the same
inputs; each pair's cosine similarity decides "same person" by the LFW protocol (10 folds, the
threshold of each fold chosen on the other nine), and the accuracy is reported for each.
The paper's protocol: aligned 112 x 112 LFW crops (ArcFace's alignment), downsampled x4 to
28 x 28 (anti-aliased bicubic, 8-bit), upsampled back by each method.

Pairs: LFW's ``pairs.txt`` (a first line ``folds pairs-per-fold-half``, then ``name i j`` for
the same person, ``name1 i name2 j`` for two people), images at ``ROOT/name/name_0001.jpg``
(or .png).

Usage:
    python pipelines/downstream_face_verification.py --images LFW_ALIGNED_DIR --pairs pairs.txt
        (--embedder arcface.pt | --arch NAME --weights FILE) [--size 112] [--factor 4]
        [--regression-model M] [--sr3-model M] [--partdiff-model M ...]
        [--mean 0.5 0.5 0.5] [--std 0.5 0.5 0.5] [--out runs/downstream_face_verification]
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrisr.errors import InputError, MrisrError
from mrisr.metrics import verification_accuracy
from mrisr.natural import (add_run_arguments, load_test_pairs, load_user_network, network_input, runs_from_arguments,
                           super_resolve, write_summary)


def read_pairs(path: str, root: str) -> tuple[list[str], list[tuple[int, int]], list[bool], int]:
    """The distinct image files, the pairs as indices into them, whether each pair is the same
    person, and the number of folds, from an LFW ``pairs.txt``."""
    p = Path(path)
    try:
        lines = [ln.split() for ln in p.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--pairs {p}: cannot read ({exc})") from None
    folds = 10
    if lines and len(lines[0]) in (1, 2) and all(t.isdigit() for t in lines[0]):
        folds = int(lines[0][0])
        lines = lines[1:]
    files: dict[str, int] = {}
    pairs, same = [], []

    def image(name: str, number: str) -> int:
        stem = Path(root) / name / f"{name}_{int(number):04d}"
        found = next((stem.with_suffix(s) for s in (".jpg", ".png", ".jpeg") if stem.with_suffix(s).is_file()), None)
        if found is None:
            raise InputError(f"--pairs {p}: no image {stem}.jpg (or .png) under --images {root}")
        return files.setdefault(str(found), len(files))

    for n, tokens in enumerate(lines, 1):
        try:
            if len(tokens) == 3:
                pairs.append((image(tokens[0], tokens[1]), image(tokens[0], tokens[2])))
                same.append(True)
            elif len(tokens) == 4:
                pairs.append((image(tokens[0], tokens[1]), image(tokens[2], tokens[3])))
                same.append(False)
            else:
                raise ValueError
        except ValueError:
            raise InputError(f"--pairs {p}: line {n} is not 'name i j' or 'name1 i name2 j'") from None
    if len(pairs) < folds:
        raise InputError(f"--pairs {p}: {len(pairs)} pairs, fewer than its {folds} folds")
    return list(files), pairs, same, folds


@torch.no_grad()
def embed(net: torch.nn.Module, images: torch.Tensor, args: argparse.Namespace, device: torch.device) -> np.ndarray:
    out = []
    for lo in range(0, images.shape[0], args.batch_size):
        x = network_input(images[lo:lo + args.batch_size], tuple(args.mean), tuple(args.std), args.input_size)
        e = net(x.to(device))
        e = e[0] if isinstance(e, (tuple, list)) else e
        out.append(torch.nn.functional.normalize(e.float().reshape(len(x), -1), dim=1).cpu())
    return torch.cat(out).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="root of the aligned face crops (ROOT/name/name_0001.jpg)")
    parser.add_argument("--pairs", required=True, help="LFW pairs.txt")
    parser.add_argument("--embedder", help="TorchScript face-embedding network")
    parser.add_argument("--arch", help="a torchvision architecture name (with --weights)")
    parser.add_argument("--weights", help="state-dict file for --arch")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--input-size", type=int, help="resize before the embedder (default: as they are)")
    parser.add_argument("--mean", type=float, nargs=3, default=(0.5, 0.5, 0.5))
    parser.add_argument("--std", type=float, nargs=3, default=(0.5, 0.5, 0.5))
    add_run_arguments(parser, batch_size=32)
    parser.add_argument("--out", default="runs/downstream_face_verification")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except MrisrError as exc:
        print(f"downstream_face_verification: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from mrisr.devices import resolve_device

    device = resolve_device(args.device)
    net = load_user_network(args.embedder, args.arch, args.weights, device)
    files, pairs, same, folds = read_pairs(args.pairs, args.images)
    hr, lr = load_test_pairs(files, args.size, args.factor, 3)
    index = np.array(pairs)
    results: dict[str, dict[str, Any]] = {}

    def score(label: str, images: torch.Tensor, cost: dict[str, Any]) -> None:
        e = embed(net, images, args, device)
        similarity = np.sum(e[index[:, 0]] * e[index[:, 1]], axis=1)
        mean, std = verification_accuracy(similarity, np.array(same), folds)
        results[label] = {"accuracy": mean, "accuracy_std": std, **cost}

    score("Reference (high resolution)", hr, {})
    for run_, sr, cost in super_resolve(runs_from_arguments(args), lr, args.factor, str(device), args.batch_size,
                                        args.seed):
        score(run_.label, sr, cost)
    meta = {"images": args.images, "pairs": len(pairs), "n_images": len(files), "folds": folds, "size": args.size,
            "factor": args.factor, "device": str(device), "date": date.today().isoformat(),
            "command": " ".join(sys.argv), "methods": results}
    lines = [f"{len(pairs)} pairs ({len(files)} images), {args.size // args.factor} -> {args.size} (x{args.factor}), "
             f"{folds}-fold accuracy, {device}, {meta['date']}", "",
             "| faces compared | accuracy | std over folds | network evaluations |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['accuracy']:.4f} | {v['accuracy_std']:.4f} | {v.get('network_evaluations', '')} |"
              for k, v in results.items()]
    write_summary(args.out, meta, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
