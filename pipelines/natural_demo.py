"""A natural-image demonstration that runs anywhere: scikit-image's bundled images as a tiny dataset.

What it does (docs/natural_images.md reports a run): writes 18 images that ship inside
scikit-image (no download) as PNG, 14 for training and 4 photographs for testing (astronaut,
chelsea, coffee, rocket); trains the ImageNet x4 config (``configs/natural/imagenet_x4.yaml``)
at toy size, 16 x 16 -> 64 x 64 with the ``tiny`` network, as regression, SR3 and PartDiff
(K = 50, fine-tuned from the SR3 model as the MRI PartDiff models are), each for a few minutes
of CPU; then runs the natural-image benchmark on the 4 test images.

What it shows: the RGB path works end to end through the same trainer, samplers and benchmark
as MRI. What it cannot show: anything about the paper's numbers; 14 images and minutes of CPU
are not FFHQ or ImageNet and 0.5 M GPU steps.

Usage:
    python pipelines/natural_demo.py [--out runs/natural_demo] [--minutes 4] [--size 64] [--factor 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

#: scikit-image's bundled images (files inside the package), as ``skimage.data`` names them
TRAIN = ("brick", "camera", "cell", "clock", "coins", "colorwheel", "grass", "gravel", "hubble_deep_field",
         "immunohistochemistry", "moon", "page", "retina", "text")
TEST = ("astronaut", "chelsea", "coffee", "rocket")


def write_dataset(root: Path) -> None:
    """The 18 images as 8-bit PNG in ``root/train`` and ``root/test``."""
    import skimage.data

    from mrisr.images import write_image

    for split, names in (("train", TRAIN), ("test", TEST)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            path = root / split / f"{name}.png"
            if path.is_file():
                continue
            img = np.asarray(getattr(skimage.data, name)())
            img = img[None] if img.ndim == 2 else np.moveaxis(img[..., :3], -1, 0)
            write_image(path, img.astype(np.float32))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/natural_demo")
    parser.add_argument("--minutes", type=float, default=4.0, help="training time of each model")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    from mrisr.training import train

    out = Path(args.out).resolve()
    images = out / "images"
    write_dataset(images)
    config = REPO / "configs" / "natural" / "imagenet_x4.yaml"
    common = {"task": {"plane": "in", "factor": args.factor, "pairs": "in", "blur_sigma_max": 0.0},
              "data": {"glob": str(images / "train"), "validation_glob": str(images / "test"),
                       "image_size": args.size, "crop": args.size, "num_workers": 0},
              "network": {"preset": "tiny"},
              "optim": {"batch_size": 8, "lr": 2e-4, "ema_decay": 0.999, "max_steps": 100000},
              "checkpoint": {"every": 100, "keep": 2}, "validation": {"every": 100000, "slices": 0},
              "log": {"every": 25}}
    models = {}
    for name, extra in (("regression", {"objective": "regression"}), ("sr3", {"objective": "sr3"}),
                        ("partdiff", {"objective": "partdiff", "init_from": None})):
        overrides = {**common, **extra}
        if name == "partdiff":
            overrides["init_from"] = str(models["sr3"])
        run_dir = out / name
        summary = train(config, run_dir, resume=(run_dir / "checkpoints").is_dir(), device=args.device,
                        overrides=overrides, max_seconds=60.0 * args.minutes, progress=False)
        models[name] = Path(summary["model"])
        print(f"{name}: {summary['step']} steps -> {summary['model']}", flush=True)

    sys.path.insert(0, str(REPO / "pipelines"))
    import benchmark_natural

    return benchmark_natural.main(["--images", str(images / "test"), "--size", str(args.size), "--factor",
                                   str(args.factor), "--regression-model", str(models["regression"]),
                                   "--sr3-model", str(models["sr3"]), "--partdiff-model", str(models["partdiff"]),
                                   "--device", args.device, "--out", str(out / "benchmark")])


if __name__ == "__main__":
    sys.exit(main())
