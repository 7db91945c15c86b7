"""Data: datalists, plane banks, and the step-indexed pair batches the trainer consumes.

* :func:`load_datalist` / :func:`read_datalist`: decathlon-format JSON (or globs) into
  :class:`DataEntry` lists.
* :class:`PlaneBank`: the normalised 2D planes of a list of volumes, in memory.
* :class:`ImageBank`: the same for natural images (PNG / JPEG, grey or RGB): ``(C, H, W)``
  planes in [-1, 1], which every step below takes as it takes MRI planes.
* :class:`PairCropper`: one random training crop of a plane and its condition. The condition
  is made from the crop plus a margin wide enough for the degradation's kernels, not from the
  whole plane (a 96 x 96 crop of a 384 x 384 plane costs ~1/10 of the work), and the margin
  is clamped to the plane so crops at the plane border still see the border as inference does.
* :class:`PairBatches`: a map-style dataset whose item ``i`` is the whole batch of optimiser
  (micro-)step ``i``, drawn from seeds of ``(seed, step, rank)`` alone, so a
  ``torch.utils.data.DataLoader`` with worker processes yields the same batches as the main
  process, and a resumed run continues with exactly the batch it would have drawn.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mrisr.errors import ConfigError, InputError
from mrisr.transforms import PAIR_KINDS, InPlaneDegrade, MrisrReader, RobustNormalised, ThroughPlaneDegrade, training_planes

__all__ = ["DataEntry", "load_datalist", "read_datalist", "PlaneBank", "ImageBank", "DATA_KINDS", "batch_indices",
           "shard", "step_seed",
           "PairCropper", "PairBatches", "AUGMENTATIONS", "SKIMAGE_PHOTOS", "mix_image_files", "mix_images"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataEntry:
    """One volume of a datalist."""

    image: str
    patient: str
    plane: str | None = None
    series: str | None = None
    label: str | None = None  # a label map on the image's grid (e.g. zonal labels), if the datalist names one


def _entries(items: list[Any], base: Path, what: str) -> list[DataEntry]:
    out = []
    for n, item in enumerate(items):
        if isinstance(item, str):
            item = {"image": item}
        if not isinstance(item, dict) or "image" not in item:
            raise ConfigError(f"datalist {what} entry {n} needs an 'image' path")
        image = Path(item["image"])
        image = image if image.is_absolute() else (base / image)
        patient = str(item.get("patient") or image.parent.name)
        label = item.get("label")
        if label is not None:
            label = str(Path(label) if Path(label).is_absolute() else base / label)
        out.append(DataEntry(str(image), patient, item.get("plane"), item.get("series"), label))
    return out


def load_datalist(path: str | os.PathLike) -> tuple[list[DataEntry], list[DataEntry]]:
    """The ``training`` and ``validation`` entries of a decathlon-format JSON datalist."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"datalist not found: {path}")
    try:
        blob = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"datalist {path} is not valid JSON: {exc}") from exc
    if not isinstance(blob, dict):
        raise ConfigError(f"datalist {path} must be a JSON object with 'training' / 'validation' lists")
    return (_entries(blob.get("training", []), path.parent, "training"),
            _entries(blob.get("validation", []), path.parent, "validation"))


