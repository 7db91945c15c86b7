"""Volumes in and out, each with its voxel-to-world affine.

Every reader returns a :class:`Volume` whose ``affine`` maps voxel indices ``(i, j, k, 1)`` to
world coordinates in RAS millimetres (the NIfTI convention), whatever the file format stored:
NIfTI through nibabel, NRRD / MHA / MHD and DICOM series through SimpleITK (whose LPS geometry
is flipped to RAS here, once). Voxel values are kept in the input's units as float32.

Writing is NIfTI only (``.nii`` / ``.nii.gz``, float32; sform set, and the qform too unless
the affine is sheared), through a hidden temporary in the target folder that is published only
when complete, so a reader never sees half a file. Ctrl-C and SIGTERM (through the CLI) remove
the temporary; a SIGKILL cannot, so the temporary's name marks it as partial and carries the
writer's process id, and the next write to the same output removes it once that process is
gone. Outputs get the user's umask (or the replaced file's mode).
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mrisr.errors import InputError, OutputError

__all__ = [
    "Volume",
    "DicomSeries",
    "load_volume",
    "save_volume",
    "list_dicom_series",
    "output_stem",
    "check_output_path",
    "write_json",
    "NIFTI_SUFFIXES",
    "NonFinite",
    "SITK_SUFFIXES",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
# LPS (DICOM, ITK) <-> RAS (NIfTI): negate the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Volume:
    """A 3D scalar volume and where it lies in the world.

    Attributes:
        data: voxel values, shape ``(I, J, K)``, float32, in the input's units.
        affine: ``(4, 4)`` float64 map from voxel index to RAS millimetres.
        metadata: where the volume came from (path, format, DICOM series UID and description,
            the stored data type, ...); JSON-serialisable.
    """

    data: np.ndarray
    affine: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise InputError(f"a Volume needs 3D data, got shape {tuple(self.data.shape)}")
        if self.affine.shape != (4, 4):
            raise InputError(f"a Volume needs a 4x4 affine, got shape {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in millimetres along each array axis (norms of the affine's columns)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> tuple[str, str, str]:
        """Anatomical direction each array axis points to, e.g. ``('L', 'P', 'S')``."""
        import nibabel as nib

        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]

    def with_data(self, data: np.ndarray, affine: np.ndarray, **metadata: Any) -> Volume:
        """A new volume on another grid that keeps this one's provenance."""
        return Volume(np.ascontiguousarray(data, dtype=np.float32), np.asarray(affine, dtype=np.float64),
                      {**self.metadata, **metadata})

    def crop(self, sizes: Sequence[int | None], multiple: Sequence[int] = (1, 1, 1)) -> Volume:
        """The central ``sizes[a]`` voxels along each axis (None or a larger size: all of it), each
        size rounded down to a multiple of ``multiple[a]``; the affine moves so that every kept
        voxel keeps its world position."""
        starts, index = [], []
        for n, size, m in zip(self.shape, sizes, multiple):
            size = n if size is None or size >= n else size
            size -= size % m
            if size < 1:
                raise ValueError(f"crop of {sizes} leaves no voxels of a {self.shape} volume")
            starts.append((n - size) // 2)
            index.append(slice(starts[-1], starts[-1] + size))
        affine = self.affine.copy()
        affine[:3, 3] = self.affine[:3, :3] @ np.asarray(starts, float) + self.affine[:3, 3]
        return self.with_data(self.data[tuple(index)], affine)


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found in a folder tree, its files sorted along the slice normal."""

    uid: str
    description: str
    files: tuple[str, ...]
    modality: str = ""
    #: position of each file along the slice normal (mm), in file order
    positions: tuple[float, ...] = ()

    @property
    def n_slices(self) -> int:
        return len(self.files)

    def summary(self) -> str:
        return f"{self.uid} ({self.description or 'no description'}, {self.n_slices} slices)"


# --------------------------------------------------------------------------------------------
# reading


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


# --------------------------------------------------------------------------------------------
# DICOM


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


# --------------------------------------------------------------------------------------------
# writing


def list_cases(folder: str | os.PathLike, what: str = "folder") -> list[dict[str, Any]]:
    """The cases of a folder of volumes: each NIfTI / NRRD / MHA file at its top level, and each
    DICOM series of each sub-folder, as ``{"image": path, "series": uid or None, "name": stem}``.

    Hidden files are ignored, other files named in the log; names that would collide (``a.nii``
    and ``a.nii.gz``, two series of one folder) are made distinct. A sub-folder without DICOM is
    kept as a case so that reading it reports why it cannot be used.

    Raises:
        InputError: the folder does not exist or holds no volume.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{what} not found: {root}")
    items: list[dict[str, Any]] = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES + SITK_SUFFIXES):
            items.append({"image": str(p), "series": None, "name": output_stem(p)})
        elif p.is_dir():
            series = list_dicom_series(p)
            if not series:
                items.append({"image": str(p), "series": None, "name": p.name})
            for s in series:
                several = len(series) > 1
                items.append({"image": str(p), "series": s.uid if several else None,
                              "name": f"{p.name}_{s.uid[-8:]}" if several else p.name})
        else:
            logger.info("ignoring %s (not a NIfTI / NRRD / MHA file or a DICOM folder)", p)
    if not items:
        raise InputError(f"no NIfTI / NRRD / MHA files or DICOM series in {root}")
    return unique_names(items)


