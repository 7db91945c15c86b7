"""Natural images (issue #16): reading, RGB through the same pairs / trainer / samplers as MRI,
the metrics against hand-computed cases, the perceptual metrics' refusals and the pipelines."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO

from mrisr.data import PairCropper
from mrisr.diffusion import PartialDiffusionInferer
from mrisr.errors import ConfigError, InputError
from mrisr.metrics import consistency_mse, topk_accuracy, verification_accuracy
from mrisr.images import (IMAGE_NORMALISATION, list_images, normalise_image, read_image, reference_and_input, resize,
                          square, write_image)
from mrisr.inference import upsample_images, upsample_volume
from mrisr.models import LoadedModel, model_config, save_model
from mrisr.networks import SR3UNet, network_config


def _rgb(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth_rgb(seed: int, size: int = 64) -> np.ndarray:
    """A smooth colour image (upsampling it is a fair task)."""
    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(1, 4, 3)
    img = np.stack([np.sin(a * np.pi * x) * np.cos(b * np.pi * y), np.cos(c * np.pi * (x + y)), x * y], -1)
    return ((img - img.min()) / np.ptp(img) * 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ reading


def test_read_image_rgb_grey_16bit_and_jpeg(tmp_path):
    rgb = _rgb(0)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    got = read_image(tmp_path / "a.png")
    assert got.shape == (3, 48, 64) and got.dtype == np.float32
    np.testing.assert_array_equal(got, np.moveaxis(rgb, -1, 0))
    grey = rgb[..., 0]
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(grey[None], 3, 0))  # grey -> RGB repeats
    assert read_image(tmp_path / "g.png", channels=1).shape == (1, 48, 64)
    wide = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    np.testing.assert_allclose(read_image(tmp_path / "w.png", 1)[0], np.clip(wide / 257.0, 0, 255), atol=1e-4)
    smooth = _smooth_rgb(0)
    Image.fromarray(smooth).save(tmp_path / "j.jpg", quality=95)
    assert np.abs(read_image(tmp_path / "j.jpg") - np.moveaxis(smooth, -1, 0)).mean() < 3  # lossy, but the image


def test_bad_image_files_are_one_line_naming_the_file(tmp_path):
    (tmp_path / "fake.png").write_text("import os; os.system('echo pwned')")
    with pytest.raises(InputError, match="fake.png: not a readable PNG or JPEG"):
        read_image(tmp_path / "fake.png")
    Image.fromarray(_rgb(1)).save(tmp_path / "a.gif")  # a real image, but not PNG / JPEG: refused
    with pytest.raises(InputError, match="a.gif: not a readable PNG or JPEG"):
        read_image(tmp_path / "a.gif")
    Image.fromarray(_rgb(1)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(InputError, match="t.png"):
        read_image(tmp_path / "t.png")
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_list_images_folders_globs_and_nothing(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.jpg", "sub/c.jpeg"):
        Image.fromarray(_rgb(2)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.png", "c.jpeg"]
    assert [p.name for p in list_images(str(tmp_path / "*.png"))] == ["b.png"]
    with pytest.raises(InputError, match="no such file or folder"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no PNG or JPEG"):
        list_images(tmp_path / "empty")


def test_write_image_round_trips_exactly(tmp_path):
    arr = np.moveaxis(_rgb(3), -1, 0).astype(np.float32)
    write_image(tmp_path / "o.png", arr)
    np.testing.assert_array_equal(read_image(tmp_path / "o.png"), arr)
    write_image(tmp_path / "g.png", arr[:1])
    np.testing.assert_array_equal(read_image(tmp_path / "g.png", 1), arr[:1])


def test_square_and_test_pair():
    img = np.arange(3 * 40 * 60, dtype=np.float32).reshape(3, 40, 60)
    np.testing.assert_array_equal(square(img), img[:, :, 10:50])  # centred along the longer edge
    offsets = {int(square(img, np.random.default_rng(s))[0, 0, 0]) for s in range(40)}
    assert min(offsets) >= 0 and max(offsets) <= 20 and len(offsets) > 5  # random squares along it
    hr, lr = reference_and_input(np.clip(img / img.max() * 255, 0, 255), 32, 4)
    assert hr.shape == (3, 32, 32) and lr.shape == (3, 8, 8)
    np.testing.assert_array_equal(lr, np.rint(resize(hr, 8, 8)))  # 8-bit values of the anti-aliased downsampling
    hr2, lr2 = reference_and_input(np.clip(img / img.max() * 255, 0, 255), None, 6)
    assert hr2.shape == (3, 36, 36) and lr2.shape == (3, 6, 6)  # the 40-pixel square trimmed to a multiple of 6


# ------------------------------------------------------------------------------------------ RGB through the library


def test_rgb_pairs_are_the_grey_pairs_of_each_channel():
    """The degradation acts per channel: an RGB pair is the three grey pairs of its channels."""
    plane = normalise_image(np.moveaxis(_smooth_rgb(4, 96), -1, 0).astype(np.float32))
    for kind, factor in (("in", 4),):
        cropper = PairCropper(kind, factor, 48, augment="dihedral")
        hr, cond = cropper(plane, np.random.default_rng(7))
        assert hr.shape == cond.shape == (3, 48, 48)
        for c in range(3):
            hr_c, cond_c = cropper(plane[c], np.random.default_rng(7))
            torch.testing.assert_close(hr[c:c + 1], hr_c)
            torch.testing.assert_close(cond[c:c + 1], cond_c, atol=1e-5, rtol=0)


class _Oracle(torch.nn.Module):
    """Knows the high-resolution images: eps = (x_t - g HR) / sqrt(1 - g^2)."""

    def __init__(self, hr: torch.Tensor) -> None:
        super().__init__()
        self.hr = hr

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        channels = self.hr.shape[1]
        g = level.view(-1, 1, 1, 1).to(x.dtype)
        return (x[:, channels:] - g * self.hr) / torch.sqrt(1 - g * g)


def _image_model(network: torch.nn.Module, factor: int, channels: int = 3, objective: str = "sr3",
                 path: str = "oracle.safetensors", clip: str = "off") -> LoadedModel:
    inferer = PartialDiffusionInferer(objective=objective, clip_denoised=clip)
    config = model_config(network_config("tiny", in_channels=2 * channels, out_channels=channels), inferer, "in",
                          factor, normalisation=dict(IMAGE_NORMALISATION))
    return LoadedModel(network=network, config=config, inferer=inferer, path=Path(path))


@pytest.mark.parametrize("method,options", [("partdiff", {"sampler": "ancestral", "steps": 50}),
                                            ("partdiff", {"sampler": "ddim", "steps": 4}), ("sr3", {})])
def test_oracle_recovers_rgb_images_through_upsample_images(method, options):
    """The whole natural-image path (0..255 -> [-1, 1], condition, sampler, back to 0..255) in
    RGB: an oracle denoiser gives back the high-resolution images, as it does for grey planes."""
    hr = torch.from_numpy(np.stack([np.moveaxis(_rgb(s, 32, 32), -1, 0) for s in (5, 6)]).astype(np.float32))
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    model = _image_model(_Oracle(normalise_image(hr)), 4)
    out, upsampler = upsample_images(lr, 4, method, model=model, batch_size=2, **options)
    assert out.shape == hr.shape
    torch.testing.assert_close(out, hr, atol=0.02, rtol=0)  # 0..255 units
    assert (torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic") - hr).abs().mean() > 30


def test_upsample_images_bicubic_and_seeds_independent_of_batching():
    lr = torch.from_numpy(np.stack([np.moveaxis(_smooth_rgb(s, 16), -1, 0) for s in range(3)]).astype(np.float32))
    bic, _ = upsample_images(lr, 4, "bicubic")
    want = torch.nn.functional.interpolate(lr, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 255)
    torch.testing.assert_close(bic, want, atol=1e-3, rtol=0)
    torch.manual_seed(0)
    net = SR3UNet(**network_config("tiny", in_channels=6, out_channels=3))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model = _image_model(net.eval(), 4, clip="condition")
    a, _ = upsample_images(lr, 4, "partdiff", model=model, batch_size=3, sampler="ancestral", steps=10)
    b1, _ = upsample_images(lr[:2], 4, "partdiff", model=model, batch_size=1, sampler="ancestral", steps=10)
    b2, _ = upsample_images(lr[2:], 4, "partdiff", model=model, batch_size=1, sampler="ancestral", steps=10,
                            first_index=2)
    # 0..255 units: float rounding differs with the batch size once a run has two threads (up to
    # 0.012 here, ten steps); a noise stream tied to the batch would differ by tens
    torch.testing.assert_close(a, torch.cat([b1, b2]), atol=0.05, rtol=0)


def test_models_serve_their_own_kind_of_data(tmp_path):
    from mrisr.io import Volume

    image_model = _image_model(SR3UNet(**network_config("tiny", in_channels=6, out_channels=3)).eval(), 4,
                               path=str(tmp_path / "faces.safetensors"))
    volume = Volume(np.zeros((16, 16, 4), np.float32), np.diag([1.0, 1.0, 3.0, 1.0]))
    with pytest.raises(ConfigError, match="faces.safetensors is a natural-image model"):
        upsample_volume(volume, "in", 4, method="partdiff", model=image_model)
    mri_inferer = PartialDiffusionInferer(objective="sr3")
    mri = LoadedModel(network=SR3UNet(**network_config("tiny")).eval(),
                      config=model_config(network_config("tiny"), mri_inferer, "in", 4), inferer=mri_inferer,
                      path=tmp_path / "mri.safetensors")
    with pytest.raises(ConfigError, match="mri.safetensors is an MRI model"):
        upsample_images(torch.zeros(1, 1, 8, 8), 4, "partdiff", model=mri)
    with pytest.raises(ConfigError, match="makes 3-channel images, not 1-channel"):
        upsample_images(torch.zeros(1, 1, 8, 8), 4, "partdiff", model=image_model)
    with pytest.raises(ConfigError, match="needs a model"):
        upsample_images(torch.zeros(1, 3, 8, 8), 4, "partdiff")


def _image_folders(root: Path) -> Path:
    for split, seeds in (("train", range(4)), ("val", range(10, 12))):
        (root / split).mkdir(parents=True)
        for s in seeds:
            Image.fromarray(_smooth_rgb(s, 80)[:, :72]).save(root / split / f"{s}.png")
    return root


def _image_config(tmp_path: Path, objective: str = "regression", steps: int = 2) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""name: natural_test
objective: {objective}
k_noise_level: 0.25
task: {{plane: in, factor: 4, pairs: in, blur_sigma_max: 0.0}}
data: {{kind: images, channels: 3, image_size: 32, glob: imgs/train, validation_glob: imgs/val, crop: 32}}
network: {{preset: tiny}}
optim: {{lr: 1.0e-3, batch_size: 2, max_steps: {steps}, precision: fp32}}
checkpoint: {{every: 1, keep: 1}}
validation: {{every: {steps}, slices: 0, sampler: ddim, steps: 2, batch_size: 2}}
log: {{every: 1}}
""")
    return cfg


