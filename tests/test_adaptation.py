"""Test-time self-supervised adaptation (``--adapt``): the pairs are the volume's own line
averages, adaptation is reproducible, and the shipped model is never touched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import file_digest, make_affine, run_mrisr
from mrisr.adaptation import adapt_model, adaptation_planes
from mrisr.diffusion import PartialDiffusionInferer
from mrisr.io import Volume, save_volume
from mrisr.models import default_model, load_model, model_config, save_model
from mrisr.networks import SR3UNet, network_config
from mrisr.transforms import ThroughPlaneDegrade, robust_range


def _volume() -> Volume:
    rng = np.random.default_rng(3)
    data = (rng.uniform(0, 1000, size=(24, 18, 4)) + np.arange(24)[:, None, None] * 10).astype(np.float32)
    return Volume(data, make_affine("LPS", (0.6, 0.6, 3.6)), {"path": "/data/patient.nii.gz"})


def test_self_supervised_pairs_are_the_volumes_own_line_averages():
    vol = _volume()
    planes, kind = adaptation_planes(vol, "through")
    assert kind == "selfsup" and len(planes) == 2 * vol.shape[2]
    norm = robust_range(vol.data).normalise(vol.data)
    for k in range(vol.shape[2]):  # every in-plane slice, with rows along each in-plane axis
        np.testing.assert_allclose(planes[2 * k], norm[:, :, k], rtol=0, atol=1e-6)
        np.testing.assert_allclose(planes[2 * k + 1], norm[:, :, k].T, rtol=0, atol=1e-6)
    # the thick-slice profile: 6 rows averaged (closed form)
    plane = torch.from_numpy(planes[0])[None, None]
    low = ThroughPlaneDegrade(6).lowres(plane)[0, 0].numpy()
    np.testing.assert_allclose(low, planes[0].reshape(4, 6, 18).mean(axis=1), rtol=0, atol=1e-5)
    in_planes, in_kind = adaptation_planes(vol, "in")
    assert in_kind == "in" and len(in_planes) == vol.shape[2]


@pytest.fixture(scope="module")
def tiny_through(tmp_path_factory):
    torch.manual_seed(0)
    net = SR3UNet(**network_config("tiny"))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    inferer = PartialDiffusionInferer(objective="partdiff", k_noise_level=0.25)
    path = tmp_path_factory.mktemp("m") / "through.safetensors"
    return save_model(path, net, model_config(network_config("tiny"), inferer, plane="through", factor=2))


def test_adaptation_changes_the_weights_reproducibly(tiny_through):
    loaded = load_model(tiny_through)
    before = {k: v.clone() for k, v in loaded.network.state_dict().items()}
    a = adapt_model(loaded, _volume(), "through", 2, steps=3, seed=5, batch_size=2, crop=32)
    b = adapt_model(loaded, _volume(), "through", 2, steps=3, seed=5, batch_size=2, crop=32)
    c = adapt_model(loaded, _volume(), "through", 2, steps=3, seed=6, batch_size=2, crop=32)
    sa, sb, sc = (m.network.state_dict() for m in (a, b, c))
    assert any(not torch.equal(sa[k], before[k]) for k in sa)  # it learned something
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed, same weights
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert all(torch.equal(v, before[k]) for k, v in loaded.network.state_dict().items())  # original untouched
    record = a.config["adaptation"]
    assert record["input"] == "patient.nii.gz" and record["steps"] == 3 and record["seed"] == 5
    assert a.path.name == "through.adapted.safetensors"


def test_cli_adapt_keeps_the_shipped_model_and_saves_a_loadable_adapted_one(tmp_path):
    shipped = default_model("partdiff", "through", 6).path
    digest = file_digest(shipped)
    vol = Volume(np.random.default_rng(0).uniform(0, 1000, size=(12, 12, 3)).astype(np.float32),
                 make_affine("LPS", (0.6, 0.6, 3.6)))
    src = save_volume(vol, tmp_path / "scan.nii.gz")
    result = run_mrisr("upsample", src, "--plane", "through", "--factor", "6", "--method", "partdiff", "--adapt", "1",
                       "--save-adapted", tmp_path / "mine.safetensors", "-o", tmp_path / "out.nii.gz",
                       "--report", tmp_path / "r.json", "--quiet")
    assert result.returncode == 0, result.stderr
    assert file_digest(shipped) == digest
    adapted = load_model(tmp_path / "mine.safetensors")
    assert adapted.config["adaptation"]["input"] == "scan.nii.gz" and adapted.config["adaptation"]["steps"] == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["adaptation"]["steps"] == 1 and report["model_name"] == "prostatex_through_x6_partdiff.adapted.safetensors"
    assert report["sampler"] == "ddim" and report["steps"] == 4  # the shipped model's defaults still apply
    refused = run_mrisr("upsample", src, "--plane", "through", "--factor", "6", "--adapt", "2", "--save-adapted",
                        shipped, "-o", tmp_path / "x.nii.gz")
    assert refused.returncode == 2 and "shipped" in refused.stderr
    assert run_mrisr("upsample", src, "--plane", "through", "--factor", "6", "--save-adapted",
                     tmp_path / "y.safetensors").returncode == 2
    assert run_mrisr("upsample", src, "--plane", "through", "--factor", "6", "--method", "bicubic", "--adapt", "2",
                     "-o", tmp_path / "z.nii.gz").returncode == 2
