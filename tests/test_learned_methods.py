"""Learned methods end to end: a tiny network trained on a real slice, saved, and run by
``mrisr upsample`` over whole volumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrisr.diffusion import PartialDiffusionInferer
from mrisr.errors import ConfigError
from mrisr.inference import upsample_volume
from mrisr.interpolation import bicubic_upsample
from mrisr.io import Volume, load_volume, save_volume
from mrisr.models import load_model, model_config, save_model
from mrisr.networks import SR3UNet, network_config
from mrisr.transforms import robust_range

from conftest import file_digest, make_affine, needs_prostatex, prostatex_nifti, run_mrisr


def _crops(slice_: np.ndarray, n: int, size: int, gen: np.random.Generator) -> torch.Tensor:
    h, w = slice_.shape
    out = []
    for _ in range(n):
        i, j = gen.integers(0, h - size), gen.integers(0, w - size)
        out.append(slice_[i:i + size, j:j + size])
    return torch.from_numpy(np.stack(out))[:, None].float()


def _pairs(hr: torch.Tensor, factor: int) -> torch.Tensor:
    h, w = hr.shape[-2:]
    lr = F.interpolate(hr, size=(h // factor, w // factor), mode="bicubic", antialias=True, align_corners=False)
    return bicubic_upsample(lr, (factor, factor))


@needs_prostatex
def test_tiny_network_learns_on_a_real_slice():
    vol = load_volume(prostatex_nifti("ProstateX-0000", "cor", 5))
    rng = robust_range(vol.data)
    slice_ = rng.normalise(vol.data[:, :, vol.shape[2] // 2])
    gen = np.random.default_rng(0)
    torch.manual_seed(0)
    net = SR3UNet(**network_config("tiny"))
    inferer = PartialDiffusionInferer(objective="sr3", loss="l2")
    eval_hr = _crops(slice_, 16, 32, np.random.default_rng(99))
    eval_cond = _pairs(eval_hr, 4)

    def eval_loss() -> float:
        with torch.no_grad():
            return float(inferer(eval_hr, net, condition=eval_cond, generator=torch.Generator().manual_seed(5)))

    before = eval_loss()
    assert before == pytest.approx(1.0, rel=0.1)  # zero prediction: E[eps^2] = 1
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.0)
    tgen = torch.Generator().manual_seed(1)
    for _ in range(40):  # 40 steps of 8 crops of 32 x 32 already take it below 10 % (measured: 6 %)
        hr = _crops(slice_, 8, 32, gen)
        loss = inferer(hr, net, condition=_pairs(hr, 4), generator=tgen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.2 * before, (before, after)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, object]:
    """Randomly initialised tiny models for each objective (weights perturbed so they act)."""
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for objective in ("partdiff", "sr3", "regression"):
        torch.manual_seed(0)
        net = SR3UNet(**network_config("tiny"))
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.02)
        inferer = PartialDiffusionInferer(objective=objective, k_noise_level=0.25)
        cfg = model_config(network_config("tiny"), inferer, plane="in", factor=2)
        paths[objective] = save_model(root / f"{objective}.safetensors", net, cfg, dtype="bfloat16")
    # a training checkpoint (.pt) of the sr3 model, read with weights_only=True
    loaded = load_model(paths["sr3"])
    torch.save({"config": loaded.config, "model": loaded.network.state_dict(), "step": 3}, root / "sr3.pt")
    paths["sr3_pt"] = root / "sr3.pt"
    return paths


def _volume(tmp_path) -> tuple[Volume, object]:
    rng = np.random.default_rng(0)
    data = (rng.uniform(100, 900, size=(10, 12, 3))).astype(np.float32)
    vol = Volume(data, make_affine("oblique", (0.8, 0.8, 3.0)))
    return vol, save_volume(vol, tmp_path / "vol.nii.gz")


def test_model_round_trip(tiny_models):
    loaded = load_model(tiny_models["partdiff"])
    assert loaded.objective == "partdiff" and loaded.plane == "in" and loaded.factor == 2
    assert loaded.inferer.k == 50
    pt = load_model(tiny_models["sr3_pt"])
    sf = load_model(tiny_models["sr3"])
    for a, b in zip(pt.network.state_dict().values(), sf.network.state_dict().values()):
        torch.testing.assert_close(a, b)
    from mrisr.errors import InputError
    with pytest.raises(InputError, match="checksum"):
        load_model(tiny_models["sr3"], expected_sha256="0" * 64)


def test_volume_helper_counts_evaluations_and_normalises(tmp_path, tiny_models):
    vol, _ = _volume(tmp_path)
    res = upsample_volume(vol, "in", 2, method="partdiff", model=str(tiny_models["partdiff"]), sampler="ddim",
                          steps=4, batch_size=2, seed=3)
    assert res.volume.shape == (20, 24, 3)
    np.testing.assert_allclose(res.volume.affine, res.plan.output_affine)
    assert res.network_evaluations == 2 * 4  # ceil(3 planes / batch 2) batches x 4 steps
    # back in the input's units: close to the bicubic result for a barely trained network
    bic = upsample_volume(vol, "in", 2, method="bicubic").volume
    # (the sampling guard clips this random network's wild values, more room above than below)
    assert abs(float(res.volume.data.mean()) - float(bic.data.mean())) < 0.15 * float(bic.data.mean())
    span = float(bic.data.max() - bic.data.min())
    assert bic.data.min() - 0.3 * span < res.volume.data.min() and res.volume.data.max() < bic.data.max() + 0.6 * span
    # batch size does not change the result
    again = upsample_volume(vol, "in", 2, method="partdiff", model=str(tiny_models["partdiff"]), sampler="ddim",
                            steps=4, batch_size=3, seed=3)
    np.testing.assert_allclose(again.volume.data, res.volume.data, rtol=0, atol=1e-3 * float(bic.data.max()))
    reg = upsample_volume(vol, "in", 2, method="regression", model=str(tiny_models["regression"]))
    assert reg.network_evaluations == 1
    with pytest.raises(ConfigError, match="needs a model trained with objective sr3"):
        upsample_volume(vol, "in", 2, method="sr3", model=str(tiny_models["partdiff"]))
    with pytest.raises(ConfigError, match="trained for --plane in --factor 2"):
        upsample_volume(vol, "through", 2, method="partdiff", model=str(tiny_models["partdiff"]))
    with pytest.raises(ConfigError, match="latent-aligned for K = 50"):
        upsample_volume(vol, "in", 2, method="partdiff", model=str(tiny_models["partdiff"]), steps=25)
    with pytest.raises(ConfigError, match="stochastic"):
        upsample_volume(vol, "in", 2, method="regression", model=str(tiny_models["regression"]), samples=2)


def test_cli_partdiff_with_samples_writes_mean_std_and_report(tmp_path, tiny_models):
    vol, path = _volume(tmp_path)
    before = file_digest(path)
    result = run_mrisr("upsample", path, "--plane", "in", "--factor", "2", "--method", "partdiff",
                       "--model", tiny_models["sr3_pt"], "--steps", "6", "--samples", "3", "--seed", "11",
                       "--report", "r.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    mean, std = load_volume(tmp_path / "vol_sr.nii.gz"), load_volume(tmp_path / "vol_sr_std.nii.gz")
    assert mean.shape == std.shape == (20, 24, 3)
    np.testing.assert_allclose(std.affine, mean.affine)
    assert float(std.data.min()) >= 0 and float(std.data.mean()) > 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["method"] == "partdiff" and report["sampler"] == "ancestral" and report["steps"] == 6
    assert report["seed"] == 11 and report["samples"] == 3
    assert report["network_evaluations"] == 3 * 6  # one batch of 3 planes, 3 samples, 6 steps
    assert report["std_output"].endswith("vol_sr_std.nii.gz")
    assert file_digest(path) == before
    # the same seed reproduces the run
    again = run_mrisr("upsample", path, "--plane", "in", "--factor", "2", "--method", "partdiff",
                      "--model", tiny_models["sr3_pt"], "--steps", "6", "--samples", "3", "--seed", "11",
                      "-o", "again.nii.gz", "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    np.testing.assert_array_equal(load_volume(tmp_path / "again.nii.gz").data, mean.data)


def test_cli_learned_method_errors(tmp_path, tiny_models):
    _, path = _volume(tmp_path)
    cases = [
        (["--method", "partdiff", "--factor", "3"], "no default partdiff model ships for --plane in --factor 3"),
        (["--method", "partdiff", "--model", str(tmp_path / "none.safetensors")], "model not found"),
        (["--method", "sr3", "--model", str(tiny_models["regression"])], "objective sr3"),
        (["--method", "bicubic", "--samples", "2"], "stochastic"),
        (["--method", "partdiff", "--model", str(tiny_models["partdiff"]), "--steps", "0"], "--steps"),
    ]
    for args, phrase in cases:
        factor = [] if "--factor" in args else ["--factor", "2"]
        result = run_mrisr("upsample", path, "--plane", "in", *factor, *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert phrase in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert not list(tmp_path.glob("vol_sr*"))


def test_bad_model_files_are_one_line_errors_before_any_allocation(tmp_path, tiny_models):
    from safetensors.torch import save_file

    _, vol_path = _volume(tmp_path)
    good = load_model(tiny_models["partdiff"])
    weights = {k: v.contiguous() for k, v in good.network.state_dict().items()}
    save_file(weights, str(tmp_path / "nojson.safetensors"), metadata={"mrisr_config": "{not json"})
    save_file(weights, str(tmp_path / "nokeys.safetensors"), metadata={"mrisr_config": json.dumps({"format": good.config["format"]})})
    huge = json.loads(json.dumps(good.config))
    huge["network"]["channels"] = [8192, 8192, 8192]  # ~10^10 values: must not be allocated
    save_file(weights, str(tmp_path / "huge.safetensors"), metadata={"mrisr_config": json.dumps(huge)})
    torch.save({"config": good.config, "model": torch.zeros(3)}, tmp_path / "tensor.pt")
    cases = {"nojson.safetensors": "not valid JSON", "nokeys.safetensors": "lacks the 'network' section",
             "huge.safetensors": "describes a network of", "tensor.pt": "not a state dict"}
    for name, phrase in cases.items():
        result = run_mrisr("upsample", vol_path, "--plane", "in", "--factor", "2", "--method", "partdiff",
                           "--model", tmp_path / name, cwd=tmp_path)
        assert result.returncode == 2 and phrase in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1


def test_batch_size_is_fitted_to_memory_before_any_work(tmp_path, tiny_models, monkeypatch):
    import mrisr.inference as inference

    vol, _ = _volume(tmp_path)  # 10 x 12 x 3 -> in-plane x2 planes of 20 x 24
    per_plane = 20 * 24 * 16 * 100  # tiny preset: base width 16
    full = upsample_volume(vol, "in", 2, method="partdiff", model=str(tiny_models["partdiff"]), sampler="ddim",
                           steps=2, batch_size=3, seed=1)
    monkeypatch.setattr(inference.volume, "available_memory", lambda device: int(1.5 * per_plane / 0.7))
    lowered = upsample_volume(vol, "in", 2, method="partdiff", model=str(tiny_models["partdiff"]), sampler="ddim",
                              steps=2, batch_size=3, seed=1)
    assert lowered.network_evaluations == 3 * 2  # one plane per batch now: 3 batches x 2 steps
    np.testing.assert_allclose(lowered.volume.data, full.volume.data, rtol=0, atol=1e-3 * float(np.abs(full.volume.data).max()))
    monkeypatch.setattr(inference.volume, "available_memory", lambda device: per_plane // 2)
    with pytest.raises(ConfigError, match=r"one 20 x 24 plane needs about .* GiB"):
        upsample_volume(vol, "in", 2, method="partdiff", model=str(tiny_models["partdiff"]))
    # classical methods: the output volume itself must fit
    monkeypatch.setattr(inference.volume, "available_memory", lambda device: 1000)
    with pytest.raises(ConfigError, match=r"the output \(20 x 24 x 3 voxels\) needs about"):
        upsample_volume(vol, "in", 2, method="bicubic")


def test_a_region_of_interest_matches_the_whole_volume_run(tiny_models):
    """The box is computed with the whole volume's normalisation, clipping range and per-plane
    seeds, and with context along the plane axes: where that context reaches the volume's edge,
    the learned output is the whole-volume output, bit for bit."""
    rng = np.random.default_rng(1)
    data = rng.uniform(100, 900, size=(24, 20, 6)).astype(np.float32)
    data[:4, :4, :2] = 5000.0  # outside both boxes: moves the whole volume's normalisation and range
    vol = Volume(data, make_affine("oblique", (0.8, 0.8, 3.0)))
    run = dict(method="partdiff", model=str(tiny_models["partdiff"]), sampler="ddim", steps=3, batch_size=1, seed=7,
               samples=2)
    full = upsample_volume(vol, "in", 2, **run)
    for box in (((0, 24), (0, 20), (2, 5)),  # fewer planes: the same planes with the same seeds
                ((4, 20), (3, 17), (1, 6))):  # a smaller plane: 16 voxels of context reach every edge here
        part = upsample_volume(vol, "in", 2, roi=box, **run)
        crop = tuple(slice(lo * f, hi * f) for (lo, hi), f in zip(box, full.plan.axis_factors))
        np.testing.assert_array_equal(part.volume.data, full.volume.data[crop])
        np.testing.assert_array_equal(part.std_volume.data, full.std_volume.data[crop])
        np.testing.assert_allclose(part.volume.affine, part.std_volume.affine)
        assert part.extras["roi"] == {"voxels": [list(b) for b in box], "context_voxels": 16}
        assert part.volume.metadata["mrisr_provenance"]["roi"] == part.extras["roi"]


class _Pointwise(torch.nn.Module):
    """A network with no spatial context (a 1 x 1 convolution): what it returns at a pixel depends
    on that pixel's condition, noisy image and noise level alone."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = torch.nn.Conv2d(2, 1, 1)
        with torch.no_grad():
            self.mix.weight.copy_(torch.tensor([[[[0.3]], [[0.8]]]]))
            self.mix.bias.fill_(0.05)

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return self.mix(x) * level.view(-1, 1, 1, 1).to(x.dtype)


