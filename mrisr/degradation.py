"""Simulated acquisitions: what a thicker slice would have measured.

A 2D multi-slice acquisition with slice thickness ``f`` times the fine spacing integrates the
signal over ``f`` fine lines (Sec. 5.2.2 of the PartDiff paper uses the average of 6 lines).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from mrisr.errors import GeometryError
from mrisr.geometry import check_factor, downsampled_affine, slice_axis, superior_inferior_axis
from mrisr.io import Volume

__all__ = ["average_lines", "bicubic_downsample", "project_consistent", "thick_slice_volume", "simulate_lowres"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def average_lines(data: ArrayT, axis: int, factor: int) -> ArrayT:
    """Average each run of ``factor`` consecutive samples along ``axis`` (numpy or torch).

    A trailing remainder shorter than ``factor`` is dropped.

    Args:
        data: array or tensor of any shape.
        axis: the axis to thicken (negative counts from the end).
        factor: samples per thick sample (>= 2).

    Returns:
        ``data.shape[axis] // factor`` samples along ``axis``; float32 for numpy input, the
        input's floating dtype (float32 for integer tensors) for torch.
    """
    factor = check_factor(factor)
    n = data.shape[axis] // factor
    if n < 1:
        raise GeometryError(f"axis {axis} has {data.shape[axis]} samples, fewer than the factor {factor}")
    if isinstance(data, torch.Tensor):
        moved = data.movedim(axis, 0)[: n * factor]
        moved = moved if moved.is_floating_point() else moved.float()
        return moved.reshape(n, factor, *moved.shape[1:]).mean(dim=1).movedim(0, axis)  # type: ignore[return-value]
    moved = np.moveaxis(np.asarray(data, dtype=np.float64), axis, 0)[: n * factor]
    thick = moved.reshape(n, factor, *moved.shape[1:]).mean(axis=1)
    return np.moveaxis(thick, 0, axis).astype(np.float32)  # type: ignore[return-value]


def bicubic_downsample(planes: torch.Tensor, factor: int) -> torch.Tensor:
    """Anti-aliased bicubic downsampling of ``(B, C, H, W)`` planes by ``factor`` along both
    axes (``H`` and ``W`` divisible by it): the in-plane low-resolution step of training pairs,
    validation, benchmarks and analyses."""
    import torch.nn.functional as F

    factor = check_factor(factor)
    h, w = planes.shape[-2:]
    if h % factor or w % factor:
        raise GeometryError(f"plane of {h} x {w} is not divisible by the factor {factor}")
    return F.interpolate(planes.float(), size=(h // factor, w // factor), mode="bicubic", antialias=True,
                         align_corners=False)


def project_consistent(x: torch.Tensor, lowres: torch.Tensor, forward, iterations: int = 50,
                       tol: float = 1e-7) -> torch.Tensor:
    """The image nearest to ``x`` (least squares) among those that ``forward`` maps to ``lowres``.

    ``forward`` is a linear degradation (e.g. ``lambda p: bicubic_downsample(p, 4)`` or
    ``lambda p: average_lines(p, -2, 6)``). The orthogonal projection onto the affine set
    ``{z : forward(z) = lowres}`` is ``x + A^T (A A^T)^-1 (lowres - A x)``; ``A^T`` comes from
    autograd and ``(A A^T)^-1`` from conjugate gradients. When the true image lies in that set
    (a noise-free simulation), the projection is never farther from it than ``x`` is (the
    projection onto a convex set is non-expansive): the data-consistency check of
    docs/ablations.md, which asks how much of a model's error its input could still remove.
    """
    x = x.detach().float()

    def adjoint(v: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            z = torch.zeros_like(x, requires_grad=True)
            (g,) = torch.autograd.grad((forward(z) * v).sum(), z)
        return g

    residual = lowres.float() - forward(x)
    coef = torch.zeros_like(residual)
    r, p = residual.clone(), residual.clone()
    rs = (r * r).sum()
    for _ in range(iterations):
        if rs.sqrt() <= tol * max(1.0, float(residual.norm())):
            break
        ap = forward(adjoint(p))
        alpha = rs / (p * ap).sum()
        coef, r = coef + alpha * p, r - alpha * ap
        rs_new = (r * r).sum()
        p, rs = r + rs_new / rs * p, rs_new
    return x + adjoint(coef)


def thick_slice_volume(volume: Volume, axis: int, factor: int) -> Volume:
    """A thick-slice version of ``volume``: ``factor`` lines averaged along ``axis``, with the
    affine of the merged grid (same slab, each thick voxel centred on its children)."""
    factors = tuple(factor if a == axis else 1 for a in range(3))
    data = average_lines(volume.data, axis, factor)
    return volume.with_data(data, downsampled_affine(volume.affine, factors),  # type: ignore[arg-type]
                            degradation=f"average of {factor} lines along axis {axis}")


def simulate_lowres(volume: Volume, plane: str, factor: int) -> tuple[Volume, int]:
    """The low-resolution volume the benchmarks and the downstream evaluation start from, and
    the axis ``mrisr upsample --axis`` must use to come back to ``volume``'s grid.

    In-plane: every slice (slice axis = largest spacing) cropped to a multiple of ``factor`` and
    downsampled by anti-aliased bicubic (:func:`bicubic_downsample`), the validation degradation.
    Through-plane: ``factor`` lines averaged along the superior-inferior axis
    (:func:`thick_slice_volume`). The affine is the merged grid's, so upsampling by ``factor``
    gives back ``volume``'s grid (cropped to a multiple of ``factor``).
    """
    if plane == "in":
        axis = slice_axis(volume.affine)
        moved = torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume.data, axis, 0)))[:, None]
        h, w = moved.shape[-2:]
        moved = moved[..., : h - h % factor, : w - w % factor]
        lr = bicubic_downsample(moved, factor)[:, 0].numpy()
        factors = tuple(1 if a == axis else factor for a in range(3))
        return volume.with_data(np.moveaxis(lr, 0, axis), downsampled_affine(volume.affine, factors)), axis
    axis = superior_inferior_axis(volume.affine)
    return thick_slice_volume(volume, axis, factor), axis
