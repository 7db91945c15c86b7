"""Spectral error: closed forms for scaling and blurring; the error budget per band (Parseval, cosines
in known bands) and the noise estimate (white noise over ramps and edges)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from mrisr.metrics import band_errors, noise_sigma, radial_power_spectrum, spectral_error


def test_scaling_shows_in_both_bands_and_identity_is_zero():
    ref = np.random.default_rng(0).standard_normal((64, 48))
    assert spectral_error(ref, ref, 0.125) == {"low_db": 0.0, "high_db": 0.0}
    for axis in (None, 0, 1):
        out = spectral_error(3.0 * ref, ref, 0.1, axis=axis)
        assert out["low_db"] == pytest.approx(20 * math.log10(3.0)) and out["high_db"] == pytest.approx(out["low_db"])


def test_blur_removes_the_high_band_along_the_blurred_axis_only():
    ref = np.random.default_rng(1).standard_normal((96, 96))
    rows_blurred = gaussian_filter(ref, sigma=(3, 0))
    along_rows = spectral_error(rows_blurred, ref, 1 / 12, axis=0)
    along_cols = spectral_error(rows_blurred, ref, 1 / 12, axis=1)
    assert along_rows["high_db"] < -15 and along_rows["high_db"] < along_rows["low_db"]
    # along columns the row blur removes energy evenly, not the high band more than the low
    assert abs(along_cols["high_db"] - along_cols["low_db"]) < 1.5
    # white noise has a flat radial spectrum
    _, power = radial_power_spectrum(ref, bins=8)
    assert power.max() / power[1:].min() < 1.6
    with pytest.raises(ValueError, match="cutoff"):
        spectral_error(ref, ref, 0.7)


def test_band_errors_split_the_mse_exactly_and_put_cosines_in_their_band():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((96, 120))
    est = ref + 0.3 * rng.standard_normal(ref.shape)
    for axis in (None, 0, 1):
        bands = band_errors(est, ref, 0.125, axis=axis)
        assert bands["low"] + bands["high"] == pytest.approx(np.mean((est - ref) ** 2), rel=1e-12)
    # white noise: the low band's share is its share of the frequencies
    bands = band_errors(est, ref, 0.125)
    assert bands["low"] / (bands["low"] + bands["high"]) == pytest.approx(1 / 16, abs=0.01)
    y, x = np.mgrid[0:96, 0:120]
    slow = 0.5 * np.cos(2 * np.pi * 8 / 96 * y)   # 1/12 cycles per pixel along rows
    fast = 0.2 * np.cos(2 * np.pi * 30 / 120 * x)  # 1/4 along columns
    for axis, expect_low, expect_high in ((None, 0.125, 0.02), (0, 0.145, 0.0), (1, 0.125, 0.02)):
        bands = band_errors(ref + slow + fast, ref, 1 / 8, axis=axis)  # MSE of A cos: A^2 / 2
        assert bands["low"] == pytest.approx(expect_low, abs=1e-12)
        assert bands["high"] == pytest.approx(expect_high, abs=1e-12)
    # a frequency on the edge belongs to the low band
    edge = np.cos(2 * np.pi * 12 / 96 * y)
    assert band_errors(edge, np.zeros_like(edge), 1 / 8, axis=0)["low"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="cutoff"):
        band_errors(ref, ref, 0.5)


def test_noise_sigma_finds_white_noise_over_ramps_and_edges():
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:256, 0:256].astype(np.float64)
    for sigma in (0.02, 0.3):
        ramp = 5.0 + 0.7 * y - 0.2 * x                      # cancelled exactly by the diagonal coefficient
        assert noise_sigma(ramp + sigma * rng.standard_normal(ramp.shape)) == pytest.approx(sigma, rel=0.04)
        steps = 10.0 * ((x > 100.5) ^ (y > 60.5)) + ramp    # edges touch a few blocks; the median ignores them
        assert noise_sigma(steps + sigma * rng.standard_normal(ramp.shape)) == pytest.approx(sigma, rel=0.05)
    assert noise_sigma(np.ones((9, 7))) == 0.0
    with pytest.raises(ValueError, match="2D"):
        noise_sigma(np.ones(5))
