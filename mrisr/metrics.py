"""Metrics, computed the same way everywhere: image quality (PSNR, SSIM, spectral error,
consistency) and the downstream tasks' scores (top-k and face-verification accuracy)."""

from __future__ import annotations

import numpy as np

__all__ = ["psnr", "ssim", "radial_power_spectrum", "spectral_error", "band_errors", "noise_sigma",
           "consistency_mse", "topk_accuracy", "verification_accuracy"]


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


def radial_power_spectrum(image: np.ndarray, bins: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of a 2D image.

    Args:
        image: ``(H, W)``.
        bins: rings of equal width from 0 to 0.5 cycles per pixel (the Nyquist frequency of
            the axes; the corners beyond it are left out).

    Returns:
        ``(frequencies, power)``: ring centres in cycles per pixel and the mean ``|FFT|^2`` per
        ring, normalised by the number of pixels.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"a 2D image is needed, got shape {image.shape}")
    power = np.abs(np.fft.fft2(image - image.mean())) ** 2 / image.size
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.fftfreq(image.shape[1])[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    edges = np.linspace(0.0, 0.5, bins + 1)
    which = np.digitize(radius, edges) - 1
    inside = (which >= 0) & (which < bins)
    sums = np.bincount(which[inside], weights=power[inside], minlength=bins)
    counts = np.bincount(which[inside], minlength=bins)
    return 0.5 * (edges[1:] + edges[:-1]), sums / np.maximum(counts, 1)


def _line_power_spectrum(image: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Power spectrum along ``axis`` of a 2D image, averaged over the other axis."""
    image = np.moveaxis(np.asarray(image, dtype=np.float64), axis, 0)
    image = image - image.mean(axis=0, keepdims=True)
    power = (np.abs(np.fft.rfft(image, axis=0)) ** 2 / image.shape[0]).mean(axis=1)
    return np.fft.rfftfreq(image.shape[0]), power


def spectral_error(estimate: np.ndarray, reference: np.ndarray, cutoff: float,
                   axis: int | None = None) -> dict[str, float]:
    """How an output's spectrum departs from the reference's, below and above ``cutoff``.

    ``10 log10(P_estimate / P_reference)`` of the power summed over each band: 0 dB is the
    reference's energy, negative is missing detail (blur), positive is extra energy (noise or
    invented texture). With ``cutoff`` the low-resolution Nyquist frequency (``0.5 / factor``
    cycles per pixel) the high band is what super-resolution has to restore, which PSNR barely
    sees; it needs no downloaded weights, unlike LPIPS or FID.

    Args:
        estimate: ``(H, W)`` output.
        reference: ``(H, W)`` ground truth.
        cutoff: band edge in cycles per pixel, in (0, 0.5).
        axis: None for the radially averaged 2D spectrum (in-plane upsampling); an axis for
            the 1D spectra along it (through-plane upsampling degrades only the rows).

    Returns:
        ``{"low_db": ..., "high_db": ...}``.
    """
    if not 0.0 < cutoff < 0.5:
        raise ValueError(f"cutoff must be in (0, 0.5) cycles per pixel, got {cutoff}")
    if axis is None:
        freqs, p_est = radial_power_spectrum(estimate, bins=64)
        _, p_ref = radial_power_spectrum(reference, bins=64)
    else:
        freqs, p_est = _line_power_spectrum(estimate, axis)
        _, p_ref = _line_power_spectrum(reference, axis)
    band_dc = freqs > 0
    out = {}
    for name, band in (("low_db", band_dc & (freqs <= cutoff)), ("high_db", freqs > cutoff)):
        out[name] = float(10.0 * np.log10(max(p_est[band].sum(), 1e-30) / max(p_ref[band].sum(), 1e-30)))
    return out


def band_errors(estimate: np.ndarray, reference: np.ndarray, cutoff: float,
                axis: int | None = None) -> dict[str, float]:
    """Where an output's squared error lies: the MSE split into the band the low-resolution grid
    samples and the band above it, exactly (Parseval: ``low + high`` is the MSE).

    In-plane (``axis`` None) the low band is the square ``|f_y|, |f_x| <= cutoff`` (the band of a
    grid downsampled along both axes); through-plane (an ``axis``) it is ``|f| <= cutoff`` along
    that axis at every frequency of the other. With ``cutoff = 0.5 / factor`` the high band holds
    what the low-resolution input does not sample at all, which only a prior can restore, and
    the low band what a deconvolution of the degradation could (up to aliasing).

    Args:
        estimate: ``(H, W)`` output.
        reference: ``(H, W)`` ground truth.
        cutoff: band edge in cycles per pixel, in (0, 0.5).
        axis: None for both axes, or the one upsampled axis.

    Returns:
        ``{"low": ..., "high": ...}``, mean squared errors in the images' units.
    """
    if not 0.0 < cutoff < 0.5:
        raise ValueError(f"cutoff must be in (0, 0.5) cycles per pixel, got {cutoff}")
    err = np.asarray(estimate, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    if err.ndim != 2:
        raise ValueError(f"2D images are needed, got shape {err.shape}")
    power = np.abs(np.fft.fft2(err)) ** 2 / err.size**2  # sums to the MSE
    fy = np.abs(np.fft.fftfreq(err.shape[0]))[:, None]
    fx = np.abs(np.fft.fftfreq(err.shape[1]))[None, :]
    eps = 1e-9  # a frequency on the edge belongs to the low band
    if axis is None:
        low = (fy <= cutoff + eps) & (fx <= cutoff + eps)
    else:
        f = fy if axis == 0 else fx
        low = np.broadcast_to(f <= cutoff + eps, power.shape)
    return {"low": float(power[low].sum()), "high": float(power[~low].sum())}


def noise_sigma(image: np.ndarray) -> float:
    """The standard deviation of white noise in a 2D image, from the median absolute value of its
    finest diagonal Haar coefficients (Donoho and Johnstone's MAD estimate, 1994): ``(a - b - c +
    d) / 2`` over 2 x 2 blocks cancels every plane ``alpha y + beta x + gamma`` exactly and keeps
    the noise's standard deviation, and the median ignores the few blocks on edges.

    An estimate: magnitude MR images have Rician noise (Rayleigh in the background) and, with
    parallel imaging, a noise level that varies over the field of view; the median is the level
    of the typical block.
    """
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 2 or min(x.shape) < 2:
        raise ValueError(f"a 2D image of at least 2 x 2 is needed, got shape {x.shape}")
    x = x[: x.shape[0] // 2 * 2, : x.shape[1] // 2 * 2]
    diagonal = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(diagonal)) / 0.6744897501960817)


def consistency_mse(estimate: np.ndarray, lowres: np.ndarray, factor: int) -> float:
    """The paper's consistency (Sec. 5.3, Tables 5-6): the MSE between the output downsampled
    as its input was (anti-aliased bicubic by ``factor`` along both axes) and that low-resolution
    input, in the images' own units (0..255 for natural images).

    Args:
        estimate: ``(C, H, W)`` or ``(H, W)`` output.
        lowres: the low-resolution input, ``(C, H / factor, W / factor)`` or 2D.
        factor: the integer factor.
    """
    import torch
    import torch.nn.functional as F

    est = torch.as_tensor(np.asarray(estimate, dtype=np.float64))
    low = np.asarray(lowres, dtype=np.float64)
    est = est.reshape(1, -1, *est.shape[-2:])
    if est.shape[-2] != low.shape[-2] * factor or est.shape[-1] != low.shape[-1] * factor:
        raise ValueError(f"output {tuple(est.shape[-2:])} is not {factor} x the input {low.shape[-2:]}")
    down = F.interpolate(est, size=low.shape[-2:], mode="bicubic", antialias=True, align_corners=False)
    return float(np.mean((down.numpy().reshape(low.shape) - low) ** 2))


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows of ``scores`` ``(N, classes)`` whose ``labels`` are among the ``k``
    highest scores (ties broken by class index, as ``argsort`` with a stable sort)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} do not match")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean([label in row for label, row in zip(labels, top)]))


def verification_accuracy(similarity: np.ndarray, same: np.ndarray, folds: int = 10) -> tuple[float, float]:
    """Face-verification accuracy by the LFW protocol: the pairs split into ``folds``
    consecutive folds; for each, the threshold that maximises accuracy on the other folds
    (``similarity > threshold`` means "same person") is applied to it.

    Returns:
        mean and standard deviation of the per-fold accuracies.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    if similarity.shape != same.shape or similarity.ndim != 1 or len(similarity) < folds:
        raise ValueError(f"need one similarity per pair and at least {folds} pairs")
    parts = np.array_split(np.arange(len(similarity)), folds)
    values = np.unique(similarity)
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])

    def accuracies(idx: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        pos = np.sort(similarity[idx][same[idx]])
        neg = np.sort(similarity[idx][~same[idx]])
        right = (len(pos) - np.searchsorted(pos, thresholds, side="right")
                 + np.searchsorted(neg, thresholds, side="right"))
        return right / len(idx)

    scores = []
    for test in parts:
        train = np.setdiff1d(np.arange(len(similarity)), test)
        best = candidates[int(np.argmax(accuracies(train, candidates)))]  # the lowest of equally good thresholds
        scores.append(float(accuracies(test, np.array([best]))[0]))
    return float(np.mean(scores)), float(np.std(scores))