def unique_names(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every case a distinct ``name`` (output stem): a name used more than once gets its
    source folder's name, then, if still shared, its file name or series UID, in front."""
    def counts() -> dict[str, int]:
        seen: dict[str, int] = {}
        for item in items:
            seen[item["name"]] = seen.get(item["name"], 0) + 1
        return seen

    seen = counts()
    for item in items:
        if seen[item["name"]] > 1:
            item["name"] = f"{Path(item['image']).parent.name}_{item['name']}"
    seen = counts()
    for item in items:
        if seen[item["name"]] > 1:
            tag = item.get("series") or Path(item["image"]).name.replace(".", "_")
            item["name"] = f"{item['name']}_{str(tag)[-12:]}"
    seen = counts()
    for n, item in enumerate(items):
        if seen[item["name"]] > 1:
            item["name"] = f"{item['name']}_{n}"
    return items


def output_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix (``.nii.gz`` counts as one); a folder keeps its name."""
    name = Path(path).name
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES + SITK_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_output_path(output: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (),
                      overwrite: bool = False, suffixes: Sequence[str] = NIFTI_SUFFIXES) -> Path:
    """Check, before any work is done, that ``output`` can be written.

    Raises:
        OutputError: the output is one of the inputs, exists without ``overwrite``, has a suffix
            not in ``suffixes``, or its folder is missing or not writable.
    """
    out = Path(output)
    if not out.name.lower().endswith(tuple(suffixes)):
        raise OutputError(f"output {out} must end in one of {', '.join(suffixes)}")
    resolved = out.resolve()
    for inp in inputs:
        ip = Path(inp).resolve()
        if resolved == ip or (ip.is_dir() and ip in resolved.parents):
            raise OutputError(f"output {out} would overwrite the input {inp}; choose another path")
    if out.is_dir():
        raise OutputError(f"output {out} is a folder; give a file name")
    if out.exists() and not overwrite:
        raise OutputError(f"output {out} exists; pass --overwrite to replace it")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist")
    # the temporary written first has a longer name than the output: both must fit the file system
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    longest = len(f".{out.name}{_TMP_MARK}{os.getpid()}-{'x' * 8}") + len(".nii.gz")
    if longest > name_max:
        raise OutputError(f"output name {out.name[:40]}... is too long: with its temporary suffix it exceeds the "
                          f"{name_max} characters this file system allows; choose a shorter name")
    # os.access is no guide for root or read-only mounts: try creating a file there.
    try:
        fd, probe = tempfile.mkstemp(prefix=".mrisr-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"output folder {folder} is not writable: {exc.strerror or exc}") from exc
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_mode(path: Path) -> int:
    """The permission bits a published output gets: an existing file's own mode (``--overwrite``
    keeps it), else what the user's umask allows a new file (``0o666 & ~umask``), never more:
    patient data on a shared server stays as private as the user made it."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


_TMP_MARK = ".mrisr-partial-"


