"""``mrisr upsample --preview PNG``: look at the result instead of reading numbers.

Three orthogonal slices through the centre of the output (each named by its anatomical plane
and slice index), the input above (nearest neighbour on the output grid: its real voxels, no
smoothing) and the output below at the same grey window, each with a 10 mm scale bar, and an
enlarged patch of the slice along the upsampled axes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from mrisr.geometry import UpsamplingPlan, voxel_spacing
from mrisr.io import Volume, write_bytes

__all__ = ["write_preview", "nearest_on_grid"]

_PLANE_OF_AXIS = {"R": "sagittal", "L": "sagittal", "A": "coronal", "P": "coronal", "S": "axial", "I": "axial"}


def nearest_on_grid(data: np.ndarray, plan: UpsamplingPlan) -> np.ndarray:
    """The input on the output grid by nearest neighbour: each output voxel shows the input
    voxel it lies in (every output voxel lies inside exactly one input voxel)."""
    out = data
    for axis, f in enumerate(plan.axis_factors):
        if f > 1:
            out = np.repeat(out, f, axis=axis)
    return out[tuple(slice(0, n) for n in plan.output_shape)]


def _display_axes(codes: tuple[str, ...], axis: int) -> tuple[int, int, bool, tuple[bool, bool]]:
    """How to show the slice perpendicular to ``axis`` the radiological way: rows along the
    axis nearest superior-inferior (superior up) or, in an axial slice, anterior-posterior
    (anterior up); the patient's right on the viewer's left, anterior on the left in a
    sagittal slice. Returns (row axis, column axis, transpose, (flip rows, flip columns))."""
    a, b = [x for x in range(3) if x != axis]
    priority = {"S": 0, "I": 0, "A": 1, "P": 1, "R": 2, "L": 2}
    rows, cols = (a, b) if priority[codes[a]] <= priority[codes[b]] else (b, a)
    flip_rows = codes[rows] in ("S", "A")  # index grows upwards in the body: put it at the bottom
    flip_cols = codes[cols] in ("R", "A")  # index grows towards the patient's right / front
    return rows, cols, rows != a, (flip_rows, flip_cols)


def write_preview(source: Volume, result: Volume, plan: UpsamplingPlan, path: str | os.PathLike,
                  title: str = "") -> Path:
    """Write the preview PNG atomically.

    Args:
        source: the input volume.
        result: the upsampled volume (on ``plan``'s output grid).
        plan: the upsampling plan.
        path: the ``.png`` to write.
        title: the figure's title (e.g. the input name and method).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    out = Path(path)
    before = nearest_on_grid(source.data, plan)
    after = result.data
    from mrisr.transforms import ROBUST_PERCENTILES

    lo, hi = (float(v) for v in np.percentile(source.data, ROBUST_PERCENTILES))  # the window of the input
    spacing = voxel_spacing(result.affine)
    codes = result.orientation
    centre = [n // 2 for n in result.shape]
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.6), gridspec_kw={"width_ratios": [1, 1, 1, 0.8]})
    upsampled = [a for a in range(3) if plan.axis_factors[a] > 1]
    patch_axis = next(a for a in range(3) if a not in upsampled) if len(upsampled) == 2 else plan.stack_axis
    for col, axis in enumerate(range(3)):
        rows_axis, cols_axis, transpose, flips = _display_axes(codes, axis)
        name = f"{_PLANE_OF_AXIS.get(codes[axis], 'slice')} (axis {axis}, slice {centre[axis]})"
        for row, (label, data) in enumerate((("input (nearest neighbour)", before), ("output", after))):
            ax = axes[row, col]
            image = np.take(data, centre[axis], axis=axis)
            image = image.T if transpose else image  # (rows_axis, cols_axis)
            for dim, flip in enumerate(flips):
                image = np.flip(image, dim) if flip else image
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest",
                      aspect=float(spacing[rows_axis] / spacing[cols_axis]))
            bar = 10.0 / float(spacing[cols_axis])  # 10 mm in pixels along the columns
            h, w = image.shape
            ax.plot([w * 0.05, w * 0.05 + bar], [h * 0.93, h * 0.93], color="yellow", lw=2)
            ax.text(w * 0.05, h * 0.9, "10 mm", color="yellow", fontsize=7)
            ax.set_title(f"{label}\n{name}", fontsize=8)
            ax.axis("off")
            if axis == patch_axis:
                ph, pw = max(8, h // 4), max(8, w // 4)
                r0, c0 = (h - ph) // 2, (w - pw) // 2
                ax.add_patch(Rectangle((c0, r0), pw, ph, fill=False, color="cyan", lw=1))
                zoom = axes[row, 3]
                zoom.imshow(image[r0:r0 + ph, c0:c0 + pw], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest",
                            aspect=float(spacing[rows_axis] / spacing[cols_axis]))
                zoom.set_title(f"{label}, enlarged (cyan box)", fontsize=8)
                zoom.axis("off")
    fig.suptitle(title or "mrisr", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return write_bytes(buf.getvalue(), out)