def test_a_region_of_interest_samples_the_whole_planes_noise():
    from mrisr.diffusion import NoiseWindow, randn
    from mrisr.models import LoadedModel

    # the window of the whole plane's noise, draw after draw, whatever the window's size
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    whole = randn((1, 1, 12, 10), [a])
    window = randn((1, 1, 5, 4), [NoiseWindow(b, (12, 10), (6, 2))])
    torch.testing.assert_close(window, whole[..., 6:11, 2:6], rtol=0, atol=0)
    torch.testing.assert_close(randn((1, 1, 5, 4), [NoiseWindow(b, (12, 10), (0, 0))]),
                               randn((1, 1, 12, 10), [a])[..., :5, :4], rtol=0, atol=0)  # the second draw too
    with pytest.raises(ValueError, match="does not fit"):
        randn((1, 1, 5, 4), [NoiseWindow(b, (12, 10), (8, 0))])
    # a region whose context stops inside the volume: with a network without spatial context the
    # ancestral sample there is the whole volume's sample, noise of every step included
    inferer = PartialDiffusionInferer(objective="partdiff", k_noise_level=0.25)
    model = LoadedModel(network=_Pointwise(), config=model_config(network_config("tiny"), inferer, "in", 2),
                        inferer=inferer, path=Path("pointwise.safetensors"))
    data = np.random.default_rng(2).uniform(100, 900, size=(48, 44, 3)).astype(np.float32)
    vol = Volume(data, make_affine("oblique", (0.8, 0.8, 3.0)))
    run = dict(method="partdiff", model=model, sampler="ancestral", batch_size=2, seed=5)
    full = upsample_volume(vol, "in", 2, **run)
    box = ((20, 28), (18, 26), (1, 3))  # context 4:44 and 2:42: a window inside both plane axes
    part = upsample_volume(vol, "in", 2, roi=box, **run)
    crop = tuple(slice(lo * f, hi * f) for (lo, hi), f in zip(box, full.plan.axis_factors))
    np.testing.assert_allclose(part.volume.data, full.volume.data[crop], rtol=0, atol=1e-3)
    other = upsample_volume(vol, "in", 2, **{**run, "seed": 6}).volume.data[crop]
    assert np.abs(other - full.volume.data[crop]).max() > 10.0  # the noise matters: the test has teeth


