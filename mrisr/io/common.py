"""What the readers share: SimpleITK loaded quietly (its C++ messages to the log, not the
terminal), ITK images to arrays with a RAS affine, the final checks every reader applies, and
one short line from a library's exception."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mrisr.errors import InputError
from mrisr.io.volume import _LPS_TO_RAS, Volume

__all__ = ["NonFinite"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _native_stderr_to_log() -> Any:
    """Capture what C / C++ code writes straight to file descriptor 2 (ITK's MetaIO prints
    "MetaImage: Read: Cannot open data file" that way) and log it at debug level instead, so
    the user sees mrisr's one line, not the library's."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): leave it alone
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace").strip()
            if text:
                logger.debug("from the image library: %s", text)


def _simpleitk() -> Any:
    """SimpleITK, with ITK's own warnings (printed by C++ straight to stderr, e.g. "MetaImage:
    Read: Cannot open data file") shown only when mrisr logs at debug level: the problems they
    describe reach the user as mrisr's one-line errors."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(logging.getLogger("mrisr").isEnabledFor(logging.DEBUG))
    return sitk


NonFinite = Literal["error", "zero"]


def _sitk_affine(image: Any) -> np.ndarray:
    """RAS affine of a 3D SimpleITK image (whose origin and direction are LPS)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    affine[:3, 3] = image.GetOrigin()
    return _LPS_TO_RAS @ affine


def _sitk_to_array(image: Any, p: Path | str) -> tuple[np.ndarray, np.ndarray]:
    sitk = _simpleitk()

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{p} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         "(colour or vector image); mrisr needs a scalar volume")
    dim = image.GetDimension()
    if dim == 4:
        size = image.GetSize()
        if size[3] != 1:
            raise InputError(f"{p} is 4D with {size[3]} frames; mrisr upsamples one 3D volume "
                             "(split the frames first)")
        image = sitk.Extract(image, [size[0], size[1], size[2], 0], [0, 0, 0, 0])
        dim = 3
    if dim != 3:
        raise InputError(f"{p} is {dim}D (size {tuple(image.GetSize())}); mrisr needs a 3D volume")
    # SimpleITK arrays are (k, j, i); mrisr keeps the affine's index order (i, j, k).
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
    return data, _sitk_affine(image)


def _finish(data: np.ndarray, affine: np.ndarray, meta: dict[str, Any], p: Path,
            nonfinite: NonFinite) -> Volume:
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    elif data.ndim == 4:
        raise InputError(f"{p} is 4D with {data.shape[3]} frames; mrisr upsamples one 3D volume "
                         "(split the frames first)")
    if data.ndim == 2 or (data.ndim == 3 and min(data.shape) < 2):
        raise InputError(f"{p} is a 2D image (shape {tuple(data.shape)}); mrisr needs a 3D volume "
                         "with at least 2 voxels along each axis")
    if data.ndim != 3:
        raise InputError(f"{p} has {data.ndim} dimensions (shape {tuple(data.shape)}); "
                         "mrisr needs a 3D volume")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{p} has a degenerate voxel-to-world affine (zero or non-finite voxel size)")
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad and nonfinite == "error":
        raise InputError(f"{p} has {n_bad} NaN or Inf voxels; fix the file or pass --nonfinite zero "
                         "to replace them with 0")
    if n_bad:
        data = np.where(bad, 0.0, data)
        meta["nonfinite_replaced"] = n_bad
        logger.warning("%s: replaced %d NaN or Inf voxels with 0", p, n_bad)
    return Volume(np.ascontiguousarray(data, dtype=np.float32), affine, meta)


def _short(exc: BaseException) -> str:
    """First non-empty line of an exception message (ITK's run to a dozen lines)."""
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # ITK puts the useful sentence last; nibabel first.
    first = lines[0]
    if first.startswith("Exception thrown in SimpleITK") and len(lines) > 1:
        first = lines[-1]
    return first[:300]
