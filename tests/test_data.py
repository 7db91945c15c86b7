"""mrisr.data: pairs cut from a crop with a margin equal the whole-plane pairs, and the
step-indexed batches are the same in DataLoader workers as in the main process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrisr.data import PairBatches, PairCropper, batch_indices, gamma_curve, rotate_plane, zoom_plane
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


class _DrawRng(_FixedRng):
    """Given integer draws (window units, then turns) and a value for every ``random()``."""

    def __init__(self, starts: list[int], coin: float):
        super().__init__(starts)
        self.coin = coin

    def random(self):
        return self.coin


@pytest.mark.parametrize("turns,flip_rows", [(0, True), (1, False), (2, True), (3, False), (3, True)])
def test_dihedral_augmentation_is_a_symmetry_of_the_in_plane_degradation(turns, flip_rows):
    """Each of the eight turns / flips commutes with the in-plane degradation on a grid-sized
    plane, and a dihedral pair is that transform of the pair "flips" draws with the same rng."""
    plane = torch.from_numpy(_smooth_plane(96, 96, seed=3))[None, None]
    degrade = InPlaneDegrade(4, 0.0)

    def g(x):
        return torch.rot90(x.flip(-2) if flip_rows else x, turns, dims=(-2, -1))

    np.testing.assert_allclose(degrade(g(plane)).numpy(), g(degrade(plane)).numpy(), rtol=0, atol=1e-5)
    coin = 0.2 if flip_rows else 0.9  # < 0.5 also flips left-right, in both croppers
    hr_f, cond_f = PairCropper("in", 4, 48)(plane[0, 0].numpy(), _DrawRng([3, 5], coin))
    hr_d, cond_d = PairCropper("in", 4, 48, augment="dihedral")(plane[0, 0].numpy(), _DrawRng([3, 5, turns], coin))
    np.testing.assert_array_equal(hr_d.numpy(), g(hr_f).numpy())
    np.testing.assert_array_equal(cond_d.numpy(), g(cond_f).numpy())


def test_through_plane_pairs_are_never_turned_and_unknown_augmentations_are_refused():
    plane = _smooth_plane(120, 90, seed=4)
    hr_f, _ = PairCropper("through", 6, 48)(plane, np.random.default_rng(5))
    hr_d, _ = PairCropper("through", 6, 48, augment="dihedral")(plane, np.random.default_rng(5))
    np.testing.assert_array_equal(hr_f.numpy(), hr_d.numpy())
    with pytest.raises(ConfigError, match="data.augment"):
        PairCropper("in", 4, 48, augment="rotate")


@pytest.mark.parametrize("kind,factor", [("in", 4), ("through", 6)])
def test_a_zoomed_pair_is_the_pair_of_the_shrunk_plane(kind, factor):
    """Zoom shrinks the plane first (its draw comes first), then the pair is made as usual."""
    plane = _smooth_plane(240, 204, seed=6)
    hr, cond = PairCropper(kind, factor, 48, zoom_min=0.75)(plane, _FixedRng([2, 3]))  # s = 0.75
    shrunk = zoom_plane(plane, 0.75)
    assert shrunk.shape == (180, 153)
    ref_hr, ref_cond = PairCropper(kind, factor, 48)(shrunk, _FixedRng([2, 3]))
    np.testing.assert_array_equal(hr.numpy(), ref_hr.numpy())
    np.testing.assert_array_equal(cond.numpy(), ref_cond.numpy())


class _UniformRng(_FixedRng):
    """A _FixedRng whose uniform draws are the given fractions of their range, in order."""

    def __init__(self, starts: list[int], fractions: list[float]):
        super().__init__(starts)
        self.fractions = list(fractions)

    def uniform(self, low, high):
        return low + self.fractions.pop(0) * (high - low)


@pytest.mark.parametrize("axes,fractions,scales", [("columns", [0.0], (1.0, 0.6)),
                                                    ("each", [0.5, 0.0], (0.8, 0.6)),
                                                    ("both", [0.5], (0.8, 0.8))])
def test_zoom_axes_shrink_the_axes_they_name(axes, fractions, scales):
    """columns: the rows keep their spacing (a through-plane slab stays as thick); each: one
    factor per axis, rows drawn first; both: one factor."""
    plane = _smooth_plane(240, 210, seed=7)
    hr, cond = PairCropper("through", 6, 48, zoom_min=0.6, zoom_axes=axes)(plane, _UniformRng([2, 3], fractions))
    shrunk = zoom_plane(plane, scales)
    assert shrunk.shape == (round(240 * scales[0]), round(210 * scales[1]))
    ref_hr, ref_cond = PairCropper("through", 6, 48)(shrunk, _FixedRng([2, 3]))
    np.testing.assert_array_equal(hr.numpy(), ref_hr.numpy())
    np.testing.assert_array_equal(cond.numpy(), ref_cond.numpy())
    # a ramp along the rows is left exactly as it was by a columns-only zoom
    y = np.mgrid[0:64, 0:48][0].astype(np.float32)
    np.testing.assert_allclose(zoom_plane(0.01 * y, (1.0, 0.5)), 0.01 * y[:, :24], rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="zoom_axes"):
        PairCropper("in", 4, 48, zoom_min=0.7, zoom_axes="rows")


def test_rotation_keeps_the_finest_detail_and_undoes_itself():
    """A band-limited wave at 0.4 cycles per pixel (near Nyquist) rotated by 30 degrees is the
    same wave along the rotated direction, undamped (bicubic interpolation would damp it);
    +theta then -theta gives the plane back; rectangular and (C, H, W) planes work; the sense of
    rotation is scipy.ndimage.rotate's."""
    h, w = 160, 128
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    y, x = y - (h - 1) / 2, x - (w - 1) / 2
    k, t = 2 * np.pi * 0.4, np.radians(30.0)
    wave = np.cos(k * x).astype(np.float32)
    turned = rotate_plane(wave, 30.0)
    # content at output (y, x) comes from the input at the point turned back by t about the centre
    expected = np.cos(k * (np.cos(t) * x - np.sin(t) * y))
    centre = (slice(40, 120), slice(32, 96))
    got, want = turned[centre], expected[centre]
    assert abs((got * want).sum() / (want * want).sum() - 1.0) < 0.002  # its amplitude, undamped
    assert np.sqrt(np.mean((got - want) ** 2)) < 0.02  # (a cubic spline: amplitude 0.83, error 0.17)
    # random waves inside the disc every rotation keeps (|f| < 0.45 cycles per pixel)
    rng = np.random.default_rng(8)
    f, phase = rng.uniform(-0.3, 0.3, (20, 2)), rng.uniform(0, 2 * np.pi, 20)
    plane = sum(np.cos(2 * np.pi * (fy * y + fx * x) + p) for (fy, fx), p in zip(f, phase)).astype(np.float32)
    back = rotate_plane(rotate_plane(plane, 17.0), -17.0)
    np.testing.assert_allclose(back[centre], plane[centre], rtol=0, atol=0.01 * np.abs(plane).max())
    both = rotate_plane(np.stack([plane, -plane]), 17.0)
    np.testing.assert_allclose(both[1], -rotate_plane(plane, 17.0), rtol=0, atol=1e-6)
    assert rotate_plane(plane, 0.0) is plane
    with pytest.raises(ConfigError, match="45"):
        rotate_plane(plane, 60.0)