def _tiny_regression(path: Path, plane: str, degradation: dict) -> Path:
    """A randomly initialised tiny x2 regression model (weights perturbed so it acts) for
    ``plane``, trained (its config says) on ``degradation``."""
    torch.manual_seed(0)
    net = SR3UNet(**network_config("tiny"))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    inferer = PartialDiffusionInferer(objective="regression", k_noise_level=0.25)
    return save_model(path, net, model_config(network_config("tiny"), inferer, plane=plane, factor=2,
                                              degradation=degradation))


def test_consistent_outputs_reproduce_the_input_under_the_models_degradation(tmp_path, tiny_models):
    """--consistent: the output, degraded as the model was trained (anti-aliased bicubic
    in-plane, the line average through-plane), is the input exactly, in the input's units; the
    projection moves a random network's output, and it is refused where it means nothing."""
    from mrisr.degradation import average_lines, bicubic_downsample

    vol, _ = _volume(tmp_path)
    model = str(tiny_models["regression"])
    plain = upsample_volume(vol, "in", 2, method="regression", model=model, clip=False)
    res = upsample_volume(vol, "in", 2, method="regression", model=model, clip=False, consistent=True)
    assert res.volume.metadata["mrisr_provenance"]["consistent_with_input"] is True
    assert "consistent_with_input" not in plain.volume.metadata["mrisr_provenance"]
    down = bicubic_downsample(torch.from_numpy(res.volume.data).permute(2, 0, 1)[:, None], 2)[:, 0].permute(1, 2, 0)
    np.testing.assert_allclose(down.numpy(), vol.data, rtol=0, atol=1e-3)
    before = bicubic_downsample(torch.from_numpy(plain.volume.data).permute(2, 0, 1)[:, None], 2)
    assert float((before[:, 0].permute(1, 2, 0).numpy() - vol.data).std()) > 1.0  # the network was not consistent
    # through-plane: every run of 2 output slices averages to its input slice
    through = _tiny_regression(tmp_path / "through.safetensors", "through", {"pairs": "through", "blur_sigma_max": 0})
    out = upsample_volume(vol, "through", 2, method="regression", model=str(through), clip=False, consistent=True)
    assert out.volume.shape == (10, 12, 6)
    np.testing.assert_allclose(average_lines(out.volume.data, 2, 2), vol.data, rtol=0, atol=1e-3)
    with pytest.raises(ConfigError, match="bicubic takes no --consistent"):
        upsample_volume(vol, "in", 2, method="bicubic", consistent=True)
    blurred = _tiny_regression(tmp_path / "blur.safetensors", "in", {"pairs": "in", "blur_sigma_max": 1.5})
    with pytest.raises(ConfigError, match="random blur"):
        upsample_volume(vol, "in", 2, method="regression", model=str(blurred), consistent=True)


