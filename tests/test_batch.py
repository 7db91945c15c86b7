"""``mrisr upsample`` over several volumes: folders, datalists, name collisions, a bad case
reported and skipped, reruns that keep finished outputs."""

from __future__ import annotations

import json

import numpy as np

from conftest import file_digest, make_affine, run_mrisr
from mrisr.io import Volume, load_volume, read_provenance, save_volume


def _vol(seed: int) -> Volume:
    data = np.random.default_rng(seed).uniform(0, 1000, size=(8, 8, 3)).astype(np.float32)
    return Volume(data, make_affine("oblique", (0.7, 0.7, 3.0)))


def test_folders_and_files_with_a_bad_case_and_colliding_names(tmp_path):
    for folder, seed in (("a", 0), ("b", 1)):
        (tmp_path / folder).mkdir()
        save_volume(_vol(seed), tmp_path / folder / "case.nii.gz")
    (tmp_path / "a" / "broken.nii.gz").write_bytes(b"not a volume")
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    before = file_digest(tmp_path / "a")
    args = ["upsample", tmp_path / "a", tmp_path / "b", "--plane", "through", "--factor", "2", "--method", "bicubic",
            "-o", tmp_path / "out", "--report", tmp_path / "summary.json"]
    result = run_mrisr(*args)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("mrisr: error:")]
    assert len(errors) == 1 and "broken.nii.gz" in errors[0] and errors[0].endswith("(skipped)")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_case_sr.nii.gz", "b_case_sr.nii.gz"]
    for folder, seed in (("a", 0), ("b", 1)):  # each output is its own input upsampled
        out = load_volume(tmp_path / "out" / f"{folder}_case_sr.nii.gz")
        assert out.shape == (8, 8, 6)
        assert read_provenance(tmp_path / "out" / f"{folder}_case_sr.nii.gz")["input"] == "case.nii.gz"
        assert abs(float(out.data.mean()) - float(_vol(seed).data.mean())) < 30
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [c["status"] for c in summary["cases"]] == ["failed", "ok", "ok"] and summary["failed"] == 1
    assert "3 volumes: 2 written, 0 kept (output existed), 1 failed" in result.stdout
    assert file_digest(tmp_path / "a") == before  # inputs untouched

    # a rerun keeps what is done (the bad case still fails); --overwrite redoes the rest
    written = (tmp_path / "out" / "a_case_sr.nii.gz").stat().st_mtime_ns
    again = run_mrisr(*args)
    assert again.returncode == 2 and "2 kept (output existed)" in again.stdout
    assert (tmp_path / "out" / "a_case_sr.nii.gz").stat().st_mtime_ns == written


def test_a_datalist_and_several_files_run_in_one_process(tmp_path):
    for n in range(3):
        save_volume(_vol(n), tmp_path / f"v{n}.nii.gz")
    (tmp_path / "list.json").write_text(json.dumps({"training": ["v0.nii.gz"], "validation": [{"image": "v1.nii.gz"}]}))
    result = run_mrisr("upsample", tmp_path / "list.json", tmp_path / "v2.nii.gz", "--plane", "in", "--factor", "2",
                       "--method", "bspline", "-o", tmp_path / "out", "--quiet")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["v0_sr.nii.gz", "v1_sr.nii.gz", "v2_sr.nii.gz"]
    refused = run_mrisr("upsample", tmp_path / "v0.nii.gz", tmp_path / "v1.nii.gz", "--plane", "in", "--factor",
                        "2", "--method", "bspline", "-o", tmp_path / "x.nii.gz")
    assert refused.returncode == 2 and "names a folder" in refused.stderr and refused.stderr.count("\n") == 1
