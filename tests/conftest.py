"""Shared fixtures: the real data in ../shared/data and synthetic volumes with oblique affines."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: one thread each (and in the processes
    # they start), so that workers do not oversubscribe the cores
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MRISR_SHARED_DATA", REPO.parent / "shared" / "data"))
PROSTATEX = SHARED / "prostatex"

# (patient, plane, series number) for the ten shared series, as in ../shared/data/README.md
PROSTATEX_SERIES = [
    ("ProstateX-0000", "cor", 5), ("ProstateX-0000", "sag", 3), ("ProstateX-0000", "tra", 4),
    ("ProstateX-0001", "cor", 5), ("ProstateX-0001", "sag", 4), ("ProstateX-0001", "tra", 6),
    ("ProstateX-0001", "tra", 10), ("ProstateX-0218", "cor", 6), ("ProstateX-0218", "sag", 4),
    ("ProstateX-0218", "tra", 5),
]

# Tests that start other processes (signals, torchrun ranks, `python -m monai.bundle run`): they
# run first, so that under pytest-xdist the in-process tests keep the other cores busy meanwhile
# instead of waiting for the longest test at the end.
starts_processes = pytest.mark.starts_processes


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("starts_processes") is None)  # stable otherwise


needs_prostatex = pytest.mark.skipif(not PROSTATEX.is_dir(),
                                     reason=f"shared ProstateX data not found at {PROSTATEX}")


def prostatex_nifti(patient: str, plane: str, series: int) -> Path:
    return PROSTATEX / "nifti" / f"{patient}_t2_{plane}_s{series}.nii.gz"


def prostatex_dicom(patient: str, series: int) -> Path:
    matches = sorted((PROSTATEX / "dicom" / patient).glob(f"*/{series}.000000-*"))
    assert len(matches) == 1, f"expected one DICOM folder for {patient} series {series}: {matches}"
    return matches[0]


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rodrigues rotation matrix about ``axis``."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.deg2rad(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


# Orientation name -> 3x3 direction matrix (columns: world direction of array axes i, j, k, RAS).
_CODES = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
ORIENTATIONS = {
    name: np.array([_CODES[c] for c in name], dtype=np.float64).T for name in ("RAS", "LPS", "LIP", "PIR")
}
ORIENTATIONS["oblique"] = rotation([1.0, 0.3, -0.5], 23.0) @ ORIENTATIONS["LPS"]


def make_affine(orientation: str = "LPS", spacing=(0.625, 0.625, 3.6), origin=(12.5, -40.0, 7.25)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = ORIENTATIONS[orientation] * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = origin
    return affine


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(f.read_bytes())
    elif path.exists():
        h.update(path.read_bytes())
    return h.hexdigest()


def run_mrisr_subprocess(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real ``mrisr`` entry point in a subprocess (where the process is the point:
    the console script, signals, what a fresh interpreter imports)."""
    return subprocess.run([sys.executable, "-m", "mrisr", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def run_here(call, name: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``call()`` in this process as an entry point would run it in its own (exit code, stdout,
    stderr), from ``cwd``: the same code path as a subprocess without its start-up cost. The
    exit code is ``call``'s return value or its ``SystemExit``'s (argparse's usage errors, a
    bundle's failed inputs); the working folder, warning filters and the root logger (which a
    MONAI bundle's logging.conf reconfigures) are put back afterwards."""
    import contextlib
    import io
    import logging
    import warnings

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = call()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        os.chdir(here)
        root.setLevel(level)
        root.handlers[:] = handlers
    return subprocess.CompletedProcess(name, int(code or 0), out.getvalue(), err.getvalue())


def run_mrisr(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``mrisr.cli.main`` in this process, as the console script would (:func:`run_here`)."""
    from mrisr.cli import main

    argv = [str(a) for a in args]
    return run_here(lambda: main(argv), ["mrisr", *argv], cwd=cwd)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