def test_self_ensemble_is_the_mean_over_the_planes_symmetries_and_exactly_equivariant(tmp_path, tiny_models):
    """--self-ensemble: in-plane the mean of the model's outputs for the eight turned and flipped
    planes (each turned back), computed here by hand; the result commutes exactly with flipping
    or transposing the input, which a plain run of a random network does not."""
    vol, _ = _volume(tmp_path)
    run = dict(method="regression", model=str(tiny_models["regression"]), clip=False, axis=2)
    plain = upsample_volume(vol, "in", 2, **run)
    ens = upsample_volume(vol, "in", 2, self_ensemble=True, **run)
    prov = ens.volume.metadata["mrisr_provenance"]
    assert prov["self_ensemble"] == 8 and prov["network_evaluations_per_plane"] == 8
    assert "self_ensemble" not in plain.volume.metadata["mrisr_provenance"]
    by_hand = np.zeros_like(ens.volume.data)
    for transpose in (False, True):
        for rows in (False, True):
            for cols in (False, True):
                data = vol.data.transpose(1, 0, 2) if transpose else vol.data
                data = data[::-1] if rows else data
                data = data[:, ::-1] if cols else data
                out = upsample_volume(Volume(np.ascontiguousarray(data), vol.affine), "in", 2, **run).volume.data
                out = out[:, ::-1] if cols else out
                out = out[::-1] if rows else out
                by_hand += out.transpose(1, 0, 2) if transpose else out
    np.testing.assert_allclose(ens.volume.data, by_hand / 8, rtol=0, atol=1e-3)
    flipped = Volume(np.ascontiguousarray(vol.data[::-1]), vol.affine)
    np.testing.assert_allclose(upsample_volume(flipped, "in", 2, self_ensemble=True, **run).volume.data,
                               ens.volume.data[::-1], rtol=0, atol=1e-3)
    assert np.abs(upsample_volume(flipped, "in", 2, **run).volume.data - plain.volume.data[::-1]).max() > 1.0
    with pytest.raises(ConfigError, match="bicubic takes no --self-ensemble"):
        upsample_volume(vol, "in", 2, method="bicubic", self_ensemble=True)