def test_trainer_trains_and_validates_rgb_images(tmp_path):
    from mrisr.models import load_model
    from mrisr.training import load_config, train

    _image_folders(tmp_path / "imgs")
    summary = train(_image_config(tmp_path), tmp_path / "run", progress=False)
    model = load_model(summary["model"])
    assert model.config["network"]["in_channels"] == 6 and model.config["network"]["out_channels"] == 3
    assert model.config["normalisation"] == IMAGE_NORMALISATION
    rows = (tmp_path / "run" / "validation.csv").read_text().splitlines()
    head, last = rows[0].split(","), dict(zip(rows[0].split(","), rows[-1].split(",")))
    assert "gain_db" in head and int(last["planes"]) == 2  # each validation image once
    # bicubic on the centre squares resized to 32, exactly as the benchmark protocol makes them
    from mrisr.metrics import psnr
    from mrisr.transforms import plane_degradation

    degrade, _ = plane_degradation("in", 4)
    want = []
    for s in (10, 11):
        hr = torch.from_numpy(normalise_image(resize(square(np.moveaxis(_smooth_rgb(s, 80)[:, :72], -1, 0)
                                                            .astype(np.float32)), 32, 32)))[None]
        want.append(psnr(degrade(hr)[0].numpy(), hr[0].numpy(), 2.0))
    assert float(last["psnr_bicubic"]) == pytest.approx(np.mean(want), abs=1e-4)
    with pytest.raises(ConfigError, match="natural images .* train in-plane pairs"):
        load_config(_image_config(tmp_path), {"task": {"plane": "through", "pairs": "through", "factor": 4}})
    with pytest.raises(ConfigError, match="data.channels"):
        load_config(REPO / "configs" / "tiny.yaml", {"data": {"channels": 3}})


