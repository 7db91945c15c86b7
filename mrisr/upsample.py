"""``python -m mrisr.upsample INPUTS ... -o OUT_DIR ...``: the entry point for ``torchrun``
(same options as ``mrisr upsample``). Under ``torchrun --nproc_per_node G`` each rank takes
its shard of the cases (every case exactly once), runs on its own GPU (``LOCAL_RANK``; gloo on
CPUs), and rank 0 writes one summary of all cases (docs/scaling.md)."""

import sys

from mrisr.cli import main

if __name__ == "__main__":
    sys.exit(main(["upsample", *sys.argv[1:]]))
