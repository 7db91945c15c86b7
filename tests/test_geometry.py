"""The cell-centred convention, checked in closed form and end to end through the methods."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrisr.errors import GeometryError
from mrisr.geometry import (from_planes, parse_voxel_box, plan_upsampling, slab_bounds, slice_axis,
                            through_orientations, to_planes, upsampled_affine, voxel_spacing, voxel_to_world,
                            world_box_to_voxels)
from mrisr.inference import upsample_volume
from mrisr.interpolation import bicubic_upsample, bspline_upsample
from mrisr.io import Volume, load_volume

from conftest import ORIENTATIONS, PROSTATEX_SERIES, make_affine, needs_prostatex, prostatex_nifti

ALL_ORIENTATIONS = sorted(ORIENTATIONS)


@pytest.mark.parametrize("orientation", ALL_ORIENTATIONS)
@pytest.mark.parametrize("plane", ["in", "through"])
@pytest.mark.parametrize("factor", [2, 3, 6])
def test_output_grid_covers_the_same_slab(orientation, plane, factor):
    affine = make_affine(orientation, spacing=(0.625, 0.7, 3.6))
    shape = (11, 9, 7)
    plan = plan_upsampling(shape, affine, plane, factor)
    np.testing.assert_allclose(slab_bounds(plan.output_affine, plan.output_shape),
                               slab_bounds(affine, shape), atol=1e-9)
    # the first and last output centres lie (f - 1) / (2 f) input voxels outside the input's
    shift = sum(affine[:3, a] * (f - 1) / (2 * f) for a, f in enumerate(plan.axis_factors))
    np.testing.assert_allclose(voxel_to_world(plan.output_affine, np.zeros(3)),
                               voxel_to_world(affine, np.zeros(3)) - shift, atol=1e-9)
    np.testing.assert_allclose(voxel_to_world(plan.output_affine, np.asarray(plan.output_shape) - 1.0),
                               voxel_to_world(affine, np.asarray(shape) - 1.0) + shift, atol=1e-9)
    # only the upsampled axes change spacing, by exactly 1 / f
    np.testing.assert_allclose(voxel_spacing(plan.output_affine),
                               voxel_spacing(affine) / np.asarray(plan.axis_factors), rtol=1e-12)


def test_upsampled_affine_closed_form():
    affine = make_affine("oblique", spacing=(0.5, 0.5, 3.0))
    out = upsampled_affine(affine, (1, 1, 6))
    np.testing.assert_allclose(out[:3, :2], affine[:3, :2])
    np.testing.assert_allclose(out[:3, 2], affine[:3, 2] / 6)
    np.testing.assert_allclose(out[:3, 3], affine[:3, 3] - affine[:3, 2] * 5 / 12)
    # every output voxel's children average back to the parent centre
    for k in range(4):
        children = voxel_to_world(out, np.array([[0, 0, 6 * k + c] for c in range(6)], dtype=float))
        np.testing.assert_allclose(children.mean(axis=0), voxel_to_world(affine, np.array([0.0, 0, k])), atol=1e-9)


def test_plan_axes():
    affine = make_affine("LPS", spacing=(0.625, 0.625, 3.6))
    inp = plan_upsampling((320, 320, 20), affine, "in", 4)
    assert (inp.slice_axis, inp.plane_axes, inp.stack_axis) == (2, (0, 1), 2)
    assert inp.output_shape == (1280, 1280, 20) and inp.plane_factors == (4, 4)
    thr = plan_upsampling((320, 320, 20), affine, "through", 6)
    # slice axis as rows, finest remaining axis (tie -> lower index) as columns
    assert (thr.slice_axis, thr.plane_axes, thr.stack_axis) == (2, (2, 0), 1)
    assert thr.output_shape == (320, 320, 120) and thr.plane_factors == (6, 1)
    # the sagittal shared geometry: slices along axis 2 of a PIR volume
    sag = make_affine("PIR", spacing=(0.5625, 0.6, 3.6))
    thr = plan_upsampling((320, 320, 19), sag, "through", 6)
    assert thr.plane_axes == (2, 0) and thr.stack_axis == 1
    # --axis overrides the detected slice axis
    over = plan_upsampling((320, 320, 20), affine, "through", 2, axis=0)
    assert over.slice_axis == 0 and over.output_shape == (640, 320, 20)


def test_through_plane_orientations():
    """An axial scan with square pixels is cut into planes along either in-plane axis (coronal
    and sagittal): two plans with the same output grid, each plane holding the slice axis as
    rows; a second axis more than 10 % coarser, or in-plane upsampling, gives one plan."""
    affine = make_affine("LPS", spacing=(0.625, 0.625, 3.6))
    first, second = through_orientations(plan_upsampling((320, 300, 20), affine, "through", 6))
    assert (first.plane_axes, first.stack_axis) == ((2, 0), 1)
    assert (second.plane_axes, second.stack_axis) == ((2, 1), 0)
    assert first.output_shape == second.output_shape == (320, 300, 120)
    np.testing.assert_array_equal(first.output_affine, second.output_affine)
    rng = np.random.default_rng(0)
    data = rng.normal(size=(320, 300, 120))
    np.testing.assert_array_equal(from_planes(to_planes(data, second), second), data)
    assert to_planes(data, second).shape == (320, 120, 300)
    assert len(through_orientations(plan_upsampling((320, 300, 20), make_affine("LPS", spacing=(0.6, 0.65, 3.6)),
                                                    "through", 6))) == 2  # within 10 %
    assert len(through_orientations(plan_upsampling((320, 300, 20), make_affine("LPS", spacing=(0.6, 0.7, 3.6)),
                                                    "through", 6))) == 1
    assert len(through_orientations(plan_upsampling((320, 300, 20), affine, "in", 4))) == 1
    # the benchmark's case: a coronal scan thickened along superior-inferior keeps one orientation
    coronal = make_affine("LIP", spacing=(0.56, 3.36, 3.6))
    assert len(through_orientations(plan_upsampling((320, 20, 19), coronal, "through", 6, axis=1))) == 1
    for bad in (2, 3):
        with pytest.raises(GeometryError, match="column axis"):
            plan_upsampling((320, 300, 20), affine, "through", 6, column_axis=bad)
    with pytest.raises(GeometryError, match="column axis"):
        plan_upsampling((320, 300, 20), affine, "in", 4, column_axis=0)


def test_slice_axis_detection():
    assert slice_axis(make_affine("LIP", spacing=(0.6, 3.0, 0.6))) == 1
    assert slice_axis(make_affine("RAS", spacing=(4.0, 1.0, 1.0))) == 0
    assert slice_axis(make_affine("RAS", spacing=(1.0, 1.0, 1.0))) == 2  # isotropic: last axis


@pytest.mark.parametrize("bad", [1, 0, -2, 2.5, "4", True, None])
def test_bad_factors_are_refused(bad):
    with pytest.raises(GeometryError, match="factor"):
        plan_upsampling((4, 4, 4), np.eye(4), "in", bad)


@pytest.mark.parametrize("bad", [3, -1, 1.0])
def test_bad_axes_are_refused(bad):
    with pytest.raises(GeometryError, match="axis"):
        plan_upsampling((4, 4, 4), np.eye(4), "in", 2, axis=bad)


def test_plane_round_trip(rng):
    data = rng.normal(size=(5, 6, 7))
    for plane in ("in", "through"):
        for axis in range(3):
            plan = plan_upsampling(data.shape, make_affine("oblique", (1, 1.1, 1.2)), plane, 2, axis=axis)
            planes = to_planes(data, plan)
            assert planes.shape[0] == data.shape[plan.stack_axis]
            np.testing.assert_array_equal(from_planes(planes, plan), data)
            np.testing.assert_array_equal(from_planes(to_planes(torch.from_numpy(data), plan), plan).numpy(), data)


@pytest.mark.parametrize("factor", [2, 3, 4, 6])
def test_interpolators_are_cell_centred(factor):
    """Upsampling a ramp is symmetric about every input centre: no half-voxel shift."""
    n = 32
    ramp = np.arange(n, dtype=np.float64)[:, None] * np.ones((1, 3))
    outs = {
        "bicubic": bicubic_upsample(torch.from_numpy(ramp)[None, None], (factor, 1))[0, 0, :, 0].numpy(),
        "bspline": bspline_upsample(ramp[None], (factor, 1))[0, :, 0].astype(np.float64),
    }
    for name, out in outs.items():
        for i in range(8, n - 8):  # away from the mirrored borders
            children = out[factor * i: factor * (i + 1)]
            # children mirror each other about the parent centre
            np.testing.assert_allclose(children + children[::-1], 2 * i, atol=1e-4, err_msg=name)
        if factor % 2 == 1:  # the middle child sits exactly on the parent centre
            np.testing.assert_allclose(out[factor // 2::factor][8:-8], ramp[8:-8, 0], atol=1e-4, err_msg=name)
    # factor 1 along W leaves every row's columns exactly as they were interpolated along H only
    x = torch.randn(2, 1, 5, 7, dtype=torch.float64)
    both = bicubic_upsample(x, (factor, 1))
    per_column = torch.cat([bicubic_upsample(x[..., c:c + 1], (factor, 1)) for c in range(7)], dim=-1)
    torch.testing.assert_close(both, per_column, rtol=0, atol=1e-12)


@pytest.mark.parametrize("orientation", ALL_ORIENTATIONS)
@pytest.mark.parametrize("plane", ["in", "through"])
# Keys' kernel with a = -0.75 does not reproduce ramps exactly (about 5 % of a step per axis);
# a half-voxel shift would be off by a third of a step or more, far above either tolerance.
@pytest.mark.parametrize("method,tol", [("bspline", 0.02), ("bicubic", 0.1)])
def test_world_ramp_oracle(orientation, plane, method, tol):
    """A volume whose values are a linear function of world position must still be that function
    at the output voxel centres given by the output affine (away from the borders)."""
    affine = make_affine(orientation, spacing=(0.8, 0.9, 3.0))
    shape = (18, 16, 14)
    gradient = np.array([0.7, -0.4, 0.25])  # intensity per mm in world RAS
    ijk = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1).astype(float)
    data = (voxel_to_world(affine, ijk) @ gradient).astype(np.float32)
    factor = 3
    res = upsample_volume(Volume(data, affine), plane, factor, method=method)
    out = res.volume
    assert out.shape == res.plan.output_shape
    np.testing.assert_allclose(out.affine, res.plan.output_affine)
    oijk = np.stack(np.meshgrid(*map(np.arange, out.shape), indexing="ij"), axis=-1).astype(float)
    expect = voxel_to_world(out.affine, oijk) @ gradient
    inner = tuple(slice(4 * f, n - 4 * f) for n, f in zip(out.shape, res.plan.axis_factors))
    # the largest step between neighbouring input voxels along an upsampled axis
    step = max(abs(affine[:3, a] @ gradient) for a in range(3) if res.plan.axis_factors[a] > 1)
    assert np.abs(out.data[inner] - expect[inner]).max() < tol * step


@needs_prostatex
@pytest.mark.parametrize("patient,plane_name,series", PROSTATEX_SERIES[::3])
def test_shared_series_keep_their_slab(patient, plane_name, series):
    vol = load_volume(prostatex_nifti(patient, plane_name, series))
    for plane, factor in (("in", 4), ("through", 6)):
        plan = plan_upsampling(vol.shape, vol.affine, plane, factor)
        np.testing.assert_allclose(slab_bounds(plan.output_affine, plan.output_shape),
                                   slab_bounds(vol.affine, vol.shape), atol=1e-6)
        assert plan.slice_axis == 2  # every shared series stacks its slices along k


def test_superior_inferior_axis():
    from mrisr.geometry import superior_inferior_axis

    # LIP (coronal): axis 1 points inferior; PIR (sagittal): axis 1; LPS (axial): axis 2
    assert superior_inferior_axis(make_affine("LIP")) == 1
    assert superior_inferior_axis(make_affine("PIR", spacing=(0.5, 0.5, 3.6))) == 1
    assert superior_inferior_axis(make_affine("LPS")) == 2
    assert superior_inferior_axis(make_affine("oblique")) == 2  # a 23 degree tilt keeps k closest to S-I
    # among a subset: of the oblique in-plane axes, j is tilted more towards S-I (0.33 vs 0.13)
    assert superior_inferior_axis(make_affine("oblique"), axes=(0, 1)) == 1


@pytest.mark.parametrize("orientation", ["LPS", "PIR", "oblique"])
def test_isotropic_factor(orientation):
    from mrisr.geometry import isotropic_factor

    assert isotropic_factor(make_affine(orientation)) == 6  # 3.6 / 0.625 = 5.76
    assert isotropic_factor(make_affine(orientation, spacing=(0.5, 0.5, 3.0))) == 6
    assert isotropic_factor(make_affine(orientation, spacing=(1.0, 1.0, 1.2))) == 2  # at least 2
    # an explicit axis: the 0.625 mm axis as slice axis against the finer of the others
    assert isotropic_factor(make_affine(orientation, spacing=(0.625, 0.5, 3.6)), axis=0) == 2


def test_voxel_boxes_and_world_boxes():
    shape = (10, 12, 5)
    assert parse_voxel_box("2:8, :,1:", shape) == ((2, 8), (0, 12), (1, 5))
    for bad, phrase in (("2:8,:", "three ranges"), ("a:3,:,:", "integers"), ("0:11,:,:", "inside 0:10"),
                        ("5:5,:,:", "non-empty"), ("2-8,:,:", "three ranges"), ("-1:3,:,:", "inside 0:10")):
        with pytest.raises(GeometryError, match=phrase):
            parse_voxel_box(bad, shape)
    # an oblique grid: the tightest index box around the voxels whose centres are inside the world box
    affine = make_affine("oblique", (0.8, 0.9, 3.0))
    centre = voxel_to_world(affine, (np.asarray(shape) - 1) / 2)
    lo, hi = centre - (2.0, 3.0, 4.0), centre + (2.5, 1.5, 5.0)
    text = ",".join(f"{a:.3f}:{b:.3f}" for a, b in zip(lo, hi))
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1).reshape(-1, 3)
    world = voxel_to_world(affine, ijk)
    inside = ijk[np.all((world >= np.round(lo, 3)) & (world <= np.round(hi, 3)), axis=1)]
    assert 1 < len(inside) < len(ijk)
    expected = tuple((int(inside[:, a].min()), int(inside[:, a].max()) + 1) for a in range(3))
    assert world_box_to_voxels(text, affine, shape) == expected
    assert world_box_to_voxels(":, :, :", affine, shape) == ((0, 10), (0, 12), (0, 5))  # unbounded sides
    with pytest.raises(GeometryError, match=r"holds no voxel centre .*x -?[\d.]+:-?[\d.]+, y .* mm"):
        world_box_to_voxels("1000:1001,:,:", affine, shape)
    with pytest.raises(GeometryError, match="empty"):
        world_box_to_voxels("3:1,:,:", affine, shape)


@needs_prostatex
@pytest.mark.parametrize("plane,factor", [("through", 6), ("in", 2)])
def test_a_region_of_interest_is_the_whole_volume_output_cropped(plane, factor):
    volume = load_volume(prostatex_nifti("ProstateX-0218", "tra", 5)).crop((176, 176, None))
    full = upsample_volume(volume, plane, factor, method="bicubic")
    box = ((20, 140), (10, 120), (3, 17))
    part = upsample_volume(volume, plane, factor, method="bicubic", roi=box)
    f = full.plan.axis_factors
    crop = tuple(slice(lo * f[a], hi * f[a]) for a, (lo, hi) in enumerate(box))
    np.testing.assert_array_equal(part.volume.data, full.volume.data[crop])  # the same numbers, not just close
    # and the same place: the box's first output voxel is where the whole output has it
    start = np.array([c.start for c in crop], float)
    np.testing.assert_allclose(part.volume.affine[:3, 3], voxel_to_world(full.volume.affine, start), atol=1e-9)
    np.testing.assert_allclose(part.volume.affine[:3, :3], full.volume.affine[:3, :3], atol=1e-12)
    np.testing.assert_allclose(part.plan.output_affine, part.volume.affine, atol=1e-9)
    assert part.plan.input_shape == (120, 110, 14) and part.extras["roi"]["voxels"] == [list(b) for b in box]
