"""DICOM series: finding them in a folder, ordering the slices by position and building the
affine from the slice geometry (spacing checked)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from mrisr.errors import InputError
from mrisr.io.common import NonFinite, _finish, _native_stderr_to_log, _short, _simpleitk, _sitk_to_array
from mrisr.io.volume import _LPS_TO_RAS, DicomSeries, Volume

__all__ = ["list_dicom_series"]

logger = logging.getLogger(__name__)


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """Find every DICOM image series under ``folder`` (recursively), files sorted by position.

    Files that are not DICOM are ignored. Slices are ordered along the normal of their
    ImageOrientationPatient, so the series reads the same whatever the file names are.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, list[tuple[str, Any]]] = {}
    for root, _dirs, files in os.walk(folder):
        for name in sorted(files):
            fpath = os.path.join(root, name)
            try:
                ds = pydicom.dcmread(fpath, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, KeyError):
                continue
            uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
            if not uid or "ImagePositionPatient" not in ds:
                continue
            groups.setdefault(uid, []).append((fpath, ds))
    series = []
    for uid, items in groups.items():
        ds0 = items[0][1]
        normal = _slice_normal(ds0)
        keyed = sorted((float(np.dot(normal, _position(ds))), fpath) for fpath, ds in items)
        series.append(DicomSeries(uid=uid, description=str(getattr(ds0, "SeriesDescription", "") or ""),
                                  files=tuple(f for _, f in keyed), modality=str(getattr(ds0, "Modality", "") or ""),
                                  positions=tuple(p for p, _ in keyed)))
    return sorted(series, key=lambda s: (s.description, s.uid))


def _slice_normal(ds: Any) -> np.ndarray:
    iop = np.asarray([float(v) for v in getattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])])
    return np.cross(iop[:3], iop[3:])


def _position(ds: Any) -> np.ndarray:
    return np.asarray([float(v) for v in ds.ImagePositionPatient])


def _load_dicom_folder(folder: Path, uid: str | None, nonfinite: NonFinite) -> Volume:
    import pydicom
    sitk = _simpleitk()

    found = list_dicom_series(folder)
    if not found:
        raise InputError(f"{folder} is a folder without DICOM image series")
    if uid is None:
        if len(found) > 1:
            listing = "; ".join(s.summary() for s in found)
            raise InputError(f"{folder} holds {len(found)} DICOM series, pick one with --series UID: "
                             f"{listing}")
        chosen = found[0]
    else:
        matches = [s for s in found if s.uid == uid]
        if not matches:
            listing = "; ".join(s.summary() for s in found)
            raise InputError(f"series {uid} is not in {folder}; found: {listing}")
        chosen = matches[0]
    ds0 = pydicom.dcmread(chosen.files[0], stop_before_pixels=True)
    if "ImageOrientationPatient" not in ds0:
        raise InputError(f"DICOM series {chosen.uid} has no ImageOrientationPatient: its orientation is unknown, "
                         "and reading it as axial could be wrong")
    _check_dicom_spacing(chosen)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    try:
        with _native_stderr_to_log():
            image = reader.Execute()
    except Exception as exc:
        raise InputError(f"DICOM series {chosen.uid} in {folder} is not readable: {_short(exc)}") from exc
    data, affine = _sitk_to_array(image, folder)
    affine, tilt_mm = _stack_affine(affine, chosen, ds0)
    meta = {
        "format": "dicom",
        "path": str(folder),
        "series_uid": chosen.uid,
        "series_description": chosen.description,
        "modality": chosen.modality,
        "n_files": chosen.n_slices,
        "slice_thickness_mm": float(getattr(ds0, "SliceThickness", 0.0) or 0.0),
        "stored_dtype": image.GetPixelIDTypeAsString(),
    }
    if tilt_mm:
        meta["sheared_stack_mm_per_slice"] = tilt_mm
    return _finish(data, affine, meta, folder, nonfinite)


def _stack_affine(affine: np.ndarray, series: DicomSeries, first: Any) -> tuple[np.ndarray, float]:
    """The affine with its slice column taken from the ImagePositionPatient steps themselves.

    ITK assumes the slices step along the normal of ImageOrientationPatient. A stack acquired
    with gantry tilt (or otherwise sheared) steps obliquely: its true affine has a slice column
    that is not orthogonal to the in-plane ones. That repair is well defined (the positions say
    where each slice is), so it is made, with one warning naming it; the NIfTI output then keeps
    the shear in its sform alone (mrisr.io.save_volume).

    Args:
        affine: ITK's affine of the series (RAS).
        series: the series, files sorted along the slice normal.
        first: the header of its first file, already read.

    Returns:
        The affine, and the in-plane offset per slice in mm (0.0 when the stack is not sheared).
    """
    import pydicom

    if series.n_slices < 2:
        return affine, 0.0
    last = pydicom.dcmread(series.files[-1], stop_before_pixels=True)
    step_lps = (_position(last) - _position(first)) / (series.n_slices - 1)
    step = _LPS_TO_RAS[:3, :3] @ step_lps
    column = affine[:3, 2]
    normal = column / np.linalg.norm(column)
    along = float(np.dot(step, normal))
    across = step - along * normal
    tilt = float(np.linalg.norm(across))
    if tilt <= max(1e-3, 1e-3 * abs(along)):
        return affine, 0.0
    out = affine.copy()
    out[:3, 2] = step
    logger.warning("DICOM series %s is a sheared stack (each slice shifted %.3f mm in-plane, e.g. gantry tilt): "
                   "its affine keeps the shear", series.uid, tilt)
    return out, tilt


def _check_dicom_spacing(series: DicomSeries) -> None:
    """Reject series whose slices are not evenly spaced: one affine cannot describe them."""
    if series.n_slices < 2:
        return
    gaps = np.diff(np.asarray(series.positions))
    if np.any(np.abs(gaps) < 1e-4):
        raise InputError(f"DICOM series {series.uid} has several images at the same position "
                         "(a multi-echo or repeated acquisition?); mrisr needs one 3D volume")
    if np.ptp(gaps) > max(1e-3, 0.01 * float(np.median(np.abs(gaps)))):
        raise InputError(f"DICOM series {series.uid} has unevenly spaced slices "
                         f"({gaps.min():.3f} to {gaps.max():.3f} mm); mrisr needs a regular grid")