def test_self_ensemble_through_plane_averages_the_four_flips(tmp_path):
    """Through-plane the thick axis must stay the thick axis: the four flips, no transpose; the
    result commutes with flipping either plane axis."""
    model = _tiny_regression(tmp_path / "through.safetensors", "through", {"pairs": "through", "blur_sigma_max": 0})
    vol, _ = _volume(tmp_path)
    run = dict(method="regression", model=str(model), clip=False, axis=2, self_ensemble=True)
    ens = upsample_volume(vol, "through", 2, **run)
    assert ens.volume.shape == (10, 12, 6)
    assert ens.volume.metadata["mrisr_provenance"]["self_ensemble"] == 4
    for axis in (0, 1, 2):  # axis 2 is the slice axis: flipping the slices flips the output's
        flipped = Volume(np.ascontiguousarray(np.flip(vol.data, axis)), vol.affine)
        np.testing.assert_allclose(upsample_volume(flipped, "through", 2, **run).volume.data,
                                   np.flip(ens.volume.data, axis), rtol=0, atol=1e-3)


def test_self_ensemble_in_a_region_of_interest_draws_the_whole_planes_noise():
    """A stochastic --self-ensemble run of a box equals the whole volume's there: under each
    symmetry the window draws the noise of the whole plane turned the same way (a network
    without spatial context makes the comparison exact)."""
    from mrisr.models import LoadedModel

    inferer = PartialDiffusionInferer(objective="partdiff", k_noise_level=0.25)
    model = LoadedModel(network=_Pointwise(), config=model_config(network_config("tiny"), inferer, "in", 2),
                        inferer=inferer, path=Path("pointwise.safetensors"))
    data = np.random.default_rng(2).uniform(100, 900, size=(48, 44, 3)).astype(np.float32)
    vol = Volume(data, make_affine("oblique", (0.8, 0.8, 3.0)))
    run = dict(method="partdiff", model=model, sampler="ancestral", batch_size=2, seed=5, self_ensemble=True)
    full = upsample_volume(vol, "in", 2, **run)
    box = ((20, 28), (14, 26), (1, 3))  # not centred, not square: every flip and the transpose move it
    part = upsample_volume(vol, "in", 2, roi=box, **run)
    crop = tuple(slice(lo * f, hi * f) for (lo, hi), f in zip(box, full.plan.axis_factors))
    np.testing.assert_allclose(part.volume.data, full.volume.data[crop], rtol=0, atol=1e-3)
    single = upsample_volume(vol, "in", 2, **{**run, "self_ensemble": None}).volume.data[crop]
    assert np.abs(single - full.volume.data[crop]).max() > 10.0  # the ensemble averages other noise


