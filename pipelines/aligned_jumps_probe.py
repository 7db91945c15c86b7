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

from mrisr.diffusion import PartialDiffusionInferer
from mrisr.errors import MrisrError
from mrisr.models import load_model
from mrisr.training import Trainer, load_config
from mrisr.training.validation import validate_network


class AlignedInferer(PartialDiffusionInferer):
    """The same inferer, sampling with aligned DDIM jumps."""

    def sample(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        return super().sample(*args, aligned=True, **kwargs)


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
            for inferer in (model.inferer, AlignedInferer(**model.inferer.config())):
                row = validate_network(model.network, bank, config, inferer,
                                       {"method": "partdiff", "sampler": "ddim", "steps": args.steps},
                                       torch.device("cpu"), args.precision)
                aligned = isinstance(inferer, AlignedInferer)
                print(json.dumps({"aligned": aligned, **{k: round(float(v), 3) for k, v in row.items()}}), flush=True)
    except MrisrError as exc:
        print(f"aligned_jumps_probe: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
