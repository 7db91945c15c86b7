"""Training pairs: 2D planes of real volumes and the degradations that make their condition.

Three kinds of pairs (``PairKind``):

* ``in`` (Sec. 5.1.3): planes are the in-plane slices; the low-resolution image is the
  anti-aliased bicubic downsampling of the plane by ``f``, blurred with a random Gaussian
  (sigma ~ U(0, 1.5), SR3's trick), and the network's condition is that image bicubic-upsampled
  back to the plane's size.
* ``through`` (Sec. 5.2.2): planes are the in-plane slices of coronal or sagittal volumes,
  turned so that rows (``H``) run superior-inferior; the low-resolution image averages ``f``
  consecutive rows (the thick-slice profile, 6 by default) and is bicubic-upsampled back along
  rows. At inference the same model runs on the through-plane planes of an axial volume, whose
  rows are the slice axis (see :mod:`mrisr.geometry`).
* ``selfsup``: for patients with only an axial scan (the SMORE / ECLARE idea), the axial
  in-plane slices, turned both ways, degraded along rows like ``through``.

Array transforms compute the condition from a high-resolution plane ``(C, H, W)``; their
dictionary twins write it under a second key. Same type out as in.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import TransformBackends

from mrisr.degradation import average_lines, bicubic_downsample
from mrisr.geometry import check_factor, slice_axis, superior_inferior_axis
from mrisr.interpolation import bicubic_upsample

__all__ = [
    "PairKind",
    "PAIR_KINDS",
    "training_planes",
    "plane_degradation",
    "gaussian_blur",
    "InPlaneDegrade",
    "InPlanePaird",
    "ThroughPlaneDegrade",
    "ThroughPlanePaird",
    "InPlanePairD",
    "InPlanePairDict",
    "ThroughPlanePairD",
    "ThroughPlanePairDict",
]

PairKind = Literal["in", "through", "selfsup"]
PAIR_KINDS: tuple[str, ...] = get_args(PairKind)


def training_planes(data: np.ndarray, affine: np.ndarray, kind: PairKind) -> list[np.ndarray]:
    """The 2D high-resolution planes a volume contributes to training.

    Args:
        data: ``(I, J, K)`` volume (already normalised).
        affine: its voxel-to-world affine.
        kind: ``"in"``: every slice along the slice axis, axes in increasing order;
            ``"through"``: every slice, rows along the in-plane axis closest to
            superior-inferior; ``"selfsup"``: every slice twice, rows along each in-plane axis.

    Returns:
        ``(H, W)`` float32 arrays.
    """
    if kind not in PAIR_KINDS:
        raise ValueError(f"pair kind must be one of {PAIR_KINDS}, got {kind!r}")
    s = slice_axis(affine)
    a, b = [ax for ax in range(3) if ax != s]
    stack = np.moveaxis(np.asarray(data, dtype=np.float32), s, 0)  # (N, a, b)
    planes: list[np.ndarray] = []
    for plane in stack:
        if kind == "in":
            planes.append(np.ascontiguousarray(plane))
        elif kind == "through":
            rows = superior_inferior_axis(affine, (a, b))
            planes.append(np.ascontiguousarray(plane if rows == a else plane.T))
        else:
            planes += [np.ascontiguousarray(plane), np.ascontiguousarray(plane.T)]
    return planes


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(C, H, W)`` or ``(B, C, H, W)`` with mirrored borders."""
    if sigma <= 0:
        return img
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(img.dtype).to(img.device)
    batched = img if img.ndim == 4 else img[None]
    b, c, h, w = batched.shape
    out = batched.reshape(b * c, 1, h, w)
    pad_mode = "reflect" if min(h, w) > radius else "replicate"
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode=pad_mode), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode=pad_mode), kernel.view(1, 1, -1, 1))
    out = out.reshape(b, c, h, w)
    return out if img.ndim == 4 else out[0]


def _as_tensor(img: Any) -> tuple[torch.Tensor, bool]:
    if isinstance(img, torch.Tensor):
        return img, True
    return torch.as_tensor(np.asarray(img)), False


def _like(out: torch.Tensor, was_tensor: bool) -> Any:
    return out if was_tensor else out.numpy()


def _check_divisible(shape: tuple[int, ...], factors: tuple[int, int]) -> None:
    if shape[-2] % factors[0] or shape[-1] % factors[1]:
        raise ValueError(f"plane size {tuple(shape[-2:])} must be divisible by the factors {factors}")