def test_aligned_jumps_reach_the_sampler_and_only_where_they_apply(tmp_path, tiny_models, monkeypatch):
    """--aligned-jumps is the inferer's ``aligned=True``: a run with it equals a plain run whose
    every DDIM call is forced aligned, differs from the plain run, and is named in the header;
    it is refused for the ancestral sampler and for models that are not latent-aligned."""
    vol, _ = _volume(tmp_path)
    run = dict(method="partdiff", model=str(tiny_models["partdiff"]), sampler="ddim", steps=4, seed=3, clip=False)
    aligned = upsample_volume(vol, "in", 2, aligned_jumps=True, **run)
    plain = upsample_volume(vol, "in", 2, **run)
    assert aligned.volume.metadata["mrisr_provenance"]["aligned_jumps"] is True
    assert "aligned_jumps" not in plain.volume.metadata["mrisr_provenance"]
    assert np.abs(aligned.volume.data - plain.volume.data).max() > 1.0
    sample = PartialDiffusionInferer.sample
    monkeypatch.setattr(PartialDiffusionInferer, "sample",
                        lambda self, *a, **kw: sample(self, *a, **{**kw, "aligned": True}))
    forced = upsample_volume(vol, "in", 2, **run)
    np.testing.assert_array_equal(forced.volume.data, aligned.volume.data)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="aligned-jumps"):
        upsample_volume(vol, "in", 2, **{**run, "sampler": "ancestral", "steps": None}, aligned_jumps=True)
    with pytest.raises(ConfigError, match="aligned-jumps"):
        upsample_volume(vol, "in", 2, **{**run, "model": str(tiny_models["sr3"])}, aligned_jumps=True)
    with pytest.raises(ConfigError, match="takes no --aligned-jumps"):
        upsample_volume(vol, "in", 2, method="bicubic", aligned_jumps=True)
    (tmp_path / "cli").mkdir()
    _, path = _volume(tmp_path / "cli")
    result = run_mrisr("upsample", path, "--plane", "in", "--factor", "2", "--method", "partdiff", "--model",
                       tiny_models["regression"], "--aligned-jumps", "-o", tmp_path / "cli_sr.nii.gz")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "aligned-jumps" in result.stderr or "objective" in result.stderr