def read_datalist(config: dict[str, Any]) -> tuple[list[DataEntry], list[DataEntry]]:
    """Training and validation entries from ``data.datalist`` (MONAI decathlon JSON: lists
    ``training`` and ``validation`` of ``{"image": path, "patient": id, "plane": ...}``, paths
    relative to the JSON file) or ``data.glob`` / ``data.validation_glob`` (for images also a
    folder, searched recursively for PNG / JPEG files).

    Entries are filtered by ``data.planes`` when set. A patient may not be in both lists (for
    natural images, ``data.kind: images``, the same file may not: an entry or glob may also
    name a folder of images).
    """
    data = config["data"]
    base = Path(config.get("config_dir", "."))
    if data["datalist"]:
        path = Path(data["datalist"])
        train, val = load_datalist(path if path.is_absolute() else base / path)
    else:
        def expand(pattern: str | None) -> list[str]:
            if not pattern:
                return []
            pat = pattern if Path(pattern).is_absolute() else str(base / pattern)
            if data.get("kind") == "images":  # a folder, glob or file of PNG / JPEG; a missing one is named
                from mrisr.images import list_images

                return [str(f) for f in list_images(pat)]
            return sorted(glob.glob(pat))

        train = _entries(expand(data["glob"]), base, "training")
        val = _entries(expand(data["validation_glob"]), base, "validation")
    if data["planes"]:
        wanted = set(data["planes"])
        train = [e for e in train if e.plane in wanted]
        val = [e for e in val if e.plane in wanted]
    if data.get("kind") == "images":
        train, val = _image_entries(train), _image_entries(val)
        both = {e.image for e in train} & {e.image for e in val}
        if both:
            raise ConfigError(f"{len(both)} images in both training and validation, e.g. {sorted(both)[0]}")
        if not train:
            raise ConfigError("the data has no training images")
        return train, val
    overlap = {e.patient for e in train} & {e.patient for e in val}
    if overlap:
        raise ConfigError(f"patients in both training and validation: {', '.join(sorted(overlap))}")
    if not train:
        raise ConfigError("the datalist has no training entries (after filtering by data.planes)")
    return train, val


def _image_entries(entries: list[DataEntry]) -> list[DataEntry]:
    """Entries naming folders expanded into one entry per image file in them."""
    from mrisr.images import list_images

    out: list[DataEntry] = []
    for e in entries:
        if Path(e.image).is_dir():
            out += [DataEntry(str(f.resolve()), f.parent.name) for f in list_images(e.image)]
        else:
            out.append(DataEntry(str(Path(e.image).resolve()), e.patient, e.plane, e.series, e.label))
    return out


DATA_KINDS = ("volumes", "images")


class _Bank:
    """What the plane and image banks share: their planes, and how unusable entries end."""

    planes: list[np.ndarray]

    def _settle(self, problems: list[str], skip_bad: bool, had_entries: bool, what: str, usable: str) -> None:
        """Stop on unusable entries (or skip them with a warning), and on none usable at all."""
        if problems:
            if not skip_bad:
                raise InputError(f"{len(problems)} {what} cannot be used (pass --skip-bad to skip them): "
                                 + "; ".join(problems))
            for problem in problems:
                logger.warning("skipping %s", problem)
        if had_entries and not self.planes:
            raise InputError(f"no usable {usable}")

    def __len__(self) -> int:
        return len(self.planes)


class PlaneBank(_Bank):
    """The normalised 2D planes of a list of volumes, held in memory.

    Volumes are read by MONAI's ``LoadImaged`` with :class:`~mrisr.transforms.MrisrReader`
    (the readers of :mod:`mrisr.io`) and normalised by ``RobustNormalised``, so each arrives as
    a MetaTensor carrying its affine, from which the planes are cut. Every entry is read and
    checked before training starts, so a bad file is reported with its path at once, not hours
    later.

    Attributes:
        planes: ``(H, W)`` float32 arrays.
        sources: the image path of each plane.
    """

    def __init__(self, entries: list[DataEntry], kind: str, lower: float, upper: float, skip_bad: bool = False):
        from monai.transforms import Compose, LoadImaged

        self.planes: list[np.ndarray] = []
        self.sources: list[str] = []
        #: per volume, the spacing (mm) along the axes its pairs degrade (both in-plane axes for
        #: in-plane pairs, the superior-inferior in-plane axis for through-plane ones)
        self.degraded_spacings: list[float] = []
        problems = []
        for entry in entries:
            reader = MrisrReader(series=entry.series)
            load = Compose([LoadImaged("image", reader=reader, image_only=True),
                            RobustNormalised("image", lower=lower, upper=upper)])
            try:
                image = load({"image": entry.image})["image"]
            except Exception as exc:  # LoadImage hides the reader's error behind a generic one
                problems.append(f"{entry.image}: {reader.last_error or str(exc).splitlines()[0]}")
                continue
            affine = image.affine.numpy()
            self.degraded_spacings += _degraded_spacings(affine, kind)
            for plane in training_planes(image.numpy(), affine, kind):  # type: ignore[arg-type]
                self.planes.append(plane)
                self.sources.append(entry.image)
        self._settle(problems, skip_bad, bool(entries), "datalist entries", "volumes in the datalist")


