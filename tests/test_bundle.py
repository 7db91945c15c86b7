"""MONAI bundles: a shipped model exported, its metadata verified offline, and the bundle run by
``python -m monai.bundle run`` on a real volume gives exactly what ``mrisr upsample`` gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import file_digest, needs_prostatex, prostatex_nifti, run_here, run_mrisr, starts_processes
from mrisr.bundle import SCHEMA_PATH, list_inputs
from mrisr.models import default_model, load_model
from mrisr.io import load_volume, read_provenance, save_volume

THROUGH = "prostatex-through-x6-partdiff"


def run_bundle(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of the inference config, from the bundle folder, as a user runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(bundle / "configs" / "inference.json"), *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=bundle)


def run_bundle_here(bundle: Path, config: str, **args: Any) -> subprocess.CompletedProcess:
    """``monai.bundle.run`` in this process, from the bundle folder: what ``python -m monai.bundle
    run`` calls, without a second interpreter's start-up (:func:`conftest.run_here`)."""
    from monai.bundle import run

    def call() -> None:
        warnings.simplefilter("ignore")  # MONAI's note on trusting a config's `$` expressions
        run(config_file=str(bundle / "configs" / config), **args)

    return run_here(call, ["monai.bundle.run", config], cwd=bundle)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "through_x6"
    result = run_mrisr("export-bundle", out, "--model", THROUGH, "--quiet")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def small_axial(tmp_path_factory) -> Path:
    """A real axial T2 of the held-out patient, cropped to 48 x 48 x 4 voxels (oblique affine kept)."""
    if not prostatex_nifti("ProstateX-0218", "tra", 5).is_file():
        pytest.skip("shared ProstateX data not found")
    folder = tmp_path_factory.mktemp("cases")
    volume = load_volume(prostatex_nifti("ProstateX-0218", "tra", 5))
    save_volume(volume.crop([48, 48, 4]), folder / "p0218_tra.nii.gz")
    return folder


def test_layout_and_weights_are_the_shipped_model(bundle):
    for name in ("LICENSE", "configs/metadata.json", "configs/inference.json", "configs/train.json",
                 "configs/logging.conf", "models/model.pt", "docs/README.md"):
        assert (bundle / name).is_file(), name
    assert all(f.stat().st_size < 25_000_000 for f in bundle.rglob("*") if f.is_file())
    assert not list(bundle.parent.glob(".*mrisr-partial*"))  # built aside, then renamed
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    shipped = load_model(default_model("partdiff", "through", 6).path)
    reference = shipped.network.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k].float(), reference[k]) for k in state)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["required_packages_version"]["mrisr"]
    assert meta["mrisr"] == {**meta["mrisr"], "method": "partdiff", "plane": "through", "factor": 6,
                             "sampler": "ddim", "steps": 4, "aligned_jumps": True}
    assert meta["eval_metrics"]["psnr_gain_over_bicubic_db_mean"] > 0
    readme = (bundle / "docs" / "README.md").read_text()
    assert "monai.bundle run" in readme and "Intended use" in readme


def test_metadata_and_network_formats_verify_offline(bundle):
    from monai.bundle import verify_metadata, verify_net_in_out

    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA_PATH))
    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                      config_file=str(bundle / "configs" / "inference.json"), extra_forward_args={"noise_level": 0.5},
                      device="cpu", n=2, any=20)
    # the schema refuses metadata without a mandatory key
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["inputs"]["image"]["channel_def"]
    broken = bundle.parent / "broken_metadata.json"
    broken.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="channel_def"):
        verify_metadata(meta_file=str(broken), filepath=str(SCHEMA_PATH))