def _swapped(vol: Volume) -> Volume:
    """The same volume with its first two array axes exchanged (the same voxels in the world)."""
    affine = vol.affine.copy()
    affine[:, [0, 1]] = affine[:, [1, 0]]
    return Volume(np.ascontiguousarray(vol.data.transpose(1, 0, 2)), affine)


def test_through_plane_fuses_both_orientations(tmp_path):
    """Through-plane, a learned method on a volume with square pixels averages the estimate from
    the planes along each in-plane axis: exactly the mean of the two one-orientation runs (the
    second is the run on the volume with those axes exchanged), at twice the evaluations."""
    model = _tiny_regression(tmp_path / "through.safetensors", "through", {"pairs": "through", "blur_sigma_max": 0})
    vol, _ = _volume(tmp_path)  # 10 x 12 x 3, 0.8 x 0.8 x 3.0 mm
    run = dict(method="regression", model=str(model), clip=False)
    fused = upsample_volume(vol, "through", 2, **run)
    first = upsample_volume(vol, "through", 2, fuse_orientations=False, **run)
    second = upsample_volume(_swapped(vol), "through", 2, fuse_orientations=False, **run)
    assert fused.volume.shape == first.volume.shape == (10, 12, 6)
    np.testing.assert_allclose(fused.volume.affine, first.volume.affine)
    np.testing.assert_allclose(_swapped(second.volume).affine, first.volume.affine)
    np.testing.assert_allclose(fused.volume.data, 0.5 * (first.volume.data + _swapped(second.volume).data),
                               rtol=0, atol=1e-3)
    assert np.abs(first.volume.data - _swapped(second.volume).data).max() > 1.0  # the orientations differ
    assert fused.network_evaluations == 2 * first.network_evaluations
    assert fused.extras["fused_orientations"] == [[2, 0], [2, 1]]
    assert fused.volume.metadata["mrisr_provenance"]["fused_orientations"] == [[2, 0], [2, 1]]
    assert "fused_orientations" not in first.volume.metadata["mrisr_provenance"]
    # a second axis 50 % coarser: one orientation, and asking for two is a one-line error
    coarse = Volume(vol.data, make_affine("oblique", (0.8, 1.2, 3.0)))
    one = upsample_volume(coarse, "through", 2, **run)
    assert one.extras["fused_orientations"] is None and one.network_evaluations == first.network_evaluations
    with pytest.raises(ConfigError, match="one fine in-plane axis"):
        upsample_volume(coarse, "through", 2, fuse_orientations=True, **run)
    with pytest.raises(ConfigError, match="through-plane"):
        upsample_volume(vol, "in", 2, method="regression", model=str(_tiny_regression(
            tmp_path / "in.safetensors", "in", {"pairs": "in", "blur_sigma_max": 0})), fuse_orientations=True)
    with pytest.raises(ConfigError, match="takes no --fuse-orientations"):
        upsample_volume(vol, "through", 2, method="bicubic", fuse_orientations=True)
    # interpolation is separable: both orientations would give the same planes, so it runs one
    bic = upsample_volume(vol, "through", 2, method="bicubic")
    np.testing.assert_allclose(_swapped(upsample_volume(_swapped(vol), "through", 2, method="bicubic").volume).data,
                               bic.volume.data, rtol=0, atol=1e-3)


def test_fused_samples_pool_their_mean_and_deviation():
    """Two orientations of N samples each: the pooled mean and sample standard deviation are those
    of all 2 N samples (closed form against numpy), and the second orientation draws its own
    noise while the first keeps the seeds of an unfused run."""
    from mrisr.inference.methods import plane_seed
    from mrisr.inference.volume import _pool

    rng = np.random.default_rng(4)
    groups = [rng.normal(loc, 1.0 + loc, size=(3, 5, 4)) for loc in (0.0, 2.0)]
    means = [g.mean(axis=0) for g in groups]
    m2s = [((g - g.mean(axis=0)) ** 2).sum(axis=0) for g in groups]
    mean, m2 = _pool(means, m2s, 3)
    every = np.concatenate(groups)
    np.testing.assert_allclose(mean, every.mean(axis=0))
    np.testing.assert_allclose(np.sqrt(m2 / 5), every.std(axis=0, ddof=1))
    assert _pool(means[:1], m2s[:1], 3)[1] is m2s[0]
    assert plane_seed(7, 1, 12) == int(np.random.SeedSequence([7, 1, 12]).generate_state(1)[0])
    assert plane_seed(7, 1, 12, 1) != plane_seed(7, 1, 12)