def _remove_stale_partials(path: Path) -> None:
    """Remove temporaries a killed run (SIGKILL, power loss) left for this output: their names
    carry the writer's process id, and only those of processes no longer alive are removed."""
    prefix = f".{path.name}{_TMP_MARK}"
    for stale in (path.parent or Path(".")).glob(f"{glob.escape(prefix)}*"):
        try:
            pid = int(stale.name[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        stale.unlink(missing_ok=True)
        logger.info("removed %s, left by an interrupted run", stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _atomic_write(path: Path, write: Any, overwrite: bool = True) -> None:
    """Write through a temporary file in the target folder, then publish it under ``path`` with
    the permissions of :func:`output_mode` (``mkstemp`` makes the temporary owner-only).

    The temporary is ``.NAME.mrisr-partial-PID-XXXX``: hidden, with no image suffix (no
    ``*.nii.gz`` pattern matches it), and removed by the next write to the same output if its
    writer is gone. Without ``overwrite``
    the file is published by a hard link, which fails if another process created ``path`` in
    the meantime (no silent replacement in a race); with it, by an atomic rename. Any exception,
    KeyboardInterrupt and the CLI's SIGTERM included, removes the temporary.

    Raises:
        OutputError: ``overwrite`` is false and ``path`` appeared while writing.
    """
    _remove_stale_partials(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP_MARK}{os.getpid()}-", dir=path.parent or ".")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, output_mode(path))
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputError(f"output {path} was created by something else while mrisr worked; "
                                  "pass --overwrite to replace it") from None
            except OSError:  # a file system without hard links: exclusive create, then replace
                try:
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                except FileExistsError:
                    raise OutputError(f"output {path} was created by something else while mrisr worked; "
                                      "pass --overwrite to replace it") from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _is_sheared(affine: np.ndarray, tol: float = 1e-4) -> bool:
    """Whether the voxel axes of ``affine`` are not mutually orthogonal (relative tolerance)."""
    cols = np.asarray(affine, dtype=np.float64)[:3, :3]
    unit = cols / np.linalg.norm(cols, axis=0, keepdims=True)
    gram = unit.T @ unit
    return bool(np.abs(gram - np.eye(3)).max() > tol)


def save_volume(volume: Volume, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``volume`` as float32 NIfTI with qform and sform set to its affine, atomically.

    Raises:
        OutputError: ``path`` exists and ``overwrite`` is false, or it is not a NIfTI name.
    """
    import nibabel as nib

    out = Path(path)
    lower = out.name.lower()
    if not lower.endswith(NIFTI_SUFFIXES):
        raise OutputError(f"output {out} must end in .nii or .nii.gz")
    if out.exists() and not overwrite:
        raise OutputError(f"output {out} exists; pass --overwrite to replace it")
    img = nib.Nifti1Image(np.asarray(volume.data, dtype=np.float32), volume.affine)
    # the input's codes (e.g. 2 aligned, 4 MNI) where it had them; 1 (scanner-anatomical) otherwise
    sform_code = int(volume.metadata.get("sform_code") or volume.metadata.get("qform_code") or 1)
    qform_code = int(volume.metadata.get("qform_code") or sform_code)
    if _is_sheared(volume.affine):
        # the qform holds a rotation and voxel sizes only; a sheared affine (e.g. a DICOM stack
        # tilted against its slices) lives in the sform alone, so no reader sees two geometries
        img.set_qform(None, code=0)
    else:
        img.set_qform(volume.affine, code=qform_code)
    img.set_sform(volume.affine, code=sform_code)
    img.header.set_xyzt_units("mm", "sec")
    provenance = volume.metadata.get("mrisr_provenance")
    img.header["descrip"] = _descrip(provenance).encode("ascii", "replace")[:79]
    if provenance:
        # the whole record as a JSON comment extension (NIfTI ecode 6), read back by read_provenance
        text = json.dumps(provenance, sort_keys=True).encode("utf-8")
        img.header.extensions.append(nib.nifti1.Nifti1Extension(6, text))
    gz = lower.endswith(".nii.gz")

    def write(tmp: str) -> None:
        # bytes from nibabel, compressed here: the temporary's name carries no image suffix
        blob = img.to_bytes()
        with open(tmp, "wb") as fh:
            fh.write(gzip.compress(blob, compresslevel=1, mtime=0) if gz else blob)  # mtime 0: same run, same bytes

    _atomic_write(out, write, overwrite=overwrite)
    logger.info("wrote %s", out)
    return out


def _descrip(provenance: dict[str, Any] | None) -> str:
    """The header's 80-byte description: what made the image, shortest first."""
    if not provenance:
        return "mrisr"
    parts = [f"mrisr {provenance.get('version', '')}".strip(), str(provenance.get("method", "")),
             f"{provenance.get('plane', '')} x{provenance.get('factor', '')}"]
    if provenance.get("model_sha256"):
        parts.append(f"sha {str(provenance['model_sha256'])[:10]}")
    if provenance.get("map", "image") != "image":
        parts.insert(0, "STD MAP" if str(provenance["map"]).startswith("standard") else str(provenance["map"]))
    return " ".join(p for p in parts if p)


def read_provenance(path: str | os.PathLike) -> dict[str, Any] | None:
    """The provenance record mrisr wrote into a NIfTI's header extension (None if there is none)."""
    import nibabel as nib

    img = nib.load(str(path))
    for ext in getattr(img.header, "extensions", []):
        if ext.get_code() == 6:
            try:
                record = json.loads(ext.get_content().decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(record, dict) and record.get("software") == "mrisr":
                return record
    return None


def write_bytes(data: bytes, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write ``data`` (a PNG, a text table) atomically (see :func:`_atomic_write`)."""
    out = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    _atomic_write(out, write, overwrite=overwrite)
    return out


def write_json(obj: Any, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write ``obj`` as indented JSON, atomically (see :func:`_atomic_write` for ``overwrite``)."""
    out = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, default=_json_default)
            fh.write("\n")

    _atomic_write(out, write, overwrite=overwrite)
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _short(exc: BaseException) -> str:
    """First non-empty line of an exception message (ITK's run to a dozen lines)."""
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # ITK puts the useful sentence last; nibabel first.
    first = lines[0]
    if first.startswith("Exception thrown in SimpleITK") and len(lines) > 1:
        first = lines[-1]
    return first[:300]
