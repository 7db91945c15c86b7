"""Smoke checks of the benchmark pipelines on real data (classical methods only: seconds)."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import subprocess
import sys
from types import ModuleType

import numpy as np
import pytest

from conftest import REPO, make_affine, needs_prostatex


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
                                   "--precision", "fp32", "--out", str(out)]) == 0
    blob = json.loads((out / "benchmark.json").read_text())
    assert blob["factor"] == (4 if plane == "in" else 6)
    assert blob["precision"] == "fp32"  # recorded with the numbers (bf16 is the default on AVX-512 CPUs)
    assert "learned methods in fp32" in (out / "benchmark.md").read_text()
    bic, bsp = blob["methods"]["Bicubic"], blob["methods"]["B-spline"]
    # the paper's ProstateX x4 bicubic baseline is 24.7 dB / 0.68 (Table 3)
    assert 22.0 < bic["psnr"] < 30.0 and 0.5 < bic["ssim"] < 0.9
    assert bsp["psnr"] > bic["psnr"] - 0.5
    assert bic["consistency_mse"] < 0.01 and bic["network_evaluations"] == 0
    # bicubic keeps little above the input's band, measured along the degraded axis (through-plane
    # that is the superior-inferior one: along the other axis nothing was removed)
    assert bic["spectral_high_db"] < -6.0
    # the error budget: the bands add up to the MSE behind the PSNR, the bounds are above bicubic
    budget = blob["error_budget"]
    for label, m in budget["methods"].items():
        assert m["error_low"] + m["error_high"] == pytest.approx(m["mse"], rel=1e-9)
    assert budget["methods"]["Bicubic"]["removed_high"] == pytest.approx(0.0, abs=1e-12)
    assert 10 * np.log10(4 / budget["methods"]["Bicubic"]["mse"]) <= bic["psnr"] + 1e-9  # Jensen: mean of PSNRs
    bounds = budget["bounds_gain_db"]
    assert 0 < bounds["input band exact, bicubic above it"] < bounds["noise floor"]
    assert 0.005 < budget["noise_sigma"] < 0.1
    assert (out / "patches.png").stat().st_size > 1000


def test_benchmark_mri_bad_device_is_one_line_exit_2_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(REPO / "pipelines" / "benchmark_mri.py"), "--device", "tpu",
                           "--methods", "bicubic", "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["benchmark_mri: device must be auto, cpu or cuda, got 'tpu'"]
    assert not out.exists()


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


def test_linear_baseline_recovers_an_exactly_linear_upsampler(rng):
    linear = _pipeline("linear_baseline")
    # through-plane x6: each fine row is one thick row or its lower neighbour (clamped at the end)
    for plane, factor, radius in (("through", 6, 2), ("in", 4, 1)):
        def make(n, h=7, w=9):
            lr = rng.standard_normal((n, h, w))
            rows = np.minimum(np.arange(h * factor) // factor + (np.arange(h * factor) % factor >= factor // 2), h - 1)
            hr = lr[:, rows, :]
            if plane == "in":  # and each fine column its thick column
                hr = np.repeat(hr, factor, axis=2)
            return lr, hr
        weights = linear.fit([make(3), make(2)], plane, factor, radius, ridge=0.0)
        lr, hr = make(2, 5, 6)
        np.testing.assert_allclose(linear.apply(weights, lr, plane, factor, radius), hr, atol=1e-9)


def test_linear_baseline_fitted_on_a_volume_is_at_least_bicubic_there(tmp_path):
    """Bicubic x4 (4 x 4 taps, edges clamped) is one of the filters of a radius-2 window, so the
    least-squares filter fitted on a volume cannot do worse on it; main reports that gain."""
    from scipy.ndimage import gaussian_filter

    from mrisr.io import Volume, save_volume

    linear = _pipeline("linear_baseline")
    data = gaussian_filter(np.random.default_rng(5).standard_normal((48, 40, 3)), (1.5, 1.5, 0)) * 100 + 400
    image = tmp_path / "vol.nii.gz"
    save_volume(Volume(data.astype(np.float32), make_affine(spacing=(0.6, 0.6, 3.0))), image)
    from mrisr.data import DataEntry

    planes = linear.plane_pairs([DataEntry(str(image), "p")], "in", 4)[str(image)]
    lr, hr, bicubic = (np.concatenate(a) for a in zip(*planes))
    assert lr.shape == (3, 12, 10) and hr.shape == bicubic.shape == (3, 48, 40)
    weights = linear.fit([(lr, hr)], "in", 4, 2)
    fitted = linear.apply(weights, lr, "in", 4, 2)
    assert np.mean((fitted - hr) ** 2) <= np.mean((bicubic - hr) ** 2) * (1 + 1e-6)
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"training": [{"image": str(image)}], "validation": [{"image": str(image)}]}))
    with contextlib.redirect_stdout(io.StringIO()):
        assert linear.main(["--plane", "in", "--radius", "2", "--datalist", str(datalist),
                            "--json", str(tmp_path / "out.json")]) == 0
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["taps"] == 26 and report["series"]["vol.nii.gz"]["planes"] == 3
    assert report["gain_db"] > 0


def test_symmetric_mean_keeps_equivariant_maps_and_cancels_what_breaks_the_symmetry(rng):
    import torch

    study = _pipeline("sampling_study")
    assert len(set(study.symmetries("through"))) == 4 and len(set(study.symmetries("in"))) == 8
    image = torch.from_numpy(rng.standard_normal((1, 1, 12, 12)))
    # an equivariant map (pointwise) comes back unchanged
    torch.testing.assert_close(study.symmetric_mean(torch.tanh, image, "in"), torch.tanh(image))
    # a bias odd along rows and columns (antisymmetric ramps) averages out exactly
    ramp = torch.linspace(-1, 1, 12, dtype=torch.float64)
    biased = lambda x: x + ramp[:, None] + 0.5 * ramp[None, :]  # noqa: E731
    for kind in ("in", "through"):
        torch.testing.assert_close(study.symmetric_mean(biased, image, kind), image)
    # an even bias survives: the mean cannot remove what every orientation agrees on
    even = lambda x: x + ramp[:, None] ** 2  # noqa: E731
    torch.testing.assert_close(study.symmetric_mean(even, image, "through"), image + ramp[:, None] ** 2)


def test_zonal_spread_over_segmenters_is_mean_and_range_and_skips_what_a_run_skipped(tmp_path):
    zonal = _pipeline("zonal_segmentation_eval")
    nan = float("nan")

    def run(orig: float, bic4: float, reg4: float, reg8: float) -> dict:
        zone = {"bicubic": {"4": bic4, "8": bic4 / 2}, "regression": {"4": reg4, "8": reg8}}
        return {"original": {"PZ": orig, "gland": orig}, "mean_dice": {"PZ": zone, "gland": zone}}

    # written and read back as the evaluation writes it (json keeps NaN for a skipped method)
    runs = {f"seed{i}": run(*values) for i, values in enumerate([(0.9, 0.2, 0.6, nan), (0.8, 0.4, 0.9, nan),
                                                                   (1.0, 0.3, 0.3, nan)])}
    (tmp_path / "dice.json").write_text(json.dumps(runs))
    lines = zonal.spread_table(json.loads((tmp_path / "dice.json").read_text())).splitlines()
    assert lines[0] == "| factor | method | Dice PZ | Dice gland |"
    assert lines[2] == "| - | original | 0.900 [0.800, 1.000] | 0.900 [0.800, 1.000] |"
    assert lines[3] == "| x4 | bicubic | 0.300 [0.200, 0.400] | 0.300 [0.200, 0.400] |"
    assert lines[4] == "| x4 | regression | 0.600 [0.300, 0.900] | 0.600 [0.300, 0.900] |"
    assert lines[5] == "| x8 | bicubic | 0.150 [0.100, 0.200] | 0.150 [0.100, 0.200] |"
    assert len(lines) == 6  # regression x8: no model, no row


def test_zonal_eval_refuses_two_segmenter_folders_of_one_name_in_one_line(tmp_path, capsys):
    zonal = _pipeline("zonal_segmentation_eval")
    code = zonal.main(["--segmenters", str(tmp_path / "a" / "seg"), str(tmp_path / "b" / "seg"),
                       "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "distinct names" in err
    assert not (tmp_path / "out").exists()


def test_series_statistics_closed_forms(tmp_path):
    """A wave above the x4 input's band puts all of a plane's power above it, one below puts none
    there; a wave along one axis has no diagonal Haar detail, so no noise; white noise puts 15/16 of
    its power above the band, all of it noise; main reports the same per series."""
    from mrisr.io import Volume, save_volume

    stats = _pipeline("series_statistics")
    y = np.arange(64)[:, None] * np.ones((1, 48))
    high, low = np.cos(2 * np.pi * 0.25 * y), np.cos(2 * np.pi * 0.0625 * y)
    assert stats.plane_statistics(high, 4)["power"] == pytest.approx(0.5)  # a unit wave's mean square
    assert stats.plane_statistics(high, 4)["above"] == pytest.approx(0.5)
    assert stats.plane_statistics(low, 4)["above"] == pytest.approx(0.0, abs=1e-12)
    assert stats.plane_statistics(high, 4)["noise_above"] == pytest.approx(0.0, abs=1e-12)
    noise = np.random.default_rng(3).standard_normal((256, 256))
    s = stats.plane_statistics(noise, 4)
    assert s["above"] / s["power"] == pytest.approx(15 / 16, abs=0.01)
    assert s["noise_above"] / s["above"] == pytest.approx(1.0, abs=0.05)

    data = np.stack([100 + 50 * high, 100 + 50 * low], axis=2).astype(np.float32)
    image = tmp_path / "waves.nii.gz"
    save_volume(Volume(data, make_affine(spacing=(0.5, 0.5, 3.0))), image)
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"training": [{"image": str(image)}], "validation": []}))
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert stats.main(["--datalist", str(datalist), "--out", str(tmp_path / "out")]) == 0
    assert "| training | waves.nii.gz | 0.5 x 0.5 x 3 |" in out.getvalue()
    (series,) = json.loads((tmp_path / "out" / "series_statistics.json").read_text())["series"]
    assert series["share_above"] == pytest.approx(0.5)  # one plane of two holds all its power above
    assert series["noise_share_of_above"] == pytest.approx(0.0, abs=1e-9)


def test_series_statistics_bad_input_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "series_statistics.py"), "--datalist",
                           str(tmp_path / "missing.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "datalist not found" in proc.stderr


@needs_prostatex
def test_series_statistics_lists_the_acquisitions_of_real_dicom():
    """The held-out patient's series come from another scanner than the training patients'."""
    from conftest import prostatex_dicom

    stats = _pipeline("series_statistics")
    (tra,) = stats.dicom_acquisitions(prostatex_dicom("ProstateX-0218", 5))
    assert tra["patient"] == "ProstateX-0218" and tra["series"] == "5" and tra["slices"] == 20
    assert tra["ManufacturerModelName"] == "TrioTim" and tra["PixelSpacing"] == [0.625, 0.625]
    assert tra["AcquisitionMatrix"] == [320.0, 0.0, 0.0, 310.0] and tra["PercentSampling"] == 97.0
    (train,) = stats.dicom_acquisitions(prostatex_dicom("ProstateX-0000", 4))
    assert train["ManufacturerModelName"] == "Skyra" and train["Rows"] == 384 and train["PixelSpacing"] == [0.5, 0.5]