def test_fused_regions_of_interest_match_the_whole_volume_run():
    """A box of a fused stochastic run is the whole volume's fused run there: each orientation
    has its own context and draws its whole planes' noise (a network without spatial context
    makes the comparison exact); the standard deviation pools the samples of both."""
    from mrisr.models import LoadedModel

    inferer = PartialDiffusionInferer(objective="partdiff", k_noise_level=0.25)
    model = LoadedModel(network=_Pointwise(), config=model_config(network_config("tiny"), inferer, "through", 2),
                        inferer=inferer, path=Path("pointwise.safetensors"))
    data = np.random.default_rng(2).uniform(100, 900, size=(44, 40, 5)).astype(np.float32)
    vol = Volume(data, make_affine("oblique", (0.8, 0.8, 3.0)))
    run = dict(method="partdiff", model=model, sampler="ancestral", batch_size=3, seed=5, samples=2)
    full = upsample_volume(vol, "through", 2, **run)
    assert full.extras["fused_orientations"] == [[2, 0], [2, 1]]
    box = ((18, 26), (20, 30), (1, 4))
    part = upsample_volume(vol, "through", 2, roi=box, **run)
    crop = tuple(slice(lo * f, hi * f) for (lo, hi), f in zip(box, full.plan.axis_factors))
    np.testing.assert_allclose(part.volume.data, full.volume.data[crop], rtol=0, atol=1e-3)
    np.testing.assert_allclose(part.std_volume.data, full.std_volume.data[crop], rtol=0, atol=1e-3)
    one = upsample_volume(vol, "through", 2, fuse_orientations=False, **run)
    assert np.abs(one.volume.data - full.volume.data).max() > 10.0  # the second orientation's noise counts
    assert float(full.std_volume.data.mean()) > 0


def test_cli_names_the_fused_orientations_and_turns_them_off(tmp_path):
    model = _tiny_regression(tmp_path / "through.safetensors", "through", {"pairs": "through", "blur_sigma_max": 0})
    vol, path = _volume(tmp_path)
    base = ["upsample", path, "--plane", "through", "--factor", "2", "--method", "regression", "--model", model]
    fused = run_mrisr(*base, "--report", "r.json", cwd=tmp_path)
    assert fused.returncode == 0, fused.stderr
    assert "both in-plane orientations averaged" in fused.stderr.splitlines()[0]
    assert json.loads((tmp_path / "r.json").read_text())["fused_orientations"] == [[2, 0], [2, 1]]
    one = run_mrisr(*base, "--no-fuse-orientations", "-o", "one.nii.gz", "--quiet", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    expected = upsample_volume(vol, "through", 2, method="regression", model=str(model), fuse_orientations=False)
    np.testing.assert_allclose(load_volume(tmp_path / "one.nii.gz").data, expected.volume.data, rtol=0, atol=1e-2)
    assert np.abs(load_volume(tmp_path / "vol_sr.nii.gz").data - expected.volume.data).max() > 0.1  # 10x the tolerance
    bad = run_mrisr("upsample", path, "--plane", "in", "--factor", "2", "--method", "regression", "--model", model,
                    "--fuse-orientations", "-o", "bad.nii.gz", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "through-plane" in bad.stderr
    assert not (tmp_path / "bad.nii.gz").exists()


def test_fusing_orientations_plans_memory_for_both(tmp_path, monkeypatch):
    """Both orientations' results are held until they are averaged: the up-front memory check
    counts them, so a fused run that would not fit is refused before any work."""
    import mrisr.inference as inference

    model = _tiny_regression(tmp_path / "through.safetensors", "through", {"pairs": "through", "blur_sigma_max": 0})
    data = np.random.default_rng(3).uniform(100, 900, size=(60, 60, 2)).astype(np.float32)
    vol = Volume(data, make_affine("oblique", (0.8, 0.8, 3.0)))
    loop = 60 * 60 * 4 * inference.volume._LOOP_BYTES_PER_VOXEL  # output voxels x bytes per voxel, one orientation
    monkeypatch.setattr(inference.volume, "available_memory", lambda device: int(1.5 * loop / 0.7))
    one = upsample_volume(vol, "through", 2, method="regression", model=str(model), fuse_orientations=False)
    assert one.volume.shape == (60, 60, 4)
    with pytest.raises(ConfigError, match=r"the output \(60 x 60 x 4 voxels\) needs about"):
        upsample_volume(vol, "through", 2, method="regression", model=str(model))
