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

from mrisr.io.cases import list_cases, output_stem, unique_names
from mrisr.io.common import NonFinite
from mrisr.io.dicom import list_dicom_series
from mrisr.io.readers import load_volume
from mrisr.io.volume import NIFTI_SUFFIXES, SITK_SUFFIXES, DicomSeries, Volume
from mrisr.io.writers import (check_output_path, output_mode, read_provenance, save_volume, write_bytes,
                              write_json)

__all__ = [
    "Volume",
    "DicomSeries",
    "load_volume",
    "save_volume",
    "list_dicom_series",
    "list_cases",
    "unique_names",
    "output_stem",
    "check_output_path",
    "output_mode",
    "read_provenance",
    "write_json",
    "write_bytes",
    "NIFTI_SUFFIXES",
    "NonFinite",
    "SITK_SUFFIXES",
]
