"""The real ``mrisr`` entry point: happy paths and every kind of bad input.

Bad input must give one line on stderr naming the problem, exit code 2, no traceback, no file
written and the input untouched.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrisr.io import Volume, load_volume, save_volume

from conftest import (PROSTATEX, file_digest, make_affine, needs_prostatex, prostatex_nifti, run_mrisr,
                      run_mrisr_subprocess, starts_processes)


@pytest.fixture
def small_volume(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1000, size=(12, 10, 5)).astype(np.float32)
    (tmp_path / "in").mkdir()
    return save_volume(Volume(data, make_affine("oblique")), tmp_path / "in" / "small.nii.gz")


def _unwritable_folder(tmp_path: Path) -> Path | None:
    """A folder this process cannot create files in (a chmod'ed one, or /sys as root)."""
    import os
    import tempfile

    candidates = [tmp_path / "locked"]
    candidates[0].mkdir()
    candidates[0].chmod(0o555)
    if os.geteuid() == 0:  # root ignores permission bits
        candidates.append(Path("/sys"))
    for folder in candidates:
        try:
            fd, probe = tempfile.mkstemp(dir=folder)
        except OSError:
            return folder
        os.close(fd)
        os.unlink(probe)
    return None


def _assert_refused(result, *phrases: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mrisr: error: "), lines[0]
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


def _bad_cases(tmp_path: Path, good: Path) -> dict[str, tuple[list[str], tuple[str, ...], Path]]:
    """name -> (arguments, phrases expected in the message, the input to check)."""
    cases: dict[str, tuple[list[str], tuple[str, ...], Path]] = {}
    out = tmp_path / "out" / "x.nii.gz"
    missing = tmp_path / "nope.nii.gz"
    cases["missing"] = ([str(missing), "--plane", "in", "--factor", "2", "-o", str(out)], ("not found", "nope.nii.gz"), missing)
    png = tmp_path / "pic.png"
    from PIL import Image
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    fake = tmp_path / "fake.nii.gz"
    shutil.copy(png, fake)
    cases["png_renamed"] = ([str(fake), "--plane", "in", "--factor", "2", "-o", str(out)], ("fake.nii.gz", "not a readable NIfTI"), fake)
    cases["png"] = ([str(png), "--plane", "in", "--factor", "2", "-o", str(out)], ("pic.png", "not a supported"), png)
    text = tmp_path / "notes.nii.gz"
    text.write_text("just some text\n")
    cases["text_renamed"] = ([str(text), "--plane", "in", "--factor", "2", "-o", str(out)], ("notes.nii.gz", "not a readable NIfTI"), text)
    trunc = tmp_path / "trunc.nii.gz"
    blob = good.read_bytes()
    trunc.write_bytes(blob[: len(blob) // 2])
    cases["truncated"] = ([str(trunc), "--plane", "in", "--factor", "2", "-o", str(out)], ("trunc.nii.gz", "not a readable NIfTI"), trunc)
    corrupt = tmp_path / "corrupt.nii.gz"
    raw = bytearray(gzip.decompress(blob))
    corrupt.write_bytes(gzip.compress(bytes(raw[:200])))  # header cut inside
    cases["corrupt"] = ([str(corrupt), "--plane", "in", "--factor", "2", "-o", str(out)], ("corrupt.nii.gz",), corrupt)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), str(flat))
    cases["2d"] = ([str(flat), "--plane", "in", "--factor", "2", "-o", str(out)], ("2D image",), flat)
    frames = tmp_path / "frames.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 4, 3), np.float32), np.eye(4)), str(frames))
    cases["4d"] = ([str(frames), "--plane", "in", "--factor", "2", "-o", str(out)], ("4D with 3 frames",), frames)
    cases["factor_1"] = ([str(good), "--plane", "in", "--factor", "1", "-o", str(out)], ("--factor", "integer >= 2"), good)
    cases["factor_float"] = ([str(good), "--plane", "in", "--factor", "2.5", "-o", str(out)], ("--factor", "'2.5'"), good)
    cases["axis"] = ([str(good), "--plane", "through", "--factor", "2", "--axis", "3", "-o", str(out)], ("--axis", "'3'"), good)
    nan = tmp_path / "nan.nii.gz"
    data = np.ones((6, 6, 4), np.float32)
    data[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(nan))
    cases["nan"] = ([str(nan), "--plane", "in", "--factor", "2", "-o", str(out)], ("NaN or Inf", "--nonfinite"), nan)
    cases["output_is_input"] = ([str(good), "--plane", "in", "--factor", "2", "-o", str(good), "--overwrite"], ("overwrite the input",), good)
    existing = tmp_path / "out" / "exists.nii.gz"
    existing.parent.mkdir(exist_ok=True)
    existing.write_bytes(b"keep me")
    cases["exists"] = ([str(good), "--plane", "in", "--factor", "2", "-o", str(existing)], ("exists", "--overwrite"), existing)
    cases["no_folder"] = ([str(good), "--plane", "in", "--factor", "2", "-o", str(tmp_path / "nodir" / "x.nii.gz")], ("does not exist",), good)
    cases["bad_method"] = ([str(good), "--plane", "in", "--factor", "2", "--method", "magic", "-o", str(out)], ("unknown method", "magic"), good)
    cases["roi_outside"] = ([str(good), "--plane", "in", "--factor", "2", "--roi", "0:99,:,:", "-o", str(out)],
                            ("--roi 0:99 on axis 0", "inside 0:"), good)
    cases["roi_malformed"] = ([str(good), "--plane", "in", "--factor", "2", "--roi", "1:3,2:4", "-o", str(out)],
                              ("three ranges",), good)
    cases["roi_mm_nowhere"] = ([str(good), "--plane", "in", "--factor", "2", "--roi-mm", "-9000:-8000,:,:", "-o",
                                str(out)], ("holds no voxel centre", "mm"), good)
    locked = _unwritable_folder(tmp_path)
    if locked is not None:
        cases["unwritable"] = ([str(good), "--plane", "in", "--factor", "2", "-o", str(locked / "x.nii.gz")], ("not writable",), good)
    if PROSTATEX.is_dir():
        study = PROSTATEX / "dicom" / "ProstateX-0218"
        cases["dicom_several"] = ([str(study), "--plane", "in", "--factor", "2", "-o", str(out)],
                                  ("holds 3 DICOM series", "--series", "t2_tse_tra_320_p2"), study)
    return cases


def test_bad_inputs_get_one_line_and_exit_2(tmp_path, small_volume):
    (tmp_path / "out").mkdir(exist_ok=True)
    cases = _bad_cases(tmp_path, small_volume)
    expected = {"missing", "png_renamed", "png", "text_renamed", "truncated", "corrupt", "2d", "4d",
                "factor_1", "factor_float", "axis", "nan", "output_is_input", "exists", "no_folder", "bad_method"}
    assert expected <= set(cases)
    for name, (args, phrases, inp) in cases.items():
        before_in = file_digest(inp)
        before_out = sorted(p.name for p in (tmp_path / "out").iterdir())
        result = run_mrisr("upsample", *args, cwd=tmp_path)
        try:
            _assert_refused(result, *phrases)
        except AssertionError as exc:
            raise AssertionError(f"case {name}: {exc}") from exc
        assert file_digest(inp) == before_in, f"case {name} changed its input"
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before_out, f"case {name} wrote a file"
        assert not list(tmp_path.glob("*_sr.nii.gz")), f"case {name} wrote a default output"
    assert (tmp_path / "out" / "exists.nii.gz").read_bytes() == b"keep me"


def test_debug_shows_the_traceback(tmp_path):
    result = run_mrisr("upsample", tmp_path / "nope.nii.gz", "--plane", "in", "--factor", "2", "--debug")
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "input not found" in result.stderr


def test_upsample_writes_default_output_and_report(tmp_path, small_volume):
    before = file_digest(small_volume)
    result = run_mrisr("upsample", small_volume, "--plane", "through", "--factor", "3", "--method", "bicubic",
                       "--report", "run.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "small_sr.nii.gz"
    assert str(out) in result.stdout
    vol, up = load_volume(small_volume), load_volume(out)
    assert up.shape == (12, 10, 15)
    expect = vol.affine.copy()
    expect[:3, 2] /= 3
    expect[:3, 3] -= vol.affine[:3, 2] / 3
    np.testing.assert_allclose(up.affine, expect, atol=1e-5)
    # through-plane bicubic keeps the in-plane samples: every third slice's mean tracks the input
    assert abs(up.data.mean() - vol.data.mean()) < 0.02 * vol.data.mean()
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["method"] == "bicubic" and report["plane"] == "through" and report["factor"] == 3
    assert report["axis"] == 2 and report["input_shape"] == [12, 10, 5] and report["output_shape"] == [12, 10, 15]
    assert report["output_spacing_mm"][2] == pytest.approx(3.6 / 3)
    assert report["device"] == "cpu" and report["seconds"] >= 0 and report["network_evaluations"] == 0
    assert file_digest(small_volume) == before
    # a second run without --overwrite is refused and leaves the first output alone
    first = out.read_bytes()
    again = run_mrisr("upsample", small_volume, "--plane", "through", "--factor", "3", "--method", "bicubic",
                      cwd=tmp_path)
    _assert_refused(again, "exists")
    assert out.read_bytes() == first
    assert run_mrisr("upsample", small_volume, "--plane", "through", "--factor", "3", "--method", "bicubic",
                     "--overwrite", "--quiet", cwd=tmp_path).returncode == 0


@needs_prostatex
def test_upsample_dicom_series_in_plane_bspline(tmp_path):
    from mrisr.io import list_dicom_series

    study = PROSTATEX / "dicom" / "ProstateX-0218"
    tra = next(s for s in list_dicom_series(study) if "tra" in s.description)
    result = run_mrisr("upsample", study, "--series", tra.uid, "--plane", "in", "--factor", "2",
                       "--method", "bspline", "-o", tmp_path / "tra_x2.nii.gz", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    up = load_volume(tmp_path / "tra_x2.nii.gz")
    ref = load_volume(prostatex_nifti("ProstateX-0218", "tra", 5))
    assert up.shape == (640, 640, 20)
    # downsampling the output by 2x2 block means comes back close to the input (same units)
    blocks = up.data.reshape(320, 2, 320, 2, 20).mean(axis=(1, 3))
    assert np.abs(blocks - ref.data).mean() < 0.02 * ref.data.mean()


@needs_prostatex
def test_info_reports_geometry():
    result = run_mrisr("info", prostatex_nifti("ProstateX-0218", "tra", 5))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "320 x 320 x 20" in out and "0.625 x 0.625 x 3.6" in out
    assert "LPS" in out and "slice axis:   2" in out
    assert "--plane through --factor 6: shape 320 x 320 x 120" in out
    assert "--plane in      --factor 4: shape 1280 x 1280 x 20" in out
    # where the voxel centres lie, in the form --roi-mm takes (x spans 320 voxels of 0.625 mm)
    x = re.search(r"voxel centres: x (-?[\d.]+):(-?[\d.]+), y (-?[\d.]+):(-?[\d.]+), z", out)
    assert x is not None and float(x[2]) - float(x[1]) == pytest.approx(319 * 0.625, abs=0.11)


def test_help_is_instant_and_lists_commands():
    """Instant by construction: ``--help`` imports none of the heavy libraries (a fresh
    interpreter, so nothing is imported already)."""
    result = run_mrisr_subprocess("--help")
    assert result.returncode == 0 and "upsample" in result.stdout and "info" in result.stdout
    probe = ("import sys, contextlib, io\nfrom mrisr.cli import main\nwith contextlib.redirect_stdout(io.StringIO()):\n"
             "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'monai', 'numpy', 'scipy', 'nibabel', 'SimpleITK', 'pydicom') "
             "if m in sys.modules))")
    heavy = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert heavy.returncode == 0 and heavy.stdout.strip() == "[]", heavy.stdout + heavy.stderr


def test_out_of_range_integers_are_one_line_errors(tmp_path, small_volume):
    for args, phrase in [(["--seed", "-1"], "--seed must be an integer >= 0"),
                         (["--factor", "1000000000000000000000"], "--factor must be an integer <= 64"),
                         (["--batch-size", "99999999999999999999"], "--batch-size must be an integer <= ")]:
        factor = [] if "--factor" in args else ["--factor", "2"]
        result = run_mrisr("upsample", small_volume, "--plane", "in", *factor, "--method", "bicubic", *args,
                           cwd=tmp_path)
        assert result.returncode == 2 and phrase in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    result = run_mrisr("analyze", "convergence", "x.json", "--seed", "-3", cwd=tmp_path)
    assert result.returncode == 2 and "--seed" in result.stderr


def test_shipped_partdiff_keeps_its_sampler_when_only_steps_are_given():
    from mrisr.errors import ConfigError
    from mrisr.inference import upsample_volume
    from mrisr.io import Volume

    vol = Volume(np.random.default_rng(0).random((8, 6, 2), dtype=np.float32), np.diag([0.6, 0.6, 3.6, 1.0]))
    out = upsample_volume(vol, "through", 6, method="partdiff", steps=2)
    assert out.extras["sampler"] == "ddim" and out.extras["steps"] == 2
    with pytest.raises(ConfigError, match="DDIM from step 50 takes at most 50"):
        upsample_volume(vol, "through", 6, method="partdiff", steps=100000)

    # --evaluations is the DDIM-only name of the same number; the ancestral sampler takes --k
    by_name = upsample_volume(vol, "through", 6, method="partdiff", evaluations=2)
    assert by_name.extras["steps"] == 2 and np.array_equal(by_name.volume.data, out.volume.data)
    with pytest.raises(ConfigError, match="--evaluations counts DDIM steps"):
        upsample_volume(vol, "through", 6, method="partdiff", sampler="ancestral", evaluations=2)
    with pytest.raises(ConfigError, match="not both"):
        upsample_volume(vol, "through", 6, method="partdiff", steps=2, evaluations=2)


@starts_processes
def test_sigterm_leaves_nothing_and_exits_143(tmp_path):
    import os
    import signal
    import threading
    import time

    rng = np.random.default_rng(0)
    src = save_volume(Volume(rng.uniform(0, 500, (96, 96, 12)).astype(np.float32), make_affine("LPS")),
                      tmp_path / "thick.nii.gz")
    before = file_digest(src)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mrisr", "upsample", str(src), "--plane", "through", "--factor",
                             "6", "--sampler", "ancestral", "--precision", "fp32"], cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(300, proc.kill)  # never wait forever for the plan line
    watchdog.start()
    plan = ""
    while "96 planes" not in plan and (line := proc.stderr.readline()):
        plan += line  # the plan is printed once the model is loaded, just before sampling starts
    watchdog.cancel()
    assert "96 planes" in plan and "-> " in plan, plan
    time.sleep(1)  # sampling under way (the whole run takes minutes)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    lines = (plan + err).replace("\r", "\n").strip().splitlines()  # the plan, progress, and one last line
    assert lines[-1] == "mrisr: terminated (SIGTERM); no partial output was left" and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thick.nii.gz"]
    assert file_digest(src) == before


def test_library_messages_do_not_break_the_one_line_contract(tmp_path):
    """ITK prints "MetaImage: Read: Cannot open data file" to stderr itself; only --debug shows it."""
    header = tmp_path / "detached.mha"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 3\nElementType = MET_FLOAT\n"
                      "ElementDataFile = missing.raw\n")
    result = run_mrisr("upsample", header, "--plane", "in", "--factor", "2", "--method", "bicubic", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "is not a readable image" in result.stderr
    debug = run_mrisr("info", header, "--debug", cwd=tmp_path)
    assert debug.returncode == 2 and "MetaImage" in debug.stderr


def test_full_disk_out_of_memory_and_overlong_names_are_one_line_errors(tmp_path, small_volume, monkeypatch, capsys):
    import errno

    import mrisr.cli as cli
    import mrisr.io as io

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.nii.gz"))

    monkeypatch.setattr(io, "save_volume", full)
    monkeypatch.setattr(cli, "save_volume", full, raising=False)
    code = cli.main(["upsample", str(small_volume), "--plane", "in", "--factor", "2", "--method", "bicubic",
                     "-o", str(tmp_path / "out.nii.gz"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mrisr: error: no space left") and len(err.strip().splitlines()) == 1
    long_name = "x" * 240 + ".nii.gz"
    result = run_mrisr("upsample", small_volume, "--plane", "in", "--factor", "2", "--method", "bicubic",
                       "-o", tmp_path / long_name, cwd=tmp_path)
    assert result.returncode == 2 and "too long" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_roi_in_voxels_and_in_millimetres_one_volume_and_a_folder(tmp_path, small_volume):
    from mrisr.geometry import voxel_to_world

    whole = tmp_path / "whole.nii.gz"
    assert run_mrisr("upsample", small_volume, "--plane", "in", "--factor", "2", "--method", "bicubic", "-o", whole,
                     "--quiet").returncode == 0
    full = load_volume(whole)
    # a world box around voxel (6, 5, 2): the voxels whose centres are within 4 mm of it along x, y
    # and z (a box whose text starts with a minus sign is the roi_mm_nowhere bad-input case: argparse
    # alone would read it as an option)
    centre = voxel_to_world(full.affine, np.array([12.5, 10.5, 2.0]))  # (6, 5, 2) on the x2 output grid
    mm = ",".join(f"{c - 4:.4f}:{c + 4:.4f}" for c in centre)
    assert centre.min() < 0  # negative millimetres inside the text
    out, report = tmp_path / "roi.nii.gz", tmp_path / "roi.json"
    result = run_mrisr("upsample", small_volume, "--plane", "in", "--factor", "2", "--method", "bicubic",
                       "--roi-mm", mm, "-o", out, "--report", report, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    box = json.loads(report.read_text())["roi"]["voxels"]
    assert all(lo <= c < hi for (lo, hi), c in zip(box, (6, 5, 2))) and box != [[0, 12], [0, 10], [0, 5]]
    assert "(region " + ",".join(f"{lo}:{hi}" for lo, hi in box) + ")" in result.stderr  # announced
    got = load_volume(out)
    crop = tuple(slice(lo * f, hi * f) for (lo, hi), f in zip(box, (2, 2, 1)))
    np.testing.assert_allclose(got.data, full.data[crop], atol=1e-3)  # stored as float32 either way
    np.testing.assert_allclose(got.affine[:3, 3], voxel_to_world(full.affine, [c.start for c in crop]), atol=1e-4)
    # the same box in voxels, over a folder of volumes
    (tmp_path / "in" / "second.nii.gz").write_bytes(small_volume.read_bytes())
    folder_out = tmp_path / "folder_out"
    folder_out.mkdir()
    voxels = ",".join(f"{lo}:{hi}" for lo, hi in box)
    result = run_mrisr("upsample", tmp_path / "in", "--plane", "in", "--factor", "2", "--method", "bicubic",
                       "--roi", voxels, "-o", folder_out, "--quiet")
    assert result.returncode == 0, result.stderr
    for name in ("small_sr.nii.gz", "second_sr.nii.gz"):
        np.testing.assert_allclose(load_volume(folder_out / name).data, got.data, atol=1e-3)
