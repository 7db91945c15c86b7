"""Zonal segmentation for the downstream evaluation: Dice, label resampling and pluggable
segmenters (an mrisr-trained 2D network, or any MONAI bundle in the model-zoo layout).

Zones use the convention of the PI-CAI and MSD Task05 label maps: 0 background, 1 peripheral
zone (PZ), 2 transition zone (TZ); the whole gland is their union. A segmenter whose labels
differ is mapped with a label map such as ``1=TZ,2=PZ`` (the public ``prostate_mri_anatomy``
bundle: 1 central gland, 2 PZ).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mrisr.errors import ConfigError, InputError
from mrisr.io import Volume, save_volume

__all__ = ["ZONES", "ZONE_LABELS", "dice", "zone_dice", "parse_label_map", "apply_label_map", "resample_labels",
           "Segmenter", "MrisrSegmenter", "BundleSegmenter", "load_segmenter", "save_segmenter", "segmenter_network",
           "export_segmenter_bundle", "SEGMENTER_FORMAT"]

logger = logging.getLogger(__name__)

ZONE_LABELS = {"PZ": 1, "TZ": 2}
#: the zones Dice is reported for; ``gland`` is PZ and TZ together
ZONES = ("PZ", "TZ", "gland")
SEGMENTER_FORMAT = "mrisr-segmenter/1"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty (undefined, left out of means)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def zone_dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Dice per zone (PZ, TZ, whole gland) of two label maps in the canonical codes."""
    if pred.shape != ref.shape:
        raise ConfigError(f"label maps differ in shape: {pred.shape} vs {ref.shape}")
    out = {zone: dice(pred == code, ref == code) for zone, code in ZONE_LABELS.items()}
    out["gland"] = dice(pred > 0, ref > 0)
    return out


def parse_label_map(text: str | None) -> dict[int, int]:
    """``"1=TZ,2=PZ"`` -> ``{1: 2, 2: 1}`` (segmenter label -> canonical code); None: identity.

    Raises:
        ConfigError: not ``LABEL=ZONE`` pairs with integer labels and zones PZ / TZ / background.
    """
    if text is None or not text.strip():
        return {}
    names = {**ZONE_LABELS, "BACKGROUND": 0, "BG": 0}
    mapping: dict[int, int] = {}
    for part in text.split(","):
        label, sep, zone = part.partition("=")
        try:
            key = int(label.strip())
        except ValueError:
            key = None
        if not sep or key is None or zone.strip().upper() not in names:
            raise ConfigError(f"--label-map takes LABEL=ZONE pairs such as 1=TZ,2=PZ (zones: PZ, TZ, background), "
                              f"got {part!r}")
        mapping[key] = names[zone.strip().upper()]
    return mapping


def apply_label_map(labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Labels in canonical codes; labels the map does not name stay as they are if canonical
    (0, 1, 2) and become background otherwise."""
    labels = np.asarray(labels).astype(np.int64)
    if not mapping:
        return np.where(np.isin(labels, (0, 1, 2)), labels, 0).astype(np.uint8)
    out = np.zeros(labels.shape, np.uint8)
    for src, dst in mapping.items():
        out[labels == src] = dst
    return out


def resample_labels(labels: np.ndarray, affine: np.ndarray, shape: tuple[int, ...],
                    target_affine: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of a label map onto another grid of the same world (RAS mm):
    each target voxel centre takes the label of the source voxel containing it; outside the
    source, background.

    Args:
        labels: ``(I, J, K)`` integer labels on the grid of ``affine``.
        affine: voxel -> world of ``labels``.
        shape: the target grid's shape.
        target_affine: voxel -> world of the target grid.
    """
    to_source = np.linalg.inv(np.asarray(affine, np.float64)) @ np.asarray(target_affine, np.float64)
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij"), axis=-1)
    ijk = grid @ to_source[:3, :3].T + to_source[:3, 3]
    # round half up, with a tolerance so points on a voxel face (exact sub-grids) are not split by float noise
    idx = np.floor(ijk + 0.5 + 1e-6).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(labels.shape)), axis=-1)
    out = np.zeros(tuple(shape), dtype=labels.dtype)
    sel = idx[inside]
    out[inside] = labels[sel[:, 0], sel[:, 1], sel[:, 2]]
    return out