class InPlaneDegrade(Randomizable, Transform):
    """High-resolution plane -> the network's condition for in-plane pairs (Sec. 5.1.3).

    Anti-aliased bicubic downsampling by ``factor`` in both axes, a Gaussian blur with
    ``sigma ~ U(0, blur_sigma_max)`` on the low-resolution image, then cell-centred bicubic
    upsampling back to the input size.

    Args:
        factor: integer >= 2; ``H`` and ``W`` must be divisible by it.
        blur_sigma_max: upper end of the blur's sigma in low-resolution pixels (0: no blur).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, factor: int, blur_sigma_max: float = 1.5) -> None:
        self.factor = check_factor(factor)
        if blur_sigma_max < 0:
            raise ValueError(f"blur_sigma_max must be >= 0, got {blur_sigma_max}")
        self.blur_sigma_max = float(blur_sigma_max)
        self.sigma = 0.0

    def randomize(self, data: Any = None) -> None:
        self.sigma = float(self.R.uniform(0.0, self.blur_sigma_max)) if self.blur_sigma_max > 0 else 0.0

    def lowres(self, planes: torch.Tensor) -> torch.Tensor:
        """The simulated low-resolution image of ``(B, C, H, W)`` planes, with the current blur."""
        _check_divisible(tuple(planes.shape), (self.factor, self.factor))
        return gaussian_blur(bicubic_downsample(planes, self.factor), self.sigma)

    def __call__(self, img: Any, randomize: bool = True) -> Any:
        if randomize:
            self.randomize()
        x, was_tensor = _as_tensor(img)
        batched = x[None] if x.ndim == 3 else x
        out = bicubic_upsample(self.lowres(batched), (self.factor, self.factor))
        out = out[0] if x.ndim == 3 else out
        return _like(out.to(x.dtype), was_tensor)


class ThroughPlaneDegrade(Transform):
    """High-resolution plane -> the network's condition for through-plane pairs (Sec. 5.2.2).

    Averages each run of ``factor`` consecutive rows (the thick-slice profile), then upsamples
    back along rows with cell-centred bicubic interpolation. Columns are untouched.

    Args:
        factor: integer >= 2 (6 for 3.6 mm slices from 0.6 mm lines); ``H`` must be divisible.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, factor: int = 6) -> None:
        self.factor = check_factor(factor)

    def lowres(self, planes: torch.Tensor) -> torch.Tensor:
        """The thick-slice image of ``(B, C, H, W)`` planes: each run of ``factor`` rows averaged."""
        _check_divisible(tuple(planes.shape), (self.factor, 1))
        return average_lines(planes.float(), -2, self.factor)

    def __call__(self, img: Any) -> Any:
        x, was_tensor = _as_tensor(img)
        batched = x[None] if x.ndim == 3 else x
        out = bicubic_upsample(self.lowres(batched), (self.factor, 1))
        out = out[0] if x.ndim == 3 else out
        return _like(out.to(x.dtype), was_tensor)


def plane_degradation(kind: str, factor: int) -> tuple[Transform, tuple[int, int]]:
    """The deterministic degradation that validation, benchmarks and analyses apply to ``kind``
    planes (in-plane: anti-aliased bicubic, no blur; otherwise: ``factor`` rows averaged), and
    the factors along ``(rows, columns)`` that plane sizes must be multiples of."""
    if kind == "in":
        return InPlaneDegrade(factor, blur_sigma_max=0.0), (factor, factor)
    return ThroughPlaneDegrade(factor), (factor, 1)


class _PairDict(MapTransform):
    """Shared body of the pair dictionary transforms: crop to multiples, write the condition."""

    def __init__(self, keys: KeysCollection, condition_key: str, degrade: Transform, factors: tuple[int, int],
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"a pair transform takes one high-resolution key, got {self.keys}")
        self.condition_key = condition_key
        self.degrade = degrade
        self.factors = factors

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            hr = d[key]
            h, w = hr.shape[-2:]
            hr = hr[..., : h - h % self.factors[0], : w - w % self.factors[1]]
            d[key] = hr
            d[self.condition_key] = self._condition(hr)
        return d

    def _condition(self, hr: Any) -> Any:
        return self.degrade(hr)


class InPlanePaird(Randomizable, _PairDict):
    """Dictionary twin of :class:`InPlaneDegrade`: crops ``keys`` to multiples of the factor and
    writes the condition under ``condition_key``."""

    backend = InPlaneDegrade.backend

    def __init__(self, keys: KeysCollection, factor: int, condition_key: str = "condition",
                 blur_sigma_max: float = 1.5, allow_missing_keys: bool = False) -> None:
        degrade = InPlaneDegrade(factor, blur_sigma_max)
        _PairDict.__init__(self, keys, condition_key, degrade, (degrade.factor, degrade.factor), allow_missing_keys)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> InPlanePaird:
        super().set_random_state(seed, state)
        self.degrade.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.degrade.randomize()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        return super().__call__(data)

    def _condition(self, hr: Any) -> Any:
        return self.degrade(hr, randomize=False)  # one sigma per call, drawn in randomize()


class ThroughPlanePaird(_PairDict):
    """Dictionary twin of :class:`ThroughPlaneDegrade`."""

    backend = ThroughPlaneDegrade.backend

    def __init__(self, keys: KeysCollection, factor: int = 6, condition_key: str = "condition",
                 allow_missing_keys: bool = False) -> None:
        degrade = ThroughPlaneDegrade(factor)
        super().__init__(keys, condition_key, degrade, (degrade.factor, 1), allow_missing_keys)


InPlanePairD = InPlanePairDict = InPlanePaird
ThroughPlanePairD = ThroughPlanePairDict = ThroughPlanePaird
