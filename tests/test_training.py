"""Training: loss goes down on real slices, SIGKILL + resume is exact, DDP ranks agree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mrisr.errors import ConfigError, InputError
from mrisr.models import load_model
from mrisr.training import Trainer, batch_indices, load_config

from conftest import REPO, needs_prostatex, run_mrisr, starts_processes

TINY = REPO / "configs" / "tiny.yaml"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # deterministic kernels and no oversubscription on 2 cores
    return env


def _train_here(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``mrisr train`` in this process, without a second start-up (on one thread, as
    ``torch.set_num_threads(1)``, where it is compared bit for bit with a run in a subprocess)."""
    return run_mrisr("train", *args, "--quiet", cwd=cwd)


def _log(run: Path) -> list[tuple[int, float]]:
    lines = (run / "log.csv").read_text().splitlines()[1:]
    return [(int(r.split(",")[0]), float(r.split(",")[1])) for r in lines]


def test_batch_indices_shard_and_cover():
    n, batch, world = 37, 4, 2
    seen = []
    for step in range(5):
        r0 = batch_indices(step, 0, world, batch, n, seed=1)
        r1 = batch_indices(step, 1, world, batch, n, seed=1)
        assert not set(r0) & set(r1) or step * world * batch >= n  # disjoint shards within an epoch
        seen += r0 + r1
    assert sorted(seen[:n]) == list(range(n))  # the first epoch visits every plane once
    assert batch_indices(3, 1, 2, 4, n, seed=1) == batch_indices(3, 1, 2, 4, n, seed=1)


@needs_prostatex
def test_twenty_steps_lower_the_loss(tmp_path):
    config = load_config(TINY)
    trainer = Trainer(config, tmp_path / "run", device="cpu", max_steps=20, progress=False)
    hr, cond = trainer.batch(10**6)  # a fixed held-aside batch of real slices

    def loss() -> float:
        with torch.no_grad():
            return float(trainer.inferer(hr, trainer.network, condition=cond,
                                         generator=torch.Generator().manual_seed(0)))

    before = loss()
    summary = trainer.run()
    after = loss()
    assert summary["step"] == 20
    assert after < 0.8 * before, (before, after)
    model = load_model(summary["model"])
    assert model.objective == "partdiff" and model.factor == 4 and model.plane == "in"


