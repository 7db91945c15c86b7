"""``mrisr analyze orthogonal``: a through-plane output scored against an orthogonal scan of
the same object after rigid registration, on a phantom whose answer is known."""

from __future__ import annotations

import json

import numpy as np

from conftest import run_mrisr
from mrisr.io import Volume, save_volume
from mrisr.orthogonal import compare_orthogonal


def phantom(points: np.ndarray) -> np.ndarray:
    """A smooth object with fine superior-inferior (z) structure, at world points (..., 3) mm."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    body = np.exp(-((x / 14) ** 2 + (y / 12) ** 2 + (z / 16) ** 2))
    return (1000 * body * (1.2 + np.sin(z / 1.3) * np.cos(x / 5.0) + 0.5 * np.cos(y / 3.0))).astype(np.float32)


def sample(shape, affine, slab_axis=None, slab=1) -> Volume:
    """The phantom on a grid; with ``slab``, each voxel averages ``slab`` samples across its
    thickness along ``slab_axis`` (a thick slice's profile)."""
    ijk = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij"), -1)
    total = np.zeros(shape, np.float64)
    offsets = (np.arange(slab) + 0.5) / slab - 0.5 if slab > 1 else [0.0]
    for off in offsets:
        shifted = ijk.copy()
        if slab_axis is not None:
            shifted[..., slab_axis] += off
        total += phantom(shifted @ affine[:3, :3].T + affine[:3, 3])
    return Volume((total / len(offsets)).astype(np.float32), affine)


def test_registration_and_scores_on_a_phantom(tmp_path):
    fine = np.diag([0.8, 0.8, 0.8, 1.0])
    fine[:3, 3] = [-20, -20, -24]
    perfect = sample((50, 50, 60), fine)  # what an ideal through-plane method returns
    thick_affine = fine.copy()
    thick_affine[:3, 2] *= 6
    thick_affine[:3, 3] += fine[:3, 2] * 2.5  # the thick voxel centred on its six thin ones
    thick = sample((50, 50, 10), thick_affine, slab_axis=2, slab=6)
    from mrisr.inference import upsample_volume

    bicubic = upsample_volume(thick, "through", 6, axis=2, method="bicubic").volume
    assert bicubic.shape == perfect.shape and np.allclose(bicubic.affine, perfect.affine)
    # the coronal reference: rows superior-inferior at 0.8 mm, 4.8 mm slices along y, and the
    # object moved 1.6 mm to the left between the series
    cor = np.zeros((4, 4))
    cor[:3, 0], cor[:3, 1], cor[:3, 2], cor[3, 3] = [0.8, 0, 0], [0, 0, -0.8], [0, 4.8, 0], 1
    cor[:3, 3] = [-20 + 1.6, -19, 23]
    reference = sample((50, 60, 8), cor, slab_axis=2, slab=6)
    reference.data[:] = sample((50, 60, 8), _moved(cor, -1.6), slab_axis=2, slab=6).data
    scores = compare_orthogonal({"bicubic": bicubic, "perfect": perfect}, reference, register=True)
    shift = scores["_registration"]["parameters"][3:]
    # seeded sampling: the same registration every run (SimpleITK's seed 0 would be the wall clock)
    again = compare_orthogonal({"bicubic": bicubic}, reference, register=True)
    # (to the last bits only: ITK's threads sum in varying order)
    np.testing.assert_allclose(again["_registration"]["parameters"], scores["_registration"]["parameters"], atol=1e-6)
    assert abs(abs(shift[0]) - 1.6) < 0.4 and abs(shift[1]) < 0.4 and abs(shift[2]) < 0.4
    assert scores["perfect"]["si_gradient_ncc"] > 0.9
    assert scores["perfect"]["si_gradient_ncc"] > scores["bicubic"]["si_gradient_ncc"] + 0.1
    assert scores["perfect"]["psnr_db"] > scores["bicubic"]["psnr_db"]
    unregistered = compare_orthogonal({"perfect": perfect}, reference, register=False)
    assert unregistered["perfect"]["si_gradient_ncc"] < scores["perfect"]["si_gradient_ncc"]

    # through the command line, with the JSON written
    paths = [save_volume(v, tmp_path / f"{n}.nii.gz") for n, v in (("bicubic", bicubic), ("perfect", perfect))]
    ref_path = save_volume(reference, tmp_path / "coronal.nii.gz")
    result = run_mrisr("analyze", "orthogonal", *paths, ref_path, "-o", tmp_path / "s.json")
    assert result.returncode == 0, result.stderr
    assert "perfect" in result.stdout and "SI-gradient NCC" in result.stdout
    saved = json.loads((tmp_path / "s.json").read_text())["scores"]
    assert saved["perfect"]["si_gradient_ncc"] > saved["bicubic"]["si_gradient_ncc"]


def _moved(affine: np.ndarray, dx: float) -> np.ndarray:
    """The affine of a grid that sees the object moved by ``dx`` mm along x."""
    out = affine.copy()
    out[0, 3] += dx
    return out
