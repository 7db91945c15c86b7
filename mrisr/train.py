"""``python -m mrisr.train CONFIG ...``: the entry point for ``torchrun`` (same options as
``mrisr train``)."""

import sys

from mrisr.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