def test_bad_training_images_are_named_or_skipped(tmp_path):
    from mrisr.training import train

    _image_folders(tmp_path / "imgs")
    (tmp_path / "imgs" / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputError, match="broken.png: not a readable PNG or JPEG"):
        train(_image_config(tmp_path), tmp_path / "run", progress=False)
    summary = train(_image_config(tmp_path, steps=1), tmp_path / "run2", progress=False, skip_bad=True)
    assert summary["step"] == 1


# ------------------------------------------------------------------------------------------ metrics


def test_consistency_is_the_mse_of_the_output_downsampled_again():
    lr = np.full((3, 4, 4), 100.0)
    assert consistency_mse(np.full((3, 16, 16), 103.0), lr, 4) == pytest.approx(9.0)  # constant: (103 - 100)^2
    hr = np.moveaxis(_smooth_rgb(8, 32), -1, 0).astype(np.float64)
    low = resize(hr.astype(np.float32), 8, 8)
    assert consistency_mse(hr, low, 4) < 1e-6  # the reference is consistent with its own downsampling
    with pytest.raises(ValueError):
        consistency_mse(hr, low, 3)


def test_topk_accuracy_by_hand():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.3, 0.3, 0.4]])
    labels = np.array([1, 2, 0])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)  # only row 0
    # row 1: 0.3 is second; row 2: class 0 ties class 1 for second place and wins it (lower index)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(1.0)
    assert topk_accuracy(scores, labels, 3) == 1.0


