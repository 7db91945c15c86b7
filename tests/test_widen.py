"""Function-preserving widening of a trained network (mrisr.networks.widen, pipelines/widen_model.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import REPO, needs_prostatex
from mrisr.models import load_model, model_config, save_model, sha256
from mrisr.networks import SR3UNet
from mrisr.networks.widen import widen_network, widened_config

SCRIPT = REPO / "pipelines" / "widen_model.py"


def _acting(config: dict, seed: int = 0) -> SR3UNet:
    """A network whose every weight acts: the zero-initialised last convolutions of each block and
    the attention projections would hide a wrong widening of what feeds them."""
    torch.manual_seed(seed)
    net = SR3UNet(**config)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_wide_network_computes_what_the_narrow_one_computes(factor, spatial_dims):
    config = {"spatial_dims": spatial_dims, "in_channels": 2, "out_channels": 1, "channels": [16, 32, 32],
              "num_res_blocks": 1, "attention_levels": [False, True, True], "channels_per_group": 16}
    narrow = _acting(config)
    wide, wide_config = widen_network(narrow, config, factor=factor, seed=1)
    assert wide_config == widened_config(config, factor)
    assert wide_config["channels"] == [16 * factor, 32 * factor, 32 * factor]
    assert sum(p.numel() for p in wide.parameters()) > (factor ** 2 - 0.5) * sum(p.numel() for p in narrow.parameters())
    size = (24, 20) if spatial_dims == 2 else (12, 8, 8)
    x = torch.randn(3, 2, *size)
    levels = torch.tensor([0.0, 0.4, 0.97])  # the regression models run at 0; diffusion at every level
    with torch.no_grad():
        a, b = narrow(x, levels), wide.eval()(x, levels)
    assert float(a.abs().max()) > 1.0  # an output worth comparing
    torch.testing.assert_close(b, a, atol=2e-5 * float(a.abs().max()), rtol=0)


def test_the_copies_split_their_weights_unequally_so_training_separates_them():
    config = {"spatial_dims": 2, "in_channels": 2, "out_channels": 1, "channels": [16, 32],
              "num_res_blocks": 1, "attention_levels": [False, True], "channels_per_group": 16}
    narrow = _acting(config)
    wide, _ = widen_network(narrow, config, factor=2, jitter=0.5, seed=0)
    # the first block's convolution reads the stem's channels: channel c and its copy c + 16 share
    # the narrow weight, in unequal parts that sum to it
    w = wide.down[0][0].conv1.weight.detach()
    first, second = w[:, :16], w[:, 16:]
    target = narrow.down[0][0].conv1.weight.detach()
    torch.testing.assert_close(first + second, target.repeat(2, 1, 1, 1), atol=1e-6, rtol=0)
    share = first / (first + second)
    assert 0.25 - 1e-4 <= float(share.min()) and float(share.max()) <= 0.75 + 1e-4
    assert float(share.std()) > 0.05
    # so the copies' incoming weights get different gradients from the first step on
    x = torch.randn(2, 2, 16, 16)
    wide.train()(x, torch.tensor([0.5, 0.5])).square().mean().backward()
    grad = wide.stem.weight.grad
    assert not torch.allclose(grad[:16], grad[16:])
    # with no jitter the halves are equal, and the copies would stay copies
    even, _ = widen_network(narrow, config, factor=2, jitter=0.0)
    w = even.down[0][0].conv1.weight.detach()
    torch.testing.assert_close(w[:, :16], w[:, 16:])


def test_bad_widening_requests_are_refused():
    config = {"spatial_dims": 2, "in_channels": 2, "out_channels": 1, "channels": [16, 32],
              "num_res_blocks": 1, "attention_levels": [False, False], "channels_per_group": 16}
    net = SR3UNet(**config)
    with pytest.raises(ValueError, match="jitter"):
        widen_network(net, config, jitter=1.0)
    with pytest.raises(ValueError, match="whole number"):
        widen_network(net, config, factor=0)
    with pytest.raises(ValueError, match="describes channels"):
        widen_network(net, {**config, "channels": [32, 64]})


def test_a_shipped_model_widened_gives_its_outputs(tmp_path):
    """The shipped through-plane regression model (narrow, 16-32-64-64) widened by the script to
    the `small` preset's channels: the file loads, names its origin and computes the same image."""
    shipped = REPO / "mrisr" / "weights" / "prostatex_through_x6_regression.safetensors"
    out = tmp_path / "wide.safetensors"
    run = subprocess.run([sys.executable, str(SCRIPT), str(shipped), str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    narrow, wide = load_model(shipped), load_model(out)
    assert wide.config["network"]["channels"] == [32, 64, 128, 128]
    assert wide.config["network"]["attention_levels"] == narrow.config["network"]["attention_levels"]
    assert wide.config["widened_from"] == {"file": shipped.name, "sha256": sha256(shipped), "factor": 2}
    assert wide.config["trained_steps"] == narrow.config["trained_steps"]
    cond = torch.rand(1, 1, 96, 80) * 2 - 1
    with torch.no_grad():
        a = narrow.inferer.sample(cond, narrow.network, method="regression")
        b = wide.inferer.sample(cond, wide.network, method="regression")
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


def test_the_script_refuses_bad_requests_in_one_line(tmp_path, capsys):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import widen_model
    finally:
        sys.path.remove(str(SCRIPT.parent))
    shipped = REPO / "mrisr" / "weights" / "prostatex_inplane_x4_regression.safetensors"
    cases = [([str(shipped), str(shipped)], "would replace"),
             ([str(shipped), str(tmp_path / "w.pt")], ".safetensors"),
             ([str(shipped), str(tmp_path / "w.safetensors"), "--jitter", "1"], "--jitter"),
             ([str(tmp_path / "none.safetensors"), str(tmp_path / "w.safetensors")], "model not found")]
    for args, message in cases:
        assert widen_model.main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "w.safetensors").exists()


@needs_prostatex
def test_training_continues_from_a_widened_model(tmp_path):
    """`mrisr train --init-from WIDE --set network.channels=...`: the run starts from the widened
    weights (its first validation is the narrow model's) and counts the narrow model's steps."""
    from mrisr.diffusion import PartialDiffusionInferer
    from mrisr.models import trained_steps
    from mrisr.training import Trainer, load_config

    tiny = REPO / "configs" / "tiny.yaml"
    config = load_config(tiny)
    trainer = Trainer(config, tmp_path / "narrow_run", device="cpu", progress=False)
    narrow = _acting(trainer.net_kwargs, seed=3)
    start = save_model(tmp_path / "narrow.safetensors", narrow,
                       {**model_config(trainer.net_kwargs, PartialDiffusionInferer(objective="partdiff"), "in", 4),
                        "trained_steps": 30})
    out = tmp_path / "wide.safetensors"
    run = subprocess.run([sys.executable, str(SCRIPT), str(start), str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    wide_config = load_config(tiny, {"network": {"channels": [32, 64, 64]}, "init_from": str(out)})
    assert wide_config["network"] == {"preset": "tiny", "channels": [32, 64, 64]}
    wide_trainer = Trainer(wide_config, tmp_path / "wide_run", device="cpu", max_steps=1, progress=False)
    wide_trainer.init_from(str(out))
    torch.testing.assert_close(wide_trainer.network.state_dict(), load_model(out).network.state_dict())
    summary = wide_trainer.run()
    trained = load_model(summary["model"]).config
    assert trained_steps(trained) == 31
    # the model trained from the widened file still names the narrow model it was widened from,
    # and so does a run resumed from its checkpoint (whose init_from is not read again)
    assert trained["widened_from"] == {"file": "narrow.safetensors", "sha256": sha256(start), "factor": 2}
    resumed = Trainer(wide_config, tmp_path / "wide_run", device="cpu", max_steps=2, resume=True, progress=False)
    assert load_model(resumed.run()["model"]).config["widened_from"] == trained["widened_from"]
