"""From published weights to a fine-tuned model, end to end, over real HTTP.

Each family's weights are served by the loopback upstream server in the authors' own
container (QT-UNet: the flat ``encoder.*`` dict of ``<dataset>_pretrained.pt``; PCT-Net and
FMUNet: PyMIC's ``{"iteration", "model_state_dict", ...}``), then ``zoo finetune NAME.TAG``
runs through ``zoo.cli.main`` on real NIfTI volumes. A spy on ``zoo.train.train`` (the real
loop still runs) records the model at step 0: every tensor the checkpoint holds must equal
the served one after conversion, and the head must be new. The run is then reloaded with
``zoo.create(name, checkpoint_path=run)`` and segments a volume.

The widths are reduced through ``model_kwargs``; the served checkpoints are built with the
same reduced arguments, so they match the model exactly as the published ones match the
registered configuration.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

import zoo
from tests.servers import torch_bytes, url_path
from zoo._registry import get_spec, override_weights
from zoo.cli import main
from zoo.convert import convert_checkpoint
from zoo.finetune import make_mni_task

QT_SMALL = {"embed_dim": 12}
PCT_SMALL = {"feature_chns": [4, 8, 16, 32, 64], "num_heads": [1, 2, 4]}
FMU_SMALL = {"feature_chns": [4, 8, 16, 32, 64]}
VF_SMALL = {"roi": [16, 32, 32], "size_min": [2, 4, 4], "size_max": [8, 16, 16]}


@pytest.fixture(scope="module")
def mni(tmp_path_factory):
    """One training and one validation case of MNI152 at 4 mm (real NIfTI files)."""
    return make_mni_task(tmp_path_factory.mktemp("mni"), n_train=1, n_val=1, spacing_mm=4.0)


@pytest.fixture
def step0(monkeypatch):
    """The model's state at step 0 of every training run (a spy: the real loop runs)."""
    import zoo.train

    seen: list[dict[str, torch.Tensor]] = []
    real = zoo.train.train

    def spy(model, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(zoo.train, "train", spy)
    return seen


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _finetune(name, mni, out, *extra):
    argv = ["finetune", name, "--data", str(mni), "--out", str(out), "--steps", "1", "--batch-size", "1",
            "--num-samples", "1", "--val-every", "1", "--spacing", "4", "4", "4",
            "--intensity", "zscore-nonzero", "-q", *extra]  # fmt: skip
    return main(argv)


def _predict_with_run(name, run, mni, tmp_path):
    import nibabel as nib
    import numpy as np

    from zoo.layers.derived import derived_buffer_keys
    from zoo.predict import predict_nifti

    model = zoo.create(name, checkpoint_path=run)
    saved = load_file(str(run / "model.safetensors"))
    own = model.state_dict()
    assert set(saved) == set(own) - derived_buffer_keys(model)  # less what loading rebuilds
    assert all(torch.equal(v, own[k]) for k, v in saved.items())
    image = json.loads(mni.read_text())["validation"][0]["image"]
    out = tmp_path / "seg.nii.gz"
    predict_nifti(model, mni.parent / image, out, progress=False)
    seg = np.asarray(nib.load(str(out)).dataobj)
    assert seg.shape == nib.load(str(mni.parent / image)).shape
    assert set(np.unique(seg)) <= {0, 1, 2}


def _check_full_start(spec, served_sd, start, num_classes):
    """Every non-head tensor equals the served one; the head is newly initialised for the new classes."""
    converted = convert_checkpoint({"iteration": 1, "model_state_dict": served_sd}, spec)
    heads = tuple(spec.head_keys)
    new = [k for k in converted if k.startswith(heads)]
    assert new, "the served checkpoint has head tensors"
    for k, v in converted.items():
        if k.startswith(heads):
            assert start[k].shape[0] == num_classes != v.shape[0], k
        else:
            assert torch.equal(start[k], v), k


def test_finetune_qtunet_tag_loads_the_served_encoder_and_a_new_decoder(hub_env, mni, tmp_path, step0):
    name, tag = "qtunet-t", "ct-ssl"
    torch.manual_seed(1234)  # not the run's seed: a random start cannot equal the served tensors
    reference = zoo.create(name, img_size=32, **QT_SMALL)
    encoder = {k: v.clone() for k, v in reference.state_dict().items() if k.startswith("encoder.")}
    data = torch_bytes(encoder)  # the authors' <dataset>_pretrained.pt: a flat dict of encoder.* tensors
    ws = get_spec(name).weight(tag)
    hub_env.add_file(url_path(ws.url), data)
    run = tmp_path / "run"
    with override_weights(name, tag, upstream_digest=f"sha256:{_sha256(data)}"):
        rc = _finetune(f"{name}.{tag}", mni, run, "--roi", "32", "32", "32",
                       "--model-kwargs", json.dumps(QT_SMALL))  # fmt: skip
    assert rc == 0
    assert hub_env.hits(url_path(ws.url)) == 1
    (start,) = step0
    for k, v in encoder.items():
        assert torch.equal(start[k], v), k
    others = [k for k in start if not k.startswith("encoder.")]
    assert others and any(k.startswith("output.") for k in others)
    assert not all(torch.equal(start[k], reference.state_dict()[k]) for k in others)  # decoder is new
    cfg = json.loads((run / "config.json").read_text())
    init = cfg["init"]
    assert (init["source"], init["id"], init["tag"], init["covers"]) == (
        "registry",
        f"{name}.{tag}",
        tag,
        "encoder",
    )
    assert init["identified_as"] == f"{name}.{tag}" and len(init["sha256"]) == 64
    assert "output" in init["newly_initialised"] and "encoder" not in init["newly_initialised"]
    assert cfg["tag"] == tag
    _predict_with_run(name, run, mni, tmp_path)


def test_finetune_pctnet_tag_loads_the_pymic_checkpoint(hub_env, mni, tmp_path, step0):
    name, tag = "pctnet", "vf110k"
    spec = get_spec(name)
    torch.manual_seed(99)
    small = dict(PCT_SMALL, img_size=(16, 32, 32))
    sd = {k: v.clone() for k, v in zoo.create(name, num_classes=5, **small).state_dict().items()}
    data = torch_bytes(
        {"iteration": 400_000, "valid_pred": 0.5, "model_state_dict": sd, "optimizer_state_dict": {}}
    )
    # The registered URL is a Google Drive link (its handling is another module's concern): the test
    # points the tag at a plain loopback URL instead.
    url = "https://weights.example/pctnet_pretrain.pt"
    hub_env.add_file(url_path(url), data)
    run = tmp_path / "run"
    with override_weights(name, tag, url=url, hf_hub_id=None, upstream_digest=f"sha256:{_sha256(data)}"):
        rc = _finetune(f"{name}.{tag}", mni, run, "--roi", "16", "32", "32",
                       "--model-kwargs", json.dumps(PCT_SMALL))  # fmt: skip
    assert rc == 0
    (start,) = step0
    _check_full_start(spec, sd, start, num_classes=3)
    init = json.loads((run / "config.json").read_text())["init"]
    assert (init["id"], init["covers"], init["identified_as"]) == (f"{name}.{tag}", "full", f"{name}.{tag}")
    _predict_with_run(name, run, mni, tmp_path)


def _serve_fmunet(hub_env):
    """A PyMIC checkpoint of the reduced FMUNet served as fmunet.vf1k; returns the served state_dict."""
    torch.manual_seed(7)
    sd = {k: v.clone() for k, v in zoo.create("fmunet", num_classes=5, **FMU_SMALL).state_dict().items()}
    data = torch_bytes(
        {"iteration": 1000, "valid_pred": 0.5, "model_state_dict": sd, "optimizer_state_dict": {}}
    )
    # The registered tag has only a Google Drive folder: the test points it at a plain loopback URL.
    url = "https://weights.example/fmunet_abd1k_volf.pt"
    hub_env.add_file(url_path(url), data)
    return sd, override_weights(
        "fmunet", "vf1k", url=url, hf_hub_id=None, upstream_digest=f"sha256:{_sha256(data)}"
    )


def test_finetune_fmunet_tag_loads_the_pymic_checkpoint(hub_env, mni, tmp_path, step0):
    sd, served = _serve_fmunet(hub_env)
    run = tmp_path / "run"
    with served:
        rc = _finetune(
            "fmunet.vf1k", mni, run, "--roi", "32", "32", "32", "--model-kwargs", json.dumps(FMU_SMALL)
        )
    assert rc == 0
    (start,) = step0
    _check_full_start(get_spec("fmunet"), sd, start, num_classes=3)
    assert json.loads((run / "config.json").read_text())["init"]["id"] == "fmunet.vf1k"
    _predict_with_run("fmunet", run, mni, tmp_path)


def test_pretrain_from_a_tag_then_finetune_from_the_pretrain_run(hub_env, mni, tmp_path, step0):
    """The SSL → fine-tune path: zoo pretrain --init NAME.TAG, then zoo finetune --checkpoint RUN."""
    sd, served = _serve_fmunet(hub_env)
    dl = json.loads(mni.read_text())
    images = tmp_path / "unlabelled.json"  # both volumes, as unlabelled images
    images.write_text(json.dumps([str(mni.parent / e["image"]) for e in dl["training"] + dl["validation"]]))
    pre = tmp_path / "pre"
    with served:
        rc = main(["pretrain", "volume-fusion", "--model", "fmunet", "--init", "fmunet.vf1k",
                   "--data", str(images), "--out", str(pre), "--steps", "2", "--batch-size", "2",
                   "--model-kwargs", json.dumps(FMU_SMALL), "--spacing", "4", "4", "4",
                   "--intensity", "zscore-nonzero", "--recipe-kwargs", json.dumps(VF_SMALL),
                   "-q"])  # fmt: skip
    assert rc == 0
    init = json.loads((pre / "config.json").read_text())["pretraining"]["init"]
    assert (init["source"], init["id"], init["covers"]) == ("registry", "fmunet.vf1k", "full")
    assert len(step0) == 1  # the pretraining loop
    pretrained = load_file(str(pre / "model.safetensors"))
    assert any(not torch.equal(pretrained[k], sd[k]) for k in sd)  # pretraining changed the weights

    run = tmp_path / "ft"
    rc = _finetune("fmunet", mni, run, "--checkpoint", str(pre), "--roi", "32", "32", "32")
    assert rc == 0
    start = step0[1]
    heads = tuple(get_spec("fmunet").head_keys)
    for k, v in pretrained.items():
        if k.startswith(heads):
            assert start[k].shape[0] == 3 != v.shape[0], k
        else:
            assert torch.equal(start[k], v), k
    init = json.loads((run / "config.json").read_text())["init"]
    assert init["source"] == "run" and init["covers"] == "full" and init["tag"] is None
    _predict_with_run("fmunet", run, mni, tmp_path)


def test_unreachable_weights_stop_the_run_before_training(hub_env, mni, tmp_path, capsys, step0):
    run = tmp_path / "run"
    # Nothing is served: a runtime failure (exit 1), not a usage error.
    assert _finetune("qtunet-t.ct-ssl", mni, run, "--roi", "32", "32", "32") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot obtain weights qtunet-t.ct-ssl" in err[0]
    assert not step0 and not run.exists()
    argv = ["pretrain", "volume-fusion", "--model", "fmunet", "--init", "fmunet.vf1k", "--data", str(mni),
            "--out", str(tmp_path / "pre"), "--steps", "1", "-q"]  # fmt: skip
    assert main(argv) == 1
    assert "fmunet.vf1k" in capsys.readouterr().err and not (tmp_path / "pre").exists()


def test_a_tag_and_a_checkpoint_together_are_refused(mni, tmp_path, capsys):
    assert _finetune("fmunet.vf1k", mni, tmp_path / "run", "--checkpoint", str(tmp_path)) == 2
    assert "start from one" in capsys.readouterr().err


def test_a_run_never_writes_over_its_own_starting_checkpoint(mni, tmp_path, capsys):
    from safetensors.torch import save_file

    run = tmp_path / "run"
    run.mkdir()
    model = zoo.create("fmunet", num_classes=3, **FMU_SMALL)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "start.safetensors"))
    before = (run / "start.safetensors").read_bytes()
    assert _finetune("fmunet", mni, run, "--checkpoint", str(run / "start.safetensors")) == 2
    assert "overwrite the weights it starts from" in capsys.readouterr().err
    argv = ["pretrain", "volume-fusion", "--model", "fmunet", "--init", str(run), "--data", str(mni),
            "--out", str(run), "--steps", "1", "-q"]  # fmt: skip
    assert main(argv) == 2 and "choose another --out" in capsys.readouterr().err
    assert (run / "start.safetensors").read_bytes() == before and sorted(p.name for p in run.iterdir()) == [
        "start.safetensors"
    ]
