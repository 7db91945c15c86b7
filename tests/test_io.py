"""Readers agree with each other and writers round-trip the geometry exactly."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from mrisr.errors import InputError, OutputError
from mrisr.io import Volume, check_output_path, list_dicom_series, load_volume, output_stem, save_volume

from conftest import (PROSTATEX, PROSTATEX_SERIES, make_affine, needs_prostatex, prostatex_dicom,
                      prostatex_nifti, run_mrisr)


@needs_prostatex
@pytest.mark.parametrize("patient,plane,series", PROSTATEX_SERIES,
                         ids=[f"{p[-4:]}-{pl}-s{s}" for p, pl, s in PROSTATEX_SERIES])
def test_dicom_and_nifti_agree(patient, plane, series):
    from_nifti = load_volume(prostatex_nifti(patient, plane, series))
    from_dicom = load_volume(prostatex_dicom(patient, series))
    assert from_dicom.shape == from_nifti.shape
    np.testing.assert_array_equal(from_dicom.data, from_nifti.data)
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-3, rtol=0)
    assert from_dicom.orientation == from_nifti.orientation
    assert from_dicom.metadata["format"] == "dicom" and from_nifti.metadata["format"] == "nifti"


@needs_prostatex
def test_orientations_of_shared_series_match_readme():
    expect = {"tra": ("L", "P", "S"), "cor": ("L", "I", "P"), "sag": ("P", "I", "R")}
    for patient, plane, series in PROSTATEX_SERIES:
        vol = load_volume(prostatex_nifti(patient, plane, series))
        assert vol.orientation == expect[plane], (patient, plane)
    oblique = load_volume(prostatex_nifti("ProstateX-0218", "tra", 5)).affine[:3, :3]
    # the README calls this series oblique: its direction matrix is no signed permutation
    assert np.count_nonzero(np.abs(oblique) > 1e-3) > 3


@needs_prostatex
def test_dicom_study_folder_lists_series_and_picks_one():
    study = PROSTATEX / "dicom" / "ProstateX-0218"
    found = list_dicom_series(study)
    assert sorted(s.n_slices for s in found) == [19, 20, 23]
    assert {s.description for s in found} == {"t2_tse_cor_320_p2", "t2_tse_sag_320_p2", "t2_tse_tra_320_p2"}
    with pytest.raises(InputError, match="holds 3 DICOM series"):
        load_volume(study)
    tra = next(s for s in found if "tra" in s.description)
    picked = load_volume(study, series=tra.uid)
    direct = load_volume(prostatex_nifti("ProstateX-0218", "tra", 5))
    np.testing.assert_array_equal(picked.data, direct.data)
    assert picked.metadata["series_uid"] == tra.uid
    with pytest.raises(InputError, match="is not in"):
        load_volume(study, series="1.2.3.4")


@needs_prostatex
def test_dicom_order_does_not_depend_on_file_names(tmp_path):
    src = prostatex_dicom("ProstateX-0218", 5)
    files = sorted(p for p in src.iterdir() if p.is_file())
    # rename so that alphabetical order is the reverse of the slice order
    for n, f in enumerate(files):
        (tmp_path / f"z{len(files) - n:03d}.dcm").write_bytes(f.read_bytes())
    renamed = load_volume(tmp_path)
    original = load_volume(src)
    np.testing.assert_array_equal(renamed.data, original.data)
    np.testing.assert_allclose(renamed.affine, original.affine, atol=1e-6)


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "LIP", "PIR", "oblique"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_round_trip(tmp_path, rng, orientation, suffix):
    affine = make_affine(orientation, spacing=(0.7, 0.8, 3.3))
    data = rng.normal(100, 30, size=(9, 7, 5)).astype(np.float32)
    out = save_volume(Volume(data, affine), tmp_path / f"v{suffix}")
    back = load_volume(out)
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    hdr = nib.load(str(out)).header
    assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 1
    np.testing.assert_allclose(hdr.get_qform(), affine, atol=1e-4)  # qform is float32 quaternions
    assert hdr.get_data_dtype() == np.float32
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left behind


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
@pytest.mark.parametrize("orientation", ["LPS", "PIR", "oblique"])
def test_sitk_formats_agree_with_nifti(tmp_path, rng, suffix, orientation):
    affine = make_affine(orientation, spacing=(0.5, 0.6, 3.0))
    data = rng.integers(0, 4000, size=(8, 6, 4)).astype(np.float32)
    nifti = save_volume(Volume(data, affine), tmp_path / "v.nii.gz")
    # write the same volume with SimpleITK's own LPS conventions
    image = sitk.GetImageFromArray(data.transpose(2, 1, 0).astype(np.uint16))
    lps = np.diag([-1, -1, 1]) @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps / spacing).flatten().tolist())
    image.SetOrigin((np.diag([-1, -1, 1]) @ affine[:3, 3]).tolist())
    other = tmp_path / f"v{suffix}"
    sitk.WriteImage(image, str(other))
    a, b = load_volume(nifti), load_volume(other)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)


def test_4d_single_frame_is_accepted_and_multi_frame_refused(tmp_path, rng):
    affine = make_affine("RAS", spacing=(1, 1, 2))
    data = rng.normal(size=(5, 4, 3, 1)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "one.nii.gz"))
    vol = load_volume(tmp_path / "one.nii.gz")
    assert vol.shape == (5, 4, 3)
    np.testing.assert_array_equal(vol.data, data[..., 0])
    nib.save(nib.Nifti1Image(np.repeat(data, 3, axis=3), affine), str(tmp_path / "three.nii.gz"))
    with pytest.raises(InputError, match="4D with 3 frames"):
        load_volume(tmp_path / "three.nii.gz")


def test_nonfinite_voxels_are_refused_or_replaced(tmp_path, rng):
    data = rng.normal(size=(4, 4, 3)).astype(np.float32)
    data[1, 2, 0] = np.nan
    data[0, 0, 1] = np.inf
    path = save_volume(Volume(data, make_affine()), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="2 NaN or Inf voxels"):
        load_volume(path)
    fixed = load_volume(path, nonfinite="zero")
    assert fixed.metadata["nonfinite_replaced"] == 2
    assert fixed.data[1, 2, 0] == 0 and fixed.data[0, 0, 1] == 0
    mask = np.isfinite(data)
    np.testing.assert_array_equal(fixed.data[mask], data[mask])


def test_scaled_nifti_keeps_physical_units(tmp_path):
    raw = np.arange(24, dtype=np.int16).reshape(4, 3, 2)
    img = nib.Nifti1Image(raw, make_affine())
    img.header.set_slope_inter(0.5, 10.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    np.testing.assert_allclose(load_volume(tmp_path / "scaled.nii.gz").data, raw * 0.5 + 10.0)


def test_save_refuses_to_overwrite(tmp_path, rng):
    vol = Volume(rng.normal(size=(3, 3, 3)).astype(np.float32), make_affine())
    path = save_volume(vol, tmp_path / "a.nii.gz")
    before = path.read_bytes()
    with pytest.raises(OutputError, match="exists"):
        save_volume(vol.with_data(vol.data + 1, vol.affine), path)
    assert path.read_bytes() == before
    save_volume(vol.with_data(vol.data + 1, vol.affine), path, overwrite=True)
    np.testing.assert_allclose(load_volume(path).data, vol.data + 1)


def test_check_output_path(tmp_path):
    inp = tmp_path / "in.nii.gz"
    inp.write_bytes(b"x")
    with pytest.raises(OutputError, match="overwrite the input"):
        check_output_path(inp, [inp], overwrite=True)
    with pytest.raises(OutputError, match="must end in"):
        check_output_path(tmp_path / "out.png", [inp])
    with pytest.raises(OutputError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "out.nii.gz", [inp])
    assert check_output_path(tmp_path / "out.nii.gz", [inp]) == tmp_path / "out.nii.gz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]  # the probe is gone


def test_output_stem():
    assert output_stem("/a/b/scan.nii.gz") == "scan"
    assert output_stem("scan.NII") == "scan"
    assert output_stem("scan.v2.nrrd") == "scan.v2"
    assert output_stem("/data/dicom/series_5") == "series_5"


@needs_prostatex
def test_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    src = prostatex_dicom("ProstateX-0218", 5)
    series = list_dicom_series(src)[0]
    assert len(series.positions) == 20 and np.allclose(np.diff(series.positions), 3.6, atol=1e-3)
    for n, f in enumerate(series.files):
        if n != 10:  # drop one slice from the middle
            (tmp_path / f"{n:03d}.dcm").write_bytes(Path(f).read_bytes())
    with pytest.raises(InputError, match="unevenly spaced slices"):
        load_volume(tmp_path)


def test_crop_keeps_world_positions():
    affine = make_affine("oblique")
    data = np.arange(20 * 13 * 7, dtype=np.float32).reshape(20, 13, 7)
    vol = Volume(data, affine)
    out = vol.crop([9, None, 5], multiple=[4, 1, 1])
    assert out.shape == (8, 13, 5)  # 9 rounded down to a multiple of 4; None keeps the axis
    starts = np.array([(20 - 8) // 2, 0, 1])
    np.testing.assert_array_equal(out.data, data[6:14, :, 1:6])
    for ijk in [(0, 0, 0), (7, 12, 4), (3, 5, 2)]:
        world_out = out.affine @ np.array([*ijk, 1.0])
        world_in = affine @ np.array([*(np.array(ijk) + starts), 1.0])
        np.testing.assert_allclose(world_out, world_in, atol=1e-9)
    np.testing.assert_array_equal(vol.data, data)  # the source is untouched
    with pytest.raises(ValueError, match="leaves no voxels"):
        vol.crop([3, None, None], multiple=[4, 1, 1])


def test_outputs_keep_the_users_umask_or_the_replaced_files_mode(tmp_path):
    from mrisr.models import save_model

    vol = Volume(np.ones((4, 3, 2), np.float32), np.eye(4))
    old = os.umask(0o077)
    try:
        new = save_volume(vol, tmp_path / "private.nii.gz")
        assert new.stat().st_mode & 0o777 == 0o600  # patient data stays private under umask 077
        model = save_model(tmp_path / "m.safetensors", {"w": torch.zeros(2)}, {"k": 1})
        assert model.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    shared = tmp_path / "shared.nii.gz"
    save_volume(vol, shared)
    os.chmod(shared, 0o640)
    save_volume(vol, shared, overwrite=True)
    assert shared.stat().st_mode & 0o777 == 0o640  # --overwrite keeps the existing mode


def test_publishing_never_replaces_a_file_that_appeared_meanwhile(tmp_path):
    from mrisr.io.writers import _atomic_write

    out = tmp_path / "race.json"

    def write(tmp: str) -> None:
        Path(tmp).write_text("mine")
        out.write_text("theirs")  # another run published first

    with pytest.raises(OutputError, match="created by something else"):
        _atomic_write(out, write, overwrite=False)
    assert out.read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["race.json"]  # no temporary left
    _atomic_write(out, lambda tmp: Path(tmp).write_text("mine"), overwrite=True)
    assert out.read_text() == "mine"


def test_partials_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    vol = Volume(np.ones((4, 3, 2), np.float32), np.eye(4))
    dead = tmp_path / ".scan.nii.gz.mrisr-partial-999999999-x1"
    live = tmp_path / f".scan.nii.gz.mrisr-partial-{os.getppid()}-x2"
    for p in (dead, live):
        p.write_bytes(b"partial")
    save_volume(vol, tmp_path / "scan.nii.gz")
    assert not dead.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "scan.nii.gz"])


def test_complex_and_rgb_nifti_are_refused_with_one_clear_line(tmp_path):
    complex_img = nib.Nifti1Image((np.ones((4, 4, 3)) + 1j).astype(np.complex64), np.eye(4))
    nib.save(complex_img, tmp_path / "c.nii.gz")
    rgb = np.zeros((4, 4, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii.gz")
    with pytest.raises(InputError, match=r"complex values \(complex64\).*magnitude"):
        load_volume(tmp_path / "c.nii.gz")
    with pytest.raises(InputError, match="RGB / multi-component voxels"):
        load_volume(tmp_path / "rgb.nii.gz")
    for name in ("c.nii.gz", "rgb.nii.gz"):  # and through the real entry point
        result = run_mrisr("info", tmp_path / name, cwd=tmp_path)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_sheared_affines_live_in_the_sform_alone(tmp_path):
    affine = make_affine("LPS")
    affine[:3, 2] += 0.3 * affine[:3, 0]  # a slice axis tilted against the in-plane axes
    out = save_volume(Volume(np.ones((4, 3, 2), np.float32), affine), tmp_path / "shear.nii.gz")
    hdr = nib.load(out).header
    assert int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 1
    np.testing.assert_allclose(hdr.get_sform(), affine, atol=1e-5)
    np.testing.assert_allclose(load_volume(out).affine, affine, atol=1e-5)
    plain = save_volume(Volume(np.ones((4, 3, 2), np.float32), make_affine("LPS")), tmp_path / "plain.nii.gz")
    assert int(nib.load(plain).header["qform_code"]) == 1


def test_a_nifti_without_any_geometry_is_refused(tmp_path):
    img = nib.Nifti1Image(np.ones((4, 3, 2), np.float32), None)
    img.header.set_zooms((0.0, 0.0, 0.0))
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, tmp_path / "nogeo.nii.gz")
    with pytest.raises(InputError, match="stores no usable geometry"):
        load_volume(tmp_path / "nogeo.nii.gz")
    # a qform whose pixdim is 0 is no better: nibabel would read 1 mm
    nib.save(nib.Nifti1Image(np.ones((4, 3, 2), np.float32), np.diag([0.5, 0.5, 3.0, 1.0])), tmp_path / "q.nii")
    raw = bytearray((tmp_path / "q.nii").read_bytes())  # patch the stored header as a broken writer would
    raw[80:92] = np.zeros(3, "<f4").tobytes()  # pixdim[1:4]
    raw[252:256] = np.array([1, 0], "<i2").tobytes()  # qform_code 1, sform_code 0
    (tmp_path / "qzero.nii").write_bytes(bytes(raw))
    result = run_mrisr("upsample", tmp_path / "qzero.nii", "--plane", "in", "--factor", "2", "--method", "bicubic",
                       cwd=tmp_path)
    assert result.returncode == 2 and "no usable geometry" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@needs_prostatex
def test_a_sheared_dicom_stack_keeps_its_shear_and_a_missing_orientation_is_refused(tmp_path):
    import pydicom

    src = prostatex_dicom("ProstateX-0218", 5)
    series = list_dicom_series(src)[0]
    original = load_volume(src)
    row = np.asarray([float(v) for v in pydicom.dcmread(series.files[0]).ImageOrientationPatient[:3]])
    sheared, bare = tmp_path / "sheared", tmp_path / "bare"
    sheared.mkdir()
    bare.mkdir()
    for n, f in enumerate(series.files):
        ds = pydicom.dcmread(f)
        # each slice 0.5 mm further along the rows: a gantry-tilt-like stack
        ds.ImagePositionPatient = [float(v) + 0.5 * n * r for v, r in zip(ds.ImagePositionPatient, row)]
        ds.save_as(sheared / f"{n:03d}.dcm")
        ds = pydicom.dcmread(f)
        del ds.ImageOrientationPatient
        ds.save_as(bare / f"{n:03d}.dcm")
    vol = load_volume(sheared)
    assert vol.metadata["sheared_stack_mm_per_slice"] == pytest.approx(0.5, abs=1e-3)
    # the slice column gains the in-plane step; world positions of every voxel follow the files
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(vol.affine[:3, 2], original.affine[:3, 2] + lps_to_ras @ (0.5 * row), atol=1e-4)
    np.testing.assert_allclose(vol.affine[:3, :2], original.affine[:3, :2], atol=1e-6)
    with pytest.raises(InputError, match="no ImageOrientationPatient"):
        load_volume(bare)