class _RotateRng(_FixedRng):
    """uniform draws: the angle (as given); integers: the centre, then nothing else."""

    def __init__(self, angle: float, centre: list[int]):
        super().__init__(centre)
        self.angle = angle

    def uniform(self, low, high):
        return self.angle


@pytest.mark.parametrize("kind,factor,margins", [("in", 4, (16, 16)), ("through", 6, (24, 0))])
def test_a_rotated_pair_is_the_pair_of_the_turned_neighbourhood(kind, factor, margins):
    """The crop plus its margins around the drawn centre, turned whole, then degraded: the high-
    resolution crop is the centre of the turned neighbourhood, the condition its degradation."""
    from mrisr.transforms.pairs import InPlaneDegrade, ThroughPlaneDegrade

    plane = _smooth_plane(240, 204, seed=9)
    crop, (mh, mw) = 48, margins
    hr, cond = PairCropper(kind, factor, crop, rotate_max=20.0)(plane, _RotateRng(12.0, [100, 90]))
    lh, lw = crop + 2 * mh, crop + 2 * mw
    side = int(np.ceil(np.hypot(lh, lw))) + 2
    source = plane[100 - side // 2:100 - side // 2 + side, 90 - side // 2:90 - side // 2 + side]
    turned = rotate_plane(source, 12.0)
    o_r, o_c = (side - lh) // 2, (side - lw) // 2
    window = torch.from_numpy(turned[o_r:o_r + lh, o_c:o_c + lw].copy())[None, None]
    degrade = InPlaneDegrade(factor) if kind == "in" else ThroughPlaneDegrade(factor)
    ref_cond = degrade(window, randomize=False) if kind == "in" else degrade(window)
    np.testing.assert_allclose(hr[0].numpy(), window[0, 0, mh:mh + crop, mw:mw + crop].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(cond[0].numpy(), ref_cond[0, 0, mh:mh + crop, mw:mw + crop].numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="rotate_max"):
        PairCropper("in", 4, 48, rotate_max=50.0)


def test_fourier_zoom_is_a_coarser_acquisition_of_the_same_waves():
    """A wave that the coarser grid can hold comes out as exact samples of the same wave (pixel
    0 in place), however close to the new Nyquist frequency; the bicubic zoom damps it there."""
    i, j = np.mgrid[0:64, 0:48].astype(np.float64)
    wave = lambda m, n, h, w: np.cos(2 * np.pi * (m * i[:h, :w] / h + n * j[:h, :w] / w) + 0.3)  # noqa: E731
    plane = (wave(3, 5, 64, 48) + wave(13, 0, 64, 48)).astype(np.float32)  # 13 / 32: 0.41 cycles per new pixel
    small = zoom_plane(plane, 0.5, "fourier")
    assert small.shape == (32, 24)
    np.testing.assert_allclose(small, wave(3, 5, 32, 24) + wave(13, 0, 32, 24), rtol=0, atol=1e-5)
    np.testing.assert_allclose(zoom_plane(np.full((2, 50, 40), 0.7, np.float32), (0.8, 0.6), "fourier"), 0.7,
                               rtol=0, atol=1e-6)
    fast = wave(13, 0, 64, 48).astype(np.float32)
    amplitude = lambda a: float(np.abs(np.fft.fft(a[:, 4])).max() / (a.shape[0] / 2))  # noqa: E731
    assert abs(amplitude(zoom_plane(fast, 0.5, "fourier")) - 1.0) < 1e-4
    assert amplitude(zoom_plane(fast, 0.5, "bicubic")) < 0.75  # damped there (to 0.69)
    hr, cond = PairCropper("in", 4, 16, zoom_min=0.5, zoom_kind="fourier")(plane, _FixedRng([1, 1]))
    ref_hr, ref_cond = PairCropper("in", 4, 16)(small, _FixedRng([1, 1]))
    np.testing.assert_array_equal(hr.numpy(), ref_hr.numpy())
    np.testing.assert_array_equal(cond.numpy(), ref_cond.numpy())
    with pytest.raises(ConfigError, match="zoom_kind"):
        PairCropper("in", 4, 48, zoom_kind="lanczos")


def test_zoom_keeps_constants_and_ramps_and_refuses_bad_scales():
    np.testing.assert_allclose(zoom_plane(np.full((64, 48), 0.3, np.float32), 0.6), 0.3, rtol=0, atol=1e-6)
    # a linear ramp shrunk by 1/2 is the ramp at the new cells' centres, away from the border
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    out = zoom_plane(0.01 * y + 0.02 * x, 0.5)
    cy, cx = np.mgrid[0:32, 0:32] * 2.0 + 0.5
    np.testing.assert_allclose(out[4:-4, 4:-4], (0.01 * cy + 0.02 * cx)[4:-4, 4:-4], rtol=0, atol=1e-5)
    assert zoom_plane(np.zeros((3, 40, 40), np.float32), 0.5).shape == (3, 20, 20)
    with pytest.raises(ConfigError, match="zoom_min"):
        PairCropper("in", 4, 48, zoom_min=0.0)
    with pytest.raises(ConfigError, match="gamma_max"):
        PairCropper("in", 4, 48, gamma_max=0.5)


def test_gamma_curve_closed_form_and_the_condition_is_the_degraded_curved_plane():
    x = torch.tensor([-1.0, 0.0, 1.0, -1.2, 1.5])
    u = (x + 1) / 2
    np.testing.assert_allclose(gamma_curve(x, 2.0).numpy(), (2 * torch.sign(u) * u.abs() ** 2 - 1).numpy())
    assert gamma_curve(x, 2.0)[[0, 1, 2]].tolist() == [-1.0, -0.5, 1.0]
    ramp = torch.linspace(-1.5, 1.5, 101)
    assert bool((gamma_curve(ramp, 0.6).diff() > 0).all()) and bool((gamma_curve(ramp, 1.7).diff() > 0).all())
    plane = _smooth_plane(120, 96, seed=8)
    hr, cond = PairCropper("in", 4, 48, gamma_max=2.0)(plane, _FixedRng([3, 5]))  # gamma = 1 / 2
    curved = gamma_curve(torch.from_numpy(plane), 0.5).numpy()
    ref_hr, ref_cond = PairCropper("in", 4, 48)(curved, _FixedRng([3, 5]))
    np.testing.assert_allclose(hr.numpy(), ref_hr.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(cond.numpy(), ref_cond.numpy(), rtol=0, atol=1e-6)


class _CutBlurRng:
    """An rng for PairCropper._cutblur: box side 0.7, the given corner, HR inside or outside."""

    def __init__(self, corner: tuple[int, int], hr_inside: bool):
        self.corner, self.hr_inside = list(corner), hr_inside

    def normal(self, mean, sd):
        return 0.7

    def integers(self, low, high):
        return self.corner.pop(0)

    def random(self):
        return 0.2 if self.hr_inside else 0.8


@pytest.mark.parametrize("kind,factor", [("in", 4), ("through", 6)])
def test_cutblur_pastes_one_box_and_keeps_the_target(kind, factor):
    plane = _smooth_plane(150, 132, seed=9)
    cropper = PairCropper(kind, factor, 48, cutblur=1.0)
    hr, cond = PairCropper(kind, factor, 48)(plane, np.random.default_rng(0))
    box = np.zeros((48, 48), bool)
    box[5:38, 9:42] = True  # side int(48 * 0.7) = 33 from corner (5, 9)
    for hr_inside in (True, False):
        out_hr, mixed = cropper._cutblur(torch.stack([hr, cond]), _CutBlurRng((5, 9), hr_inside))
        np.testing.assert_array_equal(out_hr.numpy(), hr.numpy())
        inside, outside = (hr, cond) if hr_inside else (cond, hr)
        np.testing.assert_array_equal(mixed[0].numpy(), np.where(box, inside[0].numpy(), outside[0].numpy()))
    # in a whole pair, CutBlur draws last: the target is the one without it, the condition a mix
    for seed in range(4):
        ref_hr, ref_cond = PairCropper(kind, factor, 48)(plane, np.random.default_rng(seed))
        out_hr, mixed = cropper(plane, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_hr.numpy(), ref_hr.numpy())
        assert bool(((mixed == ref_hr) | (mixed == ref_cond)).all())
        assert 0.3 < float((mixed == ref_hr).float().mean()) < 0.7  # a box of ~49 % or its complement
    off = PairCropper(kind, factor, 48, cutblur=0.0)(plane, np.random.default_rng(3))
    ref = PairCropper(kind, factor, 48)(plane, np.random.default_rng(3))
    np.testing.assert_array_equal(off[1].numpy(), ref[1].numpy())
    with pytest.raises(ConfigError, match="cutblur"):
        PairCropper(kind, factor, 48, cutblur=1.5)


def test_mixed_images_make_the_asked_share_of_draws(tmp_path):
    from mrisr.data import mix_image_files, mix_images
    from mrisr.images import write_image

    ramp = np.tile(np.linspace(0, 255, 40, dtype=np.float32), (30, 1))[None]
    colour = np.stack([np.full((30, 40), 255.0), np.zeros((30, 40)), np.zeros((30, 40))]).astype(np.float32)
    (tmp_path / "pics").mkdir()
    for name, img in (("a_black", np.zeros((1, 30, 40), np.float32)), ("b_ramp", ramp), ("c_red", colour)):
        write_image(tmp_path / "pics" / f"{name}.png", img)
    files = mix_image_files("pics", base=tmp_path)  # relative to the config's folder, sorted
    assert [f.name for f in files] == ["a_black.png", "b_ramp.png", "c_red.png"]
    planes, sources = mix_images(files, n_planes=90, fraction=0.25)
    # 0.25 / 0.75 * 90 / 3 = 10 copies of each: 30 of 120 draws
    assert len(planes) == 30 and sources[:3] == [str(f) for f in files] and sources[3] == str(files[0])
    assert all(p.shape == (30, 40) and p.dtype == np.float32 for p in planes)
    np.testing.assert_array_equal(planes[0], -1.0)  # 0 -> -1
    assert planes[1][0, 0] == -1.0 and planes[1][0, -1] == 1.0  # 255 -> 1
    np.testing.assert_allclose(planes[2], 2 * round(0.299 * 255) / 255 - 1, atol=1e-6)  # red: its luma
    assert len(mix_images(files, n_planes=2, fraction=0.01)[0]) == 3  # at least one copy of each
    with pytest.raises(ConfigError, match="mix_fraction"):
        mix_images(files, 10, 1.0)


def test_the_bundled_photographs_are_there_and_large_enough():
    from PIL import Image

    from mrisr.data import SKIMAGE_PHOTOS, mix_image_files

    files = mix_image_files("skimage")
    assert [f.name for f in files] == list(SKIMAGE_PHOTOS) and len(files) == 16
    for f in files:
        with Image.open(f) as img:
            assert min(img.size) >= 300, f
