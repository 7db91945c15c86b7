"""Super-resolution for image classification (the paper's Sec. 5.5.3, Table 8).

A classifier trained on high-resolution images (yours: a TorchScript file, or a torchvision
architecture name with a local weights file; nothing is downloaded) classifies the references,
the bicubic upsampling and each method's output of the same inputs; top-1 and top-5 accuracy
are reported for each. The paper's protocol: the centre 224 x 224 of each ImageNet validation
image, downsampled x4 to 56 x 56 (anti-aliased bicubic, 8-bit), upsampled back by each method.

Images: one subfolder per class (the ImageFolder layout). Class indices: the classifier's
output index of each folder name from ``--class-index`` (JSON ``{"n01440764": 0, ...}``), else
the folders in sorted order (torchvision's ImageFolder rule, which is ImageNet's for its wnid
folders).

Usage:
    python pipelines/downstream_classification.py --images VAL_DIR (--classifier net.pt |
        --arch resnet50 --weights resnet50.pth) [--size 224] [--factor 4]
        [--regression-model M] [--sr3-model M] [--partdiff-model M ...] [--max-per-class N]
        [--mean 0.485 0.456 0.406] [--std 0.229 0.224 0.225] [--out runs/downstream_classification]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

import torch

from mrisr.errors import ConfigError, InputError, MrisrError
from mrisr.metrics import topk_accuracy
from mrisr.images import list_images
from mrisr.natural import (add_run_arguments, load_test_pairs, load_user_network, network_input, runs_from_arguments,
                           super_resolve, write_summary)


def labelled_images(root: str, class_index: str | None, per_class: int | None) -> tuple[list[str], list[int]]:
    """The files under each class folder of ``root`` and their class indices."""
    base = Path(root)
    if not base.is_dir():
        raise InputError(f"--images {root}: no such folder")
    folders = sorted(p for p in base.iterdir() if p.is_dir())
    if not folders:
        raise InputError(f"--images {root}: no class subfolders (one folder of images per class is expected)")
    if class_index:
        try:
            mapping = json.loads(Path(class_index).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"--class-index {class_index}: not a readable JSON mapping ({exc})") from None
        if not isinstance(mapping, dict):
            raise InputError(f"--class-index {class_index}: must map folder names to class indices")
        missing = [f.name for f in folders if f.name not in mapping]
        if missing:
            raise InputError(f"--class-index {class_index} has no index for {len(missing)} folders, e.g. {missing[0]}")
    else:
        mapping = {f.name: i for i, f in enumerate(folders)}
    files, labels = [], []
    for folder in folders:
        found = list_images(folder)[: per_class or None]
        files += [str(f) for f in found]
        labels += [int(mapping[folder.name])] * len(found)
    return files, labels


@torch.no_grad()
def classify(net: torch.nn.Module, images: torch.Tensor, args: argparse.Namespace,
             device: torch.device) -> torch.Tensor:
    scores = []
    for lo in range(0, images.shape[0], args.batch_size):
        x = network_input(images[lo:lo + args.batch_size], tuple(args.mean), tuple(args.std), args.input_size)
        out = net(x.to(device))
        if isinstance(out, (tuple, list)):
            out = out[0]
        scores.append(out.float().cpu())
    return torch.cat(scores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="folder with one subfolder of images per class")
    parser.add_argument("--classifier", help="TorchScript classifier file")
    parser.add_argument("--arch", help="a torchvision architecture name (with --weights)")
    parser.add_argument("--weights", help="state-dict file for --arch")
    parser.add_argument("--class-index", help="JSON mapping folder names to the classifier's output indices")
    parser.add_argument("--size", type=int, default=224, help="reference side (the centre square resized to it)")
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--input-size", type=int,
                        help="resize images to this before the classifier (default: as they are)")
    parser.add_argument("--mean", type=float, nargs=3, default=(0.485, 0.456, 0.406))
    parser.add_argument("--std", type=float, nargs=3, default=(0.229, 0.224, 0.225))
    add_run_arguments(parser, batch_size=16)
    parser.add_argument("--max-per-class", type=int)
    parser.add_argument("--out", default="runs/downstream_classification")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except MrisrError as exc:
        print(f"downstream_classification: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from mrisr.devices import resolve_device

    device = resolve_device(args.device)
    net = load_user_network(args.classifier, args.arch, args.weights, device)
    files, labels = labelled_images(args.images, args.class_index, args.max_per_class)
    hr, lr = load_test_pairs(files, args.size, args.factor, 3)
    runs = runs_from_arguments(args)
    results: dict[str, dict[str, Any]] = {}
    truth = torch.tensor(labels)

    def score(label: str, images: torch.Tensor, cost: dict[str, Any]) -> None:
        logits = classify(net, images, args, device)
        if logits.ndim != 2 or int(truth.max()) >= logits.shape[1]:
            raise ConfigError(f"the classifier gives {tuple(logits.shape)} scores; class indices reach "
                              f"{int(truth.max())}")
        results[label] = {"top1": topk_accuracy(logits.numpy(), truth.numpy(), 1),
                          "top5": topk_accuracy(logits.numpy(), truth.numpy(), min(5, logits.shape[1])), **cost}

    score("Reference (high resolution)", hr, {})
    for run_, sr, cost in super_resolve(runs, lr, args.factor, str(device), args.batch_size, args.seed):
        score(run_.label, sr, cost)
    meta = {"images": args.images, "n_images": len(files), "classes": len(set(labels)), "size": args.size,
            "factor": args.factor, "device": str(device), "date": date.today().isoformat(),
            "command": " ".join(sys.argv), "methods": results}
    lines = [f"{len(files)} images of {len(set(labels))} classes, {args.size // args.factor} -> {args.size} "
             f"(x{args.factor}), {device}, {meta['date']}", "",
             "| images classified | top-1 | top-5 | network evaluations |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['top1']:.3f} | {v['top5']:.3f} | {v.get('network_evaluations', '')} |"
              for k, v in results.items()]
    write_summary(args.out, meta, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
