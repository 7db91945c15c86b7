"""Through-plane super-resolution checked against a real high-resolution reference: an axial
volume upsampled along superior-inferior, compared with a coronal or sagittal scan of the same
examination, whose own slices are sharp along superior-inferior (``mrisr analyze orthogonal``).

Patients move between series by millimetres, so the super-resolved volume is first registered
rigidly to the reference (SimpleITK: Euler 3D, Mattes mutual information, three resolution
levels, starting from the scanner's shared frame of reference), then resampled onto the
reference's grid (linear). Scores, inside the central half of the reference's field of view
(where the prostate sits in these scans) and inside the super-resolved volume's coverage:

* ``si_gradient_ncc``: normalised cross-correlation of the superior-inferior derivatives: the
  detail a thin-slice method must restore, insensitive to intensity scale;
* ``psnr_db`` and ``ssim`` after a least-squares linear intensity match (the two series have
  different contrast scaling), with the reference's robust span as the peak.

The same transform is applied to every volume compared, so the registration cannot favour one.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from mrisr.metrics import psnr, ssim
from mrisr.geometry import slice_axis, superior_inferior_axis
from mrisr.io import Volume

__all__ = ["register_rigid", "resample_onto", "orthogonal_scores", "compare_orthogonal"]

logger = logging.getLogger(__name__)

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _to_sitk(volume: Volume) -> Any:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.data.transpose(2, 1, 0), dtype=np.float32))
    lps = _RAS_TO_LPS @ volume.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).reshape(-1)])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    return image


def register_rigid(moving: Volume, fixed: Volume, seed: int = 0) -> Any:
    """A SimpleITK rigid transform mapping ``fixed``'s physical points into ``moving``'s,
    found by Mattes mutual information from the identity (the series share the scanner's frame
    of reference)."""
    import SimpleITK as sitk

    fixed_img, moving_img = _to_sitk(fixed), _to_sitk(moving)
    transform = sitk.Euler3DTransform()
    centre = fixed_img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed_img.GetSize()])
    transform.SetCenter(centre)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    # SimpleITK reads a seed of 0 as "seed from the wall clock", which made every run differ
    reg.SetMetricSamplingPercentage(0.1, seed + 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=200,
                                                 relaxationFactor=0.5)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(transform, inPlace=False)
    result = reg.Execute(sitk.Cast(fixed_img, sitk.sitkFloat32), sitk.Cast(moving_img, sitk.sitkFloat32))
    logger.info("rigid registration: metric %.4f after %d iterations (%s)", reg.GetMetricValue(),
                reg.GetOptimizerIteration(), reg.GetOptimizerStopConditionDescription())
    return result


def resample_onto(moving: Volume, fixed: Volume, transform: Any | None = None,
                  slab: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``moving`` on ``fixed``'s grid (linear; ``transform`` maps fixed points into moving's
    space, identity if None), and the mask of fixed voxels inside ``moving``'s coverage.

    With ``slab`` > 1, each fixed voxel is the mean of ``slab`` samples spread evenly across its
    thickness along ``fixed``'s slice axis: the reference scan's own slice profile (a 3.6 mm
    coronal slice integrates 3.6 mm of anatomy; a thin sample of the estimate would not)."""
    import SimpleITK as sitk

    from mrisr.degradation import average_lines
    from mrisr.geometry import upsampled_affine

    if slab > 1:
        axis = slice_axis(fixed.affine)
        factors = tuple(slab if a == axis else 1 for a in range(3))
        shape = tuple(n * f for n, f in zip(fixed.shape, factors))
        fine = Volume(np.zeros(shape, np.float32), upsampled_affine(fixed.affine, factors))
        data, mask = resample_onto(moving, fine, transform)
        return average_lines(data, axis, slab), average_lines(mask.astype(np.float32), axis, slab) > 0.999

    fixed_img, moving_img = _to_sitk(fixed), _to_sitk(moving)
    tx = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    out = sitk.Resample(moving_img, fixed_img, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ones = sitk.Image(moving_img.GetSize(), sitk.sitkFloat32) + 1.0
    ones.CopyInformation(moving_img)
    cover = sitk.Resample(ones, fixed_img, tx, sitk.sitkNearestNeighbor, 0.0, sitk.sitkFloat32)
    data = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
    mask = sitk.GetArrayFromImage(cover).transpose(2, 1, 0) > 0.5
    return data, mask


def _central(shape: tuple[int, ...], fraction: float) -> np.ndarray:
    mask = np.zeros(shape, bool)
    index = tuple(slice(int(n * (1 - fraction) / 2), int(n * (1 + fraction) / 2) or 1) for n in shape)
    mask[index] = True
    return mask


def orthogonal_scores(estimate: np.ndarray, reference: Volume, mask: np.ndarray) -> dict[str, float]:
    """The scores of an estimate already on ``reference``'s grid, inside ``mask``."""
    ref = reference.data.astype(np.float64)
    est = estimate.astype(np.float64)
    si = superior_inferior_axis(reference.affine)
    # derivatives along superior-inferior, where both neighbours are inside the mask
    g_mask = mask & np.roll(mask, -1, axis=si)
    g_mask[tuple(slice(-1, None) if a == si else slice(None) for a in range(3))] = False
    g_ref, g_est = np.diff(ref, axis=si, append=0.0)[g_mask], np.diff(est, axis=si, append=0.0)[g_mask]
    g_ref, g_est = g_ref - g_ref.mean(), g_est - g_est.mean()
    ncc = float((g_ref * g_est).sum() / np.sqrt((g_ref ** 2).sum() * (g_est ** 2).sum() + 1e-30))
    # linear intensity match (least squares) inside the mask
    a, b = np.polyfit(est[mask], ref[mask], 1)
    matched = a * est + b
    lo, hi = np.percentile(ref[mask], [0.5, 99.5])
    span = float(hi - lo)
    stack = slice_axis(reference.affine)
    planes = [k for k in range(ref.shape[stack]) if np.take(mask, k, axis=stack).mean() > 0.05]
    ssims = []
    for k in planes:
        m = np.take(mask, k, axis=stack)
        rows, cols = np.nonzero(m)
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        e, r = np.take(matched, k, axis=stack)[box], np.take(ref, k, axis=stack)[box]
        if min(e.shape) >= 7:
            ssims.append(ssim(e, r, span))
    return {"si_gradient_ncc": ncc, "psnr_db": psnr(matched[mask], ref[mask], span),
            "ssim": float(np.mean(ssims)) if ssims else float("nan"), "voxels": int(mask.sum())}


def compare_orthogonal(estimates: dict[str, Volume], reference: Volume, register: bool = True,
                       fraction: float = 0.5, seed: int = 0) -> dict[str, dict[str, float]]:
    """Score each super-resolved volume against the orthogonal reference scan.

    Args:
        estimates: name -> super-resolved volume (e.g. bicubic, the shipped model, the adapted
            model), all of the same input; the first one is registered to the reference and its
            transform used for all.
        reference: the coronal or sagittal scan of the same examination.
        register: False: trust the scanner's frame of reference (no motion between series).
        fraction: the central fraction of the reference's field of view scored.
        seed: the registration's sampling seed.
    """
    first = next(iter(estimates.values()))
    transform = register_rigid(first, reference, seed=seed) if register else None
    central = _central(reference.shape, fraction)
    out: dict[str, dict[str, float]] = {}
    masks = {}
    resampled = {}
    # the reference's slice profile: as many samples across its slice thickness as the
    # estimate has voxels there (about 6 for a 3.6 mm coronal slice and 0.6 mm estimates)
    thickness = float(np.linalg.norm(reference.affine[:3, slice_axis(reference.affine)]))
    fine = float(np.min(np.linalg.norm(first.affine[:3, :3], axis=0)))
    slab = max(1, int(round(thickness / fine)))
    for name, volume in estimates.items():
        resampled[name], masks[name] = resample_onto(volume, reference, transform, slab=slab)
    common = central & np.logical_and.reduce(list(masks.values()))
    if common.sum() < 1000:
        from mrisr.errors import InputError

        raise InputError("the volumes and the reference overlap in fewer than 1,000 voxels of the central region; "
                         "are they from the same examination?")
    for name, data in resampled.items():
        out[name] = orthogonal_scores(data, reference, common)
    if transform is not None:
        params = list(transform.GetParameters()) if hasattr(transform, "GetParameters") else []
        out["_registration"] = {"parameters": [float(p) for p in params]}
    return out