@needs_prostatex
def test_validation_samples_with_aligned_jumps_when_asked(tmp_path):
    """validation.aligned_jumps: each validation plane is what inferer.sample(aligned=True) gives."""
    from mrisr.metrics import psnr
    from mrisr.transforms import plane_degradation

    config = load_config(TINY)
    config["validation"].update(steps=2, aligned_jumps=True)
    trainer = Trainer(config, tmp_path / "run", device="cpu", max_steps=1, progress=False)
    got = trainer.validate()
    bank, degrade = trainer.val_bank, plane_degradation("in", 4)[0]
    firsts = sorted({s: i for i, s in reversed(list(enumerate(bank.sources)))}.values())  # slices: 1
    inferer = type(trainer.inferer)(**trainer.inferer.config(),
                                    autocast_dtype=torch.bfloat16 if trainer.precision == "bf16" else None)
    by_hand = {}
    for aligned in (True, False):
        values = []
        for i in firsts:
            p = bank.planes[i]
            hr = torch.from_numpy(p[: p.shape[0] // 4 * 4, : p.shape[1] // 4 * 4]).float()[None, None]
            cond = degrade(hr)
            out = inferer.sample(cond, trainer.ema, method="partdiff", sampler="ddim", steps=2, aligned=aligned,
                                 generators=[torch.Generator().manual_seed(1000 + i)])
            values.append(psnr(out[0, 0].numpy(), hr[0, 0].numpy(), 2.0))
        by_hand[aligned] = float(np.mean(values))
    assert got["planes"] == len(firsts)
    assert abs(got["psnr"] - by_hand[True]) < 1e-6  # same planes, same noise, same sampler
    assert abs(got["psnr"] - by_hand[False]) > 1e-4  # and not the plain jumps


@needs_prostatex
@starts_processes
def test_sigkill_then_resume_continues_exactly(tmp_path):
    steps = "12"  # a checkpoint every 5 steps: killed after the first, resumed to the end
    proc = subprocess.Popen([sys.executable, "-m", "mrisr", "train", str(TINY), "-o", "killed", "--max-steps", steps,
                             "--quiet"], cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not list(ckpt_dir.glob("step_*.pt")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists(), "the run finished before it was killed"
    kept = sorted(int(p.stem.split("_")[1]) for p in ckpt_dir.glob("step_*.pt"))
    assert kept and kept[-1] < int(steps)
    # without --resume the run folder is protected
    refused = _train_here(TINY, "-o", "killed", "--max-steps", steps, cwd=tmp_path)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    # the resumed run and an uninterrupted reference: in this process, on one thread as the killed run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = _train_here(TINY, "-o", "killed", "--max-steps", steps, "--resume", cwd=tmp_path)
        ref = _train_here(TINY, "-o", "ref", "--max-steps", steps, cwd=tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert resumed.returncode == 0, resumed.stderr
    assert ref.returncode == 0, ref.stderr
    ref_log, new_log = _log(tmp_path / "ref"), _log(tmp_path / "killed")
    assert [s for s, _ in new_log] == list(range(1, int(steps) + 1))  # no gap, no duplicate
    assert new_log == ref_log  # the same loss at every step, the first after the checkpoint included
    digest = lambda run: json.loads((tmp_path / run / "ranks" / "rank0.json").read_text())["weights_sha256"]  # noqa: E731
    assert digest("killed") == digest("ref")
    a = load_model(tmp_path / "ref" / "model.safetensors").network.state_dict()
    b = load_model(tmp_path / "killed" / "model.safetensors").network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@needs_prostatex
@starts_processes
def test_torchrun_two_gloo_ranks_hold_identical_weights(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mrisr.train", str(TINY), "-o", "ddp", "--max-steps", "4", "--device", "cpu", "--quiet"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ddp" / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == 4
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert (tmp_path / "ddp" / "model.safetensors").exists()
    assert len(list((tmp_path / "ddp" / "checkpoints").glob("step_*.pt"))) >= 1


def test_bad_configs_and_datalists(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps({
        "training": [{"image": "missing.nii.gz", "patient": "a"}, {"image": "notes.nii.gz", "patient": "b"}],
        "validation": []}))
    (tmp_path / "notes.nii.gz").write_text("not an image")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {datalist: list.json, crop: 48}\nnetwork: {preset: tiny}\n")
    with pytest.raises(InputError, match=r"2 datalist entries cannot be used.*missing\.nii\.gz.*notes\.nii\.gz"):
        Trainer(load_config(cfg), tmp_path / "run", device="cpu", progress=False)
    with pytest.raises(InputError, match="no usable volumes"):
        Trainer(load_config(cfg), tmp_path / "run", device="cpu", skip_bad=True, progress=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {datalist: list.json}\noptimiser: {lr: 1}\n")
    with pytest.raises(ConfigError, match="unknown config key 'optimiser'"):
        load_config(bad)
    bad.write_text("data: {datalist: list.json, crop: 50}\n")
    with pytest.raises(ConfigError, match="divisible by task.factor"):
        load_config(bad)
    result = run_mrisr("train", tmp_path / "none.yaml")
    assert result.returncode == 2 and "config not found" in result.stderr
    result = run_mrisr("train", cfg, "-o", tmp_path / "run2")
    assert result.returncode == 2 and "missing.nii.gz" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@needs_prostatex
def test_skip_bad_keeps_the_good_entries(tmp_path):
    good = REPO.parent / "shared" / "data" / "prostatex" / "nifti" / "ProstateX-0000_t2_cor_s5.nii.gz"
    (tmp_path / "list.json").write_text(json.dumps({
        "training": [{"image": str(good), "patient": "a"}, {"image": "missing.nii.gz", "patient": "b"}]}))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {datalist: list.json, crop: 48}\nnetwork: {preset: tiny}\n")
    trainer = Trainer(load_config(cfg), tmp_path / "run", device="cpu", skip_bad=True, progress=False)
    assert len(trainer.train_bank) == 15 and set(trainer.train_bank.sources) == {str(good)}
    hr, cond = trainer.batch(0)
    assert hr.shape == cond.shape == (8, 1, 48, 48)
    assert np.isfinite(hr.numpy()).all()


@needs_prostatex
def test_mixed_images_join_the_training_planes_only(tmp_path):
    from mrisr.images import write_image

    good = REPO.parent / "shared" / "data" / "prostatex" / "nifti" / "ProstateX-0000_t2_cor_s5.nii.gz"
    val = REPO.parent / "shared" / "data" / "prostatex" / "nifti" / "ProstateX-0218_t2_cor_s6.nii.gz"
    (tmp_path / "list.json").write_text(json.dumps({"training": [{"image": str(good), "patient": "a"}],
                                                    "validation": [{"image": str(val), "patient": "v"}]}))
    (tmp_path / "pics").mkdir()
    for i in range(3):
        write_image(tmp_path / "pics" / f"{i}.png", np.full((1, 64, 80), 60.0 * i, np.float32))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {datalist: list.json, crop: 48, mix_images: pics, mix_fraction: 0.5}\n"
                   "network: {preset: tiny}\n")
    trainer = Trainer(load_config(cfg), tmp_path / "run", device="cpu", progress=False)
    # 15 coronal planes; 0.5 / 0.5 * 15 / 3 = 5 copies of each image: half the draws
    assert len(trainer.train_bank) == 30 and trainer.batches.planes is trainer.train_bank.planes
    assert trainer.train_bank.sources.count(str(tmp_path / "pics" / "2.png")) == 5
    assert set(trainer.val_bank.sources) == {str(val)}
    # the images reach the batches: a crop of image i (all 60 i) is the constant 60 i / 127.5 - 1
    hr, _ = trainer.batch(1)
    for row, i in enumerate(batch_indices(1, 0, 1, 8, 30, trainer.seed)):
        name = Path(trainer.train_bank.sources[i]).name
        if name.endswith(".png"):
            np.testing.assert_allclose(hr[row].numpy(), 60.0 * int(name[0]) / 127.5 - 1, atol=1e-6)
        else:
            assert float(hr[row].std()) > 0.1  # an MR crop
    assert trainer.model_config["training"]["data"]["mix_images"] == "pics"  # recorded in the model file
    for data, phrase in (("mix_images: pics", "go together"), ("mix_fraction: 0.2", "go together"),
                         ("mix_images: [a], mix_fraction: 0.2", "must be 'skimage' or a path")):
        cfg.write_text(f"data: {{datalist: list.json, crop: 48, {data}}}\n")
        with pytest.raises(ConfigError, match=phrase):
            load_config(cfg)
    cfg.write_text("data: {datalist: list.json, crop: 48, mix_images: nowhere, mix_fraction: 0.2}\n")
    result = run_mrisr("train", cfg, "-o", tmp_path / "run2")
    assert result.returncode == 2 and "nowhere: no such file or folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_learning_rate_schedules(tmp_path):
    from mrisr.training import learning_rate

    assert learning_rate(0, 1e-3, "constant", 0, 100) == 1e-3
    assert learning_rate(4, 1e-3, "constant", 10, 100) == pytest.approx(5e-4)  # warm-up: (4 + 1) / 10
    assert learning_rate(10, 1e-3, "cosine", 10, 110) == pytest.approx(1e-3)  # cosine starts at the peak
    assert learning_rate(60, 1e-3, "cosine", 10, 110) == pytest.approx(5e-4)  # half way: cos(pi / 2)
    assert learning_rate(110, 1e-3, "cosine", 10, 110) == pytest.approx(0.0, abs=1e-12)
    # warm-up, stable, decay: constant until the last 40 of 110 steps, then the same cosine over them
    assert learning_rate(69, 1e-3, "cosine", 10, 110, decay=40) == pytest.approx(1e-3)
    assert learning_rate(70, 1e-3, "cosine", 10, 110, decay=40) == pytest.approx(1e-3)
    assert learning_rate(90, 1e-3, "cosine", 10, 110, decay=40) == pytest.approx(5e-4)
    assert learning_rate(110, 1e-3, "cosine", 10, 110, decay=40) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(50, 1e-3, "cosine", 10, 110, decay=500) == learning_rate(50, 1e-3, "cosine", 10, 110)
    assert learning_rate(50, 1e-3, "constant", 10, 110, decay=40) == 1e-3
    bad = REPO / "configs" / "tiny.yaml"
    cosine = load_config(bad, {"optim": {"lr_schedule": "cosine", "max_steps": 10}})
    with pytest.raises(ConfigError, match=r"reaches lr 0 at optim.max_steps = 10.*--set optim.max_steps=20"):
        Trainer(cosine, tmp_path / "run", device="cpu", max_steps=20, progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="optim.lr_schedule"):
        load_config(bad, {"optim": {"lr_schedule": "step"}})
    with pytest.raises(ConfigError, match="data.num_workers"):
        load_config(bad, {"data": {"num_workers": -1}})


def test_set_overrides_are_data_and_checked(tmp_path):
    from mrisr.cli import _config_overrides

    assert _config_overrides(["optim.lr=1e-4", "data.planes=[cor, sag]", "task.blur_sigma_max=0"]) == {
        "optim": {"lr": 1e-4}, "data": {"planes": ["cor", "sag"]}, "task": {"blur_sigma_max": 0}}
    # a YAML tag that would build an object is refused by the safe loader
    for bad, phrase in [("optim.lr", "KEY=VALUE"), ("optim..lr=1", "KEY=VALUE"),
                        ("x=!!python/object/apply:os.system [echo hi]", "not a YAML value"),
                        ("optim={lr: 1}", "not a mapping")]:
        with pytest.raises(ConfigError, match=phrase):
            _config_overrides([bad])
    result = run_mrisr("train", TINY, "-o", tmp_path / "r", "--set", "optim.nope=1")
    assert result.returncode == 2 and "unknown config key 'optim.nope'" in result.stderr
    result = run_mrisr("train", TINY, "-o", tmp_path / "r", "--max-minutes", "-1")
    assert result.returncode == 2 and "--max-minutes" in result.stderr


@needs_prostatex
def test_a_time_limit_stops_with_checkpoint_validation_and_model(tmp_path):
    run = tmp_path / "run"
    result = _train_here(TINY, "-o", run, "--max-minutes", "0.0001", "--set", "validation.slices=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (step, _), = _log(run)
    assert 1 <= step < 20  # stopped by the clock, not by max_steps
    assert (run / "checkpoints" / f"step_{step:08d}.pt").is_file() and (run / "model.safetensors").is_file()
    rows = (run / "validation.csv").read_text().splitlines()
    header, last = rows[0].split(","), dict(zip(rows[0].split(","), rows[-1].split(",")))
    assert {"gain_db", "gain_worst_series_db", "gain_worst_plane_db", "planes"} <= set(header)
    assert int(last["planes"]) == 1 and int(last["step"]) == step  # one whole plane of 0218 cor
    again = _train_here(TINY, "-o", run, "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert _log(run)[-1][0] == 20


def test_configs_are_data_and_never_run_code(tmp_path):
    marker = tmp_path / "pwned"
    cases = {
        "expr.yaml": f"name: \"$__import__('pathlib').Path('{marker}').touch()\"\ndata: {{datalist: x.json}}\n",
        "target.yaml": f"data: {{datalist: x.json}}\nnetwork: {{_target_: pathlib.Path.touch, self: {marker}}}\n",
        "tag.yaml": f"name: !!python/object/apply:pathlib.Path.touch [{marker}]\ndata: {{datalist: x.json}}\n",
        "nested.json": json.dumps({"data": {"datalist": "x.json", "planes": [f"$open('{marker}', 'w')"]}}),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match="data|not a valid config"):
            load_config(tmp_path / name)
        result = run_mrisr("train", tmp_path / name, "-o", tmp_path / "run")
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("key,value,phrase", [
    ("optim.lr", "fast", "optim.lr must be a number"),
    ("k_noise_level", 1.0, "k_noise_level must be in [1e-06, 1)"),
    ("validation.every", 0, "validation.every must be an integer >= 1"),
    ("optim.loss", "l3", "optim.loss must be one of"),
    ("data.channels", True, "data.channels must be one of"),
    ("task.blur_sigma_max", -1, "must be in [0, inf]"),
    ("optim.grad_clip", float("nan"), "optim.grad_clip must be a number"),
    ("log.every", 2.5, "log.every must be an integer")])
def test_the_config_schema_names_the_bad_value(key, value, phrase):
    from mrisr.training.config import SCHEMA

    assert key in SCHEMA
    section, _, name = key.rpartition(".")
    override = {section: {name: value}} if section else {name: value}
    with pytest.raises(ConfigError) as err:
        load_config(TINY, override)
    assert phrase in str(err.value) and "\n" not in str(err.value)


def test_every_single_valued_default_is_in_the_schema():
    from mrisr.training.config import DEFAULTS, SCHEMA

    free = {"name", "init_from", "data.datalist", "data.glob", "data.validation_glob", "data.planes", "data.mix_images",
            "validation.crop"}
    whole = {"network", "schedules", "data.normalisation"}  # checked by what builds them
    leaves = set()
    for key, value in DEFAULTS.items():
        if isinstance(value, dict) and key not in whole:
            leaves |= {f"{key}.{k}" for k, v in value.items() if f"{key}.{k}" not in whole}
        elif key not in whole:
            leaves.add(key)
    assert leaves - free == set(SCHEMA), sorted((leaves - free) ^ set(SCHEMA))


@needs_prostatex
def test_channels_last_and_compile_change_speed_not_training(tmp_path, monkeypatch):
    def run(name: str, **optim: object) -> tuple[Trainer, list[float]]:
        config = load_config(TINY)
        # fp32: the layouts' bf16 kernels (auto on AVX-512 CPUs) round differently, and AdamW's
        # first steps turn any gradient difference into a step of the learning rate's size
        config["optim"].update({"precision": "fp32", **optim})
        trainer = Trainer(config, tmp_path / name, device="cpu", max_steps=3, progress=False)
        trainer._stream = None
        return trainer, [trainer.train_step() for _ in range(3)]

    plain, plain_losses = run("plain")
    fast, fast_losses = run("channels_last", channels_last=True)
    conv = next(m for m in fast.network.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(fast_losses, plain_losses, rtol=1e-4)  # the same training, another layout
    for a, b in zip(fast.network.state_dict().values(), plain.network.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    # compile wraps the module the steps run through; parameters, EMA and checkpoints stay the
    # plain network's (no "_orig_mod." keys). torch.compile itself takes minutes on this CPU, so
    # a recording stand-in takes its place here
    wrapped = []
    monkeypatch.setattr(torch, "compile", lambda module: wrapped.append(module) or module)
    compiled, compiled_losses = run("compiled", compile=True)
    assert wrapped == [compiled.network] and compiled_losses == plain_losses
    assert list(compiled.network.state_dict()) == list(plain.network.state_dict())
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data: {{datalist: {REPO / 'configs' / 'prostatex.json'}}}\noptim: {{compile: 'yes'}}\n")
    with pytest.raises(ConfigError, match="optim.compile must be true or false"):
        load_config(bad)


def test_prediction_applies_to_diffusion_objectives_only():
    assert load_config(TINY, {"prediction": "x0"})["prediction"] == "x0"
    with pytest.raises(ConfigError, match="regression objective always predicts the image"):
        load_config(TINY, {"objective": "regression", "prediction": "x0"})
    with pytest.raises(ConfigError, match="prediction must be one of eps, x0"):
        load_config(TINY, {"prediction": "noise"})


@needs_prostatex
def test_a_clean_image_model_starts_as_the_regression_model(tmp_path):
    """PartDiff with ``prediction: x0`` started from a regression model: the noisy-image inputs the
    regression model never used are zeroed, so at every noise level the start predicts the same
    image whatever the noisy input, and at level 0 exactly the regression model's image."""
    from mrisr.diffusion import PartialDiffusionInferer, predict_clean
    from mrisr.models import model_config, save_model
    from mrisr.networks import SR3UNet

    config = load_config(TINY, {"prediction": "x0", "init_from": str(tmp_path / "reg.safetensors")})
    trainer = Trainer(config, tmp_path / "run", device="cpu", progress=False)
    torch.manual_seed(5)
    reg = SR3UNet(**trainer.net_kwargs)
    for p in reg.parameters():
        torch.nn.init.normal_(p, std=0.05)  # acting weights, the noisy-input ones included
    save_model(tmp_path / "reg.safetensors", reg,
               model_config(trainer.net_kwargs, PartialDiffusionInferer(objective="regression"), "in", 4))
    trainer.init_from(config["init_from"])
    net = trainer.ema.eval()
    assert float(net.stem.weight[:, 1:].abs().max()) == 0.0
    torch.testing.assert_close(net.stem.weight[:, :1], reg.stem.weight[:, :1])
    hr, cond = trainer.batch(10**6)
    with torch.no_grad():
        a = predict_clean(net, hr, cond, torch.tensor([0.8]))
        b = predict_clean(net, torch.randn_like(hr), cond, torch.tensor([0.8]))
        torch.testing.assert_close(a, b)
        at_zero = predict_clean(net, torch.randn_like(hr), cond, torch.tensor([0.0]))
        regression = PartialDiffusionInferer(objective="regression", clip_denoised="off").sample(
            cond, reg.eval(), method="regression")
    torch.testing.assert_close(at_zero, regression, atol=1e-5, rtol=0)
    # the trained model's file says what it predicts, and loads with it
    summary = Trainer(config, tmp_path / "run", device="cpu", max_steps=2, progress=False).run()
    assert load_model(summary["model"]).inferer.prediction == "x0"


@needs_prostatex
def test_a_continued_model_counts_the_steps_of_its_start(tmp_path):
    """``trained_steps`` of a model file: the steps of its run plus those of the model it was
    started from (``init_from``), kept across a resume and carried by the exported file."""
    from mrisr.diffusion import PartialDiffusionInferer
    from mrisr.models import model_config, save_model, trained_steps
    from mrisr.networks import SR3UNet

    config = load_config(TINY, {"init_from": str(tmp_path / "start.safetensors")})
    trainer = Trainer(config, tmp_path / "run", device="cpu", max_steps=2, progress=False)
    start_config = model_config(trainer.net_kwargs, PartialDiffusionInferer(objective="partdiff"), "in", 4)
    save_model(tmp_path / "start.safetensors", SR3UNet(**trainer.net_kwargs), {**start_config, "trained_steps": 40})
    first = trainer.run()
    assert trained_steps(load_model(first["model"]).config) == 42
    resumed = Trainer(config, tmp_path / "run", device="cpu", max_steps=3, resume=True, progress=False).run()
    assert resumed["step"] == 3 and trained_steps(load_model(resumed["model"]).config) == 43
    exported = tmp_path / "exported.safetensors"
    out = subprocess.run([sys.executable, str(REPO / "pipelines" / "export_model.py"), str(tmp_path / "run"),
                          str(exported)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    config_out = load_model(exported).config
    assert (config_out["trained_steps"], config_out["exported_from_step"]) == (43, 3)
    # files from before the count know their last run's step only; hand-made ones nothing
    assert trained_steps({"exported_from_step": 7}) == 7 and trained_steps({}) == 0


@needs_prostatex
def test_init_from_may_change_the_dropout_but_not_the_weights_shapes(tmp_path):
    """Dropout has no weights, so a run may continue a model with another dropout rate; a network
    of other shapes is refused with the file's name."""
    from mrisr.diffusion import PartialDiffusionInferer
    from mrisr.models import model_config, save_model
    from mrisr.networks import SR3UNet

    trainer = Trainer(load_config(TINY), tmp_path / "a", device="cpu", max_steps=1, progress=False)
    start = SR3UNet(**trainer.net_kwargs)
    save_model(tmp_path / "start.safetensors", start,
               model_config(trainer.net_kwargs, PartialDiffusionInferer(objective="partdiff"), "in", 4))
    dropped = Trainer(load_config(TINY, {"network": {"dropout": 0.1}}), tmp_path / "b", device="cpu", max_steps=1,
                      progress=False)
    assert dropped.net_kwargs["dropout"] == 0.1
    dropped.init_from(str(tmp_path / "start.safetensors"))
    reference = load_model(tmp_path / "start.safetensors").network.state_dict()
    for name, value in dropped.network.state_dict().items():
        assert torch.equal(value, reference[name]), name
    other = Trainer(load_config(TINY, {"network": {"channels": [32, 32, 32]}}), tmp_path / "c", device="cpu",
                    max_steps=1, progress=False)
    with pytest.raises(ConfigError, match="start.safetensors: its network config differs"):
        other.init_from(str(tmp_path / "start.safetensors"))


def test_set_replaces_one_network_value_and_keeps_the_rest(tmp_path):
    # a file's network section replaces the default one as a whole, but --set names one value: the
    # file's preset (and with it the attention levels) must survive --set network.channels
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {datalist: list.json}\nnetwork: {preset: small, channels: [16, 32, 64, 64]}\n")
    assert load_config(cfg)["network"] == {"preset": "small", "channels": [16, 32, 64, 64]}
    config = load_config(cfg, {"network": {"channels": [32, 64, 128, 128]}})
    assert config["network"] == {"preset": "small", "channels": [32, 64, 128, 128]}
    # a network argument the file does not name can be set too; other sections stay strict
    assert load_config(cfg, {"network": {"num_res_blocks": 3}})["network"]["num_res_blocks"] == 3
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        load_config(cfg, {"optim": {"learning_rate": 1.0}})
    # the schedules' sections merge the same way under --set
    steps = load_config(cfg)["schedules"]["train"]
    changed = load_config(cfg, {"schedules": {"train": {"beta_end": 0.02}}})["schedules"]["train"]
    assert changed == {**steps, "beta_end": 0.02}
