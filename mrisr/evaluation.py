"""Image-quality metrics on volumes and planes (PSNR, SSIM), computed the same way everywhere."""

from __future__ import annotations

import numpy as np

__all__ = ["psnr", "ssim"]


def psnr(estimate: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB.

    Args:
        estimate: the image to score.
        reference: the ground truth, same shape.
        data_range: the peak; by default ``reference.max() - reference.min()``.
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if estimate.shape != reference.shape:
        raise ValueError(f"shapes differ: {estimate.shape} vs {reference.shape}")
    peak = float(reference.max() - reference.min()) if data_range is None else float(data_range)
    mse = float(np.mean((estimate - reference) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)


def ssim(estimate: np.ndarray, reference: np.ndarray, data_range: float | None = None) -> float:
    """Mean structural similarity (scikit-image, Gaussian window as in Wang et al. 2004),
    averaged over the 2D planes of the first axis for 3D input."""
    from skimage.metrics import structural_similarity

    estimate = np.asarray(estimate, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if estimate.shape != reference.shape:
        raise ValueError(f"shapes differ: {estimate.shape} vs {reference.shape}")
    peak = float(reference.max() - reference.min()) if data_range is None else float(data_range)
    kwargs = dict(data_range=peak, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    if estimate.ndim == 2:
        return float(structural_similarity(estimate, reference, **kwargs))
    return float(np.mean([structural_similarity(e, r, **kwargs) for e, r in zip(estimate, reference)]))