class ImageBank(_Bank):
    """Natural images (PNG / JPEG) as ``(C, H, W)`` planes in [-1, 1], held in memory.

    Training images keep their aspect ratio with the shorter edge resized to ``size``, so
    random crops of ``size`` pixels are the paper's random squares along the longer edge;
    validation images are centre squares resized to ``size`` (``size`` None keeps the
    original resolution). Every file is read before training starts, so a bad one is
    reported with its path at once.

    Attributes:
        planes: ``(C, H, W)`` float32 arrays.
        sources: the file of each plane.
        degraded_spacings: empty (images have no physical spacing).
    """

    def __init__(self, entries: list[DataEntry], channels: int, size: int | None, centre_square: bool,
                 skip_bad: bool = False) -> None:
        from mrisr.images import normalise_image, read_image, resize, shorter_edge_to, square

        self.planes: list[np.ndarray] = []
        self.sources: list[str] = []
        self.degraded_spacings: list[float] = []
        problems = []
        for entry in entries:
            try:
                image = read_image(entry.image, channels)
            except InputError as exc:
                problems.append(str(exc))
                continue
            if centre_square:
                image = square(image)
                if size:
                    image = resize(image, size, size)
            elif size:
                image = shorter_edge_to(image, size)
            self.planes.append(np.ascontiguousarray(normalise_image(image), dtype=np.float32))
            self.sources.append(entry.image)
        self._settle(problems, skip_bad, bool(entries), "images", "images in the data")


#: the photographs bundled inside scikit-image (files of the installed package, nothing downloaded)
#: that ``data.mix_images: skimage`` mixes into training: every natural photograph or micrograph at
#: least 300 pixels on its shorter edge; drawings, synthetic patterns, the motion-blurred clock and
#: the second view of the stereo pair are left out
SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png",
                  "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
                  "phantom.png", "retina.jpg", "rocket.jpg")


def mix_image_files(source: str, base: str | os.PathLike = ".") -> list[Path]:
    """The image files that ``data.mix_images`` names: ``skimage`` (:data:`SKIMAGE_PHOTOS`) or a
    PNG / JPEG file, folder or glob, relative to ``base`` (the config's folder).

    Raises:
        InputError: nothing there, or no PNG / JPEG file in it.
    """
    from mrisr.images import list_images

    if source == "skimage":
        import skimage

        folder = Path(skimage.__file__).parent / "data"
        missing = [n for n in SKIMAGE_PHOTOS if not (folder / n).is_file()]
        if missing:
            raise InputError(f"data.mix_images: skimage: {folder} lacks {', '.join(missing)} "
                             "(scikit-image installed without its bundled images?)")
        return [folder / n for n in SKIMAGE_PHOTOS]
    path = Path(source)
    return list_images(path if path.is_absolute() else Path(base) / path)


def mix_images(files: list[Path], n_planes: int, fraction: float) -> tuple[list[np.ndarray], list[str]]:
    """Grey images to append to ``n_planes`` training planes so that they make about ``fraction``
    of the draws: each image (ITU-R 601 luma, 0..255 mapped to [-1, 1], the range that the robust
    normalisation gives a volume) repeated ``max(1, round(fraction / (1 - fraction) * n_planes /
    len(files)))`` times, in the order of ``files``.

    Returns:
        The planes, ``(H, W)`` float32, and the file of each.
    """
    from mrisr.images import normalise_image, read_image

    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.mix_fraction must be in (0, 1), got {fraction!r}")
    images = [np.ascontiguousarray(normalise_image(read_image(f, 1))[0], dtype=np.float32) for f in files]
    reps = max(1, round(fraction / (1.0 - fraction) * n_planes / len(images)))
    planes = [img for _ in range(reps) for img in images]
    return planes, [str(f) for _ in range(reps) for f in files]


