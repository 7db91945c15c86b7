"""The default models shipped in the package: registry integrity, checksums, selection by
method / plane / factor, and their quality on the held-out patient (ProstateX-0218)."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors import safe_open

import mrisr.models
from mrisr.degradation import thick_slice_volume
from mrisr.errors import ConfigError, InputError
from mrisr.metrics import psnr
from mrisr.inference import upsample_volume
from mrisr.io import Volume, load_volume, save_volume
from mrisr.models import AUTO_PREFERENCE, auto_method, default_model, load_model, sha256, shipped_models

from conftest import file_digest, make_affine, needs_prostatex, prostatex_nifti, run_mrisr, starts_processes

MODELS = shipped_models()
# what the project promises out of the box (README, docs/models.md)
REQUIRED = [("partdiff", "through", 6), ("partdiff", "in", 4), ("sr3", "in", 4), ("regression", "in", 4),
            ("regression", "through", 6), ("partdiff", "in", 2), ("regression", "in", 2)]
# the measured gains on every plane of 0218 (docs/models.md): in-plane x4 PartDiff +1.08 dB and
# regression +1.67, x2 PartDiff +2.24 and regression +2.57; on the test's two crops (2026-11-29) +0.75 /
# +1.21 dB at x4, +1.40 / +1.55 at x2; the thresholds leave a margin for fp32 and other CPUs
MIN_INPLANE_GAIN_DB = {"partdiff": {2: 0.9, 4: 0.4}, "regression": {2: 1.0, 4: 0.8}}
# method -> the training objective its shipped model must have
OBJECTIVE = {"partdiff": "partdiff", "sr3": "sr3", "regression": "regression"}


def test_registry_files_checksums_and_size_budget():
    assert MODELS, "mrisr/weights/registry.json lists no models"
    total = sum(path.stat().st_size for path in {m.path for m in MODELS})
    assert total <= 100e6, f"shipped weights take {total / 1e6:.1f} MB (budget 100 MB)"
    for model in MODELS:
        assert model.path.is_file(), model.path
        assert sha256(model.path) == model.sha256, f"{model.name}: registry checksum is stale"
        with safe_open(str(model.path), framework="pt") as fh:
            config = json.loads(fh.metadata()["mrisr_config"])
            dtypes = {fh.get_tensor(k).dtype for k in fh.keys()}
        assert dtypes <= {torch.bfloat16, torch.float16}, f"{model.name} stores {dtypes}"
        assert config["task"]["plane"] == model.plane and config["task"]["factor"] == model.factor
        for method in model.methods:
            assert config["inferer"]["objective"] == OBJECTIVE[method], (model.name, method)
        assert model.sampler in (None, "ancestral", "ddim")
        assert not model.aligned_jumps or (model.sampler == "ddim" and "partdiff" in model.methods)
        assert model.factor in model.factors
        # no path of the machine that trained it (pipelines/export_model.py makes them portable)
        absolute = [v for v in _strings(config) if v.startswith("/") or v[1:3] == ":\\"]
        assert not absolute, f"{model.name} stores absolute paths {absolute}"


def _strings(value):
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _export_model():
    import importlib.util
    from conftest import REPO

    spec = importlib.util.spec_from_file_location("export_model", REPO / "pipelines" / "export_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_replaces_an_entry_in_place_with_the_runs_validation(tmp_path):
    export_model = _export_model()
    (tmp_path / "validation.csv").write_text(
        "step,psnr,ssim,psnr_bicubic,ssim_bicubic,gain_db,gain_worst_plane_db,gain_worst_series_db,planes,"
        "network_evaluations\n400,26.2918,0.72778,25.1478,0.66575,1.14398,0.6160,1.03501,62,1\n"
        "800,26.3500,0.72900,25.1478,0.66575,1.20222,0.6200,1.10000,62,1\n")
    metrics = export_model.eval_metrics_from_validation(tmp_path, 400)
    assert metrics == {"psnr_db": 26.29, "psnr_gain_over_bicubic_db_mean": 1.14,
                       "psnr_gain_over_bicubic_db_worst_series": 1.04, "ssim": 0.728, "ssim_bicubic": 0.666,
                       "protocol": export_model.PROTOCOL}
    with pytest.raises(SystemExit, match="no validation at step 500"):
        export_model.eval_metrics_from_validation(tmp_path, 500)
    models = [{"name": "a", "sha256": "1", "eval_metrics": {"psnr_db": 1.0}, "input_spacing_mm": [2.0, 2.4]},
              {"name": "b", "sha256": "2"}]
    kept = export_model.replace_entry(models, {"name": "a", "sha256": "3"})
    assert [m["name"] for m in kept] == ["a", "b"] and kept[0] == {
        "name": "a", "sha256": "3", "eval_metrics": {"psnr_db": 1.0}, "input_spacing_mm": [2.0, 2.4]}
    new = export_model.replace_entry(models, {"name": "a", "sha256": "4", "eval_metrics": metrics})
    assert new[0]["eval_metrics"] == metrics and new[0]["input_spacing_mm"] == [2.0, 2.4]
    assert [m["name"] for m in export_model.replace_entry(models, {"name": "c"})] == ["a", "b", "c"]


def test_export_makes_training_paths_portable(tmp_path):
    from conftest import REPO

    export_model = _export_model()
    config = {"training": {"data": {"datalist": str(REPO / ".devdata" / "prostatex.json"), "glob": None},
                           "init_from": str(tmp_path / "runs" / "old.safetensors"), "name": "x"},
              "list": ["relative/path.nii.gz", str(REPO / "configs" / "tiny.yaml")], "factor": 4}
    assert export_model.portable_paths(config) == {
        "training": {"data": {"datalist": ".devdata/prostatex.json", "glob": None},
                     "init_from": "old.safetensors", "name": "x"},
        "list": ["relative/path.nii.gz", "configs/tiny.yaml"], "factor": 4}


@pytest.mark.parametrize(("method", "plane", "factor"), REQUIRED)
def test_every_promised_combination_has_a_model(method, plane, factor):
    model = default_model(method, plane, factor)
    loaded = load_model(model.path, expected_sha256=model.sha256)
    assert loaded.objective == OBJECTIVE[method] and loaded.plane == plane


def test_missing_combination_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"no default sr3 model ships for --plane through --factor 6 .*"
                                          r"--method partdiff --plane through --factor 6"):
        default_model("sr3", "through", 6)


def test_a_tampered_model_is_refused(tmp_path, monkeypatch):
    entry = default_model("partdiff", "through", 6)
    bad = tmp_path / entry.file
    blob = bytearray(entry.path.read_bytes())
    blob[-1] ^= 0xFF  # one bit pattern in the last weight
    bad.write_bytes(bytes(blob))
    with pytest.raises(InputError, match="fails its checksum"):
        load_model(bad, expected_sha256=entry.sha256)
    # and through the default-model path of upsample_volume
    tampered = replace(entry, file=str(bad))  # an absolute file name replaces the weights folder
    monkeypatch.setattr(mrisr.models, "shipped_models", lambda: [tampered])
    small = Volume(np.random.default_rng(0).random((24, 4, 2), dtype=np.float32), make_affine("LIP"))
    with pytest.raises(InputError, match="fails its checksum"):
        upsample_volume(small, "through", 6, axis=1, method="partdiff")


def _thick_coronal(size: int, planes: int):
    """ProstateX-0218's coronal T2 (held out of training), a central crop, made 6x thicker along
    superior-inferior (array axis 1 of this LIP volume)."""
    hr = load_volume(prostatex_nifti("ProstateX-0218", "cor", 6)).crop([size, size, planes], multiple=[1, 6, 1])
    return hr, thick_slice_volume(hr, 1, 6)


@pytest.mark.parametrize("plane, factor", sorted({(m.plane, f) for m in MODELS for f in m.factors}))
def test_auto_runs_the_most_accurate_shipped_model(plane, factor):
    """``--method auto`` (the default) prefers regression because it is measured best: the
    registry's held-out gains must agree with the preference order wherever it ships."""
    chosen = auto_method(plane, factor)
    gains = {method: m.eval_metrics["psnr_gain_over_bicubic_db_mean"]
             for m in MODELS if m.plane == plane and factor in m.factors for method in m.methods}
    assert chosen == next(m for m in AUTO_PREFERENCE if m in gains)
    assert gains[chosen] == max(gains.values()), gains
    assert auto_method(plane, factor, diffusion=True) == "partdiff"  # --samples 4, --k, --sampler, ...
    for method in ("regression", "partdiff"):  # your own model: its own objective, whatever ships
        assert auto_method(plane, factor, model=default_model(method, plane, factor).path) == method