class Segmenter(Protocol):
    """Labels (canonical codes) on the grid of a volume."""

    name: str

    def __call__(self, volume: Volume) -> np.ndarray:
        ...


# --------------------------------------------------------------------------------------------
# mrisr's own 2D segmenter (MONAI UNet), used by the demo and the tests


def segmenter_network(config: dict[str, Any]) -> torch.nn.Module:
    """A MONAI ``UNet`` from a segmenter config's ``network`` section."""
    from monai.networks.nets import UNet

    net = config["network"]
    return UNet(spatial_dims=2, in_channels=1, out_channels=int(net["out_channels"]),
                channels=tuple(net["channels"]), strides=tuple(net["strides"]),
                num_res_units=int(net.get("num_res_units", 2)), norm=net.get("norm", "batch"))


def save_segmenter(path: str | os.PathLike, network: torch.nn.Module, config: dict[str, Any]) -> Path:
    """Write a segmenter as ``.safetensors`` with its config (atomic, like model files)."""
    from mrisr.models import save_model

    return save_model(path, network, {**config, "format": SEGMENTER_FORMAT})


class MrisrSegmenter:
    """A 2D network applied to every slice (slice axis: the largest spacing), intensities
    normalised as in training (0.5 / 99.5 percentiles of the volume to -1 / 1).

    Args:
        path: a ``.safetensors`` segmenter written by :func:`save_segmenter`
            (``pipelines/train_zonal_segmenter.py``).
        label_map: segmenter label -> canonical code (default: it already uses PZ 1, TZ 2).
        device: where to run.
    """

    def __init__(self, path: str | os.PathLike, label_map: dict[int, int] | None = None,
                 device: str | torch.device = "cpu") -> None:
        from mrisr.models import _read

        p = Path(path)
        if not p.is_file():
            raise InputError(f"segmenter not found: {p}")
        config, state = _read(p)  # the model files' reader: config from the metadata, tensors only
        if config.get("format") != SEGMENTER_FORMAT:
            raise InputError(f"{p} is not an mrisr segmenter (format {config.get('format')!r}, expected "
                             f"{SEGMENTER_FORMAT})")
        self.config = config
        self.device = torch.device(device)
        self.network = segmenter_network(config)
        try:
            self.network.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as exc:
            raise InputError(f"{p}: weights do not match its network config: {str(exc).splitlines()[0]}") from None
        self.network.to(self.device).eval()
        self.label_map = label_map or {}
        self.name = p.name

    @torch.inference_mode()
    def __call__(self, volume: Volume) -> np.ndarray:
        from mrisr.geometry import slice_axis
        from mrisr.transforms import model_percentiles, robust_range

        data = robust_range(volume.data, *model_percentiles(self.config)).normalise(volume.data)
        axis = slice_axis(volume.affine)
        planes = torch.from_numpy(np.ascontiguousarray(np.moveaxis(data, axis, 0), dtype=np.float32))[:, None]
        labels = []
        for lo in range(0, planes.shape[0], 4):
            logits = self.network(planes[lo:lo + 4].to(self.device))
            labels.append(logits.argmax(1).to(torch.uint8).cpu())
        out = np.moveaxis(torch.cat(labels).numpy(), 0, axis)
        return apply_label_map(out, self.label_map)


# --------------------------------------------------------------------------------------------
# any MONAI bundle (model-zoo layout)


