"""The convergence analysis (PartDiff Fig. 3)."""

from __future__ import annotations

import json

import numpy as np
import torch

from mrisr.analysis import convergence_curve, write_convergence_report
from mrisr.diffusion import inference_schedule

from conftest import REPO, needs_prostatex, run_mrisr


def _planes(rng, n=3):
    yy, xx = np.meshgrid(np.linspace(-1, 1, 48), np.linspace(-1, 1, 48), indexing="ij")
    return [np.clip(np.sin(8 * xx + k) * np.cos(6 * yy) + 0.1 * rng.normal(size=xx.shape), -1, 1) for k in range(n)]


def test_curves_start_apart_and_meet(rng, tmp_path):
    curve = convergence_curve(_planes(rng), 4, "in", tolerance_db=0.1)
    sched = inference_schedule()
    assert curve.steps.tolist() == list(range(sched.num_steps + 1))
    assert np.isinf(curve.psnr_hr[0]) and np.isfinite(curve.psnr_lr[0])
    assert curve.psnr_hr[1] > curve.psnr_lr[1] + 5  # HR latents are far more informative early on
    k = curve.meeting_k
    assert k is not None and 1 < k < 100
    assert abs(curve.psnr_hr[k] - curve.psnr_lr[k]) <= 0.1 < abs(curve.psnr_hr[k - 1] - curve.psnr_lr[k - 1])
    # at the end both are noise: PSNR of pure noise against the image, the same for both
    assert abs(curve.psnr_hr[-1] - curve.psnr_lr[-1]) < 0.01
    # a larger factor loses more, so its curves meet later
    assert convergence_curve(_planes(rng), 8, "in").meeting_k >= convergence_curve(_planes(rng), 2, "in").meeting_k
    paths = write_convergence_report([curve], tmp_path)
    assert paths["png"].stat().st_size > 1000
    blob = json.loads(paths["json"].read_text())
    assert blob["curves"][0]["meeting_k"] == k
    assert f"| x4 | in | LR | 3 | {k} " in paths["markdown"].read_text()


def test_a_better_start_meets_the_hr_curve_sooner(rng):
    """Diffusing an image closer to HR (here: the LR image moved half way back towards the clean
    plane it came from, a stand-in for a regression output) makes the curves meet earlier."""
    planes = _planes(rng)
    base = convergence_curve(planes, 4, "in", tolerance_db=0.1, seed=3)
    same = convergence_curve(planes, 4, "in", tolerance_db=0.1, seed=3, start=lambda lr: lr.clone())
    np.testing.assert_array_equal(same.psnr_lr, base.psnr_lr)  # an identity start changes nothing
    hr = iter([torch.from_numpy(p[None, None].astype(np.float32)) for p in planes])
    closer = convergence_curve(planes, 4, "in", tolerance_db=0.1, seed=3, start_name="closer",
                               start=lambda lr: 0.5 * lr + 0.5 * next(hr))
    assert closer.start == "closer" and closer.psnr_lr[0] > base.psnr_lr[0] + 3
    assert closer.meeting_k < base.meeting_k


@needs_prostatex
def test_analyze_convergence_cli(tmp_path):
    result = run_mrisr("analyze", "convergence", REPO / "configs" / "prostatex.json", "--plane", "through",
                       "-o", tmp_path / "conv")
    assert result.returncode == 0, result.stderr
    blob = json.loads((tmp_path / "conv" / "convergence.json").read_text())
    (curve,) = blob["curves"]
    assert curve["factor"] == 6 and curve["kind"] == "through" and curve["n_planes"] == 19 + 23
    assert 10 < curve["meeting_k"] < 60
    assert (tmp_path / "conv" / "convergence.png").exists()
    # a start model of the wrong kind is one line, exit 2
    from mrisr.models import default_model

    wrong = run_mrisr("analyze", "convergence", REPO / "configs" / "prostatex.json", "--plane", "through",
                      "--start-model", default_model("partdiff", "through", 6).path, "-o", tmp_path / "conv2")
    assert wrong.returncode == 2 and "must be a regression model" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
