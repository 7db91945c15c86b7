"""Natural images in and out: PNG / JPEG files, grey or RGB, as ``(C, H, W)`` arrays.

The natural-image pipelines (the paper's Sec. 5.3 and 5.5.2-5.5.3) run on the same library as
MRI: an image is a stack of ``C`` channel planes, degraded, paired, trained and sampled exactly as
an MRI plane is. Only reading, writing and intensities differ, and they live here:

* Files are read with Pillow restricted to the PNG and JPEG decoders (reading never runs code;
  any other format is refused with its path), converted to grey or RGB.
* 8-bit values 0..255 map linearly to [-1, 1] (:data:`IMAGE_NORMALISATION`, SR3's convention);
  16-bit PNGs are scaled by 1/257 to the same 0..255 range first.
* ``square`` / ``resize`` make the paper's inputs: a square crop along the longer edge (random
  for training, centred for testing) and an anti-aliased bicubic resize.
"""

from __future__ import annotations

import glob
import io
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from mrisr.errors import InputError, first_line

__all__ = ["IMAGE_SUFFIXES", "IMAGE_NORMALISATION", "list_images", "read_image", "write_image", "square",
           "resize", "shorter_edge_to", "reference_and_input", "normalise_image", "denormalise_image", "is_image_model",
           "image_channels"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: what natural-image models store as their ``normalisation``: 0..255 -> [-1, 1]
IMAGE_NORMALISATION = {"kind": "fixed", "low": 0.0, "high": 255.0}


def list_images(source: str | os.PathLike) -> list[Path]:
    """The image files of ``source``: a PNG / JPEG file, a folder (searched recursively; other
    files ignored) or a glob pattern, sorted by path.

    Raises:
        InputError: nothing there, or no PNG / JPEG file in it.
    """
    p = Path(source)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = sorted(Path(f) for f in glob.glob(str(source), recursive=True)
                       if Path(f).is_file() and Path(f).suffix.lower() in IMAGE_SUFFIXES)
        if not files and not any(ch in str(source) for ch in "*?["):
            raise InputError(f"{source}: no such file or folder")
    if not files:
        raise InputError(f"{source}: no PNG or JPEG images found")
    return files


def read_image(path: str | os.PathLike, channels: int = 3) -> np.ndarray:
    """A PNG or JPEG file as a float32 ``(channels, H, W)`` array in 0..255.

    Args:
        path: the file.
        channels: 3 (RGB; grey images repeated) or 1 (grey: ITU-R 601 luma of colour images).

    Raises:
        InputError: the file is missing, not PNG / JPEG, truncated or otherwise unreadable
            (the message names the file).
    """
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    p = Path(path)
    try:
        with Image.open(p, formats=["PNG", "JPEG"]) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey PNG
                grey = np.asarray(img, dtype=np.float64) / 257.0
                arr = np.repeat(grey[None], channels, axis=0)
            else:
                arr = np.asarray(img.convert("RGB" if channels == 3 else "L"), dtype=np.float64)
                arr = np.moveaxis(arr, -1, 0) if arr.ndim == 3 else arr[None]
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"{p}: not a readable PNG or JPEG image ({first_line(exc)})") from None
    if arr.shape[1] < 2 or arr.shape[2] < 2:
        raise InputError(f"{p}: image of {arr.shape[2]} x {arr.shape[1]} pixels is too small")
    return np.clip(arr, 0.0, 255.0).astype(np.float32)


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a ``(C, H, W)`` 0..255 array (C = 1 or 3) as an 8-bit PNG, atomically."""
    from PIL import Image

    from mrisr.io import write_bytes

    arr = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"image must be (1 or 3, H, W), got {arr.shape}")
    pil = Image.fromarray(arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(np.moveaxis(arr, 0, -1)))
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return write_bytes(buffer.getvalue(), path)


def square(image: np.ndarray, where: Literal["center"] | np.random.Generator = "center") -> np.ndarray:
    """The largest square of a ``(C, H, W)`` image along its longer edge: centred, or at a
    random offset drawn from the generator ``where``."""
    h, w = image.shape[-2:]
    side = min(h, w)
    spare = max(h, w) - side
    offset = spare // 2 if isinstance(where, str) else int(where.integers(0, spare + 1))
    return image[..., offset:offset + side, :] if h > w else image[..., :, offset:offset + side]


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Anti-aliased bicubic resize of a ``(C, H, W)`` image, clipped to 0..255."""
    if image.shape[-2:] == (height, width):
        return np.asarray(image, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    out = F.interpolate(t, size=(int(height), int(width)), mode="bicubic", antialias=True, align_corners=False)
    return out[0].clamp(0.0, 255.0).numpy()


def shorter_edge_to(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter edge is ``size`` pixels, keeping the aspect ratio."""
    h, w = image.shape[-2:]
    scale = size / min(h, w)
    return resize(image, max(size, round(h * scale)), max(size, round(w * scale)))


def reference_and_input(image: np.ndarray, size: int | None, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's test protocol for one image: the centre square resized to ``size`` (None:
    the square as it is, trimmed to a multiple of ``factor``) is the high-resolution reference;
    its anti-aliased bicubic downsampling by ``factor`` (the training degradation), rounded to
    8-bit values as a saved low-resolution image would be, is the input.

    Returns:
        ``(hr, lr)``: ``(C, S, S)`` and ``(C, S / factor, S / factor)`` float32 in 0..255.
    """
    hr = square(image)
    if size:
        if size % factor:
            raise ValueError(f"size {size} is not a multiple of the factor {factor}")
        hr = resize(hr, size, size)
    else:
        side = hr.shape[-1] // factor * factor
        hr = hr[..., :side, :side]
    side = hr.shape[-1] // factor
    lr = np.rint(resize(hr, side, side)).astype(np.float32)
    return np.ascontiguousarray(hr, dtype=np.float32), lr


def normalise_image(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """0..255 -> [-1, 1]."""
    return x / 127.5 - 1.0


def denormalise_image(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """[-1, 1] -> 0..255, clipped."""
    out = (x + 1.0) * 127.5
    return out.clamp(0.0, 255.0) if isinstance(out, torch.Tensor) else np.clip(out, 0.0, 255.0)


def is_image_model(config: dict) -> bool:
    """Whether a model config is a natural-image model (trained on 0..255 images)."""
    return (config.get("normalisation") or {}).get("kind") == IMAGE_NORMALISATION["kind"]


def image_channels(config: dict) -> int:
    """The image channels a model config's network produces (1 for every MRI model)."""
    return int((config.get("network") or {}).get("out_channels", 1))
