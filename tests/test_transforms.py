"""Pair geometry, degradations, loading and normalisation transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged, RandFlipd, RandSpatialCropd

from mrisr.interpolation import bicubic_upsample
from mrisr.io import Volume, load_volume, save_volume
from mrisr.transforms import (INTENSITY_KEY, InPlaneDegrade, InPlanePaird, MrisrReader, RobustNormalise,
                              RobustNormalised, ThroughPlaneDegrade, ThroughPlanePaird, gaussian_blur, robust_range,
                              training_planes)

from conftest import make_affine, needs_prostatex, prostatex_nifti


def test_through_plane_lowres_is_the_mean_of_each_run_of_lines(rng):
    hr = torch.from_numpy(rng.normal(size=(2, 1, 18, 5)))
    deg = ThroughPlaneDegrade(6)
    lr = deg.lowres(hr)
    assert lr.shape == (2, 1, 3, 5)
    torch.testing.assert_close(lr[:, :, 1], hr[:, :, 6:12].float().mean(dim=2))
    cond = deg(hr[0])
    torch.testing.assert_close(cond, bicubic_upsample(lr, (6, 1))[0].to(cond.dtype))
    # columns are untouched by the degradation: a row-constant image stays itself
    flat = torch.ones(1, 12, 7) * torch.arange(7.0)
    torch.testing.assert_close(deg(flat), flat)
    with pytest.raises(ValueError, match="divisible"):
        deg(torch.zeros(1, 10, 4))


def test_in_plane_degradation_and_blur_range(rng):
    deg = InPlaneDegrade(4, blur_sigma_max=1.5)
    deg.set_random_state(0)
    sigmas = []
    for _ in range(2000):
        deg.randomize()
        sigmas.append(deg.sigma)
    sigmas = np.asarray(sigmas)
    assert sigmas.min() >= 0 and sigmas.max() <= 1.5
    assert sigmas.mean() == pytest.approx(0.75, abs=0.04)  # U(0, 1.5)
    hr = torch.from_numpy(rng.normal(size=(1, 1, 32, 24))).float()
    no_blur = InPlaneDegrade(4, blur_sigma_max=0.0)
    lr = no_blur.lowres(hr)
    expect = torch.nn.functional.interpolate(hr, size=(8, 6), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(lr, expect)
    torch.testing.assert_close(no_blur(hr[0]), bicubic_upsample(expect, (4, 4))[0])
    # a constant image survives degradation exactly (anti-aliasing and blur preserve the mean)
    const = torch.full((1, 16, 16), 0.3)
    deg.sigma = 1.2
    torch.testing.assert_close(deg(const, randomize=False), const)


def test_gaussian_blur_has_the_requested_sigma():
    img = torch.zeros(1, 1, 41, 41)
    img[..., 20, 20] = 1.0
    for sigma in (1.0, 1.5, 2.5):  # below ~0.8 a sampled Gaussian is narrower than sigma
        out = gaussian_blur(img, sigma)[0, 0]
        assert float(out.sum()) == pytest.approx(1.0, abs=1e-6)
        x = torch.arange(41.0) - 20
        var = float((out.sum(0) * x**2).sum())
        assert var == pytest.approx(sigma**2, rel=0.02)
    torch.testing.assert_close(gaussian_blur(img, 0.0), img)


def _smooth_plane(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return (torch.exp(2 * yy) + 3 * xx**2)[None].float()  # asymmetric in both axes


@pytest.mark.parametrize("kind", ["in", "through"])
def test_crops_and_flips_keep_pairs_aligned(kind):
    keys = ["hr", "condition"]
    pair = InPlanePaird("hr", 4, blur_sigma_max=0.0) if kind == "in" else ThroughPlanePaird("hr", 6)
    chain = Compose([pair, RandSpatialCropd(keys, roi_size=(48, 48), random_size=False),
                     RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1)])
    plane = _smooth_plane(120, 96)
    flipped_once = 0
    for seed in range(12):
        chain.set_random_state(seed)
        d = chain({"hr": plane.clone()})
        hr, cond = torch.as_tensor(d["hr"]), torch.as_tensor(d["condition"])
        assert hr.shape == cond.shape == (1, 48, 48)
        # aligned: the condition is a blurred copy of the same region
        assert float((hr - cond).abs().max()) < 0.1
        # misaligned (one of them flipped) would be far off
        flipped_once += float((hr - cond.flip(-2)).abs().max()) > 0.3
    assert flipped_once == 12


def test_pair_dict_crops_to_multiples():
    d = ThroughPlanePaird("hr", 6)({"hr": torch.zeros(1, 65, 40)})
    assert d["hr"].shape == d["condition"].shape == (1, 60, 40)
    d = InPlanePaird("hr", 4)({"hr": np.zeros((1, 50, 43), np.float32)})
    assert d["hr"].shape == d["condition"].shape == (1, 48, 40)
    assert isinstance(d["condition"], np.ndarray)


def test_robust_normalisation_round_trip(rng):
    data = rng.gamma(2.0, 300.0, size=(20, 20, 5)).astype(np.float32)
    irange = robust_range(data)
    lo, hi = np.percentile(data, [0.5, 99.5])
    assert irange.low == pytest.approx(lo) and irange.high == pytest.approx(hi)
    norm = irange.normalise(data)
    assert np.percentile(norm, 0.5) == pytest.approx(-1, abs=1e-5)
    assert np.percentile(norm, 99.5) == pytest.approx(1, abs=1e-5)
    np.testing.assert_allclose(irange.denormalise(norm), data, rtol=1e-5, atol=1e-3)
    mt = MetaTensor(torch.from_numpy(data))
    out = RobustNormalise()(mt)
    assert isinstance(out, MetaTensor) and out.meta[INTENSITY_KEY] == irange.to_dict()
    d = RobustNormalised("image")({"image": data})
    np.testing.assert_allclose(d["image"], norm, rtol=1e-6)
    assert d["image_intensity"] == irange.to_dict()


def test_reader_gives_metatensors_with_the_mrisr_affine(tmp_path, rng):
    affine = make_affine("oblique", (0.6, 0.6, 3.0))
    data = rng.normal(size=(6, 5, 4)).astype(np.float32)
    path = save_volume(Volume(data, affine), tmp_path / "v.nii.gz")
    out = LoadImaged("image", reader=MrisrReader(), image_only=True)({"image": str(path)})["image"]
    assert isinstance(out, MetaTensor)
    np.testing.assert_array_equal(out.numpy(), data)
    np.testing.assert_allclose(out.affine.numpy(), affine, atol=1e-5)


@needs_prostatex
def test_reader_agrees_for_dicom_and_nifti():
    from conftest import prostatex_dicom

    loader = LoadImaged("image", reader=MrisrReader(), image_only=True)
    a = loader({"image": str(prostatex_dicom("ProstateX-0218", 5))})["image"]
    b = loader({"image": str(prostatex_nifti("ProstateX-0218", "tra", 5))})["image"]
    torch.testing.assert_close(a.as_tensor(), b.as_tensor())
    np.testing.assert_allclose(a.affine.numpy(), b.affine.numpy(), atol=1e-3)


@pytest.mark.parametrize("orientation,rows", [("LIP", 1), ("PIR", 1), ("LPS", None)])
def test_through_planes_put_superior_inferior_on_rows(orientation, rows):
    shape = (10, 30, 4)
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    affine = make_affine(orientation, (0.6, 0.6, 3.0))
    planes = training_planes(data, affine, "through")
    assert len(planes) == 4
    if rows == 1:  # rows follow array axis 1 (I), columns axis 0
        np.testing.assert_array_equal(planes[2], data[:, :, 2].T)
    in_planes = training_planes(data, affine, "in")
    np.testing.assert_array_equal(in_planes[2], data[:, :, 2])
    selfsup = training_planes(data, affine, "selfsup")
    assert len(selfsup) == 8 and selfsup[1].shape == (30, 10)


@needs_prostatex
def test_shared_coronal_and_sagittal_planes_run_superior_inferior():
    for plane, series in (("cor", 6), ("sag", 4)):
        vol = load_volume(prostatex_nifti("ProstateX-0218", plane, series))
        planes = training_planes(vol.data, vol.affine, "through")
        assert len(planes) == vol.shape[2]
        # axis 1 of these volumes points inferior: rows must be the 320 samples of axis 1
        np.testing.assert_array_equal(planes[0], vol.data[:, :, 0].T)
