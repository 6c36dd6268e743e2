"""Pictures: a preview per predicted case, training curves, and one line when matplotlib is missing."""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pytest

from zoo.cli import main
from zoo.predict import PredictSettings, predict_nifti, sample_volume_path

from .test_predict import ThresholdNet

pytest.importorskip("nilearn")
mpimg = pytest.importorskip("matplotlib.image")
MNI = sample_volume_path()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    src = nib.load(MNI)
    aff = src.affine.copy()
    aff[:3, :3] *= 4
    path = tmp_path_factory.mktemp("mni") / "mni4.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj, np.float32)[::4, ::4, ::4].copy(), aff), path)
    return path


def test_predict_writes_a_preview_with_the_scan_and_coloured_labels(tmp_path, small):
    r = predict_nifti(
        ThresholdNet(), small, tmp_path / "seg.nii.gz", PredictSettings(preview=True), progress=False
    )
    assert r.preview == tmp_path / "seg.png" and r.preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(r.preview)
    assert img.ndim == 3 and img.shape[1] > 1.5 * img.shape[0]  # three panels side by side
    rgb = img[..., :3]
    coloured = (rgb.max(-1) - rgb.min(-1)) > 0.2  # the overlay: grey scan pixels have equal channels
    assert 0.01 < coloured.mean() < 0.5


def test_preview_without_matplotlib_fails_in_one_line_before_compute(tmp_path, small, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    model = ThresholdNet()
    with pytest.raises(RuntimeError, match=r"pip install 'medzoo\[plots\]'"):
        predict_nifti(model, small, tmp_path / "seg.nii.gz", PredictSettings(preview=True), progress=False)
    assert model.calls == 0 and not (tmp_path / "seg.nii.gz").exists()
    argv = [
        "predict",
        "fmunet",
        "--no-weights",
        "-q",
        "--preview",
        "-i",
        str(small),
        "-o",
        str(tmp_path / "s.nii.gz"),
    ]
    assert main(argv) == 1  # a missing extra is the environment's failure, as for every command
    err = capsys.readouterr().err
    assert err.strip() == "zoo predict: error: pictures need matplotlib: pip install 'medzoo[plots]'"


def test_training_curves_are_drawn_next_to_the_log(tmp_path):
    from zoo.plots import plot_training_curves

    log = tmp_path / "log.jsonl"
    lines = [{"step": s, "loss": 2.0 / s, "lr": 1e-3} for s in range(1, 41)]
    lines.insert(20, {"val": {"step": 20, "dice_mean": 0.4, "dice_1": 0.3, "dice_2": 0.5}})
    lines.append({"val": {"step": 40, "dice_mean": 0.6, "dice_1": 0.5, "dice_2": 0.7}})
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    written = plot_training_curves(log)
    assert written == [tmp_path / "loss.png", tmp_path / "val_dice.png"]
    assert all(mpimg.imread(p).shape[0] > 100 for p in written)
    log.write_text('{"step": 1, "loss": 1.0}\nnot json\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2: expected one JSON object per line"):
        plot_training_curves(log, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def _hue_gap(a, b) -> float:
    import colorsys

    ha, hb = colorsys.rgb_to_hsv(*a)[0], colorsys.rgb_to_hsv(*b)[0]
    return min(abs(ha - hb), 1 - abs(ha - hb))


def test_neighbouring_labels_are_drawn_in_colours_told_apart(tmp_path):
    from zoo.plots import OKABE_ITO, preview_png

    # Colour-blind-safe palette whose neighbours differ in hue (the old preview drew 1 and 2 in two blues).
    rgb = [np.array([int(c[i : i + 2], 16) / 255 for i in (1, 3, 5)]) for c in OKABE_ITO]
    assert min(_hue_gap(a, b) for a, b in zip(rgb, rgb[1:], strict=False)) > 0.1
    labels = np.zeros((16, 16, 16), np.int16)
    labels[:, :8], labels[:, 8:] = 1, 2
    png = preview_png(
        np.ones((16, 16, 16), np.float32), labels, np.eye(4), {1: "a", 2: "b"}, tmp_path / "p.png"
    )
    pixels = mpimg.imread(png)[..., :3].reshape(-1, 3)
    colours, counts = np.unique(np.round(pixels, 2), axis=0, return_counts=True)
    drawn = [c for c in colours[np.argsort(-counts)] if np.ptp(c) > 0.1][:2]  # the two largest coloured areas
    assert len(drawn) == 2 and _hue_gap(drawn[0], drawn[1]) > 0.25
