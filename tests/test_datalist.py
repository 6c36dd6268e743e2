"""Datalists: one reader (MONAI's) for fine-tuning and pretraining; per-channel files; clear errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from zoo.datalist import image_channels, read_datalist

SEQUENCES = ("flair", "t1", "t1ce", "t2")


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0])), str(path))


def _brats_case(folder, name, rng, shape=(32, 32, 32)):
    """Four single-channel volumes and a label map: a bright blob, brighter in some sequences."""
    label = np.zeros(shape, np.uint8)
    label[8:24, 8:24, 8:24] = 1
    label[12:20, 12:20, 12:20] = 2
    images = []
    for k, seq in enumerate(SEQUENCES):
        data = rng.normal(1.0, 0.1, shape).astype(np.float32) + (k + 1) * 0.5 * label
        _write(folder / name / f"{name}_{seq}.nii.gz", data)
        images.append(f"{name}/{name}_{seq}.nii.gz")
    _write(folder / name / f"{name}_seg.nii.gz", label)
    return {"image": images, "label": f"{name}/{name}_seg.nii.gz"}


@pytest.fixture
def brats(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    datalist = {
        "labels": {"0": "background", "1": "oedema", "2": "core"},
        "training": [_brats_case(data, f"case{i}", rng) for i in range(2)],
        "validation": [_brats_case(data, "case9", rng)],
    }
    path = data / "datalist.json"
    path.write_text(json.dumps(datalist))
    return path


def test_a_list_valued_image_is_kept_as_its_channels_in_order(brats):
    dl = read_datalist(brats)
    image = dl["training"][0]["image"]
    assert [p.rsplit("_", 1)[1] for p in image] == [f"{s}.nii.gz" for s in SEQUENCES]
    assert all(p.startswith(str(brats.parent.resolve())) for p in image)
    assert image_channels(image) == 4 and dl["labels"][2] == "core"


def test_a_brats_style_datalist_finetunes_with_four_input_channels(brats, tmp_path):
    from zoo.finetune import FinetuneOptions, finetune

    options = FinetuneOptions(
        preset="default", steps=2, roi_size=(32, 32, 32), batch_size=1, num_samples=1, val_every=2,
        spacing_mm=(4.0, 4.0, 4.0), intensity="zscore-nonzero", progress=False,
        model_kwargs={"feature_chns": (4, 8, 16, 32, 64)},
    )  # fmt: skip
    r = finetune("fmunet", brats, tmp_path / "run", options, print_fn=lambda _m: None)
    assert r.steps == 2 and r.settings.in_chans == 4
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["in_chans"] == 4 and cfg["model_args"]["in_chans"] == 4 and cfg["num_classes"] == 3


def test_a_missing_file_is_named_with_its_entry_in_one_line(brats):
    raw = json.loads(brats.read_text())
    raw["training"][1]["image"][2] = "case1/case1_gone.nii.gz"
    brats.write_text(json.dumps(raw))
    with pytest.raises(
        ValueError, match=r"training\[1\] image\[2\] .*case1_gone\.nii\.gz does not exist"
    ) as e:
        read_datalist(brats)
    assert str(brats) in str(e.value) and "\n" not in str(e.value)


def test_a_missing_key_is_named_with_its_entry_in_one_line(brats):
    raw = json.loads(brats.read_text())
    del raw["validation"][0]["label"]
    brats.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"validation\[0\] needs 'image' and 'label' entries") as e:
        read_datalist(brats)
    assert str(brats) in str(e.value) and "\n" not in str(e.value)
    # Image-only entries are fine where no label is needed (prediction, pretraining).
    assert read_datalist(brats, require_label=False)["validation"][0].get("label") is None
    raw["training"][0] = {"label": "case0/case0_seg.nii.gz"}
    brats.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"training\[0\] needs 'image' entries"):
        read_datalist(brats, require_label=False)


def test_base_dir_resolves_relative_paths(brats, tmp_path):
    moved = tmp_path / "elsewhere" / "list.json"
    moved.parent.mkdir()
    moved.write_text(brats.read_text())
    with pytest.raises(ValueError, match="does not exist"):
        read_datalist(moved)  # relative to the JSON's own folder: nothing there
    dl = read_datalist(moved, base_dir=brats.parent)
    assert dl["training"][0]["label"] == str(brats.parent.resolve() / "case0" / "case0_seg.nii.gz")


def test_pretraining_reads_the_same_datalists(brats):
    from zoo.ssl.data import Preprocessing, load_volume
    from zoo.ssl.data import read_datalist as read_scans

    scans = read_scans(brats)
    assert len(scans) == 2 and len(scans[0]) == 4
    prep = Preprocessing(crop_foreground=False)
    assert load_volume(scans[0], prep).shape == (4, 32, 32, 32)
    bare = brats.parent / "scans.json"
    bare.write_text(json.dumps(["case0/case0_flair.nii.gz", {"image": "case1/case1_t1.nii.gz"}]))
    assert [p.name for p in read_scans(bare)] == ["case0_flair.nii.gz", "case1_t1.nii.gz"]
