"""Plane and axis logic, and the geometry of an upsampled grid.

Convention (cell-centred): upsampling an axis by an integer factor ``f`` splits every input
voxel into ``f`` output voxels that tile the same physical extent, the input voxel's centre
being the centre of its ``f`` children. The output covers exactly the same slab as the input.
In the affine this means: divide the axis' column by ``f`` and move the origin by
``-(f - 1) / (2 f)`` input voxels along that axis. Output voxel ``o`` along the axis sits at
input index ``(o + 0.5) / f - 0.5`` -- the same mapping as ``torch.nn.functional.interpolate``
with ``align_corners=False`` and ``scipy.ndimage.zoom`` with ``grid_mode=True``.

Planes: ``in`` upsamples the two in-plane axes (all but the slice axis) on the 2D slices;
``through`` upsamples the slice axis on 2D planes that hold the slice axis (as rows, ``H``) and
the finest remaining axis (as columns, ``W``). The slice axis is the one with the largest
spacing unless the caller names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar, get_args

import numpy as np

from mrisr.errors import GeometryError

__all__ = [
    "Plane",
    "PLANES",
    "UpsamplingPlan",
    "ORIENTATION_TOLERANCE",
    "through_orientations",
    "isotropic_factor",
    "voxel_spacing",
    "slice_axis",
    "superior_inferior_axis",
    "upsampled_affine",
    "downsampled_affine",
    "plan_upsampling",
    "to_planes",
    "from_planes",
    "voxel_to_world",
    "slab_bounds",
    "check_factor",
    "VoxelBox",
    "parse_voxel_box",
    "world_box_to_voxels",
    "world_extent_text",
]

Plane = Literal["in", "through"]
PLANES: tuple[str, ...] = get_args(Plane)
# Beyond this many output voxels (8 GiB of float32) the request is surely a mistake.
MAX_OUTPUT_VOXELS = 2**31

ArrayT = TypeVar("ArrayT")


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each array axis: the norms of the affine's first three columns."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def slice_axis(affine: np.ndarray, rtol: float = 1e-3) -> int:
    """The array axis with the largest spacing; among (near-)ties the last one.

    Ties go to the last axis because DICOM and NIfTI stack slices along ``k``.
    """
    spacing = voxel_spacing(affine)
    largest = spacing.max()
    return int(max(i for i in range(3) if spacing[i] >= largest * (1.0 - rtol)))


def superior_inferior_axis(affine: np.ndarray, axes: tuple[int, ...] = (0, 1, 2)) -> int:
    """Of ``axes``, the array axis whose world direction is closest to superior-inferior."""
    directions = np.asarray(affine, dtype=np.float64)[:3, :3] / voxel_spacing(affine)
    return max(axes, key=lambda a: abs(directions[2, a]))


def check_factor(factor: object) -> int:
    """Return ``factor`` as an int if it is an integer >= 2, else raise GeometryError."""
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)):
        raise GeometryError(f"factor must be an integer >= 2, got {factor!r}")
    if factor < 2:
        raise GeometryError(f"factor must be an integer >= 2, got {factor}")
    return int(factor)


def downsampled_affine(affine: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Affine of the grid whose voxels each merge ``factors`` input voxels (inverse of
    :func:`upsampled_affine`): the merged voxel's centre is the mean of its children's."""
    out = np.array(affine, dtype=np.float64, copy=True)
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        column = np.asarray(affine, dtype=np.float64)[:3, axis]
        out[:3, 3] += column * (f - 1) / 2.0
        out[:3, axis] = column * f
    return out