def test_verification_accuracy_by_hand():
    same = np.array([True, False] * 10)
    assert verification_accuracy(np.where(same, 0.9, 0.1), same) == (1.0, 0.0)
    # one pair on the wrong side in fold 0 only: that fold scores 1/2, the others 1
    sim = np.where(same, 0.9, 0.1)
    sim[0] = 0.05
    mean, std = verification_accuracy(sim, same)
    assert mean == pytest.approx(0.95) and std == pytest.approx(np.std([0.5] + [1.0] * 9))


def test_perceptual_metrics_refuse_cleanly_without_weights(tmp_path):
    from mrisr.perceptual import Lpips, frechet_distance_metric, inception_score_metric

    with pytest.raises(ConfigError, match="LPIPS needs --lpips-weights FILE .*alexnet-owt-7be5be79.pth.* nothing"):
        Lpips(None)
    with pytest.raises(InputError, match=r"--lpips-weights .*missing.pth: no such file"):
        Lpips(tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="FID needs --inception-weights FILE"):
        frechet_distance_metric(None)
    with pytest.raises(InputError, match="no such file"):
        inception_score_metric(tmp_path / "inception.pth")


class _MeanColour(torch.nn.Module):
    """Features: the mean colour of each image (uint8 in)."""

    num_features = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(2, 3)).double()


