"""Whole studies: a folder, datalist or glob of real volumes, resumable, bad files skipped; 2D by slices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

import zoo
from zoo.cli import main
from zoo.predict import PredictSettings, predict_nifti, sample_volume_path
from zoo.study import StudySettings, list_cases, predict_study

from .test_predict import THRESHOLD, ThresholdNet

pytest.importorskip("nilearn")
MNI = sample_volume_path()
ROOT = Path(__file__).resolve().parents[1]


def _variants(folder: Path) -> dict[str, np.ndarray]:
    """MNI152 at several grids and orientations, each with the threshold map it should get."""
    src = nib.load(MNI)
    full = np.asarray(src.dataobj, dtype=np.float32)
    cases = {}

    def save(name, data, affine):
        nib.save(nib.Nifti1Image(data, affine), folder / name)
        cases[name] = data > THRESHOLD

    aff4 = src.affine.copy()
    aff4[:3, :3] *= 4
    d4 = full[::4, ::4, ::4].copy()
    save("ras_4mm.nii.gz", d4, aff4)
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[0, 3], flip[2, 3] = d4.shape[0] - 1, d4.shape[2] - 1
    save("lpi_4mm.nii.gz", d4[::-1, :, ::-1].copy(), aff4 @ flip)
    aniso = src.affine.copy()
    aniso[:3, :3] = aniso[:3, :3] @ np.diag([3.0, 4.0, 5.0])
    save("aniso_3x4x5.nii", full[::3, ::4, ::5].copy(), aniso)
    # Axes stored as (y, x, z): a permuted storage order with its affine permuted to match.
    perm = aff4[:, [1, 0, 2, 3]]
    save("yxz_4mm.nii.gz", d4.transpose(1, 0, 2).copy(), perm)
    return cases


@pytest.fixture()
def study(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    cases = _variants(folder)
    good = (folder / "ras_4mm.nii.gz").read_bytes()
    (folder / "corrupt.nii.gz").write_bytes(good[: len(good) // 2])  # truncated mid-download
    return folder, cases


def _agreement(out: Path, expected: np.ndarray) -> float:
    return float((np.asarray(nib.load(out).dataobj).astype(bool) == expected).mean())


def test_a_folder_predicts_skips_the_corrupt_file_and_resumes(study, tmp_path):
    folder, cases = study
    out = tmp_path / "seg"
    res = predict_study(
        ThresholdNet(), folder, out, StudySettings(spacing_mm=(2.0, 2.0, 2.0), num_workers=1), progress=False
    )
    assert res.cases == 5 and len(res.written) == 4 and res.skipped == []
    assert list(res.failed) == [str(folder / "corrupt.nii.gz")]
    assert "corrupt.nii.gz" in next(iter(res.failed.values())) or "cannot be read" in next(
        iter(res.failed.values())
    )
    for name, expected in cases.items():
        written = out / (name if name.endswith(".gz") else name + ".gz")
        src = nib.load(folder / name)
        seg = nib.load(written)
        assert seg.shape == src.shape
        np.testing.assert_array_equal(seg.affine, src.affine)
        assert _agreement(written, expected) > 0.95, name
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".medzoo.json")) == sorted(
        n if n.endswith(".gz") else n + ".gz" for n in cases
    )  # no temporary file left behind (each output has its hidden sidecar record)
    # A rerun resumes: nothing is recomputed; a deleted output is the only one written again.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    model = ThresholdNet()
    again = predict_study(
        model, folder, out, StudySettings(spacing_mm=(2.0, 2.0, 2.0), num_workers=0), progress=False
    )
    assert len(again.skipped) == 4 and again.written == [] and model.calls == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    (out / "lpi_4mm.nii.gz").unlink()
    third = predict_study(
        ThresholdNet(), folder, out, StudySettings(spacing_mm=(2.0, 2.0, 2.0), num_workers=0), progress=False
    )
    assert [p.output.name for p in third.written] == ["lpi_4mm.nii.gz"] and len(third.skipped) == 3


def test_cli_study_summarises_and_exits_non_zero_when_a_case_failed(study, tmp_path, capsys):
    folder, _ = study
    argv = ["predict", "fmunet", "--no-weights", "-q", "-i", str(folder), "-o", str(tmp_path / "seg"),
            "--spacing", "8", "8", "8", "--roi-size", "32", "32", "32", "--workers", "0"]  # fmt: skip
    assert main(argv) == 1
    cap = capsys.readouterr()
    assert "5 case(s): 4 written, 0 already there (skipped), 1 failed" in cap.out
    assert "failed: " in cap.err and "corrupt.nii.gz" in cap.err
    assert len(list((tmp_path / "seg").glob("*.nii.gz"))) == 4


def test_a_datalist_and_a_glob_list_the_cases(study, tmp_path):
    folder, cases = study
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps({"testing": [{"image": f"scans/{n}"} for n in sorted(cases)]}))
    assert list_cases(dl) == [tmp_path / "scans" / n for n in sorted(cases)]
    assert [p.name for p in list_cases(str(folder / "*_4mm.nii.gz"))] == [
        "lpi_4mm.nii.gz",
        "ras_4mm.nii.gz",
        "yxz_4mm.nii.gz",
    ]
    with pytest.raises(ValueError, match="matches no .nii"):
        list_cases(str(folder / "*.mha"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="found none"):
        list_cases(tmp_path / "empty")


def test_a_study_never_writes_over_its_inputs(study):
    folder, _ = study
    model = ThresholdNet()
    with pytest.raises(ValueError, match="holds the input scans .*choose another output folder"):
        predict_study(model, folder, folder, progress=False)
    (folder.parent / "alias").symlink_to(folder)
    with pytest.raises(ValueError, match="holds the input scans"):
        predict_study(model, folder, folder.parent / "alias", progress=False)
    assert model.calls == 0


def test_a_study_output_that_is_a_file_is_refused(study, tmp_path):
    folder, _ = study
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="expected an output folder, found a file"):
        predict_study(ThresholdNet(), folder, tmp_path / "afile", progress=False)


@pytest.mark.slow  # two fresh interpreters importing torch and MONAI: ~60 s on a loaded 2-core machine
def test_torchrun_shards_the_cases_over_two_processes(study, tmp_path):
    folder, cases = study
    (folder / "corrupt.nii.gz").unlink()
    out = tmp_path / "seg"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "zoo.cli", "predict", "fmunet", "--no-weights", "-q", "-i", str(folder), "-o", str(out),
           "--spacing", "8", "8", "8", "--roi-size", "32", "32", "32", "--workers", "0"]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    # Each rank took its own two cases and said so; together they wrote all four.
    assert r.stdout.count("2 case(s): 2 written") == 2, r.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        n if n.endswith(".gz") else n + ".gz" for n in cases
    )


class Threshold2d(nn.Module):
    """A 2D stand-in with a known answer: label 1 where the slice exceeds 0.5."""

    def __init__(self):
        super().__init__()
        self.shapes = []
        self.pretrained_cfg = {
            "name": "threshold2d",
            "model_args": {"in_chans": 1},
            "input_size": (1, 32, 32),
            "sliding_window": {"roi_size": (32, 32), "overlap": 0.0},
            "preprocessing": {
                "intensity_transform": {
                    "kind": "clip_scale",
                    "a_min": 0,
                    "a_max": 2 * THRESHOLD,
                    "b_min": 0,
                    "b_max": 1,
                }
            },
        }

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return torch.cat([0.5 - x, x - 0.5], dim=1) * 10


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_2d_model_segments_a_volume_slice_by_slice_along_the_chosen_axis(study, tmp_path, axis):
    folder, cases = study
    model = Threshold2d()
    r = predict_nifti(
        model,
        folder / "lpi_4mm.nii.gz",
        tmp_path / "seg.nii.gz",
        PredictSettings(slice_axis=axis),
        progress=False,
    )
    assert all(len(s) == 4 and s[2:] == (32, 32) for s in model.shapes)  # 2D windows, never a volume
    grid = r.model_grid_shape
    assert r.num_windows == grid[axis] * np.prod([-(-n // 32) for i, n in enumerate(grid) if i != axis])
    assert _agreement(r.output, cases["lpi_4mm.nii.gz"]) > 0.97


def test_the_2d_swin_unetr_predicts_a_volume(study, tmp_path):
    torch.manual_seed(0)
    model = zoo.create("swinunetr2d-c48", num_classes=3, feature_size=12, num_heads=(1, 1, 1, 1))
    scan, out = study[0] / "ras_4mm.nii.gz", tmp_path / "seg.nii.gz"
    r = predict_nifti(model, scan, out, PredictSettings(spacing_mm=(4.0, 4.0, 8.0)), progress=False)
    seg = nib.load(r.output)
    assert seg.shape == nib.load(study[0] / "ras_4mm.nii.gz").shape
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
    assert r.intensity["kind"] == "clip_scale" and r.intensity["a_min"] == -500  # its registered contract


def test_a_study_writes_the_label_maps_single_predictions_write(study, tmp_path):
    # Reading in a DataLoader worker must not change a voxel (same thread count, same transforms).
    folder, _ = study
    torch.manual_seed(0)
    model = zoo.create("fmunet", num_classes=3, feature_chns=(4, 8, 16, 32, 64))
    model.pretrained_cfg["preprocessing"] = {
        "spacing_mm": [3.0, 3.0, 3.0],
        "intensity_transform": "zscore_nonzero",
    }
    cases = [folder / "lpi_4mm.nii.gz", folder / "aniso_3x4x5.nii"]
    kw = dict(roi_size=(32, 32, 32), overlap=0.5)
    predict_study(model, cases, tmp_path / "study", StudySettings(num_workers=1, **kw), progress=False)
    for c in cases:
        name = c.name if c.name.endswith(".gz") else c.name + ".gz"
        one = predict_nifti(model, c, tmp_path / "one" / name, PredictSettings(**kw), progress=False)
        a = np.asarray(nib.load(tmp_path / "study" / name).dataobj)
        np.testing.assert_array_equal(a, np.asarray(nib.load(one.output).dataobj))
        assert len(np.unique(a)) > 1


def test_a_reader_process_is_used_only_when_a_core_is_left_over(monkeypatch):
    from zoo.study import auto_workers

    threads = torch.get_num_threads()
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(threads)))
    assert auto_workers() == 0  # every core runs the model: a reader would take cycles from it
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(threads + 1)))
    assert auto_workers() == 1


@pytest.mark.parametrize("workers", [-1, 1.5, True])
def test_a_bad_worker_count_is_refused_before_any_case(study, tmp_path, workers):
    model = ThresholdNet()
    with pytest.raises(ValueError, match="workers must be an integer >= 0"):
        predict_study(model, study[0], tmp_path / "seg", StudySettings(num_workers=workers), progress=False)
    assert model.calls == 0 and not (tmp_path / "seg").exists()
