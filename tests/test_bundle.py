"""``zoo bundle``: MONAI's own runner executes the bundle and gets ``zoo predict``'s labels.

Tiny run folders (a narrow QT-UNet-T at 32³ and a narrow 2D Swin-UNETR run slice by slice) are
bundled; ``python -m monai.bundle run`` and ``verify_net_in_out`` run in subprocesses, as a MONAI
user would call them.
"""

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
from safetensors.torch import save_file

import zoo
from zoo.cli import main
from zoo.layers.derived import derived_buffer_keys, without_derived

ROOT = Path(__file__).resolve().parents[1]
QT = {"embed_dim": 12, "window_size": 2, "img_size": [32, 32, 32], "in_chans": 1, "num_classes": 3}
SW = {"img_size": [64, 64], "feature_size": 12, "in_chans": 1, "num_classes": 3}


def _run(tmp_path: Path, name: str, args: dict, prep: dict, window: dict) -> Path:
    torch.manual_seed(3)
    model = zoo.create(name, **{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    run = tmp_path / f"run-{name}"
    run.mkdir()
    # As runs save it: without the buffers the model rebuilds, which the bundle's strict load needs back.
    state = without_derived(model.state_dict(), model)
    save_file({k: v.contiguous() for k, v in state.items()}, str(run / "model.safetensors"))
    cfg = {
        "model_name": name,
        "model_args": args,
        "labels": {"0": "background", "1": "liver", "2": "spleen"},
        "preprocessing": prep,
        "sliding_window": window,
        "finetune": {"preset": "test"},
    }
    (run / "config.json").write_text(json.dumps(cfg))
    return run


def _scan(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.normal(100, 30, (41, 37, 30)).astype(np.float32)
    affine = np.array([[-1.2, 0, 0, 40], [0, 0.9, 0.1, -20], [0, 0, 1.5, 10], [0, 0, 0, 1]])  # LAS, sheared
    path = folder / "case.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _monai(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True, env=env, timeout=600
    )


CASES = {
    "qtunet-t": (
        QT,
        {"orientation": "RAS", "spacing_mm": [1.5, 1.5, 1.5], "intensity_transform": "zscore_nonzero"},
        {"roi_size": [32, 32, 32], "overlap": 0.25},
    ),
    "swinunetr2d-c48": (
        SW,
        {
            "orientation": "RAS",
            "spacing_mm": [1.0, 1.0, 2.0],
            "intensity_transform": "zscore",
            "slice_axis": 2,
        },
        {"roi_size": [64, 64], "overlap": 0.25},
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_monai_runs_the_bundle_and_gets_zoo_predicts_labels(tmp_path, name, capsys):
    args, prep, window = CASES[name]
    run = _run(tmp_path, name, args, prep, window)
    scan = _scan(tmp_path / "scans")
    ours = tmp_path / "ours.nii.gz"
    assert main(["predict", str(run), "-i", str(scan), "-o", str(ours), "-q"]) == 0
    bundle = tmp_path / "bundle"
    assert main(["bundle", str(run), "-o", str(bundle)]) == 0
    assert sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()) == [
        "LICENSE",
        "configs/inference.json",
        "configs/metadata.json",
        "docs/README.md",
        "models/model.pt",
    ]
    out = tmp_path / "monai-out"
    r = _monai(
        "run",
        "--config_file", str(bundle / "configs" / "inference.json"),
        "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--bundle_root", str(bundle),
        "--dataset_dir", str(scan.parent),
        "--output_dir", str(out),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    (theirs,) = list(out.rglob("*.nii.gz"))
    a, b = nib.load(ours), nib.load(theirs)
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-5)  # on the input's grid and affine
    assert b.shape == a.shape == nib.load(scan).shape
    got, want = np.asarray(b.dataobj), np.asarray(a.dataobj)
    assert len(np.unique(want)) > 1  # a label map that says something
    assert (got == want).all(), f"{int((got != want).sum())} of {got.size} voxels differ"
    # MONAI's CheckpointLoader loads strictly: model.pt holds every key, derived buffers included.
    held = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert set(held) == set(zoo.create(str(run)).state_dict())
    assert derived_buffer_keys(zoo.create(str(run))) <= set(held)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["optional_packages_version"]["medzoo"] == zoo.__version__
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["1"] == "liver"


def test_the_bundle_network_passes_monai_verify_net_in_out(tmp_path):
    args, prep, window = CASES["qtunet-t"]
    bundle = tmp_path / "bundle"
    assert main(["bundle", str(_run(tmp_path, "qtunet-t", args, prep, window)), "-o", str(bundle)]) == 0
    r = _monai(
        "verify_net_in_out", "network_def",
        "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--config_file", str(bundle / "configs" / "inference.json"),
        "--device", "cpu",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]


def test_non_redistributable_weights_are_not_bundled_without_permission(tmp_path, capsys, monkeypatch):
    from zoo.hub import converted_path, file_digest

    monkeypatch.setenv("MEDZOO_CACHE", str(tmp_path / "cache"))
    spec = zoo.get_spec("qtunet-t")
    torch.manual_seed(0)
    enc = {
        k: v for k, v in zoo.create("qtunet-t").state_dict().items() if k.startswith(spec.encoder_prefixes)
    }
    path = converted_path(spec, spec.weight("ct-ssl"))
    path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in enc.items()}, str(path))
    sidecar = {
        "name": "qtunet-t",
        "tag": "ct-ssl",
        "sha256": file_digest(path),
        "source_digest": "gitsha1:00",
    }
    (path.parent / "qtunet-t.ct-ssl.json").write_text(json.dumps(sidecar))
    assert main(["bundle", "qtunet-t", "--checkpoint", str(path), "-o", str(tmp_path / "b")]) == 2
    assert "does not allow redistribution" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