def upsampled_affine(affine: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Affine of the cell-centred grid that splits each voxel into ``factors`` children.

    Args:
        affine: ``(4, 4)`` voxel-to-world map of the input.
        factors: integer factor per array axis (1 leaves the axis alone).
    """
    out = np.array(affine, dtype=np.float64, copy=True)
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        column = np.asarray(affine, dtype=np.float64)[:3, axis]
        out[:3, 3] += column * (-(f - 1) / (2.0 * f))
        out[:3, axis] = column / f
    return out


@dataclass(frozen=True)
class UpsamplingPlan:
    """Everything about how a volume is cut into planes and what grid comes out.

    Attributes:
        plane: ``"in"`` or ``"through"``.
        factor: the integer upsampling factor.
        slice_axis: the array axis treated as the slice (through-plane) axis.
        plane_axes: the array axes of each 2D plane, as (rows ``H``, columns ``W``).
        stack_axis: the array axis along which planes are stacked (one plane per index).
        axis_factors: factor per array axis (1 where an axis is not upsampled).
        input_shape, output_shape: array shapes before and after.
        input_affine, output_affine: voxel-to-world maps before and after.
    """

    plane: Plane
    factor: int
    slice_axis: int
    plane_axes: tuple[int, int]
    stack_axis: int
    axis_factors: tuple[int, int, int]
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    input_affine: np.ndarray
    output_affine: np.ndarray

    @property
    def plane_factors(self) -> tuple[int, int]:
        """Factor along the plane's rows and columns."""
        return (self.axis_factors[self.plane_axes[0]], self.axis_factors[self.plane_axes[1]])

    @property
    def n_planes(self) -> int:
        return self.input_shape[self.stack_axis]

    @property
    def input_spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in voxel_spacing(self.input_affine))

    @property
    def output_spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in voxel_spacing(self.output_affine))

    def describe(self) -> dict:
        """JSON-friendly summary (used by reports and ``mrisr info``)."""
        return {
            "plane": self.plane,
            "factor": self.factor,
            "slice_axis": self.slice_axis,
            "plane_axes": list(self.plane_axes),
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "input_spacing_mm": [round(s, 6) for s in self.input_spacing],
            "output_spacing_mm": [round(s, 6) for s in self.output_spacing],
            "output_affine": np.round(self.output_affine, 6).tolist(),
        }


def isotropic_factor(affine: np.ndarray, axis: int | None = None) -> int:
    """The through-plane factor that makes the slice spacing closest to the in-plane one
    (at least 2): e.g. 6 for 0.6 mm pixels and 3.6 mm slices."""
    spacing = voxel_spacing(affine)
    s_axis = slice_axis(affine) if axis is None else axis
    finest = min(spacing[a] for a in range(3) if a != s_axis)
    return max(2, round(float(spacing[s_axis] / finest)))


def plan_upsampling(shape: tuple[int, ...], affine: np.ndarray, plane: Plane, factor: int,
                    axis: int | None = None, column_axis: int | None = None) -> UpsamplingPlan:
    """Decide planes, axes and the output grid for upsampling a volume.

    Args:
        shape: the volume's array shape ``(I, J, K)``.
        affine: its ``(4, 4)`` voxel-to-world map.
        plane: ``"in"`` (the two in-plane axes) or ``"through"`` (the slice axis).
        factor: integer factor >= 2.
        axis: the slice axis; by default the axis with the largest spacing.
        column_axis: through-plane only: the axis of the planes' columns (the other one is the
            slice axis); by default the finest remaining axis (:func:`through_orientations`
            lists both where they are equally fine).

    Raises:
        GeometryError: unknown plane, factor not an integer >= 2, axis not 0, 1 or 2, a column
            axis that is the slice axis or given in-plane, or an output too large to hold.
    """
    if plane not in PLANES:
        raise GeometryError(f"plane must be one of {', '.join(PLANES)}, got {plane!r}")
    factor = check_factor(factor)
    if len(shape) != 3:
        raise GeometryError(f"a 3D shape is needed, got {tuple(shape)}")
    if axis is None:
        s_axis = slice_axis(affine)
    elif isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not 0 <= axis <= 2:
        raise GeometryError(f"axis must be 0, 1 or 2, got {axis!r}")
    else:
        s_axis = int(axis)
    others = [a for a in range(3) if a != s_axis]
    spacing = voxel_spacing(affine)
    if column_axis is not None and (plane != "through" or column_axis not in others):
        raise GeometryError(f"column axis {column_axis!r} is not one of the through-plane axes {others}")
    if plane == "in":
        plane_axes = (others[0], others[1])
        stack = s_axis
        axis_factors = tuple(1 if a == s_axis else factor for a in range(3))
    else:
        # The finest remaining axis carries the detail the model learns from; near-ties (within
        # 0.1 %, float noise of oblique affines) go to the lower index.
        finest = min(spacing[a] for a in others)
        fine = min(a for a in others if spacing[a] <= finest * (1.0 + 1e-3)) if column_axis is None else column_axis
        plane_axes = (s_axis, fine)
        stack = next(a for a in others if a != fine)
        axis_factors = tuple(factor if a == s_axis else 1 for a in range(3))
    out_shape = tuple(int(n) * f for n, f in zip(shape, axis_factors))
    if int(np.prod(out_shape, dtype=np.int64)) > MAX_OUTPUT_VOXELS:
        raise GeometryError(f"output shape {out_shape} is too large (over {MAX_OUTPUT_VOXELS} voxels); "
                            "use a smaller factor")
    return UpsamplingPlan(
        plane=plane, factor=factor, slice_axis=s_axis, plane_axes=plane_axes, stack_axis=stack,
        axis_factors=axis_factors,  # type: ignore[arg-type]
        input_shape=tuple(int(n) for n in shape),  # type: ignore[arg-type]
        output_shape=out_shape,  # type: ignore[arg-type]
        input_affine=np.asarray(affine, dtype=np.float64),
        output_affine=upsampled_affine(affine, axis_factors),  # type: ignore[arg-type]
    )


