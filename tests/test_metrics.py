"""Spectral error: closed forms for scaling and blurring."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from mrisr.metrics import radial_power_spectrum, spectral_error


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