def _degraded_spacings(affine: np.ndarray, kind: str) -> list[float]:
    from mrisr.geometry import slice_axis, superior_inferior_axis, voxel_spacing

    spacing = voxel_spacing(affine)
    s = slice_axis(affine)
    a, b = [ax for ax in range(3) if ax != s]
    if kind == "in":
        return [float(spacing[a]), float(spacing[b])]
    if kind == "through":
        return [float(spacing[superior_inferior_axis(affine, (a, b))])]
    return [float(spacing[a]), float(spacing[b])]


def batch_indices(step: int, rank: int, world: int, batch: int, n: int, seed: int) -> list[int]:
    """Plane indices of one rank's batch at ``step``: consecutive positions of a stream of
    per-epoch permutations, each rank taking its own shard (DistributedSampler semantics),
    computed from the step alone so a resumed run draws the same batches."""
    out = []
    for j in range(batch):
        position = (step * world + rank) * batch + j
        epoch, offset = divmod(position, n)
        perm = np.random.default_rng([seed, epoch, 0xDA7A]).permutation(n)
        out.append(int(perm[offset]))
    return out


def shard(n: int, rank: int, world: int) -> list[int]:
    """The case indices rank ``rank`` of ``world`` takes: ``rank, rank + world, ...`` (the
    ``DistributedSampler`` rule without its padding), so every case runs exactly once."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} of world size {world}")
    return list(range(rank, n, world))


def step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """A 32-bit seed for one random stream (crops, dropout, noise) of one rank at one step."""
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(1)[0])


AUGMENTATIONS = ("flips", "dihedral")


ZOOM_AXES = ("both", "each", "columns")
ZOOM_KINDS = ("bicubic", "fourier")


def zoom_plane(plane: np.ndarray, scale: float | tuple[float, float], kind: str = "bicubic") -> np.ndarray:
    """An ``(H, W)`` or ``(C, H, W)`` plane resized by ``scale`` (one factor for both axes, or
    ``(rows, columns)``; sizes rounded, at least 1 pixel).

    ``kind="bicubic"``: anti-aliased bicubic when shrinking (pixel areas aligned). ``"fourier"``,
    shrinking only: the central part of the plane's 2D spectrum, as a scanner with the coarser
    matrix would have sampled k-space (pixel 0 stays in place): every frequency below the new
    Nyquist frequency is kept undamped, where the bicubic kernel damps the top of the new band.
    """
    if kind not in ZOOM_KINDS:
        raise ConfigError(f"data.zoom_kind must be one of {', '.join(ZOOM_KINDS)}, got {kind!r}")
    sh, sw = (scale, scale) if isinstance(scale, (int, float)) else scale
    h, w = plane.shape[-2:]
    size = (max(1, round(h * sh)), max(1, round(w * sw)))
    if size == (h, w):
        return plane
    if kind == "fourier":
        if size[0] > h or size[1] > w:
            raise ConfigError(f"zoom_plane: the Fourier zoom only shrinks, got scale {scale!r}")
        spectrum = np.fft.fftshift(np.fft.fft2(np.asarray(plane, dtype=np.float64)), axes=(-2, -1))
        r0, c0 = h // 2 - size[0] // 2, w // 2 - size[1] // 2
        kept = np.fft.ifftshift(spectrum[..., r0:r0 + size[0], c0:c0 + size[1]], axes=(-2, -1))
        return (np.fft.ifft2(kept).real * (size[0] * size[1] / (h * w))).astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))
    x = x[None, None] if x.ndim == 2 else x[None]
    out = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=min(sh, sw) < 1.0)
    return out[0, 0].numpy() if plane.ndim == 2 else out[0].numpy()


def _fourier_shear(x: torch.Tensor, shifts: torch.Tensor, dim: int) -> torch.Tensor:
    """Each line of ``x`` along ``dim`` (-1: rows' lines, -2: columns') shifted by its entry of
    ``shifts`` (pixels, one per line), by a phase ramp in the Fourier domain: exact for a
    band-limited periodic signal, so it keeps every frequency the plane has."""
    freqs = torch.fft.fftfreq(x.shape[dim], dtype=torch.float64)
    ramp = shifts[:, None] * freqs[None, :] if dim == -1 else freqs[:, None] * shifts[None, :]
    phase = torch.polar(torch.ones_like(ramp), -2.0 * math.pi * ramp).to(torch.complex64)
    return torch.fft.ifft(torch.fft.fft(x, dim=dim) * phase, dim=dim).real


def rotate_plane(plane: np.ndarray, degrees: float) -> np.ndarray:
    """An ``(H, W)`` or ``(C, H, W)`` plane rotated by ``degrees`` about its centre
    (counter-clockwise as displayed with row 0 at the top, as ``scipy.ndimage.rotate``), same size.

    Three Fourier shears (x, y, x; Unser et al. 1995), each a per-line sub-pixel shift exact for
    band-limited signals: unlike bicubic or spline interpolation, the rotation does not blur the
    high-resolution plane, whose finest detail is what the model has to learn. MR images are
    themselves Fourier reconstructions. The plane is reflect-padded by half its size first, so
    what the shears wrap around stays outside the result; corners come from the reflection.
    """
    if abs(degrees) > 45.0:
        raise ConfigError(f"rotate_plane: |degrees| must be at most 45 (turns of 90 cover the rest), got {degrees!r}")
    if degrees == 0.0:
        return plane
    h, w = plane.shape[-2:]
    ph, pw = h // 2, w // 2
    pads = ((0, 0),) * (plane.ndim - 2) + ((ph, ph), (pw, pw))
    x = torch.from_numpy(np.pad(np.asarray(plane, dtype=np.float32), pads, mode="reflect"))
    rows = torch.arange(x.shape[-2], dtype=torch.float64) - (x.shape[-2] - 1) / 2
    cols = torch.arange(x.shape[-1], dtype=torch.float64) - (x.shape[-1] - 1) / 2
    t = math.radians(degrees)
    x = _fourier_shear(x, math.tan(t / 2) * rows, -1)
    x = _fourier_shear(x, -math.sin(t) * cols, -2)
    x = _fourier_shear(x, math.tan(t / 2) * rows, -1)
    return x[..., ph:ph + h, pw:pw + w].numpy()


def gamma_curve(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """Normalised intensities (the robust span mapped to [-1, 1]) through a gamma curve: with
    ``u = (x + 1) / 2``, ``u -> sign(u) |u|^gamma``, so -1 and 1 (the span's ends) stay where they
    are and the curve is monotonic everywhere, including outside the span."""
    u = (x + 1.0) / 2.0
    return 2.0 * torch.sign(u) * u.abs().pow(gamma) - 1.0


def _pad_to(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Reflect-pad ``(C, H, W)`` symmetrically along ``dim`` (1 or 2) up to ``size``."""
    short = size - x.shape[dim]
    if short <= 0:
        return x
    before, after = short // 2, short - short // 2
    pads = (0, 0, before, after) if dim == 1 else (before, after, 0, 0)
    mode = "reflect" if x.shape[dim] > max(before, after) else "replicate"
    return F.pad(x[None], pads, mode=mode)[0]


class PairCropper:
    """A random ``crop x crop`` training pair (high-resolution, condition) from one plane.

    The window is placed on the factor's grid (as the low-resolution samples of a whole plane
    would be), the degradation runs on the window plus ``margin`` high-resolution pixels each
    side (clamped to the plane), and the crop is cut from its result: away from the plane's
    border, and at the border too, the condition equals the whole-plane condition up to float
    rounding (tested).

    Args:
        kind: ``"in"``, ``"through"`` or ``"selfsup"`` (see :mod:`mrisr.transforms.pairs`).
        factor: the upsampling factor.
        crop: side of the square crop (a multiple of the factor along degraded axes).
        blur_sigma_max: in-plane pairs only: Gaussian blur sigma ~ U(0, max) in LR pixels.
        augment: ``"flips"`` (left-right always; up-down where rows are not the fixed S-I
            order of in-plane slices) or ``"dihedral"``: in-plane pairs also turned by
            multiples of 90 degrees and flipped up-down, all eight symmetries of the square,
            which the isotropic in-plane degradation commutes with (through-plane pairs stay
            with flips: their degradation runs along rows only).
        zoom_min: below 1, each plane is first shrunk by ``s ~ U(zoom_min, 1)`` (along the axes
            of ``zoom_axes``, resampled as ``zoom_kind`` says): the same anatomy at a coarser pixel
            size, a new high-resolution plane whose pair is then made as usual. 1: off.
        zoom_axes: ``"both"`` (one factor for both axes), ``"each"`` (a factor drawn for each
            axis: new aspect ratios too) or ``"columns"`` (columns only: a through-plane pair
            keeps its rows' spacing, so its simulated slab stays as thick as the slices it
            serves).
        zoom_kind: ``"bicubic"`` (anti-aliased) or ``"fourier"`` (the central part of the
            spectrum, as a coarser acquisition: :func:`zoom_plane`).
        rotate_max: above 0, the plane is turned by an angle ~ U(-rotate_max, rotate_max)
            degrees (:func:`rotate_plane`, no blur) about a random point, and the pair is made
            from the turned neighbourhood: the crop plus its margins, cut whole (at most 45: the
            dihedral turns cover the rest). 0: off.
        gamma_max: above 1, the window's intensities pass through a gamma curve with
            ``log(gamma) ~ U(-log(gamma_max), log(gamma_max))`` (:func:`gamma_curve`) before the
            degradation, so the condition is the degraded curved image. 1: off.
        cutblur: above 0, the probability that a pair's condition gets a box of the
            high-resolution crop pasted in, or (as often) becomes the high-resolution crop with a
            box of the condition pasted in (CutBlur, Yoo et al., CVPR 2020): the target stays the
            high-resolution crop, so the model learns to leave sharp regions as they are and to
            restore only where the input is degraded. The box's side is a fraction
            ``N(0.7, 0.01)`` of the crop's (the paper's), placed at random. 0: off.

    Random draws come in a fixed order (zoom, rotation, gamma, window, flips, turns, CutBlur),
    and zoom, rotation, gamma and CutBlur draw nothing when off (a rotation's centre takes the
    window's place), so a run without them draws exactly what it drew before they existed.
    """

    def __init__(self, kind: str, factor: int, crop: int, blur_sigma_max: float = 0.0,
                 augment: str = "flips", zoom_min: float = 1.0, gamma_max: float = 1.0,
                 zoom_axes: str = "both", rotate_max: float = 0.0, zoom_kind: str = "bicubic",
                 cutblur: float = 0.0) -> None:
        if kind not in PAIR_KINDS:
            raise ConfigError(f"pair kind must be one of {', '.join(PAIR_KINDS)}, got {kind!r}")
        if augment not in AUGMENTATIONS:
            raise ConfigError(f"data.augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
        if not 0.1 <= zoom_min <= 1.0:
            raise ConfigError(f"data.zoom_min must be in [0.1, 1] (1: no zoom), got {zoom_min!r}")
        if zoom_kind not in ZOOM_KINDS:
            raise ConfigError(f"data.zoom_kind must be one of {', '.join(ZOOM_KINDS)}, got {zoom_kind!r}")
        if zoom_axes not in ZOOM_AXES:
            raise ConfigError(f"data.zoom_axes must be one of {', '.join(ZOOM_AXES)}, got {zoom_axes!r}")
        if not 0.0 <= rotate_max <= 45.0:
            raise ConfigError(f"data.rotate_max must be in [0, 45] degrees (0: no rotation), got {rotate_max!r}")
        self.rotate_max = float(rotate_max)
        if not 1.0 <= gamma_max <= 10.0:
            raise ConfigError(f"data.gamma_max must be in [1, 10] (1: no gamma), got {gamma_max!r}")
        if not 0.0 <= cutblur <= 1.0:
            raise ConfigError(f"data.cutblur must be a probability in [0, 1] (0: off), got {cutblur!r}")
        self.cutblur = float(cutblur)
        self.zoom_min, self.gamma_max, self.zoom_axes = float(zoom_min), float(gamma_max), zoom_axes
        self.zoom_kind = zoom_kind
        self.augment = augment
        self.kind = kind
        self.factor = int(factor)
        self.crop = int(crop)
        self.blur_sigma_max = float(blur_sigma_max) if kind == "in" else 0.0
        self.factors = (self.factor, self.factor) if kind == "in" else (self.factor, 1)
        # bicubic (antialiased) down + bicubic up reach 2 LR pixels each way, a blur 3 sigma
        reach = self.factor * (4 + math.ceil(3 * self.blur_sigma_max))
        self.margins = (reach, reach) if kind == "in" else (reach, 0)
        self._in = InPlaneDegrade(self.factor, blur_sigma_max=self.blur_sigma_max) if kind == "in" else None
        self._through = ThroughPlaneDegrade(self.factor) if kind != "in" else None

    def _window(self, n: int, f: int, margin: int, rng: np.random.Generator) -> tuple[int, int, int]:
        """(window start, window end, crop offset inside the window) along one axis of length ``n``."""
        if n <= self.crop:
            return 0, n, 0
        start = f * int(rng.integers(0, (n - self.crop) // f + 1))
        lo, hi = max(0, start - margin), min(n, start + self.crop + margin)
        return lo, hi, start - lo

    def _turned(self, plane: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The crop-plus-margins neighbourhood of a random point, turned by a random angle: cut
        from a square that holds its turned footprint (reflected where the plane is smaller)."""
        angle = float(rng.uniform(-self.rotate_max, self.rotate_max))
        mh, mw = self.margins
        lh, lw = self.crop + 2 * mh, self.crop + 2 * mw
        side = math.ceil(math.hypot(lh, lw)) + 2
        h, w = plane.shape[-2:]
        r0, c0 = int(rng.integers(0, h)) - side // 2, int(rng.integers(0, w)) - side // 2  # around the centre
        cut = plane[..., max(r0, 0):max(r0 + side, 0), max(c0, 0):max(c0 + side, 0)]
        # what lies beyond the plane's border is reflected in (only that is padded, not the plane)
        beyond = ((max(-r0, 0), max(r0 + side - h, 0)), (max(-c0, 0), max(c0 + side - w, 0)))
        pads = ((0, 0),) * (plane.ndim - 2) + beyond
        source = rotate_plane(np.pad(cut, pads, mode="reflect"), angle)
        o_r, o_c = (side - lh) // 2, (side - lw) // 2
        return source[..., o_r:o_r + lh, o_c:o_c + lw]

    def _zoom(self, rng: np.random.Generator) -> tuple[float, float]:
        """(rows, columns) scale factors; "each" draws the rows' first."""
        s = float(rng.uniform(self.zoom_min, 1.0))
        if self.zoom_axes == "columns":
            return 1.0, s
        return (s, float(rng.uniform(self.zoom_min, 1.0))) if self.zoom_axes == "each" else (s, s)

    def __call__(self, plane: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C, crop, crop)`` high-resolution crop and its condition, from an ``(H, W)`` plane
        (C = 1) or a ``(C, H, W)`` one (e.g. an RGB image)."""
        (fh, fw), (mh, mw) = self.factors, self.margins
        if self.zoom_min < 1.0:
            plane = zoom_plane(plane, self._zoom(rng), self.zoom_kind)
        turned = None
        if self.rotate_max > 0.0:
            turned = self._turned(plane, rng)
        gamma = None
        if self.gamma_max > 1.0:
            gamma = math.exp(float(rng.uniform(-math.log(self.gamma_max), math.log(self.gamma_max))))
        if turned is not None:  # the turned neighbourhood is the window: crop and both margins
            plane, h, w = turned, turned.shape[-2], turned.shape[-1]
            r0, r1, dr, c0, c1, dc = 0, h, mh, 0, w, mw
        else:
            h, w = plane.shape[-2] // fh * fh, plane.shape[-1] // fw * fw
            r0, r1, dr = self._window(h, fh, mh, rng)
            c0, c1, dc = self._window(w, fw, mw, rng)
        window = torch.from_numpy(np.ascontiguousarray(plane[..., r0:r1, c0:c1], dtype=np.float32))
        window = window[None, None] if window.ndim == 2 else window[None]
        if gamma is not None:
            window = gamma_curve(window, gamma)
        if self._in is not None:
            self._in.sigma = float(rng.uniform(0.0, self.blur_sigma_max)) if self.blur_sigma_max > 0 else 0.0
            cond = self._in(window, randomize=False)
        else:
            cond = self._through(window)  # type: ignore[misc]
        ch, cw = min(self.crop, h), min(self.crop, w)
        hr = window[0, :, dr:dr + ch, dc:dc + cw]
        cond = cond[0, :, dr:dr + ch, dc:dc + cw]
        pair = torch.stack([hr, cond])  # (2, C, ch, cw)
        pair = torch.stack([_pad_to(_pad_to(p, self.crop, 1), self.crop, 2) for p in pair])
        # left-right flips always; up-down only where rows are not anatomy's fixed S-I order
        # of in-plane slices (through-plane rows run S->I in cor / sag, I->S in axial reformats)
        if rng.random() < 0.5:
            pair = pair.flip(-1)
        if self.kind != "in" and rng.random() < 0.5:
            pair = pair.flip(-2)
        if self.kind == "in" and self.augment == "dihedral":
            # drawn after the flips so a "flips" run's random stream is unchanged
            turns, flip_rows = int(rng.integers(0, 4)), bool(rng.random() < 0.5)
            if flip_rows:
                pair = pair.flip(-2)
            pair = torch.rot90(pair, turns, dims=(-2, -1))
        if self.cutblur > 0.0 and rng.random() < self.cutblur:
            pair = self._cutblur(pair, rng)
        return pair[0].contiguous(), pair[1].contiguous()

    def _cutblur(self, pair: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """``pair`` (high-resolution, condition) with the condition replaced by a CutBlur mix:
        a box of the high-resolution crop pasted into the condition, or the high-resolution crop
        with a box of the condition pasted in (one or the other with even odds)."""
        hr, cond = pair[0], pair[1]
        h, w = hr.shape[-2:]
        ratio = min(max(float(rng.normal(0.7, 0.01)), 0.0), 1.0)
        bh, bw = max(1, int(h * ratio)), max(1, int(w * ratio))
        r0, c0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        inside_hr = bool(rng.random() < 0.5)
        mixed = (cond if inside_hr else hr).clone()
        mixed[..., r0:r0 + bh, c0:c0 + bw] = (hr if inside_hr else cond)[..., r0:r0 + bh, c0:c0 + bw]
        return torch.stack([hr, mixed])


class PairBatches(torch.utils.data.Dataset):
    """Item ``step`` is one rank's batch ``(hr, condition)``, each ``(B, C, crop, crop)``.

    Args:
        planes: the training planes (a :class:`PlaneBank`'s ``planes``).
        cropper: makes each pair.
        batch_size: pairs per item.
        seed: the run's seed.
        rank: this process's rank.
        world: the number of ranks.
    """

    def __init__(self, planes: list[np.ndarray], cropper: PairCropper, batch_size: int, seed: int,
                 rank: int = 0, world: int = 1) -> None:
        self.planes = planes
        self.cropper = cropper
        self.batch_size = int(batch_size)
        self.seed, self.rank, self.world = int(seed), int(rank), int(world)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = batch_indices(step, self.rank, self.world, self.batch_size, len(self.planes), self.seed)
        rng = np.random.default_rng(step_seed(self.seed, step, self.rank, 1))
        pairs = [self.cropper(self.planes[i], rng) for i in idx]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
