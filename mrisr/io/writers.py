"""Writing: NIfTI volumes (float32, sform and qform unless sheared, provenance in the header),
JSON and bytes, all atomically through a hidden temporary published only when complete, with
the user's permissions; checks of output paths before any work starts."""

from __future__ import annotations

import glob
import gzip
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrisr.errors import OutputError
from mrisr.io.volume import NIFTI_SUFFIXES, Volume

__all__ = ["save_volume", "check_output_path", "write_json", "write_bytes", "read_provenance", "output_mode"]

logger = logging.getLogger(__name__)


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