#: through-plane, how much coarser (relative) the second in-plane axis may be than the finest one
#: and still be cut into planes of its own (:func:`through_orientations`)
ORIENTATION_TOLERANCE = 0.1


def through_orientations(plan: UpsamplingPlan) -> list[UpsamplingPlan]:
    """The through-plane plans of a volume, one per in-plane axis fine enough to be the planes'
    columns: ``plan`` first, then (for an axial scan with square pixels) the plan whose planes
    hold the other in-plane axis, e.g. sagittal planes besides coronal ones. Both give the same
    output grid; averaging the two estimates is orthogonal fusion. One plan for in-plane, and
    where the other axis is more than :data:`ORIENTATION_TOLERANCE` coarser (its planes would be
    coarse along both axes)."""
    if plan.plane != "through":
        return [plan]
    spacing = voxel_spacing(plan.input_affine)
    fine = plan.plane_axes[1]
    other = plan.stack_axis
    if spacing[other] > spacing[fine] * (1.0 + ORIENTATION_TOLERANCE):
        return [plan]
    return [plan, plan_upsampling(plan.input_shape, plan.input_affine, plan.plane, plan.factor, plan.slice_axis,
                                  column_axis=other)]


def to_planes(data: ArrayT, plan: UpsamplingPlan) -> ArrayT:
    """Rearrange a volume ``(I, J, K)`` into a stack of planes ``(N, H, W)`` (numpy or torch)."""
    order = (plan.stack_axis, *plan.plane_axes)
    if hasattr(data, "permute"):
        return data.permute(*order)  # type: ignore[attr-defined]
    return np.transpose(data, order)  # type: ignore[return-value]


def from_planes(planes: ArrayT, plan: UpsamplingPlan) -> ArrayT:
    """Inverse of :func:`to_planes`: a stack ``(N, H, W)`` back to array axes ``(I, J, K)``."""
    order = (plan.stack_axis, *plan.plane_axes)
    inverse = tuple(int(i) for i in np.argsort(order))
    if hasattr(planes, "permute"):
        return planes.permute(*inverse)  # type: ignore[attr-defined]
    return np.transpose(planes, inverse)  # type: ignore[return-value]


