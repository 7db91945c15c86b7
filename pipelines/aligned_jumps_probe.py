"""Plain against latent-aligned DDIM jumps (``PartialDiffusionInferer.sample(..., aligned=True)``)
for one PartDiff model, on every whole plane of the validation patient, scored as training
validates (docs/ablations.md, "Aligned DDIM jumps").

    OMP_NUM_THREADS=1 python pipelines/aligned_jumps_probe.py MODEL.safetensors CONFIG.yaml [--steps 4]

MODEL is a latent-aligned model file; CONFIG the training config whose validation series and
degradation to use.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import torch

import mrisr.training.validation as validation
from mrisr.errors import MrisrError
from mrisr.models import load_model
from mrisr.training import Trainer, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("config")
    parser.add_argument("--steps", type=int, default=4, help="DDIM network evaluations")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.model)
        config = load_config(args.config)
        with tempfile.TemporaryDirectory() as tmp:
            bank = Trainer(config, tmp, device="cpu", progress=False).val_bank
            base = validation.PartialDiffusionInferer
            for aligned in (False, True):
                class Inferer(base):  # type: ignore[misc, valid-type]
                    def sample(self, *a, **k):  # noqa: ANN002, ANN003, ANN202
                        return super().sample(*a, aligned=aligned, **k)

                validation.PartialDiffusionInferer = Inferer
                try:
                    row = validation.validate_network(model.network, bank, config, model.inferer,
                                                      {"method": "partdiff", "sampler": "ddim", "steps": args.steps},
                                                      torch.device("cpu"), args.precision)
                finally:
                    validation.PartialDiffusionInferer = base
                print(json.dumps({"aligned": aligned, **{k: round(float(v), 3) for k, v in row.items()}}), flush=True)
    except MrisrError as exc:
        print(f"aligned_jumps_probe: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