def test_auto_without_a_model_for_the_combination_is_reported_after_the_input(tmp_path):
    """Nothing ships for in-plane x3: a missing input is still the first thing said, then what ships."""
    assert auto_method("in", 3) == "partdiff"
    missing = run_mrisr("upsample", tmp_path / "nope.nii.gz", "--plane", "in", "--factor", "3", cwd=tmp_path)
    assert missing.returncode == 2 and "input not found" in missing.stderr
    src = tmp_path / "v.nii.gz"
    save_volume(Volume(np.ones((8, 8, 4), np.float32), make_affine(spacing=(1.0, 1.0, 1.0))), src)
    result = run_mrisr("upsample", src, "--plane", "in", "--factor", "3", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "no default partdiff model ships for --plane in --factor 3" in result.stderr
    assert "--method regression --plane in --factor 4" in result.stderr and not list(tmp_path.glob("*_sr*"))


@starts_processes
def test_cli_auto_follows_diffusion_options_and_the_models_objective(tmp_path):
    src = tmp_path / "scan.nii.gz"
    save_volume(Volume(np.random.default_rng(0).uniform(0, 1000, (12, 12, 3)).astype(np.float32),
                       make_affine(spacing=(0.6, 0.6, 3.6))), src)
    runs = {"k": (["--k", "10"], "partdiff"), "samples": (["--samples", "2"], "partdiff"),
            "own_model": (["--model", str(default_model("regression", "through", 6).path)], "regression"),
            "own_partdiff_model": (["--model", str(default_model("partdiff", "through", 6).path)], "partdiff")}
    for name, (extra, method) in runs.items():
        result = run_mrisr("upsample", src, "--plane", "through", "--factor", "6", *extra, "-o", f"{name}.nii.gz",
                           "--report", f"{name}.json", "--batch-size", "4", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads((tmp_path / f"{name}.json").read_text())["method"] == method, name
        # said at once, before any plane: what runs; after the first batch: how long it all takes
        assert result.stderr.startswith(f"mrisr: scan.nii.gz: 12 x 12 x 3 voxels of 0.6 x 0.6 x 3.6 mm -> 12 x 12 x 18 "
                                        f"of 0.6 x 0.6 x 0.6 mm, 12 planes, {method} ("), result.stderr
        assert re.search(r"mrisr: first batch of 4 planes in [\d.]+ s: about \d+ s for all 12 planes", result.stderr)


@needs_prostatex
@starts_processes
@pytest.mark.parametrize("method", ["auto", "partdiff"])
def test_default_cli_run_through_x6_beats_bicubic(tmp_path, method):
    """The headline command at its defaults (regression) and with the paper's method."""
    hr, thick = _thick_coronal(120, 3)
    src = tmp_path / "thick.nii.gz"
    save_volume(thick, src)
    before = file_digest(src)
    extra = [] if method == "auto" else ["--method", method]
    result = run_mrisr("upsample", src, "--plane", "through", "--factor", "6", *extra, "--report", "r.json",
                       "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    ran = "regression" if method == "auto" else method
    entry = default_model(ran, "through", 6)
    assert report["method"] == ran and report["model"] == str(entry.path)
    assert report["sampler"] == (None if ran == "regression" else entry.sampler or "ancestral")
    up = load_volume(tmp_path / "thick_sr.nii.gz")
    # the cell-centred output grid is the original grid
    assert up.shape == hr.shape
    np.testing.assert_allclose(up.affine, hr.affine, atol=1e-4)
    bic = upsample_volume(thick, "through", 6, method="bicubic").volume
    span = float(np.percentile(hr.data, 99.5) - np.percentile(hr.data, 0.5))
    gain = psnr(up.data, hr.data, span) - psnr(bic.data, hr.data, span)
    assert gain > (0.5 if ran == "regression" else 0.3), f"{ran} x6 through-plane only {gain:+.2f} dB over bicubic"
    assert file_digest(src) == before


def _inplane_pair(factor: int, size: int = 128, planes: int = 2):
    """ProstateX-0218's axial T2 (held out), a central crop, each slice downsampled in-plane with
    the training degradation (anti-aliased bicubic, no blur): HR reference and LR volume."""
    from mrisr.geometry import downsampled_affine
    from mrisr.transforms import InPlaneDegrade

    hr = load_volume(prostatex_nifti("ProstateX-0218", "tra", 5)).crop([size, size, planes])
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(hr.data, 2, 0)))[:, None]
    lr = InPlaneDegrade(factor, blur_sigma_max=0.0).lowres(slices)[:, 0].numpy()
    return hr, hr.with_data(np.moveaxis(lr, 0, 2), downsampled_affine(hr.affine, (factor, factor, 1)))


@needs_prostatex
@pytest.mark.parametrize(("method", "factor"), sorted({(method, f) for m in MODELS if m.plane == "in"
                                                       for method in m.methods if method in MIN_INPLANE_GAIN_DB
                                                       for f in m.factors}))
def test_default_inplane_models_beat_bicubic(method, factor):
    """Each shipped in-plane PartDiff and regression model, at each factor it serves, ahead of
    bicubic on the held-out patient; the default (``auto``) is the regression model; models trained
    for another factor are refused."""
    hr, lr = _inplane_pair(factor)
    span = float(np.percentile(hr.data, 99.5) - np.percentile(hr.data, 0.5))
    out = upsample_volume(lr, "in", factor, method=method)
    assert out.extras["model"] == str(default_model(method, "in", factor).path)
    np.testing.assert_allclose(out.volume.affine, hr.affine, atol=1e-4)
    bic = upsample_volume(lr, "in", factor, method="bicubic").volume
    gain = psnr(out.volume.data, hr.data, span) - psnr(bic.data, hr.data, span)
    assert gain > MIN_INPLANE_GAIN_DB[method][factor], f"{method} x{factor} in-plane: {gain:+.2f} dB"
    assert auto_method("in", factor) == "regression"
    for other in (m for m in MODELS if m.plane == "in" and factor not in m.factors):
        with pytest.raises(ConfigError, match=f"not --plane in --factor {factor}"):
            upsample_volume(lr, "in", factor, method=other.methods[0], model=str(other.path))


@needs_prostatex
@pytest.mark.parametrize("plane", ["in", "through"])
def test_shipped_regression_and_its_partdiff_start_beat_bicubic(plane):
    """The regression models, and PartDiff diffusing their output (--start regression)."""
    if plane == "in":
        hr, lr = _inplane_pair(4)
        factor, axis = 4, None
    else:
        hr, lr = _thick_coronal(120, 2)
        factor, axis = 6, 1
    span = float(np.percentile(hr.data, 99.5) - np.percentile(hr.data, 0.5))
    bic = psnr(upsample_volume(lr, plane, factor, axis=axis, method="bicubic").volume.data, hr.data, span)
    reg = upsample_volume(lr, plane, factor, axis=axis, method="regression")
    assert reg.extras["model"] == str(default_model("regression", plane, factor).path)
    assert psnr(reg.volume.data, hr.data, span) - bic > 0.5
    started = upsample_volume(lr, plane, factor, axis=axis, method="partdiff", start="regression", k=10,
                              sampler="ddim", steps=2)
    assert started.extras["start"] == "regression" and started.extras["steps"] == 3  # 1 regression + 2 DDIM
    assert psnr(started.volume.data, hr.data, span) - bic > 0.3


def test_registry_decides_which_factors_a_model_serves(monkeypatch):
    entry, other = default_model("partdiff", "in", 4), default_model("sr3", "in", 4)
    lr = Volume(np.random.default_rng(1).random((6, 5, 2), dtype=np.float32), make_affine("LPS"))
    # trained for x4: at x3 neither the default lookup nor the file itself is accepted
    with pytest.raises(ConfigError, match="no default partdiff model ships for --plane in --factor 3"):
        upsample_volume(lr, "in", 3, method="partdiff")
    with pytest.raises(ConfigError, match="was trained for --plane in --factor 4, not --plane in --factor 3"):
        upsample_volume(lr, "in", 3, method="partdiff", model=str(entry.path))
    # a registry entry that also lists x3 makes both work (for that file only)
    monkeypatch.setattr(mrisr.models, "shipped_models", lambda: [replace(entry, factors=(4, 3))])
    out = upsample_volume(lr, "in", 3, method="partdiff")
    assert out.volume.shape == (18, 15, 2) and out.extras["steps"] == entry.steps
    assert upsample_volume(lr, "in", 3, method="partdiff", model=str(entry.path), sampler="ddim",
                           steps=2).volume.shape == (18, 15, 2)
    with pytest.raises(ConfigError, match="was trained for --plane in --factor 4"):
        upsample_volume(lr, "in", 3, method="partdiff", model=str(other.path), steps=3)


def test_default_sampling_rule_with_aligned_jumps():
    """The registry's sampler, steps and aligned jumps apply together when no --sampler is given
    (the jumps only from the diffused LR image at the model's K); --no-aligned-jumps (False)
    keeps the rest of the default; a named sampler takes none of them."""
    from mrisr.inference.methods import default_sampling

    shipped = {"sampler": "ddim", "steps": 4, "aligned_jumps": True}
    assert default_sampling("partdiff", shipped, None, None, None) == ("ddim", 4, True)
    # only from the start they were measured on: not with --k, not from the regression start
    assert default_sampling("partdiff", shipped, None, None, 10) == ("ddim", 4, None)
    assert default_sampling("partdiff", shipped, None, None, None, start="regression") == ("ddim", 4, None)
    assert default_sampling("partdiff", shipped, None, None, None, start="lowres") == ("ddim", 4, True)
    assert default_sampling("partdiff", shipped, None, None, None, aligned_jumps=False) == ("ddim", 4, False)
    assert default_sampling("partdiff", shipped, "ddim", None, None) == ("ddim", None, None)
    assert default_sampling("partdiff", shipped, "ancestral", None, None) == ("ancestral", None, None)
    assert default_sampling("partdiff", {"sampler": "ddim", "steps": 4}, None, None, None) == ("ddim", 4, None)
    assert default_sampling("regression", shipped, None, None, None) == (None, None, None)


def test_shipped_partdiff_default_runs_aligned_jumps_and_the_flag_turns_them_off():
    entry = default_model("partdiff", "in", 4)
    assert entry.aligned_jumps and entry.sampler == "ddim" and entry.steps == 4
    rng = np.random.default_rng(0)
    vol = Volume(rng.uniform(100, 900, size=(24, 20, 2)).astype(np.float32), make_affine("LPS", (2.0, 2.0, 3.6)))
    default = upsample_volume(vol, "in", 4, method="partdiff", seed=1)
    explicit = upsample_volume(vol, "in", 4, method="partdiff", sampler="ddim", steps=4, aligned_jumps=True, seed=1)
    plain = upsample_volume(vol, "in", 4, method="partdiff", aligned_jumps=False, seed=1)
    assert default.volume.metadata["mrisr_provenance"]["aligned_jumps"] is True
    assert "aligned_jumps" not in plain.volume.metadata["mrisr_provenance"]
    np.testing.assert_array_equal(default.volume.data, explicit.volume.data)
    assert np.abs(default.volume.data - plain.volume.data).max() > 1.0
