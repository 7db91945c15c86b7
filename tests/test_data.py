"""mrisr.data: pairs cut from a crop with a margin equal the whole-plane pairs, and the
step-indexed batches are the same in DataLoader workers as in the main process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrisr.data import PairBatches, PairCropper, batch_indices
from mrisr.errors import ConfigError
from mrisr.transforms import InPlaneDegrade, ThroughPlaneDegrade


def _smooth_plane(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An image-like plane: smooth structure plus fine texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / 16.0
    return (np.sin(y) * np.cos(0.7 * x) + 0.2 * rng.standard_normal((h, w))).astype(np.float32)


class _FixedRng:
    """An rng whose draws place the crop window and flip nothing."""

    def __init__(self, starts: list[int]):
        self.starts = list(starts)

    def integers(self, low, high):
        return self.starts.pop(0)

    def random(self):
        return 0.9  # no flips

    def uniform(self, low, high):
        return low


@pytest.mark.parametrize("kind,factor,atol", [("through", 6, 1e-5), ("in", 4, 1e-5)])
def test_crop_with_margin_equals_the_whole_plane_pair(kind, factor, atol):
    plane = _smooth_plane(240, 204)
    crop = 48
    cropper = PairCropper(kind, factor, crop)
    whole = torch.from_numpy(plane[: 240 // factor * factor, : 204 // (factor if kind == "in" else 1)
                                   * (factor if kind == "in" else 1)])[None, None]
    full_cond = (InPlaneDegrade(factor, 0.0) if kind == "in" else ThroughPlaneDegrade(factor))(whole)[0, 0]
    fw = factor if kind == "in" else 1
    # interior crop, a crop touching the top-left border and one touching the bottom-right border
    for row_unit, col_unit in [(5, 7), (0, 0), ((240 - crop) // factor, (204 - crop) // fw)]:
        hr, cond = cropper(plane, _FixedRng([row_unit, col_unit]))
        r, c = row_unit * factor, col_unit * fw
        np.testing.assert_array_equal(hr[0].numpy(), plane[r:r + crop, c:c + crop])
        np.testing.assert_allclose(cond[0].numpy(), full_cond[r:r + crop, c:c + crop].numpy(), rtol=0, atol=atol)


def test_small_planes_are_padded_and_shapes_fixed():
    cropper = PairCropper("through", 6, 96)
    hr, cond = cropper(_smooth_plane(60, 50), np.random.default_rng(0))
    assert hr.shape == cond.shape == (1, 96, 96)
    with pytest.raises(ConfigError, match="pair kind"):
        PairCropper("sideways", 6, 96)


def test_batches_depend_on_the_step_alone_and_match_in_dataloader_workers():
    planes = [_smooth_plane(120, 96, seed) for seed in range(5)]
    batches = PairBatches(planes, PairCropper("in", 4, 32, blur_sigma_max=1.0), batch_size=3, seed=7)
    a_hr, a_cond = batches[11]
    b_hr, b_cond = batches[11]
    torch.testing.assert_close(a_hr, b_hr, rtol=0, atol=0)
    torch.testing.assert_close(a_cond, b_cond, rtol=0, atol=0)
    assert not torch.equal(batches[12][0], a_hr)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(9, 14), num_workers=2)
    for step, (hr, cond) in zip(range(9, 14), loader):
        ref_hr, ref_cond = batches[step]
        torch.testing.assert_close(hr, ref_hr, rtol=0, atol=0)
        torch.testing.assert_close(cond, ref_cond, rtol=0, atol=0)
    # the planes drawn are the batch_indices of that step
    assert len(batch_indices(11, 0, 1, 3, len(planes), 7)) == 3
