"""``zoo predict`` never harms data and checks everything it can before any compute (issue 15)."""

from __future__ import annotations

import hashlib
import logging
import os

import nibabel as nib
import numpy as np
import pytest
import torch

import zoo
from zoo.cli import main
from zoo.inference import sliding_window_predict
from zoo.plan import plan
from zoo.predict import PredictSettings, predict_nifti, sample_volume_path
from zoo.predict_checks import resolve_settings

from .test_predict import THRESHOLD, ThresholdNet

pytest.importorskip("nilearn")
MNI = sample_volume_path()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The MNI152 template at 4 mm (49×58×47): a real head, small enough for many runs."""
    src = nib.load(MNI)
    data = np.asarray(src.dataobj, dtype=np.float32)[::4, ::4, ::4].copy()
    aff = src.affine.copy()
    aff[:3, :3] *= 4
    path = tmp_path_factory.mktemp("mni") / "mni4.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), path)
    return path


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the input is never overwritten ---------------------------------------------------------------


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_the_input_is_never_overwritten(tmp_path, small, link):
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(small.read_bytes())
    before = _digest(scan)
    out = {"same": scan, "symlink": tmp_path / "out.nii.gz", "hardlink": tmp_path / "hard.nii.gz"}[link]
    if link == "symlink":
        out.symlink_to(scan)
    elif link == "hardlink":
        os.link(scan, out)
    model = ThresholdNet()
    with pytest.raises(ValueError, match="refusing to overwrite the input"):
        predict_nifti(model, scan, out, progress=False)
    assert model.calls == 0 and _digest(scan) == before


def test_cli_refuses_to_overwrite_the_input_and_exits_non_zero(tmp_path, small, capsys):
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(small.read_bytes())
    before = _digest(scan)
    rc = main(["predict", "fmunet", "--no-weights", "-q", "-i", str(scan), "-o", str(scan)])
    err = capsys.readouterr().err
    assert rc == 2 and "refusing to overwrite the input" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _digest(scan) == before


def test_an_output_whose_parent_is_a_file_is_refused_before_compute(tmp_path, small):
    (tmp_path / "afile").write_text("x")
    model = ThresholdNet()
    with pytest.raises(ValueError, match="parent .*afile is a file, expected a directory"):
        predict_nifti(model, small, tmp_path / "afile" / "sub" / "seg.nii.gz", progress=False)
    assert model.calls == 0


def test_cli_checks_the_input_before_downloading_weights(tmp_path, monkeypatch, capsys):
    fetched = []

    def fetch(*args, **kwargs):  # the real fetch would go to the network; it must not be reached
        fetched.append(args)
        raise AssertionError("weights were fetched before the input was checked")

    monkeypatch.setattr("zoo.hub.fetch_weights", fetch)
    rc = main(
        [
            "predict",
            "pctnet.vf110k",
            "-q",
            "-i",
            str(tmp_path / "missing.nii.gz"),
            "-o",
            str(tmp_path / "o.nii.gz"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "missing.nii.gz" in err and "no such file" in err
    assert fetched == []


def test_cli_refuses_a_model_without_weights_before_building_it(tmp_path, small, monkeypatch, capsys):
    # The plan names the weights the load would fetch: a model that has none is refused first.
    built = []

    def create(*args, **kwargs):
        built.append(args)
        raise AssertionError("the model was built before its weights were checked")

    monkeypatch.setattr("zoo.create", create)
    rc = main(["predict", "vtunet-t", "-q", "-i", str(small), "-o", str(tmp_path / "o.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and "vtunet-t has no pretrained weights" in err, err
    assert "--checkpoint" in err and "--no-weights" in err and len(err.strip().splitlines()) == 1
    assert built == [] and not (tmp_path / "o.nii.gz").exists()


# -- settings in range, resources within budget, before any compute -------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sw_batch_size": 0}, "sw batch size must be an integer >= 1"),
        ({"overlap": 1.0}, r"overlap must lie in \[0, 1\)"),
        ({"overlap": -0.1}, r"overlap must lie in \[0, 1\)"),
        ({"spacing_mm": (0.0, 1.0, 1.0)}, "spacing must be 3 numbers in 0.01..100 mm"),
        ({"roi_size": (0, 64, 64)}, "roi size must be 3 integers"),
    ],
)
def test_out_of_range_settings_are_refused_before_reading(tmp_path, small, kwargs, message):
    model = ThresholdNet()
    with pytest.raises(ValueError, match=message):
        predict_nifti(model, small, tmp_path / "seg.nii.gz", PredictSettings(**kwargs), progress=False)
    assert model.calls == 0 and not (tmp_path / "seg.nii.gz").exists()


def test_a_tiny_spacing_is_refused_with_the_memory_it_would_need(tmp_path, small):
    # The run folder asking for 0.05 mm made MONAI try to allocate 220 GB.
    model = ThresholdNet()
    with pytest.raises(
        ValueError, match=r"needs about [\d.]+ GB \(model grid \d+×\d+×\d+ .*budget is [\d.]+ GB"
    ):
        predict_nifti(
            model, small, tmp_path / "seg.nii.gz", PredictSettings(spacing_mm=(0.05,) * 3), progress=False
        )
    assert model.calls == 0


def test_an_overlap_that_asks_for_too_many_windows_is_refused_with_the_count(tmp_path, small):
    model = ThresholdNet(roi=(16, 16, 16))
    with pytest.raises(ValueError, match=r"needs \d+ sliding windows of 16×16×16 .* cap is 5000"):
        predict_nifti(model, small, tmp_path / "seg.nii.gz", PredictSettings(overlap=0.99), progress=False)
    assert model.calls == 0


def test_the_budget_is_configurable_by_environment_and_argument(tmp_path, small, monkeypatch):
    monkeypatch.setenv("MEDZOO_PREDICT_MAX_GB", "0.001")
    with pytest.raises(
        ValueError, match=r"budget is 0.001 GB \(set by --max-memory-gb or MEDZOO_PREDICT_MAX_GB\)"
    ):
        predict_nifti(ThresholdNet(), small, tmp_path / "seg.nii.gz", progress=False)
    r = predict_nifti(
        ThresholdNet(), small, tmp_path / "seg.nii.gz", PredictSettings(max_memory_gb=1.0), progress=False
    )
    assert r.output.exists()
    monkeypatch.delenv("MEDZOO_PREDICT_MAX_GB")
    monkeypatch.setenv("MEDZOO_PREDICT_MAX_WINDOWS", "1")
    with pytest.raises(ValueError, match="cap is 1"):
        predict_nifti(ThresholdNet(roi=(16, 16, 16)), small, tmp_path / "seg2.nii.gz", progress=False)


def test_cli_refuses_a_window_a_fixed_size_model_cannot_take_before_building_it(tmp_path, small, capsys):
    argv = ["predict", "qtunet-t", "--no-weights", "-q", "-i", str(small), "-o", str(tmp_path / "seg.nii.gz"),
            "--roi-size", "64", "64", "64"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "built for windows of 96×96×96" in err and "img_size" in err
    with pytest.raises(ValueError, match="img_size"):
        resolve_settings(plan("qtunet-t").planned_cfg(), roi_size=(64, 64, 64))


# -- weights that cannot segment ------------------------------------------------------------------


def test_cli_refuses_encoder_only_weights_before_downloading(tmp_path, small, monkeypatch, capsys):
    monkeypatch.setattr("zoo.hub.fetch_weights", lambda *a, **k: pytest.fail("fetched"))
    rc = main(["predict", "qtunet-t.ct-ssl", "-q", "-i", str(small), "-o", str(tmp_path / "seg.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "cover only the encoder" in err and "fine-tune them first" in err
    assert "zoo finetune qtunet-t.ct-ssl --data" in err and "--allow-untrained-head" in err


def _encoder_only_checkpoint(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    full = zoo.create("fmunet", num_classes=2, feature_chns=(4, 8, 16, 32, 64))
    prefixes = zoo.get_spec("fmunet").encoder_prefixes
    enc = {k: v.contiguous() for k, v in full.state_dict().items() if k.startswith(prefixes)}
    path = tmp_path / "encoder.safetensors"
    save_file(enc, path)
    return path


def test_predict_refuses_a_model_with_a_random_head_unless_allowed(tmp_path, small):
    ckpt = _encoder_only_checkpoint(tmp_path)
    model = zoo.create("fmunet", checkpoint_path=ckpt, num_classes=2, feature_chns=(4, 8, 16, 32, 64))
    assert model.pretrained_cfg["weights"]["covers"] == "encoder"
    kw = dict(spacing_mm=(8.0,) * 3, roi_size=(32, 32, 32))
    with pytest.raises(
        ValueError, match="cover only the encoder.*fine-tune them first.*--allow-untrained-head"
    ):
        predict_nifti(model, small, tmp_path / "seg.nii.gz", PredictSettings(**kw), progress=False)
    assert not (tmp_path / "seg.nii.gz").exists()
    r = predict_nifti(
        model,
        small,
        tmp_path / "seg.nii.gz",
        PredictSettings(allow_untrained_head=True, **kw),
        progress=False,
    )
    assert r.output.exists()


# -- what the voxels hold -------------------------------------------------------------------------


def _save(tmp_path, name, data, affine=None, dtype=None):
    img = nib.Nifti1Image(data, np.eye(4) * [4, 4, 4, 1] if affine is None else affine, dtype=dtype)
    nib.save(img, tmp_path / name)
    return tmp_path / name


def test_non_finite_voxels_are_counted_replaced_and_reported(tmp_path, small, caplog):
    data = np.asarray(nib.load(small).dataobj, dtype=np.float32)
    data[:3, :3, :3] = np.nan
    data[-1, -1, -1] = np.inf
    path = _save(tmp_path, "nan.nii.gz", data, nib.load(small).affine)
    with caplog.at_level(logging.WARNING, logger="zoo"):
        r = predict_nifti(ThresholdNet(), path, tmp_path / "seg.nii.gz", progress=False)
    assert r.nonfinite_voxels == 28
    assert "28 non-finite voxel(s)" in caplog.text
    labels = np.asarray(nib.load(r.output).dataobj)
    expected = np.nan_to_num(data, nan=0, posinf=0) > THRESHOLD
    assert (labels.astype(bool) == expected).mean() > 0.97


@pytest.mark.parametrize(
    "fill, message",
    [(np.nan, "all .* voxels NaN or infinite"), (0.0, "constant volume"), (7.0, "constant volume")],
)
def test_an_all_non_finite_or_constant_volume_is_refused(tmp_path, fill, message):
    path = _save(tmp_path, "flat.nii.gz", np.full((20, 20, 20), fill, np.float32))
    model = ThresholdNet(roi=(16, 16, 16))
    with pytest.raises(ValueError, match=message):
        predict_nifti(model, path, tmp_path / "seg.nii.gz", progress=False)
    assert model.calls == 0 and not (tmp_path / "seg.nii.gz").exists()


def test_inference_refuses_non_finite_input_instead_of_returning_nan():
    model = ThresholdNet(roi=(8, 8, 8))
    x = torch.rand(1, 1, 16, 16, 16)
    x[0, 0, 3, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="found 1 NaN/infinite voxel"):
        sliding_window_predict(model, x)
    assert model.calls == 0
    with pytest.raises(ValueError, match="sw_batch_size must be an integer >= 1"):
        sliding_window_predict(model, torch.rand(1, 1, 16, 16, 16), sw_batch_size=0)


def test_zscore_over_nonzero_voxels_reports_its_foreground_and_warns_on_counted_noise(
    tmp_path, small, caplog
):
    zs = ThresholdNet()
    zs.pretrained_cfg["preprocessing"] = {"intensity_transform": {"kind": "zscore_nonzero"}}
    with caplog.at_level(logging.INFO, logger="zoo"):
        clean = predict_nifti(zs, small, tmp_path / "a.nii.gz", progress=False)
    data = np.asarray(nib.load(small).dataobj, dtype=np.float32)
    true_share = float((data != 0).mean())
    assert clean.foreground_share == pytest.approx(true_share, abs=1e-6)
    assert "background noise" not in caplog.text
    caplog.clear()
    noisy = data + np.random.default_rng(0).uniform(0.01, 0.5, data.shape).astype(np.float32) * (data == 0)
    path = _save(tmp_path, "noisy.nii.gz", noisy, nib.load(small).affine)
    with caplog.at_level(logging.INFO, logger="zoo"):
        r = predict_nifti(zs, path, tmp_path / "b.nii.gz", progress=False)
    assert r.foreground_share == pytest.approx(1.0)
    assert "background noise is probably counted" in caplog.text


def test_an_rgb_nifti_is_refused_with_a_clear_message(tmp_path):
    rgb = np.zeros((8, 8, 8), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = tmp_path / "rgb.nii.gz"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), path)
    with pytest.raises(ValueError, match="expected scalar .*found RGB"):
        predict_nifti(ThresholdNet(roi=(8, 8, 8)), path, tmp_path / "seg.nii.gz", progress=False)


def test_a_4d_series_asks_for_a_volume_and_segments_the_one_chosen(tmp_path, small):
    vol = np.asarray(nib.load(small).dataobj, dtype=np.float32)
    series = np.stack([vol * 0.1, vol, vol * 0.1], axis=-1)  # only volume 1 reaches the threshold
    path = _save(tmp_path, "series.nii.gz", series, nib.load(small).affine)
    with pytest.raises(ValueError, match=r"a 4D series of 3 volumes: pick one with --volume N \(0..2\)"):
        predict_nifti(ThresholdNet(), path, tmp_path / "seg.nii.gz", progress=False)
    with pytest.raises(ValueError, match=r"--volume must be in 0..2"):
        predict_nifti(
            ThresholdNet(), path, tmp_path / "seg.nii.gz", PredictSettings(volume=3), progress=False
        )
    r = predict_nifti(
        ThresholdNet(), path, tmp_path / "seg.nii.gz", PredictSettings(volume=1), progress=False
    )
    labels = np.asarray(nib.load(r.output).dataobj).astype(bool)
    assert labels.shape == vol.shape and (labels == (vol > THRESHOLD)).mean() > 0.97


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys):
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage that is not gzip\n\nmore")
    rc = main(["predict", "fmunet", "--no-weights", "-q", "-i", str(bad), "-o", str(tmp_path / "seg.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("zoo predict: error: ") and "not a readable NIfTI" in err
