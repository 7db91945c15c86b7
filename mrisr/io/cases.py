"""Cases of a batch: the volumes of a folder (files and DICOM series) and distinct output names."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any


from mrisr.errors import InputError
from mrisr.io.dicom import list_dicom_series
from mrisr.io.volume import NIFTI_SUFFIXES, SITK_SUFFIXES

__all__ = ["list_cases", "unique_names", "output_stem"]

logger = logging.getLogger(__name__)


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
