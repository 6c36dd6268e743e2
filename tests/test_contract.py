"""One preprocessing contract: typed, read by one parser, the same transforms for predict and users."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import torch

import zoo
from zoo._registry import get_spec, list_models
from zoo.plan import plan
from zoo.predict import preprocess, sample_volume_path
from zoo.predict_checks import resolve_settings
from zoo.transforms import InputContract, contract_of, for_model, parse_intensity

pytest.importorskip("nilearn")
MNI = sample_volume_path()

_STRUCTURED = {"orientation", "spacing_mm", "axis_order", "intensity_transform", "slice_axis"}


def _registered():
    for name in list_models():
        spec = get_spec(name)
        for w in spec.weights:
            yield f"{name}.{w.tag}", w.preprocessing
        if spec.meta.get("preprocessing"):
            yield name, spec.meta["preprocessing"]


def test_every_registered_preprocessing_is_typed_and_states_its_intensity():
    seen = 0
    for ident, prep in _registered():
        assert "intensity_transform" in prep, f"{ident} states no structured intensity_transform"
        c = InputContract.from_preprocessing(prep, f"{ident}: ")
        assert c.intensity["kind"] in ("zscore", "clip_scale", "none")
        for key in ("orientation", "spacing_mm"):  # a value, or null; never a sentence
            assert prep.get(key) is None or not isinstance(prep[key], str) or len(prep[key]) == 3, (
                ident,
                key,
            )
        seen += 1
    assert seen >= 10


def test_free_text_in_the_registry_is_never_read():
    # Replace every documentation value with a sentence that would mean something else if parsed.
    for ident, prep in _registered():
        doctored = {
            k: (
                v
                if k in _STRUCTURED
                else "z-score over nonzero voxels, channel-wise; clip HU [0, 1] → [5, 6]"
            )
            for k, v in prep.items()
        }
        doctored["intensity"] = "clip HU [-3, 3] → [7, 8]"
        assert InputContract.from_preprocessing(doctored) == InputContract.from_preprocessing(prep), ident


def test_finetune_reads_the_intensity_through_the_same_parser():
    from zoo.finetune import resolve_intensity
    from zoo.presets import get_preset

    preset = get_preset("default")
    text_only = {"intensity": "clip HU [-1000, 1000] → [-1, 1]"}  # documentation: not read
    assert resolve_intensity(text_only, preset) == parse_intensity(preset.intensity or "zscore_nonzero")
    pct = get_spec("pctnet").weight("vf110k").preprocessing
    assert resolve_intensity(pct, preset) == parse_intensity(pct["intensity_transform"])
    assert resolve_intensity({}, preset, "clip:-1000,1000,-1,1") == parse_intensity(
        pct["intensity_transform"]
    )
    assert resolve_intensity(pct, preset, "none") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("zscore", {"kind": "zscore", "nonzero": False, "channel_wise": True}),
        ("zscore-nonzero", {"kind": "zscore", "nonzero": True, "channel_wise": True}),
        ("zscore_nonzero", {"kind": "zscore", "nonzero": True, "channel_wise": True}),
        ("none", {"kind": "none"}),
        (
            "clip:-1000,1000,-1,1",
            {
                "kind": "clip_scale",
                "a_min": -1000.0,
                "a_max": 1000.0,
                "b_min": -1.0,
                "b_max": 1.0,
                "clip": True,
            },
        ),  # fmt: skip
        (
            '{"kind": "clip_scale", "a_min": 0, "a_max": 2, "b_min": 0, "b_max": 1, "clip": false}',
            {"kind": "clip_scale", "a_min": 0.0, "a_max": 2.0, "b_min": 0.0, "b_max": 1.0, "clip": False},
        ),  # fmt: skip
    ],
)
def test_one_parser_reads_every_spelling_for_every_command(text, expected):
    from zoo.cli import _parse_intensity
    from zoo.ssl.data import parse_intensity as pretrain_parse

    assert parse_intensity(text) == expected
    assert _parse_intensity(text) == expected  # zoo predict --intensity
    assert pretrain_parse(text) == expected  # zoo pretrain --intensity


@pytest.mark.parametrize(
    "text, message",
    [
        ("clip:1,2,3", "needs 4 numbers"),
        ("clip:5,1,0,1", "a_max > a_min"),
        ("histogram", "unknown kind 'histogram'"),
        ("[1, 2]", "unknown kind"),
        ('{"kind": "clip_scale", "a_min": "x", "a_max": 1, "b_min": 0, "b_max": 1}', "needs numbers"),
    ],
)
def test_bad_intensity_spellings_are_refused_with_what_was_expected(text, message):
    with pytest.raises(ValueError, match=message):
        parse_intensity(text)


@pytest.mark.parametrize(
    "prep, message",
    [
        ({"orientation": "native (not stated)"}, "orientation: expected an axis code"),
        ({"orientation": "RAR"}, "orientation: expected an axis code"),
        ({"spacing_mm": "1 mm isotropic"}, "spacing_mm: expected 3 positive numbers"),
        ({"spacing_mm": [1, 1]}, "spacing_mm: expected 3 positive numbers"),
        ({"axis_order": "yxz"}, "axis_order: expected 'xyz' or 'zyx'"),
    ],
)
def test_a_structured_key_holding_free_text_is_refused(prep, message):
    with pytest.raises(ValueError, match=message):
        InputContract.from_preprocessing({"intensity_transform": "none", **prep}, "m.t: ")


@pytest.fixture(scope="module")
def lpi_2mm(tmp_path_factory):
    """The template at 2 mm, stored LPI: orientation, resampling and axis order all have work to do."""
    src = nib.load(MNI)
    data = np.asarray(src.dataobj, dtype=np.float32)[::2, ::2, ::2][::-1, :, ::-1].copy()
    aff = src.affine.copy()
    aff[:3, :3] *= 2
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[0, 3], flip[2, 3] = data.shape[0] - 1, data.shape[2] - 1
    path = tmp_path_factory.mktemp("lpi") / "lpi.nii.gz"
    nib.save(nib.Nifti1Image(data, aff @ flip), path)
    return path


@pytest.mark.parametrize("ident", ["qtunet-t.ct-ssl", "pctnet.vf110k", "swinunetr2d-c48"])
def test_for_model_gives_the_tensor_predict_feeds_the_model(lpi_2mm, ident):
    """One tag of every family with weights (QT-UNet; PCT-Net incl. FMUNet) and the 2D Swin-UNETR."""
    via_monai = for_model(ident)({"image": str(lpi_2mm)})["image"]
    s = resolve_settings(
        plan(ident, pretrained="." in ident).planned_cfg()
    )  # no tag: the architecture's plan
    via_predict = preprocess(lpi_2mm, s)["image"]
    assert tuple(via_monai.shape) == tuple(via_predict.shape)
    torch.testing.assert_close(torch.as_tensor(via_monai), torch.as_tensor(via_predict), rtol=1e-5, atol=1e-5)
    c = contract_of(ident)
    src = nib.load(lpi_2mm)
    if c.axis_order == "zyx":  # PCT-Net: native grid, axial axis first, HU window
        assert tuple(via_monai.shape[1:]) == src.shape[::-1]
        assert float(via_monai.min()) >= -1 and float(via_monai.max()) <= 1
    if c.spacing_mm == (1.0, 1.0, 1.0):  # QT-UNet: RAS at 1 mm, z-scored foreground
        assert all(abs(n - 2 * m) <= 2 for n, m in zip(via_monai.shape[1:], src.shape, strict=True))
        fg = torch.as_tensor(via_monai)[torch.as_tensor(via_monai) != 0]
        assert abs(float(fg.mean())) < 1e-3


@pytest.mark.parametrize("ident", ["qtunet-t.ct-ssl", "pctnet.vf110k"])
def test_for_model_keeps_a_binary_labels_values_on_the_images_grid(lpi_2mm, tmp_path, ident):
    """Labels are read as integers, moved with nearest-neighbour and never intensity-transformed."""
    src = nib.load(lpi_2mm)
    mask = (np.asarray(src.dataobj) > np.percentile(np.asarray(src.dataobj), 60)).astype(np.uint8)
    label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(mask, src.affine), label)
    files = {"image": str(lpi_2mm), "label": str(label)}
    out = for_model(ident, keys=("image", "label"))(files)
    lab = torch.as_tensor(out["label"])
    assert lab.dtype == torch.int64 and set(lab.unique().tolist()) == {0, 1}
    assert lab.shape == out["image"].shape
    assert float(lab.float().mean()) == pytest.approx(mask.mean(), rel=0.02)  # 2 mm → 1 mm keeps the share
    # On the image's grid: the mask read as an image (bilinear, no intensity transform) agrees.
    as_image = (
        contract_of(ident).replace(intensity="none").compose(("label",))({"label": str(label)})["label"]
    )
    assert float(((torch.as_tensor(as_image) > 0.5) == (lab == 1)).float().mean()) > 0.97
    only_image = for_model(ident)({"image": str(lpi_2mm)})["image"]
    torch.testing.assert_close(torch.as_tensor(out["image"]), torch.as_tensor(only_image))  # untouched by it
    # The other conventional key, and any key named as a label.
    seg = for_model(ident, keys=("image", "seg"))({"image": files["image"], "seg": files["label"]})["seg"]
    assert set(torch.as_tensor(seg).unique().tolist()) == {0, 1}
    t = for_model(ident, keys=("ct",), label_keys=("organs",))
    mine = t({"ct": files["image"], "organs": files["label"]})
    assert mine["organs"].dtype == torch.int64 and torch.equal(torch.as_tensor(mine["organs"]), lab)


def test_for_model_takes_a_built_model_and_its_run_preprocessing():
    model = zoo.create("pctnet", num_classes=2)
    assert contract_of(model) == InputContract(orientation="RAS")  # no weights: the default, said so
    model.pretrained_cfg["preprocessing"] = {
        "orientation": None,
        "axis_order": "zyx",
        "intensity_transform": "none",
    }
    t = for_model(model, keys=("ct",))
    names = [type(x).__name__ for x in t.transforms]
    assert names[:2] == ["LoadImaged", "EnsureChannelFirstd"] and names[-1] == "Transposed"
    assert "Orientationd" not in names and "Spacingd" not in names


def test_zscore_warns_when_background_noise_is_counted(caplog):
    from zoo.transforms import ZScored

    x = torch.zeros(1, 40, 40, 40)
    x[:, 10:30, 10:30, 10:30] = 100 + torch.rand(1, 20, 20, 20)
    with caplog.at_level(logging.INFO, logger="zoo"):
        t = ZScored("image")
        t({"image": x})
    assert t.last_foreground_share == pytest.approx(8000 / 64000)
    assert "background noise" not in caplog.text
    noisy = x + (x == 0) * 0.01 * torch.rand_like(x)
    with caplog.at_level(logging.WARNING, logger="zoo"):
        t({"image": noisy})
    assert t.last_foreground_share > 0.99 and "background noise is probably counted" in caplog.text


def test_pretraining_reads_scans_through_the_same_contract_with_its_foreground_crop(tmp_path):
    import nibabel as nib
    import numpy as np

    from zoo.ssl.data import Preprocessing, load_volume
    from zoo.transforms import InputContract

    assert Preprocessing is InputContract  # one preprocessing type
    vol = np.zeros((20, 18, 16), np.float32)
    vol[4:12, 5:9, 3:14] = np.random.default_rng(0).random((8, 4, 11)) + 1.0
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    c = InputContract(orientation=None, intensity="none", crop_foreground=True, foreground_threshold=0.5)
    assert InputContract.from_preprocessing(c.as_dict()) == c  # the crop survives a run's config.json
    via_monai = c.compose(("image",))({"image": str(path)})["image"]
    via_pretraining = load_volume(path, c)
    assert tuple(via_pretraining.shape) == (1, 8, 4, 11)
    torch.testing.assert_close(torch.as_tensor(via_monai.as_tensor()), via_pretraining)
    text = {"crop_foreground": "image > 0, margin 1", "intensity_transform": "none"}  # registry prose
    assert InputContract.from_preprocessing(text).crop_foreground is False
