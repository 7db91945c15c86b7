"""Thick-slice simulation and the metrics, against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from mrisr.degradation import average_lines, thick_slice_volume
from mrisr.errors import GeometryError
from mrisr.metrics import psnr, ssim
from mrisr.geometry import plan_upsampling, slab_bounds
from mrisr.io import Volume

from conftest import make_affine


def test_average_lines_is_the_mean_of_each_run(rng):
    data = rng.normal(size=(5, 13, 4))
    thick = average_lines(data, axis=1, factor=6)
    assert thick.shape == (5, 2, 4)  # the trailing 13th line is dropped
    np.testing.assert_allclose(thick[:, 0], data[:, 0:6].mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(thick[:, 1], data[:, 6:12].mean(axis=1), rtol=1e-6)
    with pytest.raises(GeometryError, match="fewer than the factor"):
        average_lines(data[:, :3], axis=1, factor=6)


@pytest.mark.parametrize("orientation", ["LIP", "oblique"])
def test_thick_slices_then_upsampling_returns_to_the_fine_grid(rng, orientation):
    fine = Volume(rng.normal(size=(6, 24, 5)).astype(np.float32), make_affine(orientation, (0.6, 0.6, 0.6)))
    thick = thick_slice_volume(fine, axis=1, factor=6)
    assert thick.shape == (6, 4, 5)
    np.testing.assert_allclose(thick.spacing, (0.6, 3.6, 0.6), rtol=1e-12)
    np.testing.assert_allclose(slab_bounds(thick.affine, thick.shape), slab_bounds(fine.affine, fine.shape), atol=1e-9)
    plan = plan_upsampling(thick.shape, thick.affine, "through", 6, axis=1)
    np.testing.assert_allclose(plan.output_affine, fine.affine, atol=1e-9)


def test_psnr_closed_form(rng):
    ref = rng.uniform(0, 10, size=(8, 8))
    ref[0, 0], ref[0, 1] = 0.0, 10.0
    est = ref + 0.1  # MSE = 0.01, peak 10 -> 40 dB
    assert psnr(est, ref) == pytest.approx(40.0)
    assert psnr(ref, ref) == float("inf")
    assert psnr(est, ref, data_range=1.0) == pytest.approx(20.0)


def test_ssim_bounds(rng):
    ref = rng.uniform(0, 1, size=(3, 32, 32))
    assert ssim(ref, ref, 1.0) == pytest.approx(1.0)
    noise = rng.normal(0, 1, ref.shape)
    scores = [ssim(ref + sigma * noise, ref, 1.0) for sigma in (0.05, 0.2, 0.8)]
    assert 1.0 > scores[0] > scores[1] > scores[2]


def test_average_lines_numpy_and_torch_agree(rng):
    import torch

    data = rng.normal(size=(3, 4, 13)).astype(np.float32)
    a = average_lines(data, axis=-1, factor=6)
    b = average_lines(torch.from_numpy(data), axis=-1, factor=6)
    assert isinstance(b, torch.Tensor) and b.shape == (3, 4, 2)
    np.testing.assert_allclose(b.numpy(), a, rtol=1e-6, atol=1e-6)


def test_bicubic_downsample_is_the_in_plane_pairs_lr_step():
    """One low-resolution step for pairs, validation and benchmarks: InPlaneDegrade without blur
    is bicubic_downsample followed by bicubic upsampling, and the whole-volume simulation cuts
    the same planes."""
    import torch

    from mrisr.degradation import bicubic_downsample, simulate_lowres
    from mrisr.interpolation import bicubic_upsample
    from mrisr.io import Volume
    from mrisr.transforms import InPlaneDegrade

    planes = torch.rand(2, 1, 24, 16, generator=torch.Generator().manual_seed(0))
    lr = bicubic_downsample(planes, 4)
    assert lr.shape == (2, 1, 6, 4)
    torch.testing.assert_close(InPlaneDegrade(4, blur_sigma_max=0.0)(planes), bicubic_upsample(lr, (4, 4)))
    ones = bicubic_downsample(torch.ones(1, 1, 8, 8), 2)
    torch.testing.assert_close(ones, torch.ones(1, 1, 4, 4))  # the kernel sums to one
    vol = Volume(planes[:, 0].permute(1, 2, 0).numpy(), np.diag([0.5, 0.5, 3.0, 1.0]))  # slices along axis 2
    low, axis = simulate_lowres(vol, "in", 4)
    assert axis == 2 and low.shape == (6, 4, 2)
    np.testing.assert_allclose(low.data, lr[:, 0].permute(1, 2, 0).numpy(), atol=1e-6)


@pytest.mark.parametrize("kind", ["in", "through"])
def test_consistency_projection_is_the_nearest_consistent_image(kind):
    """project_consistent lands on {z : A z = y}, is idempotent, moves x orthogonally to that
    set (so it is never farther from a consistent truth than x), and for the 6-line average has
    the closed form x + replicate(y - A x)."""
    import torch

    from mrisr.degradation import bicubic_downsample, project_consistent

    g = torch.Generator().manual_seed(3)
    if kind == "in":
        def forward(p):
            return bicubic_downsample(p, 4)
    else:
        def forward(p):
            return average_lines(p, -2, 6)
    truth = torch.rand(1, 1, 48, 24, generator=g, dtype=torch.float64).float()
    y = forward(truth)
    x = truth + 0.3 * torch.randn(truth.shape, generator=g)
    px = project_consistent(x, y, forward)
    torch.testing.assert_close(forward(px), y, atol=1e-5, rtol=0)
    torch.testing.assert_close(project_consistent(px, y, forward), px, atol=1e-5, rtol=0)
    # Pythagoras: |x - truth|^2 = |x - Px|^2 + |Px - truth|^2 (x - Px is orthogonal to the set)
    lhs = float(((x - truth) ** 2).sum())
    rhs = float(((x - px) ** 2).sum() + ((px - truth) ** 2).sum())
    assert abs(lhs - rhs) < 1e-3 * lhs and float(((px - truth) ** 2).sum()) < lhs
    if kind == "through":
        replicate = (y - forward(x)).repeat_interleave(6, dim=-2)
        torch.testing.assert_close(px, x + replicate, atol=1e-5, rtol=0)