@needs_prostatex
@starts_processes
def test_bundle_run_equals_mrisr_upsample_and_skips_a_bad_file(bundle, small_axial, tmp_path):
    cases = tmp_path / "in"
    cases.mkdir()
    (cases / "p0218_tra.nii.gz").write_bytes((small_axial / "p0218_tra.nii.gz").read_bytes())
    (cases / "broken.nii.gz").write_bytes(b"not a nifti")
    before = file_digest(cases)
    result = run_bundle(bundle, "--dataset_dir", str(cases), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    skipped = [line for line in result.stderr.splitlines() if line.startswith("mrisr bundle: skipped")]
    assert len(skipped) == 1 and "broken.nii.gz" in skipped[0] and "not a readable NIfTI" in skipped[0]
    assert file_digest(cases) == before  # inputs untouched

    cli = run_mrisr("upsample", cases / "p0218_tra.nii.gz", "--plane", "through", "--factor", "6",
                    "--method", "partdiff", "-o", tmp_path / "cli.nii.gz", "--quiet")  # what the bundle runs
    assert cli.returncode == 0, cli.stderr
    ours, theirs = nib.load(tmp_path / "out" / "p0218_tra_sr.nii.gz"), nib.load(tmp_path / "cli.nii.gz")
    assert ours.shape == theirs.shape == (48, 48, 24)
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
    np.testing.assert_array_equal(ours.affine, theirs.affine)
    # square pixels: both in-plane orientations averaged, as mrisr upsample does by default
    assert read_provenance(tmp_path / "out" / "p0218_tra_sr.nii.gz")["fused_orientations"] == [[2, 0], [2, 1]]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [c["status"] for c in summary["cases"]] == ["failed", "ok"] and summary["failed"] == 1
    assert summary["cases"][1]["network_evaluations_per_plane"] == 4 and summary["cases"][1]["planes"] == 48

    # a second run refuses to replace the output, and leaves it as it was
    digest = file_digest(tmp_path / "out" / "p0218_tra_sr.nii.gz")
    again = run_bundle_here(bundle, "inference.json", dataset_dir=str(cases), output_dir=str(tmp_path / "out"))
    assert again.returncode == 2 and "exists" in again.stderr
    assert file_digest(tmp_path / "out" / "p0218_tra_sr.nii.gz") == digest


@needs_prostatex
def test_bundle_takes_self_ensemble_and_consistent_as_upsample_does(bundle, small_axial, tmp_path):
    """The inference config's ``self_ensemble`` / ``consistent`` / ``fuse_orientations`` are mrisr
    upsample's ``--self-ensemble`` / ``--consistent`` / ``--no-fuse-orientations``: the same
    voxels, and the header says so."""
    result = run_bundle_here(bundle, "inference.json", dataset_dir=str(small_axial), output_dir=str(tmp_path / "out"),
                             self_ensemble=True, consistent=True, fuse_orientations=False)
    assert result.returncode == 0, result.stderr[-2000:]
    cli = run_mrisr("upsample", small_axial / "p0218_tra.nii.gz", "--plane", "through", "--factor", "6",
                    "--method", "partdiff", "--self-ensemble", "--consistent", "--no-fuse-orientations",
                    "-o", tmp_path / "cli.nii.gz",
                    "--quiet", "--report", tmp_path / "report.json")
    assert cli.returncode == 0, cli.stderr
    ours, theirs = nib.load(tmp_path / "out" / "p0218_tra_sr.nii.gz"), nib.load(tmp_path / "cli.nii.gz")
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
    provenance = read_provenance(tmp_path / "out" / "p0218_tra_sr.nii.gz")
    assert provenance["self_ensemble"] == 4 and provenance["consistent_with_input"] is True
    assert "fused_orientations" not in provenance
    assert provenance["network_evaluations_per_plane"] == 16  # DDIM 4 under each of the four flips


def test_export_errors_are_one_line_and_leave_nothing(tmp_path):
    missing = run_mrisr("export-bundle", tmp_path / "b", "--model", "no-such-model")
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "model not found: no-such-model" in missing.stderr
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    under_file = run_mrisr("export-bundle", blocker / "b", "--model", THROUGH)
    assert under_file.returncode == 2 and "not a folder" in under_file.stderr
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("mine")
    not_bundle = run_mrisr("export-bundle", tmp_path / "data", "--model", THROUGH, "--overwrite")
    assert not_bundle.returncode == 2 and "not a bundle" in not_bundle.stderr
    assert (tmp_path / "data" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "data"]  # no partial bundle left


def test_list_inputs_names_every_case_once(tmp_path):
    from mrisr.errors import InputError

    with pytest.raises(InputError, match="no NIfTI"):
        list_inputs(tmp_path)
    for name in ("a.nii.gz", "a.nii", "b.nrrd", ".hidden.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "empty_folder").mkdir()
    items = list_inputs(tmp_path)
    names = [i["name"] for i in items]
    assert len(names) == len(set(names)) == 4  # a.nii, a.nii.gz, b.nrrd, the folder (reported when read)
    assert {"b", "empty_folder"} <= set(names)


@needs_prostatex
def test_train_config_fine_tunes_from_the_bundle_weights(bundle, tmp_path):
    cor = load_volume(prostatex_nifti("ProstateX-0000", "cor", 5))
    save_volume(cor.crop([60, 60, 2]), tmp_path / "cor.nii.gz")
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": "cor.nii.gz", "plane": "cor"}]}))
    overrides = {"data": {"crop": 48, "num_workers": 0}, "optim": {"batch_size": 2, "precision": "fp32"}}
    result = run_bundle_here(bundle, "train.json", datalist=str(tmp_path / "datalist.json"),
                             output_dir=str(tmp_path / "ft"), max_steps=2, overrides=overrides, device="cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    start = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    tuned = load_model(tmp_path / "ft" / "run" / "model.safetensors")
    assert tuned.config["task"] == load_model(default_model("partdiff", "through", 6).path).config["task"]
    changed = [k for k, v in tuned.network.state_dict().items() if not torch.equal(v, start[k].float())]
    assert changed  # two steps moved the weights, from the bundle's (EMA starts there)
    config = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert config["optim"]["max_steps"] == 2 and config["init_from"].endswith("init.safetensors")


def test_export_by_plane_and_factor_takes_the_model_upsample_runs_by_default():
    from mrisr.bundle import _resolve_model
    from mrisr.models import auto_method

    for plane, factor in (("in", 4), ("through", 6)):
        path, entry = _resolve_model(None, None, plane, factor)
        assert entry == default_model(auto_method(plane, factor), plane, factor) and path == entry.path
        assert "regression" in entry.methods  # the most accurate shipped model (docs/models.md)
        _, named = _resolve_model(None, "partdiff", plane, factor)
        assert "partdiff" in named.methods


def test_the_bundle_says_what_the_network_outputs():
    from mrisr.bundle import _network_data_format
    from mrisr.diffusion import PartialDiffusionInferer
    from mrisr.models import model_config
    from mrisr.networks import network_config

    def output(objective: str, prediction: str = "eps") -> str:
        config = model_config(network_config("tiny"), PartialDiffusionInferer(objective, prediction=prediction), "in", 4)
        return _network_data_format(config)["outputs"]["pred"]["channel_def"]["0"]

    assert output("partdiff") == output("sr3") == "the noise added to x_0"
    assert "minus the condition" in output("regression")  # predict_regression adds the condition back
    assert "minus the condition" in output("sr3", "x0") and "blend" not in output("sr3", "x0")
    assert "minus the condition" in output("partdiff", "x0") and "blend" in output("partdiff", "x0")
