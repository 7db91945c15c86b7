"""Reading volumes: NIfTI through nibabel, NRRD / MHA / MHD through SimpleITK (LPS flipped to RAS
here, once), DICOM folders through :mod:`mrisr.io.dicom`; one line naming the file when it
cannot be read."""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from mrisr.errors import InputError
from mrisr.io.common import NonFinite, _finish, _native_stderr_to_log, _short, _simpleitk, _sitk_to_array
from mrisr.io.dicom import _load_dicom_folder
from mrisr.io.volume import NIFTI_SUFFIXES, SITK_SUFFIXES, Volume

__all__ = ["load_volume"]

logger = logging.getLogger(__name__)


def load_volume(path: str | os.PathLike, series: str | None = None,
                nonfinite: NonFinite = "error") -> Volume:
    """Read a 3D volume with its RAS affine.

    Args:
        path: a NIfTI file (``.nii``, ``.nii.gz``), an NRRD / MHA / MHD file, or a folder holding
            one DICOM series (searched recursively).
        series: the SeriesInstanceUID to read when a DICOM folder holds several series.
        nonfinite: what to do with NaN or Inf voxels: ``"error"`` refuses the volume, ``"zero"``
            replaces them with 0 and records how many in ``metadata["nonfinite_replaced"]``.

    Returns:
        The volume, float32 in the input's units. A 4D file with a single frame is accepted.

    Raises:
        InputError: the path is missing, not an image, corrupt, not 3D, a 4D file with several
            frames, NaN / Inf voxels under ``nonfinite="error"``, or a DICOM folder with
            several series and no ``series``.
    """
    if nonfinite not in ("error", "zero"):
        raise InputError(f"nonfinite must be 'error' or 'zero', got {nonfinite!r}")
    p = Path(path)
    if not p.exists():
        raise InputError(f"input not found: {p}")
    if p.is_dir():
        return _load_dicom_folder(p, series, nonfinite)
    if series is not None:
        raise InputError(f"--series selects a DICOM series inside a folder, but {p} is a file")
    name = p.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        data, affine, meta = _read_nifti(p)
    elif name.endswith(SITK_SUFFIXES):
        data, affine, meta = _read_sitk(p)
    else:
        allowed = ", ".join(NIFTI_SUFFIXES + SITK_SUFFIXES)
        raise InputError(f"{p} is not a supported volume file (allowed: {allowed}, or a DICOM folder)")
    return _finish(data, affine, {"path": str(p), **meta}, p, nonfinite)


def _read_nifti(p: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    import nibabel as nib

    try:
        img = nib.load(str(p))
    except Exception as exc:  # nibabel raises many types for truncated / non-NIfTI files
        raise InputError(f"{p} is not a readable NIfTI file: {_short(exc)}") from exc
    stored = np.dtype(img.get_data_dtype()) if hasattr(img, "get_data_dtype") else None
    if stored is not None and stored.kind == "c":
        raise InputError(f"{p} holds complex values ({stored}); mrisr works on magnitude images: save the "
                         "magnitude (abs) first")
    if stored is not None and (stored.fields or stored.kind not in "biuf"):
        what = "RGB / multi-component" if stored.fields else f"non-numeric ({stored.kind})"
        raise InputError(f"{p} holds {what} voxels ({stored}); mrisr needs one grey value per voxel")
    try:
        # get_fdata applies scl_slope / scl_inter, so values are in the stored physical units.
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # nibabel raises many types for truncated / non-NIfTI files
        raise InputError(f"{p} is not a readable NIfTI file: {_short(exc)}") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{p} is not a NIfTI image (read as {type(img).__name__})")
    meta = {"format": "nifti", "stored_dtype": str(img.get_data_dtype())}
    header = img.header
    meta["qform_code"], meta["sform_code"] = int(header["qform_code"]), int(header["sform_code"])
    if int(header["sform_code"]) == 0:
        # without an sform the geometry comes from the qform or NIfTI's fallback, both scaled by
        # pixdim; nibabel turns a stored 0 into 1 mm, which would be silently wrong geometry
        zooms = _stored_pixdim(p, type(header))
        if not (np.all(np.isfinite(zooms)) and np.all(zooms > 0)):
            which = "qform code " + str(int(header["qform_code"])) if int(header["qform_code"]) else "no qform"
            raise InputError(f"{p} stores no usable geometry: sform code 0, {which}, and pixdim "
                             f"{tuple(float(z) for z in zooms)}; set the voxel size first")
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        logger.warning("%s stores no orientation (qform and sform codes 0): axes taken as RAS with voxel size "
                       "%s mm from pixdim", p.name, " x ".join(f"{z:g}" for z in zooms))
        meta["geometry"] = "pixdim only, no orientation"
    return data, np.asarray(img.affine, dtype=np.float64), meta


def _stored_pixdim(p: Path, header_class: Any) -> np.ndarray:
    """pixdim[1:4] as stored in the file (nibabel replaces zeros by 1 when it loads a header)."""
    opener: Any = gzip.open if p.name.lower().endswith(".gz") else open
    with opener(p, "rb") as fh:
        raw = fh.read(header_class.template_dtype.itemsize)
    stored = header_class(raw, check=False)
    return np.asarray(stored["pixdim"][1:4], dtype=np.float64)


def _read_sitk(p: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    sitk = _simpleitk()

    try:
        with _native_stderr_to_log():
            image = sitk.ReadImage(str(p))
    except Exception as exc:  # RuntimeError with ITK's multi-line message
        raise InputError(f"{p} is not a readable image: {_short(exc)}") from exc
    data, affine = _sitk_to_array(image, p)
    meta = {"format": p.suffix.lstrip(".").lower(), "stored_dtype": image.GetPixelIDTypeAsString()}
    return data, affine, meta