def test_frechet_distance_matches_the_closed_form():
    pytest.importorskip("torchmetrics")
    from scipy import linalg

    from mrisr.perceptual import frechet_distance_metric

    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.uniform(0, 255, (40, 3, 4, 4)))
    fake = torch.from_numpy(rng.uniform(30, 200, (40, 3, 4, 4)))
    fid = frechet_distance_metric(feature=_MeanColour())
    fid.update(real, real=True)
    fid.update(fake, real=False)
    f1 = real.round().clamp(0, 255).mean(dim=(2, 3)).numpy()
    f2 = fake.round().clamp(0, 255).mean(dim=(2, 3)).numpy()
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    want = np.sum((f1.mean(0) - f2.mean(0)) ** 2) + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real)
    assert float(fid.compute()) == pytest.approx(want, rel=1e-4)
    # one metric serves every method: reset forgets the generated images, keeps the real ones
    fid.reset()
    fid.update(fake, real=False)
    assert float(fid.compute()) == pytest.approx(want, rel=1e-4)


# ------------------------------------------------------------------------------------------ pipelines


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run a pipeline's ``main(argv)`` in this process (exit code, stdout, stderr)."""
    import contextlib
    import importlib.util
    import io

    spec = importlib.util.spec_from_file_location(f"pipeline_{Path(script).stem}", REPO / "pipelines" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = module.main([str(a) for a in args])
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


def test_benchmark_natural_scores_bicubic_and_a_model(tmp_path):
    folder = tmp_path / "test"
    folder.mkdir()
    for s in range(3):
        Image.fromarray(_smooth_rgb(s, 70)).save(folder / f"{s}.png")
    torch.manual_seed(0)
    net = SR3UNet(**network_config("tiny", in_channels=6, out_channels=3))
    for p in net.parameters():  # acting weights: the default init outputs zeros, the same in every orientation
        torch.nn.init.normal_(p, std=0.02)
    inferer = PartialDiffusionInferer(objective="regression")
    model = save_model(tmp_path / "reg.safetensors", net,
                       model_config(network_config("tiny", in_channels=6, out_channels=3), inferer, "in", 4,
                                    normalisation=dict(IMAGE_NORMALISATION)))
    res = _run("benchmark_natural.py", "--images", str(folder), "--size", "32", "--factor", "4",
               "--regression-model", str(model), "--self-ensemble", "--device", "cpu", "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-2000:]
    blob = json.loads((tmp_path / "out" / "summary.json").read_text())
    bic = blob["methods"]["Bicubic"]
    from mrisr.metrics import psnr

    want = []
    for s in range(3):
        hr, lr = reference_and_input(np.moveaxis(_smooth_rgb(s, 70), -1, 0).astype(np.float32), 32, 4)
        up = torch.nn.functional.interpolate(torch.from_numpy(lr)[None], size=(32, 32), mode="bicubic",
                                             align_corners=False).clamp(0, 255)[0].numpy()
        want.append(psnr(up, hr, 255.0))
    assert bic["psnr"] == pytest.approx(np.mean(want), abs=1e-3)
    assert blob["methods"]["Regression"]["network_evaluations"] == 1 and bic["lpips"] is None
    # the mean over the eight turns and flips: its own row, not the plain model's numbers
    ensemble = blob["methods"]["Regression, self-ensemble"]
    assert ensemble["network_evaluations"] == 8
    assert abs(ensemble["psnr"] - blob["methods"]["Regression"]["psnr"]) > 5e-4  # 1e-7 with zero-output weights
    assert (tmp_path / "out" / "grid.png").stat().st_size > 1000
    bad = _run("benchmark_natural.py", "--images", str(folder), "--lpips-weights", str(tmp_path / "none.pth"),
               "--out", str(tmp_path / "out2"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "none.pth" in bad.stderr


class _ColourClassifier(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))  # class = the dominant channel


def test_downstream_classification_with_a_torchscript_classifier(tmp_path):
    root = tmp_path / "val"
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for s in range(2):
            img = np.full((40, 40, 3), 40, np.uint8)
            img[..., c] = 200 + 20 * s
            Image.fromarray(img).save(root / name / f"{s}.png")
    scripted = tmp_path / "clf.pt"
    torch.jit.script(_ColourClassifier()).save(str(scripted))
    # the folders in sorted order are blue=0, green=1, red=2; the classifier's outputs are R, G, B
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"red": 0, "green": 1, "blue": 2}))
    res = _run("downstream_classification.py", "--images", str(root), "--classifier", str(scripted), "--class-index",
               str(index), "--size", "32", "--factor", "4", "--mean", "0", "0", "0", "--std", "1", "1", "1",
               "--device", "cpu", "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-2000:]
    blob = json.loads((tmp_path / "out" / "summary.json").read_text())["methods"]
    assert blob["Reference (high resolution)"]["top1"] == 1.0 and blob["Bicubic"]["top1"] == 1.0
    # without the index the folders' sorted order (blue, green, red) names the classes: only green is right
    res = _run("downstream_classification.py", "--images", str(root), "--classifier", str(scripted),
               "--size", "32", "--mean", "0", "0", "0", "--std", "1", "1", "1", "--out", str(tmp_path / "o2"))
    assert res.returncode == 0, res.stderr[-2000:]
    top1 = json.loads((tmp_path / "o2" / "summary.json").read_text())["methods"]["Bicubic"]["top1"]
    assert top1 == pytest.approx(1 / 3)
    bad = _run("downstream_classification.py", "--images", str(root), "--classifier", str(index), "--out",
               str(tmp_path / "o3"))
    assert bad.returncode == 2 and "not a TorchScript network" in bad.stderr


class _ColourEmbedder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x.mean(dim=(2, 3)))  # a person's colour: one axis each, far apart


