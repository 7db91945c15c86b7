"""Train the small zonal segmenter (PZ / TZ) that demonstrates and tests the downstream
evaluation, leave-one-patient-out, on the PI-CAI zonal maps of ProstateX-0000 and -0001.

    python pipelines/train_zonal_segmenter.py --out runs/zonal_segmenter [--steps 600] [--labels Yuan23]

A 2D MONAI ``UNet`` (channels 16-32-64-128, two residual units per level, 0.5 M parameters) on
axial T2 slices normalised as mrisr normalises (0.5 / 99.5 percentiles to -1 / 1), Dice +
cross-entropy (MONAI ``DiceCELoss``), MONAI transforms for sampling and augmentation (crops
192 x 192 centred on the gland half of the time, left-right flips, rotations and scaling,
intensity scale, shift, gamma and noise). Writes:

* ``segmenter_fold_<patient>.safetensors``: trained without ``<patient>``, with its Dice on that
  patient's volume in ``folds.json`` (the leave-one-patient-out estimate);
* ``segmenter_all.safetensors``: trained on both patients (for the evaluation of ProstateX-0218,
  which has no label map);
* ``bundle_all/``: the latter as a MONAI bundle (model-zoo layout) for ``--segmenter BUNDLE``.

Two patients and AI-generated labels: the pipeline is the product, the numbers a demonstration
(docs/downstream.md). Deterministic given ``--seed`` on one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CASES = {"ProstateX-0000": "ProstateX-0000_t2_tra_s4.nii.gz", "ProstateX-0001": "ProstateX-0001_t2_tra_s6.nii.gz"}
NETWORK = {"out_channels": 3, "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2,
           "norm": "batch"}


def slices(patients: list[str], labels: str, shared: Path) -> list[dict[str, np.ndarray]]:
    """Every axial slice of the patients as ``{"image": (1, H, W), "label": (1, H, W)}``."""
    from mrisr.geometry import slice_axis
    from mrisr.io import load_volume
    from mrisr.segmentation import apply_label_map
    from mrisr.transforms import robust_range

    out = []
    for patient in patients:
        image = load_volume(shared / "prostatex" / "nifti" / CASES[patient])
        label = load_volume(shared / "picai_zonal_labels" / f"{patient}_zonal_{labels}.nii.gz")
        if label.shape != image.shape or not np.allclose(label.affine, image.affine, atol=1e-3):
            raise SystemExit(f"{patient}: label grid differs from the image grid")
        data = robust_range(image.data).normalise(image.data).astype(np.float32)
        lab = apply_label_map(np.rint(label.data), {})
        axis = slice_axis(image.affine)
        for k in range(image.shape[axis]):
            out.append({"image": np.take(data, k, axis=axis)[None], "label": np.take(lab, k, axis=axis)[None]})
    return out


def train(items: list[dict[str, np.ndarray]], steps: int, seed: int, batch: int = 8, crop: int = 192,
          log=print) -> torch.nn.Module:
    from monai.data import DataLoader, Dataset
    from monai.losses import DiceCELoss
    from monai.transforms import (Compose, EnsureTyped, RandAdjustContrastd, RandAffined, RandCropByPosNegLabeld,
                                  RandFlipd, RandGaussianNoised, RandScaleIntensityd, RandShiftIntensityd)
    from monai.utils import set_determinism

    from mrisr.segmentation import segmenter_network

    set_determinism(seed)
    transform = Compose([
        # as many crops away from the gland as on it: whole slices at inference hold mostly no prostate
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=(crop, crop), pos=1, neg=1,
                               num_samples=1, allow_smaller=True),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
        RandAffined(keys=["image", "label"], prob=0.7, rotate_range=(0.3,), scale_range=(0.2, 0.2),
                    mode=("bilinear", "nearest"), padding_mode="border"),
        RandScaleIntensityd(keys="image", factors=0.15, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.15, prob=0.5),
        RandAdjustContrastd(keys="image", gamma=(0.8, 1.25), prob=0.3),
        RandGaussianNoised(keys="image", std=0.03, prob=0.3),
        EnsureTyped(keys=["image", "label"], dtype=(torch.float32, torch.long), track_meta=False),
    ])
    loader = DataLoader(Dataset(items, transform), batch_size=batch, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(seed))
    network = segmenter_network({"network": NETWORK})
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    network.train()
    step, t0 = 0, time.perf_counter()
    while step < steps:
        for batch_items in loader:
            image, label = batch_items["image"], batch_items["label"]
            loss = loss_fn(network(image), label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % 50 == 0 or step == steps:
                log(f"  step {step}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)")
            if step >= steps:
                break
    return network.eval()


def volume_dice(segmenter_path: Path, patient: str, labels: str, shared: Path) -> dict[str, float]:
    from mrisr.io import load_volume
    from mrisr.segmentation import MrisrSegmenter, apply_label_map, zone_dice

    image = load_volume(shared / "prostatex" / "nifti" / CASES[patient])
    label = load_volume(shared / "picai_zonal_labels" / f"{patient}_zonal_{labels}.nii.gz")
    return zone_dice(MrisrSegmenter(segmenter_path)(image), apply_label_map(np.rint(label.data), {}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/zonal_segmenter")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--labels", default="Yuan23", choices=["Yuan23", "HeviAI23"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared", default=str(SHARED), help="the shared data folder")
    parser.add_argument("--no-folds", action="store_true", help="train only the model on both patients")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from mrisr.segmentation import export_segmenter_bundle, save_segmenter

    shared = Path(args.shared)
    if not (shared / "picai_zonal_labels").is_dir():
        print(f"train_zonal_segmenter: no zonal labels under {shared}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    patients = sorted(CASES)
    folds = {}
    runs = ([] if args.no_folds else [(p, [q for q in patients if q != p]) for p in patients]) + [("all", patients)]
    for held_out, train_on in runs:
        print(f"training on {', '.join(train_on)} ({args.steps} steps)")
        network = train(slices(train_on, args.labels, shared), args.steps, args.seed)
        config = {"network": NETWORK, "normalisation": {"kind": "robust", "lower": 0.5, "upper": 99.5},
                  "labels": {"0": "background", "1": "PZ", "2": "TZ"},
                  "training": {"patients": train_on, "labels": f"PI-CAI zonal_{args.labels}", "steps": args.steps,
                               "seed": args.seed, "loss": "DiceCE", "crop": 192, "batch_size": 8, "lr": 1e-3,
                               "crops": "RandCropByPosNegLabeld pos 1 neg 1"}}
        name = "segmenter_all.safetensors" if held_out == "all" else f"segmenter_fold_{held_out}.safetensors"
        path = save_segmenter(out / name, network, config)
        if held_out != "all":
            folds[held_out] = volume_dice(path, held_out, args.labels, shared)
            print(f"  Dice on held-out {held_out}: " + ", ".join(f"{k} {v:.3f}" for k, v in folds[held_out].items()))
    if folds:
        (out / "folds.json").write_text(json.dumps({"labels": args.labels, "steps": args.steps, "seed": args.seed,
                                                    "held_out_dice": folds}, indent=2) + "\n")
    bundle = out / "bundle_all"
    if not bundle.exists():
        export_segmenter_bundle(out / "segmenter_all.safetensors", bundle)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
