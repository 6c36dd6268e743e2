"""``zoo predict`` on a real volume: nilearn's MNI152 template (197×233×189 at 1 mm, RAS)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

import zoo
from zoo.cli import main
from zoo.predict import (
    PredictSettings,
    canonical_intensity,
    intensity_transform,
    predict_nifti,
    sample_volume_path,
)

pytest.importorskip("nilearn")

MNI = sample_volume_path()
# A T1 template in uint8: tissue lies above ~100, background at 0.
THRESHOLD = 150.0


class ThresholdNet(nn.Module):
    """A stand-in segmenter whose answer is known: label 1 where the input exceeds 0.5.

    Used with ``clip_scale [0, 2·THRESHOLD] → [0, 1]``, it labels the template's voxels above
    ``THRESHOLD``, so the label map it writes can be checked voxel by voxel against the input.
    """

    def __init__(self, roi=(64, 64, 64), **prep):
        super().__init__()
        self.calls = 0
        self.pretrained_cfg = {
            "name": "threshold",
            "model_args": {"in_chans": 1},
            "input_size": (1, *roi),
            "sliding_window": {"roi_size": roi, "overlap": 0.0},
            "preprocessing": {
                "intensity_transform": {
                    "kind": "clip_scale",
                    "a_min": 0,
                    "a_max": 2 * THRESHOLD,
                    "b_min": 0.0,
                    "b_max": 1.0,
                },
                **prep,
            },
        }

    def forward(self, x):
        self.calls += 1
        return torch.cat([0.5 - x, x - 0.5], dim=1) * 10


def _tiny_fmunet(num_classes=3):
    torch.manual_seed(0)
    # The real FMUNet architecture, narrowed so a whole brain takes a few seconds.
    return zoo.create("fmunet", num_classes=num_classes, feature_chns=(4, 8, 16, 32, 64))


def _mni():
    return nib.load(MNI)


def _assert_nothing_written(tmp_path):
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("seg")] == []


def test_fmunet_segments_the_mni_template_on_its_own_grid(tmp_path):
    out = tmp_path / "seg.nii.gz"
    r = predict_nifti(
        _tiny_fmunet(3),
        MNI,
        out,
        PredictSettings(spacing_mm=(4.0, 4.0, 4.0), roi_size=(48, 48, 48)),
        progress=False,
    )
    src, seg = _mni(), nib.load(out)
    assert seg.shape == src.shape == (197, 233, 189)
    np.testing.assert_array_equal(seg.affine, src.affine)
    assert int(seg.header["sform_code"]) == int(src.header["sform_code"])
    assert int(seg.header["qform_code"]) == int(src.header["qform_code"])
    assert seg.header.get_zooms() == src.header.get_zooms()
    labels = np.asarray(seg.dataobj)
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert all(abs(g - s / 4) <= 1 for g, s in zip(r.model_grid_shape, src.shape, strict=True))
    assert r.num_windows >= 2 and sum(r.label_voxels.values()) == labels.size


def test_label_map_lands_on_the_voxels_it_describes(tmp_path):
    # Resampled to 2 mm and back: the threshold of the input, not of a shifted or flipped copy.
    out = tmp_path / "seg.nii.gz"
    predict_nifti(ThresholdNet(), MNI, out, PredictSettings(spacing_mm=(2.0, 2.0, 2.0)), progress=False)
    expected = np.asarray(_mni().dataobj) > THRESHOLD
    got = np.asarray(nib.load(out).dataobj).astype(bool)
    agree = (got == expected).mean()
    assert agree > 0.97
    # The template is left-right symmetric: check against front-back and up-down mirrors.
    for mirrored in (expected[:, ::-1], expected[:, :, ::-1]):
        assert (got == mirrored).mean() < agree - 0.05


def test_a_volume_stored_in_another_orientation_gets_the_same_labels(tmp_path):
    # The same image stored LPI (x and z axes flipped, affine adjusted): reoriented to RAS for
    # the model, and the labels written back in the file's own storage order.
    src = _mni()
    data = np.asarray(src.dataobj)[::-1, :, ::-1].copy()
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[0, 3], flip[2, 3] = data.shape[0] - 1, data.shape[2] - 1
    lpi = nib.Nifti1Image(data, src.affine @ flip)
    assert nib.aff2axcodes(lpi.affine) == ("L", "A", "I")
    nib.save(lpi, tmp_path / "lpi.nii.gz")
    two_mm = (2.0, 2.0, 2.0)
    predict_nifti(
        ThresholdNet(),
        tmp_path / "lpi.nii.gz",
        tmp_path / "seg_lpi.nii.gz",
        PredictSettings(spacing_mm=two_mm),
        progress=False,
    )
    predict_nifti(
        ThresholdNet(), MNI, tmp_path / "seg_ras.nii.gz", PredictSettings(spacing_mm=two_mm), progress=False
    )
    seg_lpi = np.asarray(nib.load(tmp_path / "seg_lpi.nii.gz").dataobj)
    seg_ras = np.asarray(nib.load(tmp_path / "seg_ras.nii.gz").dataobj)
    np.testing.assert_array_equal(nib.load(tmp_path / "seg_lpi.nii.gz").affine, lpi.affine)
    np.testing.assert_array_equal(seg_lpi[::-1, :, ::-1], seg_ras)


def test_axial_first_models_get_the_volume_transposed_and_back(tmp_path):
    # A pointwise model must give the same map whichever axis order it is fed in.
    plain = ThresholdNet()
    zyx = ThresholdNet(axis_order="zyx")
    predict_nifti(
        plain, MNI, tmp_path / "seg_a.nii.gz", PredictSettings(spacing_mm=(4.0, 4.0, 4.0)), progress=False
    )
    r = predict_nifti(
        zyx, MNI, tmp_path / "seg_b.nii.gz", PredictSettings(spacing_mm=(4.0, 4.0, 4.0)), progress=False
    )
    assert r.model_grid_shape[0] < r.model_grid_shape[1]  # z (48) first, then y (59)
    a = np.asarray(nib.load(tmp_path / "seg_a.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "seg_b.nii.gz").dataobj)
    # Windows fall differently in the two orders; where they overlap the blending rounds
    # differently, which flips a handful of voxels sitting exactly on the threshold.
    assert (a != b).mean() < 1e-4


def test_native_orientation_is_kept_when_the_weights_say_so(tmp_path):
    r = predict_nifti(
        ThresholdNet(orientation=None),
        MNI,
        tmp_path / "seg.nii.gz",
        PredictSettings(spacing_mm=(4.0, 4.0, 4.0)),
        progress=False,
    )
    assert r.orientation is None
    expected = np.asarray(_mni().dataobj) > THRESHOLD
    assert (np.asarray(nib.load(tmp_path / "seg.nii.gz").dataobj).astype(bool) == expected).mean() > 0.95


def test_clip_scale_maps_the_window_onto_the_target_range():
    t = intensity_transform({"kind": "clip_scale", "a_min": -175, "a_max": 250, "b_min": 0, "b_max": 1})
    x = torch.tensor([[-1000.0, -175.0, 37.5, 250.0, 3000.0]])
    torch.testing.assert_close(t(x), torch.tensor([[0.0, 0.0, 0.5, 1.0, 1.0]]))


def test_zscore_nonzero_normalises_the_foreground_only():
    x = torch.tensor([[0.0, 0.0, 2.0, 4.0, 6.0], [1.0, 1.0, 1.0, 3.0, 0.0]])
    y = intensity_transform({"kind": "zscore_nonzero"})(x)
    assert y[0, 0] == 0 and y[0, 1] == 0 and y[1, 4] == 0
    fg = y[0, 2:]
    assert abs(float(fg.mean())) < 1e-6 and abs(float(fg.std(unbiased=False)) - 1) < 1e-5
    assert abs(float(y[1, :4].mean())) < 1e-6  # each channel on its own


def test_zscore_flags_select_the_voxels_and_the_channel_pooling():
    x = torch.tensor([[0.0, 0.0, 2.0, 4.0, 6.0], [1.0, 1.0, 1.0, 3.0, 0.0]])
    original = x.clone()
    explicit = intensity_transform({"kind": "zscore", "nonzero": True, "channel_wise": True})
    torch.testing.assert_close(explicit(x), intensity_transform("zscore_nonzero")(x))
    pooled = intensity_transform({"kind": "zscore", "nonzero": True, "channel_wise": False})(x)
    fg = x != 0
    assert abs(float(pooled[fg].mean())) < 1e-6  # one mean and std over both channels' foreground
    assert abs(float(pooled[0, 2:].mean())) > 0.1
    everything = intensity_transform("zscore")(x)
    assert abs(float(everything[0].mean())) < 1e-6 and everything[0, 0] != 0  # zeros included
    assert torch.equal(x, original)  # the caller's tensor is left alone


def test_finetuning_and_prediction_read_the_registered_qtunet_intensity_alike():
    from zoo.finetune import resolve_intensity
    from zoo.presets import get_preset

    brats = zoo.get_spec("qtunet-t").weight("brats-ssl").preprocessing
    assert canonical_intensity(brats["intensity_transform"]) == {
        "kind": "zscore", "nonzero": True, "channel_wise": True
    }  # fmt: skip
    expected = canonical_intensity(brats["intensity_transform"])
    assert resolve_intensity(brats, get_preset("default")) == expected


@pytest.mark.parametrize(
    "cfg", [{"kind": "histogram"}, {"kind": "clip_scale", "a_min": 0, "a_max": 1}, "percentile"]
)
def test_unknown_or_incomplete_intensity_transforms_are_refused(cfg):
    with pytest.raises(ValueError, match="intensity_transform"):
        intensity_transform(cfg)


# -- bad inputs: a clear error, nothing written ---------------------------------------------------


def test_a_file_that_is_not_nifti_is_refused_and_nothing_is_written(tmp_path):
    bad = tmp_path / "scan.nii.gz"
    bad.write_text("this is not an image")
    with pytest.raises(ValueError, match="not a readable NIfTI"):
        predict_nifti(ThresholdNet(), bad, tmp_path / "seg.nii.gz", progress=False)
    _assert_nothing_written(tmp_path)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        predict_nifti(ThresholdNet(), tmp_path / "nope.nii.gz", tmp_path / "seg.nii.gz", progress=False)
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("shape", [(40, 40), (40, 40, 1)], ids=["2d", "2d-as-3d"])
def test_a_2d_image_for_a_3d_model_is_refused(tmp_path, shape):
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), path)
    with pytest.raises(ValueError, match="2D image"):
        predict_nifti(ThresholdNet(), path, tmp_path / "seg.nii.gz", progress=False)
    _assert_nothing_written(tmp_path)


def test_a_channel_count_the_model_does_not_take_is_refused(tmp_path):
    path = tmp_path / "two_channels.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20, 2), np.float32), np.eye(4)), path)
    with pytest.raises(ValueError, match="expects 1 channel.*found a 4D series of 2 volumes"):
        predict_nifti(ThresholdNet(), path, tmp_path / "seg.nii.gz", progress=False)
    _assert_nothing_written(tmp_path)


def test_a_2d_model_is_refused_before_reading_the_volume(tmp_path):
    model = zoo.create("swinvit2d-c48")
    with pytest.raises(ValueError, match="3D"):
        predict_nifti(model, MNI, tmp_path / "seg.nii.gz", progress=False)
    _assert_nothing_written(tmp_path)


def test_an_output_name_that_is_not_nifti_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.nii"):
        predict_nifti(ThresholdNet(), MNI, tmp_path / "seg.png", progress=False)
    assert not (tmp_path / "seg.png").exists()


def test_cli_predict_reports_bad_input_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    rc = main(
        ["predict", "qtunet-t", "--no-weights", "-q", "-i", str(bad), "-o", str(tmp_path / "seg.nii.gz")]
    )
    assert rc == 2
    assert "not a readable NIfTI" in capsys.readouterr().err
    _assert_nothing_written(tmp_path)


@pytest.mark.slow
def test_qtunet_t_segments_the_mni_template_on_its_own_grid(tmp_path):
    torch.manual_seed(0)
    model = zoo.create("qtunet-t", img_size=32, num_classes=4)
    out = tmp_path / "seg.nii.gz"
    predict_nifti(model, MNI, out, PredictSettings(spacing_mm=(6.0, 6.0, 6.0), overlap=0.0), progress=False)
    seg = nib.load(out)
    assert seg.shape == _mni().shape
    np.testing.assert_array_equal(seg.affine, _mni().affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}


def test_cli_predict_takes_an_intensity_override_and_a_window_size(tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    clip = '{"kind": "clip_scale", "a_min": 0, "a_max": 300, "b_min": -1, "b_max": 1}'
    argv = ["predict", "fmunet", "--no-weights", "-q", "-i", str(MNI), "-o", str(out),
            "--spacing", "6", "6", "6", "--roi-size", "32", "32", "32", "--intensity", clip]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "windows of 32×32×32" in printed and "intensity clip_scale" in printed
    assert nib.load(out).shape == _mni().shape


@pytest.mark.parametrize(
    "value, message",
    [
        ("zcore", "unknown kind 'zcore'"),
        ('{"kind": "clip_scale", "a_min": 0}', "needs a_max"),
        ("{kind", "JSON"),
    ],
)
def test_cli_predict_refuses_a_bad_intensity_before_building_the_model(tmp_path, capsys, value, message):
    argv = ["predict", "fmunet", "--no-weights", "-q", "-i", str(MNI), "-o", str(tmp_path / "seg.nii.gz"),
            "--intensity", value]  # fmt: skip
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("k", [2, 4, 300])
def test_argmax_labels_equals_torch_argmax_ties_included(k):
    from zoo.predict import argmax_labels

    torch.manual_seed(0)
    # Rounded to a coarse grid so that many voxels tie between classes: the lowest class wins.
    logits = (torch.randn(k, 7, 9, 11) * 2).round()
    got = argmax_labels(logits)
    want = logits.argmax(0).numpy()
    assert got.dtype == (np.uint8 if k <= 255 else np.uint16)
    assert (logits.max(0).values.unsqueeze(0) == logits).sum(0).gt(1).any()  # ties are present
    np.testing.assert_array_equal(got, want)


def test_argmax_labels_keeps_argmax_rule_for_nan():
    from zoo.predict import argmax_labels

    logits = torch.zeros(3, 2, 2, 2)
    logits[1, 0, 0, 0] = float("nan")
    logits[2] = 1.0
    np.testing.assert_array_equal(argmax_labels(logits), logits.argmax(0).numpy())


def test_windows_are_batched_by_default_and_the_caller_can_say_one():
    from zoo.predict_checks import AUTO_SW_BATCH, resolve_settings

    cfg = ThresholdNet().pretrained_cfg
    assert AUTO_SW_BATCH == 2
    assert resolve_settings(cfg).sw_batch_size == AUTO_SW_BATCH
    assert resolve_settings(cfg, sw_batch_size=1).sw_batch_size == 1


def test_default_batched_windows_give_the_labels_of_one_window_per_forward(tmp_path):
    # The same narrow FMUNet over the template, 2 windows per forward (default) vs 1: logits
    # agree to float rounding, so the label maps may differ only at near-ties (here: none).
    out1, out2 = tmp_path / "seg1.nii.gz", tmp_path / "seg2.nii.gz"
    kw = dict(spacing_mm=(4.0, 4.0, 4.0), roi_size=(32, 32, 32))
    r2 = predict_nifti(_tiny_fmunet(3), MNI, out2, PredictSettings(**kw), progress=False)
    predict_nifti(_tiny_fmunet(3), MNI, out1, PredictSettings(sw_batch_size=1, **kw), progress=False)
    assert r2.num_windows >= 4
    a, b = np.asarray(nib.load(out1).dataobj), np.asarray(nib.load(out2).dataobj)
    assert (a != b).mean() < 1e-4
