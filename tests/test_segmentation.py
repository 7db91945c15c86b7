"""Downstream zonal segmentation: Dice on real label maps, label resampling onto upsampled grids,
the evaluation end to end through the CLI with a tiny segmenter, and the bundle path."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import PROSTATEX, REPO, SHARED, needs_prostatex, prostatex_nifti, run_mrisr
from mrisr.errors import ConfigError, InputError
from mrisr.geometry import downsampled_affine, upsampled_affine
from mrisr.io import Volume, load_volume, save_volume
from mrisr.segmentation import (BundleSegmenter, apply_label_map, dice, parse_label_map, resample_labels,
                                zone_dice)

MSD = SHARED / "msd_task05_prostate_labels"
PICAI = SHARED / "picai_zonal_labels"
needs_msd = pytest.mark.skipif(not MSD.is_dir(), reason=f"MSD Task05 label maps not found at {MSD}")


def msd_labels(name: str = "prostate_00.nii.gz") -> Volume:
    return load_volume(MSD / name)


def test_dice_closed_forms():
    a = np.zeros((10, 10, 4), bool)
    a[2:8, 2:8] = True  # 6 x 6 x 4 box
    shifted = np.roll(a, 2, axis=0)  # overlap 4 x 6 x 4
    assert dice(a, a) == 1.0
    assert dice(a, shifted) == pytest.approx(2 * 96 / (144 + 144))
    assert dice(a, np.zeros_like(a)) == 0.0
    assert np.isnan(dice(np.zeros_like(a), np.zeros_like(a)))


@needs_msd
def test_dice_of_a_real_label_map_against_itself_and_shifted():
    labels = np.rint(msd_labels().data).astype(np.uint8)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert zone_dice(labels, labels) == {"PZ": 1.0, "TZ": 1.0, "gland": 1.0}
    previous = 1.0
    for shift in (1, 2, 4):
        moved = np.roll(labels, shift, axis=0)
        scores = zone_dice(moved, labels)
        pz, pz_moved = labels == 1, moved == 1
        assert scores["PZ"] == pytest.approx(2 * (pz & pz_moved).sum() / (pz.sum() + pz_moved.sum()))
        assert scores["gland"] < previous  # a larger shift overlaps less
        previous = scores["gland"]
    with pytest.raises(ConfigError, match="shape"):
        zone_dice(labels, labels[:-1])


@needs_msd
def test_labels_resampled_onto_an_upsampled_grid_and_back_are_exact():
    vol = msd_labels()
    vol = vol.crop([96, 96, None])  # the central 96 x 96 holds the gland: both zones, and background
    labels = np.rint(vol.data).astype(np.uint8)
    assert set(np.unique(labels)) >= {0, 1, 2}
    for factors in [(2, 2, 1), (1, 1, 3), (4, 4, 1)]:
        up_affine = upsampled_affine(vol.affine, factors)
        up_shape = tuple(n * f for n, f in zip(labels.shape, factors))
        up = resample_labels(labels, vol.affine, up_shape, up_affine)
        # every child voxel lies inside its parent: nearest neighbour is np.repeat exactly
        expected = labels
        for axis, f in enumerate(factors):
            expected = np.repeat(expected, f, axis=axis)
        np.testing.assert_array_equal(up, expected)
        back = resample_labels(up, up_affine, labels.shape, downsampled_affine(up_affine, factors))
        # the parent's centre lies between children when f is even: it takes one of them, all equal
        np.testing.assert_array_equal(back, labels)
    # outside the source grid: background
    shifted = vol.affine.copy()
    shifted[:3, 3] += vol.affine[:3, :3] @ np.array([labels.shape[0], 0, 0])
    assert not resample_labels(labels, vol.affine, labels.shape, shifted).any()


def test_label_maps_parse_and_apply():
    assert parse_label_map("1=TZ,2=PZ") == {1: 2, 2: 1}
    assert parse_label_map(None) == {}
    for bad in ("1=CZ", "one=PZ", "1:PZ"):
        with pytest.raises(ConfigError, match="label-map"):
            parse_label_map(bad)
    labels = np.array([0, 1, 2, 3])
    np.testing.assert_array_equal(apply_label_map(labels, {1: 2, 2: 1}), [0, 2, 1, 0])
    np.testing.assert_array_equal(apply_label_map(labels, {}), [0, 1, 2, 0])


def _train_module():
    spec = importlib.util.spec_from_file_location("train_zonal_segmenter", REPO / "pipelines" /
                                                  "train_zonal_segmenter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_case(tmp_path_factory):
    """A cropped real axial T2 with its zonal label, a datalist, and a tiny trained segmenter
    (20 steps: a pipeline check, not a useful model) as a file and as a MONAI bundle."""
    if not (PROSTATEX.is_dir() and PICAI.is_dir()):
        pytest.skip("shared ProstateX images or PI-CAI zonal labels not found")
    import torch

    from mrisr.segmentation import export_segmenter_bundle, save_segmenter

    root = tmp_path_factory.mktemp("zonal")
    image = load_volume(prostatex_nifti("ProstateX-0000", "tra", 4)).crop([96, 96, 3])
    label = load_volume(PICAI / "ProstateX-0000_zonal_Yuan23.nii.gz").crop([96, 96, 3])
    save_volume(image, root / "case.nii.gz")
    save_volume(label, root / "case_zones.nii.gz")
    (root / "bad.nii.gz").write_bytes(b"broken")
    module = _train_module()
    torch.manual_seed(0)
    network = module.train(module.slices(["ProstateX-0000"], "Yuan23", SHARED), steps=20, seed=0, batch=4, crop=64,
                           log=lambda *_: None)
    seg = save_segmenter(root / "seg.safetensors", network, {"network": module.NETWORK,
                                                             "normalisation": {"lower": 0.5, "upper": 99.5}})
    bundle = export_segmenter_bundle(seg, root / "seg_bundle")
    (root / "datalist.json").write_text(json.dumps({"validation": [
        {"image": "case.nii.gz", "label": "case_zones.nii.gz"}]}))
    return root, seg, bundle


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@needs_prostatex
def test_evaluation_end_to_end_with_a_file_segmenter_and_its_bundle(tiny_case, tmp_path):
    root, seg, bundle = tiny_case
    runs = {}
    for name, segmenter in (("file", seg), ("bundle", bundle)):
        result = run_mrisr("evaluate", "segmentation", root / "datalist.json", "--segmenter", segmenter,
                           "--factors", "2", "4", "--methods", "bicubic", "bspline", "-o", tmp_path / name, "--quiet")
        assert result.returncode == 0, result.stderr
        runs[name] = _rows(tmp_path / name / "dice.csv")
        for f in ("dice.md", "dice.json", "dice_vs_factor_PZ.png", "dice_vs_factor_TZ.png",
                  "dice_vs_factor_gland.png", "examples.png"):
            assert (tmp_path / name / f).is_file(), f
    rows = runs["file"]
    # original + 2 factors x 2 methods, each with 3 zones, all against the datalist's label
    assert len(rows) == (1 + 2 * 2) * 3
    assert {r["reference"] for r in rows} == {"label"}
    assert {(r["factor"], r["method"]) for r in rows} == {("1", "original"), ("2", "bicubic"), ("2", "bspline"),
                                                         ("4", "bicubic"), ("4", "bspline")}
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows if r["dice"] != "nan")
    # the bundle runs the same network through MONAI's own transforms and SliceInferer
    for a, b in zip(runs["file"], runs["bundle"]):
        assert a["method"] == b["method"] and abs(float(a["dice"]) - float(b["dice"])) < 0.01
    # both at once: one report each, in folders named after them, as their runs alone wrote them,
    # and spread.md with the mean and range over the two
    both = run_mrisr("evaluate", "segmentation", root / "datalist.json", "--segmenter", seg, bundle,
                     "--factors", "2", "4", "--methods", "bicubic", "bspline", "-o", tmp_path / "both", "--quiet")
    assert both.returncode == 0, both.stderr
    assert _rows(tmp_path / "both" / "seg" / "dice.csv") == runs["file"]
    assert _rows(tmp_path / "both" / "seg_bundle" / "dice.csv") == runs["bundle"]
    spread = (tmp_path / "both" / "spread.md").read_text()
    a, b = (json.loads((tmp_path / "both" / n / "dice.json").read_text()) for n in ("seg", "seg_bundle"))
    x4 = [a["mean_dice"]["gland"]["bicubic"]["4"], b["mean_dice"]["gland"]["bicubic"]["4"]]
    line = next(r for r in spread.splitlines() if r.startswith("| x4 | bicubic |"))
    assert f"{np.mean(x4):.3f} [{min(x4):.3f}, {max(x4):.3f}]" in line.split("|")[-2]


@needs_prostatex
def test_a_failing_volume_is_reported_and_skipped(tiny_case, tmp_path):
    root, seg, _ = tiny_case
    (tmp_path / "datalist.json").write_text(json.dumps({"validation": [
        {"image": str(root / "bad.nii.gz")}, {"image": str(root / "case.nii.gz")}]}))
    result = run_mrisr("evaluate", "segmentation", tmp_path / "datalist.json", "--segmenter", seg,
                       "--factors", "2", "--methods", "bicubic", "-o", tmp_path / "out", "--quiet")
    assert result.returncode == 2
    assert result.stderr.count("mrisr: error:") == 1 and "bad.nii.gz" in result.stderr
    rows = _rows(tmp_path / "out" / "dice.csv")
    # no label in the datalist: the reference is the segmenter on the original, so the original scores 1
    assert {r["reference"] for r in rows} == {"segmenter on the original"}
    assert all(float(r["dice"]) == 1.0 for r in rows if r["method"] == "original" and r["dice"] != "nan")
    assert json.loads((tmp_path / "out" / "dice.json").read_text())["failures"][0]["volume"].endswith("bad.nii.gz")


def test_bundles_without_weights_or_configs_fail_in_one_line(tmp_path):
    (tmp_path / "b" / "configs").mkdir(parents=True)
    (tmp_path / "b" / "configs" / "inference.json").write_text("{}")
    with pytest.raises(InputError, match="no weights"):
        BundleSegmenter(tmp_path / "b")
    with pytest.raises(InputError, match="not a MONAI bundle"):
        BundleSegmenter(tmp_path)
    (tmp_path / "datalist.json").write_text(json.dumps({"validation": [{"image": "x.nii.gz"}]}))
    result = run_mrisr("evaluate", "segmentation", tmp_path / "datalist.json", "--segmenter", tmp_path / "b")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "downloads nothing" in result.stderr
    unknown = run_mrisr("evaluate", "segmentation", tmp_path / "datalist.json", "--segmenter", tmp_path / "b",
                        "--methods", "magic")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1


def test_a_bundle_whose_weights_do_not_fit_its_network_fails_in_one_line(tmp_path):
    import torch

    (tmp_path / "b" / "configs").mkdir(parents=True)
    (tmp_path / "b" / "models").mkdir()
    (tmp_path / "b" / "configs" / "inference.json").write_text(json.dumps({
        "network_def": {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 1},
        "preprocessing": {"_target_": "Compose", "transforms": []},
        "inferer": {"_target_": "SimpleInferer"}}))
    torch.save({"weight": torch.zeros(3, 3)}, tmp_path / "b" / "models" / "model.pt")
    volume = Volume(np.zeros((4, 4, 2), np.float32), np.eye(4))
    with pytest.raises(InputError, match="does not fit the bundle's network_def"):
        BundleSegmenter(tmp_path / "b")(volume)


def test_samples_average_only_the_stochastic_methods(tmp_path, monkeypatch):
    """``--samples N``: the diffusion methods are segmented on the mean of N samples; the methods
    that give one result run once; the number is recorded in the report."""
    import mrisr.inference
    from mrisr.data import DataEntry
    from mrisr.downstream import evaluate_segmentation, write_segmentation_report
    from mrisr.inference import get_method

    assert [m for m in ("bicubic", "bspline", "regression", "partdiff", "sr3") if get_method(m).stochastic] == \
        ["partdiff", "sr3"]
    data = np.zeros((16, 16, 3), np.float32)
    data[4:12, 4:12] = 1.0
    save_volume(Volume(data, np.eye(4)), tmp_path / "case.nii.gz")
    real, asked = mrisr.inference.upsample_volume, {}

    def upsample(volume, plane, factor, method, samples=1, **kw):
        asked[method] = samples  # every method runs as bicubic here: no model is loaded
        return real(volume, plane, factor, method="bicubic", **kw)

    monkeypatch.setattr(mrisr.inference, "upsample_volume", upsample)
    def segmenter(v: Volume) -> np.ndarray:  # bright: PZ in the first rows, TZ in the others
        rows = np.arange(v.shape[0])[:, None, None] < v.shape[0] // 2
        return np.where(v.data > 0.5, np.where(rows, 1, 2), 0).astype(np.int64)

    result = evaluate_segmentation([DataEntry(image=str(tmp_path / "case.nii.gz"), patient="p")], segmenter, "in",
                                   [2], ["bicubic", "regression", "partdiff"], samples=3)
    assert not result.failures and asked == {"bicubic": 1, "regression": 1, "partdiff": 3}
    write_segmentation_report(result, tmp_path / "out", "threshold")
    assert json.loads((tmp_path / "out" / "dice.json").read_text())["samples"] == 3
    assert "mean of 3 samples" in (tmp_path / "out" / "dice.md").read_text()


def test_evaluate_segmentation_refuses_zero_samples_in_one_line(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"validation": [{"image": "x.nii.gz"}]}))
    result = run_mrisr("evaluate", "segmentation", tmp_path / "d.json", "--segmenter", tmp_path / "s.safetensors",
                       "--samples", "0", "-o", tmp_path / "out")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "--samples" in result.stderr
    assert not (tmp_path / "out").exists()
    twice = run_mrisr("evaluate", "segmentation", tmp_path / "d.json", "--segmenter", tmp_path / "s.safetensors",
                      tmp_path / "s.safetensors", "-o", tmp_path / "out")
    assert twice.returncode == 2 and len(twice.stderr.strip().splitlines()) == 1 and "twice" in twice.stderr
    assert not (tmp_path / "out").exists()


def test_several_segmenters_share_each_upsampled_output(tmp_path, monkeypatch):
    """``evaluate_segmenters``: each method and factor is upsampled once whatever the number of
    segmenters, and each segmenter's evaluation is the one it gets alone."""
    import mrisr.inference
    from mrisr.data import DataEntry
    from mrisr.downstream import evaluate_segmentation, evaluate_segmenters

    data = np.zeros((16, 16, 3), np.float32)
    data[4:12, 4:12] = 1.0
    data[6:10, 6:10] = 0.6
    save_volume(Volume(data, np.eye(4)), tmp_path / "case.nii.gz")
    real, calls = mrisr.inference.upsample_volume, []

    def upsample(volume, plane, factor, method, **kw):
        calls.append((factor, method))
        return real(volume, plane, factor, method=method, **kw)

    monkeypatch.setattr(mrisr.inference, "upsample_volume", upsample)

    def threshold(level: float):
        def segmenter(v: Volume) -> np.ndarray:  # bright: PZ in the first rows, TZ in the others
            rows = np.arange(v.shape[0])[:, None, None] < v.shape[0] // 2
            return np.where(v.data > level, np.where(rows, 1, 2), 0).astype(np.int64)
        return segmenter

    entries = [DataEntry(image=str(tmp_path / "case.nii.gz"), patient="p")]
    segmenters = {"low": threshold(0.3), "high": threshold(0.8)}
    results = evaluate_segmenters(entries, segmenters, "in", [2, 4], ["bicubic", "bspline"])
    assert sorted(calls) == [(2, "bicubic"), (2, "bspline"), (4, "bicubic"), (4, "bspline")]
    alone = {name: evaluate_segmentation(entries, seg, "in", [2, 4], ["bicubic", "bspline"])
             for name, seg in segmenters.items()}
    for name in segmenters:
        assert [(r.factor, r.method, r.zone) for r in results[name].rows] == \
            [(r.factor, r.method, r.zone) for r in alone[name].rows]
        np.testing.assert_array_equal([r.dice for r in results[name].rows], [r.dice for r in alone[name].rows])
    # the two thresholds disagree somewhere, so the rows are each segmenter's own
    assert [r.dice for r in results["low"].rows] != [r.dice for r in results["high"].rows]
