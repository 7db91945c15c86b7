"""Widen a model file: every level's channels times a factor, the same outputs (Net2WiderNet).

Usage:
    python pipelines/widen_model.py MODEL.safetensors OUTPUT.safetensors [--factor 2]
        [--jitter 0.5] [--seed 0]

The wider network computes what MODEL computes (up to float rounding; ``mrisr.networks.widen``
says how) and is written in float32 with MODEL's config, its ``network`` section widened and
``widened_from`` naming MODEL (file name, sha256, factor). Continue training it with the wider
network, e.g. for a shipped `narrow` model (16-32-64-64) and factor 2:

    mrisr train CONFIG -o RUN --init-from OUTPUT.safetensors --set "network.channels=[32, 64, 128, 128]"

so that a long chain of training on the narrow network carries over to a wider one instead of
starting the wider one from scratch (docs/training.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mrisr.errors import InputError
from mrisr.models import load_model, save_model, sha256
from mrisr.networks.widen import widen_network


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--factor", type=int, default=2, help="channel multiplier (default 2)")
    ap.add_argument("--jitter", type=float, default=0.5,
                    help="how unequally each copied channel's weight is split among its copies, in [0, 1)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        if args.output.suffix != ".safetensors":
            raise InputError(f"the output must be a .safetensors file, got {args.output.name}")
        if args.output.resolve() == args.model.resolve():
            raise InputError("the output would replace the model it is widened from; name another file")
        if args.factor < 1:
            raise InputError(f"--factor must be a whole number >= 1, got {args.factor}")
        if not 0 <= args.jitter < 1:
            raise InputError(f"--jitter must be in [0, 1), got {args.jitter}")
        loaded = load_model(args.model)
        try:
            wide, network = widen_network(loaded.network, loaded.config["network"], factor=args.factor,
                                          jitter=args.jitter, seed=args.seed)
        except ValueError as exc:
            raise InputError(f"{args.model}: {exc}") from exc
        config = dict(loaded.config)
        config["network"] = network
        config["widened_from"] = {"file": args.model.name, "sha256": sha256(args.model), "factor": args.factor}
        save_model(args.output, wide, config)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_before = sum(p.numel() for p in loaded.network.parameters())
    n_after = sum(p.numel() for p in wide.parameters())
    print(f"{args.output}: channels {network['channels']}, {n_after:,} parameters (from {n_before:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