def test_downstream_face_verification_by_the_lfw_protocol(tmp_path):
    root = tmp_path / "lfw"
    colours = {"Ann": (220, 30, 30), "Bob": (30, 220, 30), "Cid": (30, 30, 220)}
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in (1, 2):
            img = np.empty((48, 48, 3), np.uint8)
            img[:] = colour
            img[::7] = 128 + 20 * i  # two different photos of the same person
            Image.fromarray(img).save(root / name / f"{name}_{i:04d}.jpg", quality=95)
    lines = ["2\t2"]
    for a, b, c in (("Ann", "Bob", "Cid"), ("Cid", "Ann", "Bob")):
        lines += [f"{a}\t1\t2", f"{b}\t1\t2", f"{a}\t1\t{b}\t2", f"{b}\t2\t{c}\t1"]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    scripted = tmp_path / "emb.pt"
    torch.jit.script(_ColourEmbedder()).save(str(scripted))
    res = _run("downstream_face_verification.py", "--images", str(root), "--pairs", str(pairs), "--embedder",
               str(scripted), "--size", "48", "--factor", "4", "--device", "cpu", "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-2000:]
    blob = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert blob["folds"] == 2 and blob["pairs"] == 8 and blob["n_images"] == 6
    assert blob["methods"]["Reference (high resolution)"]["accuracy"] == 1.0
    assert blob["methods"]["Bicubic"]["accuracy"] == 1.0
    pairs.write_text("2\t2\nAnn\t1\nBob\t1\t2\n")
    bad = _run("downstream_face_verification.py", "--images", str(root), "--pairs", str(pairs), "--embedder",
               str(scripted), "--out", str(tmp_path / "o2"))
    assert bad.returncode == 2 and "line 1 is not 'name i j'" in bad.stderr


def test_an_empty_library_message_still_gives_one_line():
    from mrisr.errors import first_line

    assert first_line(OSError()) == "OSError"
    assert first_line(ValueError("\n  \nsecond line first\nthird")) == "second line first"
    assert len(first_line(ValueError("x" * 500), 200)) == 200


def test_alexnet_weights_map_onto_the_lpips_slices():
    """torchvision's AlexNet convolutions (features 0, 3, 6, 8, 10) land in LPIPS's five slices
    under their own layer numbers; the classifier is dropped."""
    from mrisr.perceptual import alexnet_to_lpips_keys

    state = {f"features.{i}.{p}": i for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")}
    state |= {"classifier.1.weight": -1, "classifier.6.bias": -1}
    mapped = alexnet_to_lpips_keys(state)
    assert mapped == {f"slice{n}.{i}.{p}": i for n, i in zip(range(1, 6), (0, 3, 6, 8, 10))
                      for p in ("weight", "bias")}