class BundleSegmenter:
    """A segmentation bundle in the MONAI model-zoo layout, run with MONAI's ``ConfigParser``:
    its own ``preprocessing`` (e.g. resampling, intensity scaling), ``network_def`` with
    ``models/model.pt``, ``inferer`` (e.g. sliding window) and ``postprocessing`` (inverted
    back to the input's space where the bundle does so), on a temporary NIfTI of the volume.
    The labels are then resampled (nearest neighbour, world coordinates) onto the volume's grid
    and mapped to the canonical codes.

    Args:
        bundle_dir: the bundle folder (``configs/inference.json`` and ``models/model.pt``).
        label_map: the bundle's label -> canonical code, e.g. ``{1: 2, 2: 1}`` for ``1=TZ,2=PZ``.
        device: where to run.
        config_file: the inference config inside the bundle.

    Raises:
        InputError: no such bundle, no inference config, or its weights are absent (nothing is
            downloaded).
    """

    def __init__(self, bundle_dir: str | os.PathLike, label_map: dict[int, int] | None = None,
                 device: str | torch.device = "cpu", config_file: str = "configs/inference.json") -> None:
        root = Path(bundle_dir)
        if not root.is_dir():
            raise InputError(f"segmenter bundle not found: {root}")
        self.config_path = root / config_file
        if not self.config_path.is_file():
            raise InputError(f"{root} is not a MONAI bundle: {config_file} is missing")
        self.weights = root / "models" / "model.pt"
        if not self.weights.is_file():
            raise InputError(f"the bundle {root} has no weights (models/model.pt is absent); mrisr downloads "
                             "nothing: put the bundle's weights there")
        self.root = root
        self.label_map = label_map or {}
        self.device = torch.device(device)
        self.name = root.name

    def _parsed(self, dataset_dir: str, output_dir: str) -> tuple[Any, Any, Any, Any]:
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(self.config_path))
        meta = self.root / "configs" / "metadata.json"
        if meta.is_file():
            parser.read_meta(str(meta))
        parser["bundle_root"] = str(self.root)
        parser["dataset_dir"] = dataset_dir
        parser["output_dir"] = output_dir
        parser["device"] = f"$torch.device('{self.device}')"
        try:
            network = parser.get_parsed_content("network_def")
            pre = parser.get_parsed_content("preprocessing")
            inferer = parser.get_parsed_content("inferer")
            post = parser.get_parsed_content("postprocessing") if "postprocessing" in parser else None
        except Exception as exc:
            raise InputError(f"{self.config_path}: cannot build network_def / preprocessing / inferer: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"{self.weights} is not a state dict mrisr can read (weights only): "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # checkpoints saved as {"model": state_dict}
        try:
            network.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise InputError(f"{self.weights} does not fit the bundle's network_def: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return network.to(self.device).eval(), pre, inferer, post

    @torch.inference_mode()
    def __call__(self, volume: Volume) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="mrisr-seg-") as tmp:
            image = Path(tmp) / "in" / "image.nii.gz"
            image.parent.mkdir()
            save_volume(volume, image)
            network, pre, inferer, post = self._parsed(str(image.parent), str(Path(tmp) / "out"))
            data = pre({"image": str(image)})
            pred = inferer(data["image"][None].to(self.device), network)
            data["pred"] = pred[0]
            if post is not None:
                data = post(data)
            pred = data["pred"]
            array = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
            labels = array.argmax(0) if array.shape[0] > 1 else array[0]
            affine = pred.affine.detach().cpu().numpy() if hasattr(pred, "affine") else volume.affine
        labels = np.rint(labels).astype(np.int64)
        if labels.shape != volume.shape:  # the bundle left its own grid: bring the labels home
            labels = resample_labels(labels, affine, volume.shape, volume.affine)
        return apply_label_map(labels, self.label_map)


def export_segmenter_bundle(segmenter: str | os.PathLike, out_dir: str | os.PathLike, slice_dim: int = 2) -> Path:
    """Write an mrisr segmenter as a MONAI bundle (model-zoo layout) built from MONAI's own
    components only (``LoadImaged``, ``EnsureChannelFirstd``, ``ScaleIntensityRangePercentilesd``,
    ``monai.networks.nets.UNet``, ``SliceInferer``, ``AsDiscreted``), so that
    :class:`BundleSegmenter` runs it exactly as it runs a third-party bundle.

    Args:
        segmenter: the ``.safetensors`` segmenter.
        out_dir: the bundle folder (built aside, then renamed).
        slice_dim: the spatial dimension of the stored array the 2D network slices along (2 for
            axial volumes stored as ProstateX's, slices last).
    """
    import shutil

    seg = MrisrSegmenter(segmenter)
    out = Path(out_dir)
    if out.exists():
        raise ConfigError(f"{out} exists; remove it first")
    from mrisr.transforms import model_percentiles

    lower, upper = model_percentiles(seg.config)
    net = seg.config["network"]
    inference = {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@bundle_root + '/eval'",
        "network_def": {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 1,
                        "out_channels": int(net["out_channels"]), "channels": list(net["channels"]),
                        "strides": list(net["strides"]), "num_res_units": int(net.get("num_res_units", 2)),
                        "norm": net.get("norm", "batch")},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": lower, "upper": upper,
             "b_min": -1.0, "b_max": 1.0, "clip": False},
            {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
        ]},
        "inferer": {"_target_": "SliceInferer", "spatial_dim": int(slice_dim), "roi_size": [-1, -1],
                    "sw_batch_size": 4},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        ]},
    }
    metadata = {
        "version": "0.1.0", "changelog": {"0.1.0": f"exported by mrisr from {seg.name}"},
        "monai_version": __import__("monai").__version__, "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__, "required_packages_version": {},
        "name": f"mrisr demo zonal segmenter ({seg.name})",
        "task": "prostate zonal segmentation (PZ, TZ) on axial T2, slice by slice",
        "description": "A small 2D MONAI UNet trained by pipelines/train_zonal_segmenter.py on AI-generated PI-CAI "
                       "zonal maps of two ProstateX patients: a demonstration of the downstream pipeline, not a "
                       "clinical segmenter.",
        "authors": "mrisr developers", "copyright": "labels: PI-CAI (CC BY-NC 4.0); images: TCIA PROSTATEx (CC BY 3.0)",
        "intended_use": "testing and demonstrating mrisr evaluate segmentation; not for any clinical use",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 1,
                                 "spatial_shape": ["*", "*"], "dtype": "float32", "value_range": [-1, 1],
                                 "is_patch_data": False, "channel_def": {"0": "T2"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 3,
                                 "spatial_shape": ["*", "*"], "dtype": "float32", "value_range": [],
                                 "is_patch_data": False,
                                 "channel_def": {"0": "background", "1": "peripheral zone", "2": "transition zone"}}},
        },
        "mrisr_training": seg.config.get("training", {}),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.mrisr-partial-", dir=out.resolve().parent))
    try:
        for sub in ("configs", "models", "docs"):
            (tmp / sub).mkdir()
        (tmp / "configs" / "inference.json").write_text(json.dumps(inference, indent=2) + "\n")
        (tmp / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        torch.save({k: v.detach().cpu() for k, v in seg.network.state_dict().items()}, tmp / "models" / "model.pt")
        (tmp / "docs" / "README.md").write_text(
            f"# {metadata['name']}\n\n{metadata['description']}\n\nLabels: 0 background, 1 PZ, 2 TZ. Expects "
            f"volumes whose 2D slices run along array dimension {slice_dim} (axial T2 as ProstateX stores it).\n")
        (tmp / "LICENSE").write_text("Code: Apache-2.0. Weights: trained on PI-CAI zonal labels (CC BY-NC 4.0) "
                                     "and TCIA PROSTATEx images (CC BY 3.0); non-commercial use only.\n")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_segmenter(spec: str | os.PathLike, label_map: str | None = None,
                   device: str | torch.device = "cpu") -> Segmenter:
    """A bundle folder or an mrisr segmenter file (``.safetensors``).

    Raises:
        InputError / ConfigError: missing, unreadable, weights absent, bad label map.
    """
    mapping = parse_label_map(label_map)
    p = Path(spec)
    if p.is_dir():
        return BundleSegmenter(p, mapping, device)
    if p.suffix == ".safetensors" or p.is_file():
        return MrisrSegmenter(p, mapping, device)
    raise InputError(f"segmenter not found: {p} (a MONAI bundle folder or an mrisr .safetensors segmenter)")
