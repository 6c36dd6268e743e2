"""The scripts in examples/ run: a zoo model trained by MONAI's engine and by an Accelerate loop."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import zoo

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_TINY = ["--roi", "16", "32", "32", "--model-kwargs", json.dumps({"feature_chns": [4, 8, 16, 32, 64]})]


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    """Two small anisotropic volumes with a binary label (a bright box) and MONAI's datalist."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    cases = []
    for i in range(2):
        label = np.zeros((14, 30, 28), np.uint8)
        label[4:10, 8:22, 6:20] = 1
        image = (label * 100 + rng.normal(50, 10, label.shape)).astype(np.float32)
        affine = np.diag([2.0, 1.5, 1.5, 1.0])
        nib.save(nib.Nifti1Image(image, affine), root / f"img{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / f"lab{i}.nii.gz")
        cases.append({"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz"})
    (root / "datalist.json").write_text(json.dumps({"training": cases, "validation": cases[:1]}))
    return root / "datalist.json"


def _main(script: str):
    return runpy.run_path(str(EXAMPLES / script), run_name="example")["main"]


def test_monai_supervised_trainer_fine_tunes_a_zoo_model_on_for_model_data(datalist):
    trainer = _main("monai_engine.py")(["fmunet", "--data", str(datalist), "--iterations", "2", *_TINY])
    assert trainer.state.iteration == 2 and trainer.state.epoch == 1
    last = trainer.state.output[0]
    assert math.isfinite(float(last["loss"]))
    label = torch.as_tensor(last["label"])  # through for_model: the binary label's values survive
    assert label.dtype == torch.int64 and set(label.unique().tolist()) == {0, 1}
    assert tuple(last["pred"].shape) == (2, 16, 32, 32)


def test_accelerate_loop_with_timm_layer_decay_saves_weights_zoo_loads_strictly(datalist, tmp_path):
    out = tmp_path / "ft"
    argv = ["fmunet", "--data", str(datalist), "--steps", "2", "--out", str(out), "--grad-checkpointing"]
    losses = _main("accelerate_loop.py")([*argv, *_TINY])
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    saved = load_file(str(out / "model.safetensors"))
    model = zoo.create(
        "fmunet", checkpoint_path=out / "model.safetensors", in_chans=1, num_classes=2,
        feature_chns=[4, 8, 16, 32, 64],
    )  # fmt: skip
    fresh = zoo.create("fmunet", in_chans=1, num_classes=2, feature_chns=[4, 8, 16, 32, 64])
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert any(not torch.equal(v, saved[k]) for k, v in fresh.state_dict().items() if v.is_floating_point())
