"""Smoke checks of the benchmark pipelines on real data (classical methods only: seconds)."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys
from types import ModuleType

import pytest

from conftest import REPO, needs_prostatex


def _pipeline(name: str) -> ModuleType:
    """A script of pipelines/ imported as a module (its ``main`` takes the command line as a list)."""
    sys.path.insert(0, str(REPO / "pipelines"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


@needs_prostatex
@pytest.mark.parametrize("plane", ["in", "through"])
def test_benchmark_mri_classical(tmp_path, plane):
    out = tmp_path / plane
    benchmark_mri = _pipeline("benchmark_mri")  # in this process: the script's main, without a second start-up
    with contextlib.redirect_stdout(io.StringIO()):
        assert benchmark_mri.main(["--plane", plane, "--methods", "bicubic", "bspline", "--slices", "2",
                                   "--out", str(out)]) == 0
    blob = json.loads((out / "benchmark.json").read_text())
    assert blob["factor"] == (4 if plane == "in" else 6)
    bic, bsp = blob["methods"]["Bicubic"], blob["methods"]["B-spline"]
    # the paper's ProstateX x4 bicubic baseline is 24.7 dB / 0.68 (Table 3)
    assert 22.0 < bic["psnr"] < 30.0 and 0.5 < bic["ssim"] < 0.9
    assert bsp["psnr"] > bic["psnr"] - 0.5
    assert bic["consistency_mse"] < 0.01 and bic["network_evaluations"] == 0
    assert (out / "patches.png").stat().st_size > 1000


@needs_prostatex
def test_benchmark_roi_bicubic_box_is_the_whole_volume_inside_it(tmp_path):
    benchmark_roi = _pipeline("benchmark_roi")
    assert benchmark_roi.central_box((320, 53, 19), 1) == ((80, 240), (0, 53), (4, 15))
    assert benchmark_roi.main(["--series", "cor_s6", "--methods", "bicubic", "--device", "cpu",
                               "--json", str(tmp_path / "roi.json")]) == 0
    rows = json.loads((tmp_path / "roi.json").read_text())["series"]["cor_s6"]["rows"]
    assert rows["bicubic roi"]["psnr_db"] == rows["bicubic whole"]["psnr_db"]  # the same voxels, to the bit
    assert rows["bicubic roi vs whole"] == {"agreement_db": None, "identical": True}
    assert 20.0 < rows["bicubic whole"]["psnr_db"] < 26.0  # 22.3 dB measured (docs/benchmarks.md)
