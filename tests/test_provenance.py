"""What an output says about itself and how honest the defaults are: provenance in the header
and the report, the input's NIfTI codes kept, magnitude outputs clipped to the input's range,
a warning for inputs far from the model's training spacing, own models' default sampler."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import make_affine, run_mrisr
from mrisr.diffusion import PartialDiffusionInferer
from mrisr.inference import upsample_volume
from mrisr.io import Volume, load_volume, read_provenance, save_volume
from mrisr.models import model_config, save_model
from mrisr.networks import SR3UNet, network_config


def _edges(spacing=(0.625, 0.625, 3.6), low: float = 0.0) -> Volume:
    """A checkerboard of 0 and 1000 (+ low): bicubic overshoots both ends at every edge."""
    i, j, k = np.indices((16, 16, 4))
    data = (((i // 2 + j // 2 + k) % 2) * 1000.0 + low).astype(np.float32)
    return Volume(data, make_affine("oblique", spacing))


def test_output_headers_and_report_say_what_made_them(tmp_path):
    src = save_volume(_edges(), tmp_path / "edges.nii.gz")
    result = run_mrisr("upsample", src, "--plane", "through", "--factor", "2", "--method", "bicubic",
                       "--report", tmp_path / "run.json", "-o", tmp_path / "out.nii.gz", "--quiet")
    assert result.returncode == 0, result.stderr
    header = nib.load(tmp_path / "out.nii.gz").header
    assert bytes(header["descrip"]).startswith(b"mrisr 0.") and b"bicubic through x2" in bytes(header["descrip"])
    prov = read_provenance(tmp_path / "out.nii.gz")
    assert prov["software"] == "mrisr" and prov["method"] == "bicubic" and prov["factor"] == 2
    assert prov["input"] == "edges.nii.gz" and prov["clipped_to_input_range"] is True
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["mrisr_version"] == prov["version"]
    assert report["command"].startswith("mrisr upsample ") and "--factor 2" in report["command"]
    assert report["created"].endswith("+00:00")
    # two runs give the same bytes: the header holds no time stamp
    again = run_mrisr("upsample", src, "--plane", "through", "--factor", "2", "--method", "bicubic",
                      "-o", tmp_path / "again.nii.gz", "--quiet")
    assert again.returncode == 0
    assert (tmp_path / "again.nii.gz").read_bytes() == (tmp_path / "out.nii.gz").read_bytes()


def test_the_inputs_nifti_codes_are_kept(tmp_path):
    vol = _edges()
    img = nib.Nifti1Image(vol.data, vol.affine)
    img.set_sform(vol.affine, code=2)  # aligned to another scan
    img.set_qform(vol.affine, code=1)
    nib.save(img, tmp_path / "aligned.nii.gz")
    out = upsample_volume(load_volume(tmp_path / "aligned.nii.gz"), "in", 2, method="bicubic").volume
    save_volume(out, tmp_path / "out.nii.gz")
    header = nib.load(tmp_path / "out.nii.gz").header
    assert (int(header["sform_code"]), int(header["qform_code"])) == (2, 1)


def test_magnitude_outputs_are_clipped_to_the_input_range_unless_asked_not_to():
    vol = _edges()
    clipped = upsample_volume(vol, "in", 2, method="bicubic").volume.data
    raw = upsample_volume(vol, "in", 2, method="bicubic", clip=False).volume.data
    assert raw.min() < -10 and raw.max() > 1010  # bicubic overshoot at the edges
    assert clipped.min() == 0.0 and clipped.max() == 1000.0
    np.testing.assert_array_equal(clipped, np.clip(raw, 0.0, 1000.0))
    # inputs with negative values (e.g. phase, differences) are left as computed
    signed = _edges(low=-500.0)
    out = upsample_volume(signed, "in", 2, method="bicubic")
    assert out.volume.data.min() < -510 and out.extras["clipped_to_input_range"] is False


@pytest.mark.parametrize("spacing,warned", [((0.625, 0.625, 3.6), True), ((2.2, 2.2, 3.6), False)])
def test_a_model_far_from_its_training_spacing_warns_once(tmp_path, spacing, warned):
    src = save_volume(_edges(spacing), tmp_path / "v.nii.gz")
    result = run_mrisr("upsample", src, "--plane", "in", "--factor", "4", "--method", "regression",
                       "-o", tmp_path / "o.nii.gz")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "trained for inputs of 2-2.4 mm" in line]
    assert len(lines) == (1 if warned else 0), result.stderr


def test_own_partdiff_models_default_to_the_sampler_their_file_stores(tmp_path):
    torch.manual_seed(0)
    net = SR3UNet(**network_config("tiny"))
    inferer = PartialDiffusionInferer(objective="partdiff", k_noise_level=0.25)
    plain = save_model(tmp_path / "plain.safetensors", net, model_config(network_config("tiny"), inferer, "in", 2))
    stored = save_model(tmp_path / "stored.safetensors", net,
                        model_config(network_config("tiny"), inferer, "in", 2, defaults={"sampler": "ddim", "steps": 4}))
    vol = _edges()
    old = upsample_volume(vol, "in", 2, method="partdiff", model=str(plain))
    new = upsample_volume(vol, "in", 2, method="partdiff", model=str(stored))
    assert (old.extras["sampler"], old.extras["steps"]) == ("ancestral", 50)  # K = 50 of a file without defaults
    assert (new.extras["sampler"], new.extras["steps"]) == ("ddim", 4)
    explicit = upsample_volume(vol, "in", 2, method="partdiff", model=str(stored), sampler="ancestral")
    assert explicit.extras["steps"] == 50


def test_info_takes_several_factors_after_one_flag(tmp_path):
    src = save_volume(_edges(), tmp_path / "v.nii.gz")
    both = [run_mrisr("info", src, *args).stdout for args in (["--factor", "3", "5"], ["--factor", "3", "--factor", "5"])]
    assert both[0] == both[1] and "--plane through --factor 5" in both[0]


def test_preview_png_and_the_nearest_neighbour_view_of_the_input(tmp_path):
    from mrisr.geometry import plan_upsampling
    from mrisr.preview import _display_axes, nearest_on_grid

    vol = _edges()
    src = save_volume(vol, tmp_path / "v.nii.gz")
    result = run_mrisr("upsample", src, "--plane", "through", "--factor", "3", "--method", "bicubic",
                       "-o", tmp_path / "o.nii.gz", "--preview", tmp_path / "look.png", "--quiet")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "look.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every output voxel shows the input voxel it lies in
    plan = plan_upsampling(vol.shape, vol.affine, "through", 3)
    shown = nearest_on_grid(vol.data, plan)
    assert shown.shape == plan.output_shape
    np.testing.assert_array_equal(shown[:, :, 3 * 2 + 1], vol.data[:, :, 2])
    # radiological display: superior up in a coronal slice (rows along S-I), patient's right on the left
    rows, cols, transpose, flips = _display_axes(("L", "S", "A"), axis=2)  # slice along A: rows L, cols S
    assert (rows, cols, transpose, flips) == (1, 0, True, (True, False))
    refused = run_mrisr("upsample", src, src, "--plane", "in", "--factor", "2", "--method", "bicubic",
                        "-o", tmp_path / "many", "--preview", tmp_path / "x.png")
    assert refused.returncode == 2 and "--preview" in refused.stderr
