"""Natural images through the same methods: ``(B, C, h, w)`` images in 0..255 in, upsampled by
any registered method (and a natural-image model), out in 0..255."""

from __future__ import annotations

from typing import Any

import torch

from mrisr.devices import resolve_device
from mrisr.errors import ConfigError, require_int
from mrisr.inference.methods import ImagePlan, PlaneUpsampler, get_method, plane_seed

__all__ = ["upsample_images"]


def upsample_images(lowres: torch.Tensor, factor: int, method: str = "bicubic", device: str = "cpu",
                    batch_size: int = 8, seed: int = 0, first_index: int = 0,
                    **options: Any) -> tuple[torch.Tensor, PlaneUpsampler]:
    """Super-resolve natural images with any registered method: the same methods, samplers and
    models as for MRI planes, on ``C``-channel images in 0..255.

    Args:
        lowres: ``(B, C, h, w)`` low-resolution images, values 0..255 (C = 1 or 3).
        factor: the integer factor along both axes.
        method: a registered method; learned ones need ``model=`` (a natural-image model file
            or :class:`~mrisr.models.LoadedModel`: no natural-image models ship).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: images per call of the method.
        seed: seed of stochastic methods; image ``i`` draws from ``(seed, first_index + i)``,
            so results do not depend on the batch size or on how a folder is split into calls.
        first_index: the index of ``lowres[0]`` in the whole set.
        options: as for :func:`upsample_volume` (``model``, ``sampler``, ``steps``, ``k``,
            ``precision``, ``start``, ``start_model``).

    Returns:
        ``(B, C, h * factor, w * factor)`` float32 images in 0..255, and the method's upsampler
        (its ``network_evaluations`` and ``steps_run`` say what it cost).

    Raises:
        ConfigError: a learned method without a model, an MRI model, a channel mismatch or a
            bad option combination.
    """
    from mrisr.images import denormalise_image, normalise_image

    require_int(batch_size, "batch size")
    if lowres.ndim != 4 or lowres.shape[1] not in (1, 3):
        raise ConfigError(f"images must be (B, 1 or 3, H, W), got shape {tuple(lowres.shape)}")
    spec = get_method(method)
    given = sorted(k for k, v in options.items() if v is not None)
    if not spec.learned and given:
        raise ConfigError(f"--method {method} takes no {', '.join('--' + k for k in given)}")
    if spec.learned and options.get("model") is None:
        raise ConfigError(f"--method {method} on natural images needs a model (--model FILE): mrisr ships MRI "
                          "models only")
    dev = resolve_device(device)
    upsampler = spec.build(device=dev, seed=seed, plan=ImagePlan(factor=int(factor), channels=int(lowres.shape[1])),
                           **options)
    outs = []
    for lo in range(0, lowres.shape[0], batch_size):
        batch = normalise_image(lowres[lo:lo + batch_size].to(dev, torch.float32))
        seeds = [plane_seed(seed, 0, first_index + lo + i) for i in range(len(batch))]
        with torch.inference_mode():
            outs.append(denormalise_image(upsampler(batch, (int(factor), int(factor)), seeds).float()).cpu())
    return torch.cat(outs), upsampler