def voxel_to_world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """World coordinates ``(..., 3)`` of voxel indices ``(..., 3)`` (fractional allowed)."""
    ijk = np.asarray(ijk, dtype=np.float64)
    return ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def slab_bounds(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """World coordinates of the two outer corners of the grid's extent (voxel edges, not centres).

    Returns:
        ``(2, 3)``: the corner at index ``(-0.5, -0.5, -0.5)`` and the one at ``shape - 0.5``.
    """
    lo = np.full(3, -0.5)
    hi = np.asarray(shape, dtype=np.float64) - 0.5
    return voxel_to_world(affine, np.stack([lo, hi]))


#: a half-open box of voxel indices ``(start, stop)`` along each of the three array axes
VoxelBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def _three_ranges(text: str, what: str) -> list[tuple[str, str]]:
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3 or any(p.count(":") != 1 for p in parts):
        raise GeometryError(f"{what} takes three ranges A:B separated by commas (one per array axis; an empty "
                            f"side means the volume's edge, e.g. 100:220,80:200,:), got {text!r}")
    return [tuple(q.strip() for q in p.split(":")) for p in parts]  # type: ignore[misc]


def parse_voxel_box(text: str, shape: tuple[int, int, int]) -> VoxelBox:
    """A voxel box from ``"I0:I1,J0:J1,K0:K1"`` (half-open, as Python slices; an empty side is the
    volume's edge) checked against ``shape``.

    Raises:
        GeometryError: malformed text, a bound outside the volume or an empty range.
    """
    box = []
    for axis, (a, b) in enumerate(_three_ranges(text, "--roi")):
        n = int(shape[axis])
        try:
            lo = int(a) if a else 0
            hi = int(b) if b else n
        except ValueError:
            raise GeometryError(f"--roi bounds are voxel indices (integers), got {a or '(edge)'}:{b or '(edge)'} "
                                f"on axis {axis}") from None
        if not 0 <= lo < hi <= n:
            raise GeometryError(f"--roi {lo}:{hi} on axis {axis} is not a non-empty range inside 0:{n}")
        box.append((lo, hi))
    return tuple(box)  # type: ignore[return-value]


def world_box_to_voxels(text: str, affine: np.ndarray, shape: tuple[int, int, int]) -> VoxelBox:
    """The voxels whose centres lie inside a world box ``"X0:X1,Y0:Y1,Z0:Z1"`` (mm in the frame of
    ``affine``, NIfTI RAS+; an empty side is unbounded), as a half-open voxel box.

    An oblique grid's voxels inside an axis-aligned world box do not form a box of indices; the
    result is the smallest index box that holds all of them.

    Raises:
        GeometryError: malformed text or no voxel centre inside the box.
    """
    bounds = []
    for axis, (a, b) in enumerate(_three_ranges(text, "--roi-mm")):
        try:
            lo = float(a) if a else -np.inf
            hi = float(b) if b else np.inf
        except ValueError:
            raise GeometryError(f"--roi-mm bounds are millimetres, got {a}:{b} on world axis {'xyz'[axis]}") from None
        if not lo < hi:
            raise GeometryError(f"--roi-mm {a}:{b} on world axis {'xyz'[axis]} is empty")
        bounds.append((lo, hi))
    tol = 1e-6
    lo_idx, hi_idx = np.full(3, np.iinfo(np.int64).max), np.full(3, -1)
    jk = np.stack(np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij"), axis=-1).reshape(-1, 2)
    for i in range(int(shape[0])):  # one slab of the grid at a time: memory stays at one slab
        grid = np.concatenate([np.full((len(jk), 1), i), jk], axis=1)
        world = voxel_to_world(affine, grid)
        inside = np.all([(world[:, a] >= lo - tol) & (world[:, a] <= hi + tol) for a, (lo, hi) in enumerate(bounds)],
                        axis=0)
        if inside.any():
            kept = grid[inside]
            lo_idx, hi_idx = np.minimum(lo_idx, kept.min(axis=0)), np.maximum(hi_idx, kept.max(axis=0))
    if hi_idx[0] < 0:
        raise GeometryError(f"--roi-mm {text} holds no voxel centre of the volume (its voxel centres span "
                            f"{world_extent_text(affine, shape)})")
    return tuple((int(lo_idx[a]), int(hi_idx[a]) + 1) for a in range(3))  # type: ignore[return-value]


def world_extent_text(affine: np.ndarray, shape: tuple[int, int, int]) -> str:
    """Where a grid's voxel centres lie in the world, as ``x A:B, y C:D, z E:F`` mm (the form
    ``--roi-mm`` takes)."""
    corners = np.array(np.meshgrid(*([0, int(n) - 1] for n in shape), indexing="ij")).reshape(3, -1).T
    world = voxel_to_world(affine, corners)
    return ", ".join(f"{'xyz'[a]} {world[:, a].min():.1f}:{world[:, a].max():.1f}" for a in range(3)) + " mm"
