"""Perceptual metrics of natural images (LPIPS, FID, IS) through torchmetrics, from weight files
the user gives: mrisr downloads nothing, so each metric refuses with one line naming the file
it needs when that file is not given or not there.

* LPIPS (Zhang et al. 2018), AlexNet variant: the ImageNet AlexNet weights of torchvision
  (``alexnet-owt-7be5be79.pth``); the linear calibration layers ship with torchmetrics.
* FID and IS: the Inception-v3 weights torch-fidelity uses
  (``pt_inception-2015-12-05-6726825d.pth``), so numbers are comparable with published ones.

Images go in as ``(B, 3, H, W)`` float tensors in 0..255 (the natural-image pipeline's units).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mrisr.errors import ConfigError, InputError, first_line

__all__ = ["LPIPS_WEIGHTS", "INCEPTION_WEIGHTS", "Lpips", "alexnet_to_lpips_keys", "FeatureDistances",
           "frechet_distance_metric", "inception_score_metric"]

LPIPS_WEIGHTS = "alexnet-owt-7be5be79.pth"
INCEPTION_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
_INCEPTION_NEED = f"torch-fidelity's Inception-v3 weights, {INCEPTION_WEIGHTS}"


def _weights_file(path: str | os.PathLike | None, metric: str, option: str, expected: str) -> Path:
    if path is None:
        raise ConfigError(f"{metric} needs {option} FILE ({expected}); mrisr downloads nothing")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{option} {p}: no such file ({metric} needs {expected})")
    return p


def _torchmetrics(metric: str, needs: tuple[str, ...]) -> None:
    import importlib.util

    missing = [m for m in ("torchmetrics", *needs) if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"{metric} needs the Python packages {', '.join(missing)} (pip install "
                          f"{' '.join(m.replace('_', '-') for m in missing)}, matching your torch build)")


def alexnet_to_lpips_keys(state: dict[str, Any]) -> dict[str, Any]:
    """torchvision's AlexNet state dict (``features.N.weight``) renamed to the five slices of
    torchmetrics' LPIPS backbone (``sliceK.N.weight``; the classifier is not used)."""
    # torchvision's layer numbers kept, grouped as LPIPS cuts the network after each ReLU
    slices = {i: n for n, (lo, hi) in enumerate([(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)], 1)
              for i in range(lo, hi)}
    mapped = {}
    for key, value in state.items():
        parts = str(key).split(".")
        if len(parts) == 3 and parts[0] == "features" and parts[1].isdigit() and int(parts[1]) in slices:
            mapped[f"slice{slices[int(parts[1])]}.{parts[1]}.{parts[2]}"] = value
    return mapped


class Lpips:
    """LPIPS distance (AlexNet, version 0.1) between two batches of images in 0..255.

    Args:
        weights: torchvision's ImageNet AlexNet state dict (``alexnet-owt-7be5be79.pth``).
        device: where the network runs.

    Raises:
        ConfigError: no weights file given, or torchmetrics / torchvision not installed.
        InputError: the file is missing or is not AlexNet's weights.
    """

    def __init__(self, weights: str | os.PathLike | None, device: torch.device | str = "cpu") -> None:
        p = _weights_file(weights, "LPIPS", "--lpips-weights",
                          f"torchvision's AlexNet ImageNet weights, {LPIPS_WEIGHTS}")
        _torchmetrics("LPIPS", ("torchvision",))
        from torchmetrics.functional.image.lpips import _LPIPS

        # a random backbone (nothing downloaded), then the user's AlexNet weights loaded into it
        net = _LPIPS(pretrained=True, net="alex", pnet_rand=True)
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged or foreign file
            raise InputError(f"--lpips-weights {p}: not a PyTorch weights file ({first_line(exc)})") from None
        mapped = alexnet_to_lpips_keys(state if isinstance(state, dict) else {})
        try:
            net.net.load_state_dict(mapped, strict=True)
        except RuntimeError as exc:
            raise InputError(f"--lpips-weights {p}: not torchvision's AlexNet weights "
                             f"({first_line(exc)})") from None
        self.net = net.to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-image distances ``(B,)``."""
        x, y = (t.to(self.device, torch.float32) / 127.5 - 1.0 for t in (a, b))
        return self.net(x, y).reshape(-1).cpu()


class FeatureDistances:
    """FID (and, with a classifier head, IS) accumulated over batches with torchmetrics.

    Build it with :func:`frechet_distance_metric` / :func:`inception_score_metric`; any
    feature network can be passed directly (the tests use a closed-form one).
    """

    def __init__(self, metric: Any) -> None:
        self.metric = metric

    @staticmethod
    def _uint8(images: torch.Tensor) -> torch.Tensor:
        return images.round().clamp(0, 255).to(torch.uint8)

    def update(self, images: torch.Tensor, real: bool | None = None) -> None:
        if real is None:
            self.metric.update(self._uint8(images))
        else:
            self.metric.update(self._uint8(images), real=real)

    def compute(self) -> Any:
        return self.metric.compute()

    def reset(self) -> None:
        """Forget the generated images (FID keeps its real ones: one network for every method)."""
        self.metric.reset()


def frechet_distance_metric(weights: str | os.PathLike | None = None, feature: torch.nn.Module | None = None,
                            device: torch.device | str = "cpu") -> FeatureDistances:
    """FID between real and generated images: Inception-v3 pool features from ``weights``
    (torch-fidelity's file), or the given ``feature`` network (with ``num_features``)."""
    if feature is None:
        p = _weights_file(weights, "FID", "--inception-weights", _INCEPTION_NEED)
        _torchmetrics("FID", ("torch_fidelity", "torchvision"))
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=2048 if feature is None else feature, normalize=False,
                                      reset_real_features=False,
                                      **({} if feature is not None else {"feature_extractor_weights_path": str(p)}))
    return FeatureDistances(metric.to(device))


def inception_score_metric(weights: str | os.PathLike | None, device: torch.device | str = "cpu",
                           splits: int = 10) -> FeatureDistances:
    """Inception score of generated images, with torch-fidelity's Inception-v3 from ``weights``."""
    p = _weights_file(weights, "IS", "--inception-weights", _INCEPTION_NEED)
    _torchmetrics("IS", ("torch_fidelity", "torchvision"))
    from torchmetrics.image.fid import NoTrainInceptionV3
    from torchmetrics.image.inception import InceptionScore

    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["logits_unbiased"],
                             feature_extractor_weights_path=str(p))
    return FeatureDistances(InceptionScore(feature=net, splits=splits, normalize=False).to(device))
