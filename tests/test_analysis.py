"""The convergence analysis (PartDiff Fig. 3)."""

from __future__ import annotations

import json

import numpy as np

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
    assert f"| x4 | in | 3 | {k} " in paths["markdown"].read_text()


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
