"""zoo finetune: the papers' recipes, the pipeline on real MRI volumes, resume after interruption."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo.finetune import make_mni_task, read_datalist, resolve_intensity
from zoo.presets import PRESETS, get_preset
from zoo.train import LoopSettings, OptimConfig, lr_factor, make_loader, read_log, train

_TINY = {"feature_chns": [4, 8, 16, 32, 64]}


@pytest.fixture(scope="module")
def mni_task(tmp_path_factory):
    """One training and one validation case of MNI152 at 4 mm (50×59×48), different deformations."""
    return make_mni_task(tmp_path_factory.mktemp("mni"), n_train=1, n_val=1, spacing_mm=4.0)


def test_mni_task_has_three_tissue_classes_and_distinct_deformations(mni_task):
    import nibabel as nib
    import numpy as np

    dl = read_datalist(mni_task)
    assert dl["labels"] == {0: "background", 1: "grey matter", 2: "white matter"}
    labels = [np.asarray(nib.load(c["label"]).dataobj) for c in dl["training"] + dl["validation"]]
    assert all(set(np.unique(lab)) == {0, 1, 2} for lab in labels)
    assert not np.array_equal(labels[0], labels[-1])  # validation is warped differently from training


def test_presets_carry_the_papers_fine_tuning_settings():
    logonet = get_preset("logonet-btcv")  # LoGoNet Table 14, BTCV
    assert (logonet.optim.optimizer, logonet.optim.lr, logonet.optim.weight_decay) == ("adamw", 1e-4, 1e-5)
    assert (logonet.epochs, logonet.warmup_fraction * logonet.epochs) == (5000, 100)
    assert (logonet.batch_size, logonet.num_samples, logonet.dice_weight, logonet.ce_weight) == (2, 2, 1, 1)
    assert logonet.spacing_mm == (1.5, 1.5, 2.0) and logonet.intensity["a_min"] == -175
    msd = get_preset("logonet-msd")
    assert (msd.epochs, msd.warmup_fraction * msd.epochs, msd.batch_size) == (1000, 50, 1)
    qt = get_preset("qtunet-btcv")  # QT-UNet code: Adam 4e-4, no weight decay, 350 epochs, squared Dice
    assert (qt.optim.optimizer, qt.optim.lr, qt.optim.weight_decay, qt.epochs) == ("adam", 4e-4, 0.0, 350)
    assert qt.squared_pred and qt.ce_weight == 0 and qt.batch_size == 1
    pct = get_preset("pctnet")  # MIS-FM: Adam 1e-3 halved every 5k of 30k iterations, batch 2, Dice+CE ½/½
    assert (pct.optim.optimizer, pct.optim.lr, pct.iterations, pct.batch_size) == ("adam", 1e-3, 30_000, 2)
    assert pct.optim_for(30_000).step_size == 5_000 and pct.optim.gamma == 0.5
    assert (pct.dice_weight, pct.ce_weight) == (0.5, 0.5)
    assert "LoGoNet" in logonet.describe() and "5000 epochs" in logonet.describe()


def test_warmup_then_cosine_and_step_schedules():
    cfg = OptimConfig(lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.0)
    assert [lr_factor(cfg, s, 110) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(cfg, 60, 110) == pytest.approx(0.5)
    assert lr_factor(cfg, 109, 110) == pytest.approx(0.0, abs=1e-3)
    step = OptimConfig(schedule="step", step_size=5, gamma=0.5)
    assert [lr_factor(step, s, 30) for s in (0, 4, 5, 14, 15)] == [1, 1, 0.5, 0.25, 0.125]


def test_intensity_comes_from_the_weights_then_the_preset():
    pct = zoo.get_spec("pctnet").weight("vf110k").preprocessing
    assert resolve_intensity(pct, get_preset("pctnet")) == {
        "kind": "clip_scale", "a_min": -1000.0, "a_max": 1000.0, "b_min": -1.0, "b_max": 1.0, "clip": True
    }  # fmt: skip
    qt = zoo.get_spec("qtunet-t").weight("ct-ssl").preprocessing
    assert resolve_intensity(qt, get_preset("qtunet-btcv")) == {
        "kind": "zscore",
        "nonzero": True,
        "channel_wise": False,
    }
    assert resolve_intensity({}, get_preset("logonet-btcv"))["a_max"] == 250
    assert resolve_intensity(qt, get_preset("default"), "clip:0,100,0,1")["a_max"] == 100


def test_a_missing_volume_in_the_datalist_is_named(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"training": [{"image": "x.nii.gz", "label": "y.nii.gz"}]}))
    with pytest.raises(ValueError, match=r"training\[0\] image .*x\.nii\.gz does not exist"):
        read_datalist(tmp_path / "d.json")


def test_models_that_are_not_3d_segmenters_are_refused(mni_task, tmp_path):
    from zoo.finetune import finetune

    with pytest.raises(ValueError, match="not a 3D segmentation model"):
        finetune("resnet50-deformattn", mni_task, tmp_path / "run")


def test_short_finetune_on_mni_volumes_lowers_the_loss_and_writes_a_loadable_run(mni_task, tmp_path, capsys):
    from zoo.cli import main

    out = tmp_path / "run"
    argv = ["finetune", "fmunet", "--data", str(mni_task), "--out", str(out), "--steps", "8",
            "--roi", "32", "32", "32", "--batch-size", "1", "--num-samples", "2", "--lr", "3e-3",
            "--intensity", "zscore-nonzero", "--preset", "default", "--val-every", "8",
            "--model-kwargs", json.dumps(_TINY), "-q"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "preset default" in printed and "AdamW".lower() in printed and "grey matter:" in printed
    steps = [e for e in read_log(out) if "loss" in e]
    assert steps[0]["step"] == 1 and steps[-1]["step"] == 8
    assert steps[-1]["loss"] < steps[0]["loss"]
    val = [e["val"] for e in read_log(out) if "val" in e]
    assert len(val) == 1 and {"dice_1", "dice_2", "dice_mean"} <= set(val[0])
    for png in ("loss.png", "val_dice.png"):  # the curves of log.jsonl, drawn next to it
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["model_name"], cfg["num_classes"], cfg["step"], cfg["labels"]["2"]) == (
        "fmunet",
        3,
        8,
        "white matter",
    )
    model = zoo.create(str(out))  # the run folder alone: model, arguments and weights, loaded strictly
    saved = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert model.pretrained_cfg["labels"]["1"] == "grey matter"
    # The run folder as a checkpoint_path: config.json supplies the model arguments.
    again = zoo.create("fmunet", checkpoint_path=out)
    assert all(torch.equal(v, saved[k]) for k, v in again.state_dict().items())
    assert again.pretrained_cfg["preprocessing"] == cfg["preprocessing"]
    with pytest.raises(ValueError, match="fmunet"):
        zoo.create("qtunet-t", checkpoint_path=out)
    with pytest.raises(FileNotFoundError, match="config.json"):
        zoo.create("fmunet", checkpoint_path=tmp_path)


def _tiny_run(out, total, stop_at_call=None, lr=1e-2, on_call=None, optim=None, save_every=None):
    # The loop is model-agnostic: a two-layer net with dropout (its RNG state must be restored too).
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Conv3d(8, 3, 1)
    )
    g = torch.Generator().manual_seed(1)
    data = [
        {
            "image": torch.randn(1, 12, 12, 12, generator=g),
            "label": torch.randint(0, 3, (12, 12, 12), generator=g),
        }
        for _ in range(5)
    ]
    calls = {"n": 0}

    def loss_fn(net, batch):
        calls["n"] += 1
        if calls["n"] == stop_at_call:
            raise KeyboardInterrupt
        if on_call is not None:
            on_call(calls["n"])
        return torch.nn.functional.cross_entropy(net(batch["image"]), batch["label"])

    optim = optim or OptimConfig(lr=lr, warmup_steps=2)
    loop = LoopSettings(progress=False, save_every=save_every)
    return train(model, loss_fn, make_loader(data, 2), out, optim, total, loop)


# Every preset's optimiser and schedule (cosine, step, poly; warm-up or not), at a rate a tiny net moves with.
_PRESET_OPTIMS = {name: (lambda total, p=p: p.optim_for(total, lr=1e-2)) for name, p in PRESETS.items()}


@pytest.mark.parametrize("extra", [1, 10])
@pytest.mark.parametrize("preset", sorted(_PRESET_OPTIMS))
def test_extending_a_finished_run_trains_at_the_rate_its_schedule_gives(tmp_path, preset, extra):
    # The regression: a finished 4-step cosine run extended to 5 stepped with the saved rate, 0.
    out, optim_for = tmp_path / "run", _PRESET_OPTIMS[preset]
    _tiny_run(out, total=4, optim=optim_for(4))
    finished = load_file(str(out / "model.safetensors"))
    after_first = []

    def snapshot(call):  # call 2 of the rerun starts step 6: step 5 is saved by then
        if call == 2:
            after_first.append(load_file(str(out / "model.safetensors")))

    new_total = 4 + extra
    longer = _tiny_run(out, total=new_total, optim=optim_for(new_total), on_call=snapshot, save_every=1)
    assert (longer.start_step, longer.step) == (4, new_total)
    first = after_first[0] if after_first else load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(first[k], finished[k]) for k in finished)
    cfg = optim_for(new_total)
    logged = {e["step"]: e["lr"] for e in read_log(out) if "lr" in e}
    assert logged[5] == pytest.approx(cfg.lr * lr_factor(cfg, 4, new_total), rel=1e-9) and logged[5] > 0
    assert [logged[s] for s in range(5, new_total + 1)] == pytest.approx(
        [cfg.lr * lr_factor(cfg, s - 1, new_total) for s in range(5, new_total + 1)], rel=1e-9
    )


@pytest.mark.parametrize("preset", sorted(_PRESET_OPTIMS))
def test_interrupted_training_resumes_from_the_saved_step_and_ends_as_an_uninterrupted_run(tmp_path, preset):
    optim = _PRESET_OPTIMS[preset](6)
    straight = _tiny_run(tmp_path / "straight", total=6, optim=optim)
    with pytest.raises(KeyboardInterrupt):  # during step 4: steps 1-3 are done
        _tiny_run(tmp_path / "resumed", total=6, stop_at_call=4, optim=optim)
    state = torch.load(tmp_path / "resumed" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 3
    resumed = _tiny_run(tmp_path / "resumed", total=6, optim=optim)
    assert (resumed.start_step, resumed.step) == (3, 6)
    assert [s for s, _ in resumed.losses] == [4, 5, 6]
    assert [loss for _, loss in resumed.losses] == pytest.approx(
        [loss for _, loss in straight.losses[3:]], rel=1e-5
    )
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("straight", "resumed"))
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    rates = [[e["lr"] for e in read_log(tmp_path / d)] for d in ("straight", "resumed")]
    assert rates[1] == pytest.approx(rates[0], rel=1e-12)  # steps 1-3 logged before, 4-6 after the resume


def test_a_finetuned_runs_card_is_about_the_run_and_links_the_base_card(mni_task, tmp_path, capsys):
    import re

    from huggingface_hub import ModelCard

    from zoo.cards import render_card
    from zoo.cli import main

    run = tmp_path / "run"
    argv = ["finetune", "fmunet", "--data", str(mni_task), "--out", str(run), "--steps", "4",
            "--roi", "32", "32", "32", "--batch-size", "1", "--num-samples", "1", "--val-every", "2",
            "--lr", "3e-3", "--model-kwargs", json.dumps(_TINY), "-q"]  # fmt: skip
    assert main(argv) == 0
    out = tmp_path / "hub"
    publish = ["publish", str(run), "--repo", "me/fmunet-mni", "--dry-run", "--out", str(out)]
    capsys.readouterr()
    assert main(publish) == 2  # random weights have no licence until one is named
    assert "--license" in capsys.readouterr().err and not out.exists()
    assert main([*publish, "--license", "apache-2.0"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["README.md", "config.json", "loss.png", "model.safetensors", "val_dice.png"]
    assert (out / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    text = (out / "config.json").read_text()
    assert str(tmp_path) not in text and str(mni_task.parent) not in text
    cfg = json.loads(text)
    assert cfg["model_name"] == "fmunet" and cfg["labels"]["1"] == "grey matter" and len(cfg["sha256"]) == 64
    raw = (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "medzoo"
    vals = [e["val"] for e in read_log(run) if "val" in e]
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert card.data.model_name == "me/fmunet-mni"
    assert results["Dice grey matter (final)"] == round(vals[-1]["dice_1"], 4)
    assert results["Dice white matter (best)"] == round(max(v["dice_2"] for v in vals), 4)
    assert results["Dice mean (final)"] == round(vals[-1]["dice_mean"], 4)
    assert "Chain: random weights → this run" in raw and 'zoo.create("hf-hub:me/fmunet-mni")' in raw
    assert "1 training and 1 validation case(s)" in raw and "1 = grey matter, 2 = white matter" in raw
    assert "| learning rate | 0.003 (preset: " in raw and "| steps done | 4 of 4 |" in raw
    assert "![loss](loss.png)" in raw and "![val dice](val_dice.png)" in raw
    assert str(tmp_path) not in raw and "datalist.json" not in raw
    assert "`model_cards/fmunet.md` in medzoo" in raw  # the base card: linked ...
    base = render_card("fmunet").split("\n---\n", 1)[1]
    sentences = {s.strip() for s in re.split(r"(?<=[.!?])\s+|\n", base) if len(s.strip()) > 30}
    assert not [s for s in sentences if s in raw]  # ... never copied
    again = zoo.create("fmunet", checkpoint_path=out)  # the published folder is itself a run folder
    assert set(again.state_dict()) == set(load_file(str(run / "model.safetensors")))


def test_a_run_derived_from_weights_without_a_redistribution_licence_is_refused(tmp_path, capsys):
    from safetensors.torch import save_file

    from zoo.cli import main

    run = tmp_path / "run"
    run.mkdir()
    model = zoo.create("qtunet-t", img_size=32, num_classes=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    cfg = {
        "model_name": "qtunet-t",
        "model_args": {"img_size": [32, 32, 32], "num_classes": 2},
        "tag": "ct-ssl",
    }
    (run / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "hub"
    assert main(["publish", str(run), "--repo", "me/x", "--dry-run", "--out", str(out)]) == 2
    assert "qtunet-t.ct-ssl" in capsys.readouterr().err and not out.exists()
    argv = ["publish", str(run), "--repo", "me/x", "--dry-run", "--out", str(out), "--permission-obtained"]
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["derived_from"] == "ct-ssl"


def test_the_interruption_message_names_the_signal(tmp_path, capsys):
    import os
    import signal

    def sigterm(call):
        if call == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        _tiny_run(tmp_path / "term", total=6, on_call=sigterm)
    assert "interrupted by SIGTERM: step 2 is saved" in capsys.readouterr().out
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        _tiny_run(tmp_path / "int", total=6, stop_at_call=2)
    assert "interrupted by SIGINT: step 1 is saved" in capsys.readouterr().out


def test_train_refuses_to_resume_with_other_settings_and_says_when_a_run_is_complete(tmp_path, capsys):
    from zoo.train import RunSettingsChangedError

    _tiny_run(tmp_path / "run", total=3)
    capsys.readouterr()
    with pytest.raises(RunSettingsChangedError, match=r"optim\.lr 0\.01 → 0\.5.*--restart"):
        _tiny_run(tmp_path / "run", total=4, lr=0.5)
    done = _tiny_run(tmp_path / "run", total=3)
    assert done.already_complete and done.losses == []
    assert "already complete (step 3 of 3)" in capsys.readouterr().out
    longer = _tiny_run(tmp_path / "run", total=4)  # the run's length may change: the schedule follows it
    assert [s for s, _ in longer.losses] == [4] and "total_steps 3 → 4" in capsys.readouterr().out


def test_a_rerun_uses_the_saved_settings_refuses_changed_ones_and_may_extend(mni_task, tmp_path, capsys):
    from zoo.cli import main

    out = tmp_path / "run"
    base = ["finetune", "fmunet", "--data", str(mni_task), "--out", str(out), "--roi", "32", "32", "32",
            "--batch-size", "1", "--num-samples", "1", "--val-every", "2", "--preset", "default",
            "--model-kwargs", json.dumps(_TINY), "-q"]  # fmt: skip
    assert main([*base, "--steps", "2", "--lr", "3e-3"]) == 0
    capsys.readouterr()
    assert main([*base, "--steps", "2", "--lr", "1e-4"]) == 2
    err = capsys.readouterr().err
    assert "lr 0.003 → 0.0001" in err and "--restart" in err and len(err.strip().splitlines()) == 1
    assert main([*base, "--steps", "2", "--lr", "3e-3"]) == 0
    assert "already complete (step 2 of 2)" in capsys.readouterr().out
    # No --lr: the saved run's 3e-3, not the preset's 1e-4; more steps are applied and said.
    finished = load_file(str(out / "model.safetensors"))
    assert main([*base, "--steps", "3"]) == 0
    extended = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(finished[k], extended[k]) for k in finished)  # it used to step at lr 0
    assert {e["step"]: e["lr"] for e in read_log(out) if "lr" in e}[3] > 0
    printed = capsys.readouterr().out
    assert "total_steps 2 → 3" in printed and "lr 0.003" in printed
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["step"], cfg["optim"]["lr"], cfg["finetune"]["lr"]) == (3, 3e-3, 3e-3)
    assert cfg["init"] is None and cfg["tag"] is None  # random initialisation, recorded as such


def test_grad_checkpointing_finetunes_to_the_same_losses(mni_task, tmp_path, capsys):
    from types import SimpleNamespace

    from zoo.cli import main
    from zoo.finetune import adapt_model

    base = ["finetune", "fmunet", "--data", str(mni_task), "--roi", "32", "32", "32", "--batch-size", "1",
            "--num-samples", "1", "--steps", "2", "--val-every", "2", "--lr", "3e-3", "--preset", "default",
            "--model-kwargs", json.dumps(_TINY), "-q"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert "gradient checkpointing" not in capsys.readouterr().out
    assert main([*base, "--out", str(tmp_path / "ckpt"), "--grad-checkpointing", "--json"]) == 0
    said = capsys.readouterr()  # --json: the final report alone on stdout, the rest on stderr
    assert "gradient checkpointing: the encoder's blocks are recomputed" in said.err
    final = json.loads(said.out)
    assert (final["steps"], final["out_dir"], final["already_complete"]) == (2, str(tmp_path / "ckpt"), False)
    assert set(final["metrics"]) >= {"dice_mean", "dice_1"}
    losses = [[e["loss"] for e in read_log(tmp_path / run) if "loss" in e] for run in ("plain", "ckpt")]
    assert len(losses[0]) == 2
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=1e-5)
    model = zoo.create("fmunet", **_TINY)
    assert not model.grad_checkpointing
    assert adapt_model(model, SimpleNamespace(adapters={}), grad_checkpointing=True) is model
    assert model.grad_checkpointing and model.encoder.en_conv0.grad_checkpointing


def test_loggers_get_the_scalars_of_log_jsonl(mni_task, tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from zoo.cli import main
    from zoo.run_loggers import scalars_of

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store, as a test needs no server
    out = tmp_path / "run"
    argv = ["finetune", "fmunet", "--data", str(mni_task), "--out", str(out), "--roi", "32", "32", "32",
            "--batch-size", "1", "--num-samples", "1", "--steps", "2", "--val-every", "1",
            "--preset", "default", "--model-kwargs", json.dumps(_TINY), "-q",
            "--logger", "tensorboard", "--logger", "mlflow"]  # fmt: skip
    assert main(argv) == 0
    expected: dict[str, list[tuple[int, float]]] = {}
    for entry in read_log(out):
        step, values = scalars_of(entry)
        for k, v in values.items():
            expected.setdefault(k, []).append((step, v))
    assert {"loss", "lr", "val/dice_mean", "val/dice_1"} <= set(expected) and len(expected["loss"]) == 2
    assert len(expected["val/dice_mean"]) == 2  # after step 1 and at the end
    board = EventAccumulator(str(out / "tensorboard"))
    board.Reload()
    assert set(board.Tags()["scalars"]) == set(expected)
    for k, points in expected.items():
        got = [(e.step, e.value) for e in board.Scalars(k)]
        assert [s for s, _ in got] == [s for s, _ in points], k
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-12), k
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("medzoo").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert set(run.data.metrics) == set(expected)
    for k, points in expected.items():
        assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)) == points, k


def test_the_card_section_teaches_fine_tuning_with_the_measured_result(tmp_path):
    import subprocess
    import sys

    from zoo.presets import finetune_card_section

    record = {
        "model": "fmunet",
        "model_args": {"feature_chns": [8, 16, 32, 64, 128]},
        "command": "python benchmarks/finetune_mni.py --seeds 3",
        "pretraining": {"method": "volume-fusion"},
        "finetune": {"steps": 60},
        "summary": {
            "pretrained": {
                "1": {"mean": 0.5, "std": 0.1, "n": 3},
                "4": {"mean": 0.812, "std": 0.011, "n": 3},
            },
            "random": {"1": {"mean": 0.4, "std": 0.1, "n": 3}, "4": {"mean": 0.777, "std": 0.023, "n": 3}},
        },
    }
    (tmp_path / "r.json").write_text(json.dumps(record))
    text = finetune_card_section(zoo.get_spec("pctnet"), results=tmp_path / "r.json")
    assert text.startswith("## Fine-tune\n") and "Preset `pctnet`" in text
    assert "zoo finetune pctnet.vf110k --data datalist.json --out runs/pctnet-vf110k" in text
    assert "| crop | 64×128×128" in text and "| learning rate | 0.001 (adam, step" in text
    assert "0.812 ± 0.011" in text and "0.777 ± 0.023" in text and "4 labelled volume(s)" in text
    assert "`fmunet`, not this model," in text and "python benchmarks/finetune_mni.py --seeds 3" in text
    qt = finetune_card_section("qtunet-t", results=tmp_path / "missing.json")
    assert "Preset `qtunet-btcv`" in qt and "covers the encoder" in qt and "| learning rate | 0.0004" in qt
    assert "none recorded yet" in qt
    fmu = finetune_card_section("fmunet", results=tmp_path / "r.json")
    assert "(MNI152 grey/white-matter sample task, this model at reduced widths" in fmu
    # Importable where only the card generator runs: no MONAI, no nibabel.
    code = "import sys, zoo.presets; sys.exit(int('monai' in sys.modules or 'nibabel' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_second_process_cannot_train_into_a_folder_in_use(tmp_path):
    from filelock import FileLock

    out = tmp_path / "run"
    out.mkdir()
    with FileLock(str(out / ".train.lock")), pytest.raises(RuntimeError, match="another process is training"):
        _tiny_run(out, total=2)
    assert not (out / "trainer_state.pt").exists()
    assert _tiny_run(out, total=2).step == 2  # the lock is free again


def test_what_a_run_starts_from_is_resolved_once_for_finetune_and_pretrain(tmp_path):
    from zoo.finetune import start_plan as resolve_start
    from zoo.ssl.runner import resolve_init

    start = lambda p: (p.spec.name, p.tag, p.source)  # noqa: E731
    assert start(resolve_start("qtunet-t.ct-ssl")) == ("qtunet-t", "ct-ssl", "registry")
    assert start(resolve_start("fmunet", pretrained=True)) == ("fmunet", "vf1k", "registry")
    assert start(resolve_start("fmunet")) == ("fmunet", None, "none")
    assert start(resolve_init("fmunet", "fmunet.vf1k")) == ("fmunet", "vf1k", "registry")
    assert start(resolve_init("fmunet", None, pretrained=True)) == ("fmunet", "vf1k", "registry")
    with pytest.raises(FileNotFoundError, match="must be a zoo run folder"):
        resolve_init("fmunet", tmp_path)  # an empty folder is no run: refused when planned, not when loaded
    with pytest.raises(ValueError, match="holds pctnet weights"):
        resolve_init("fmunet", "pctnet.vf110k")
    with pytest.raises(FileNotFoundError, match="nor a registered NAME.TAG"):
        resolve_init("fmunet", tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="start from one"):
        resolve_start("fmunet", pretrained=True, checkpoint_path=tmp_path)
    with pytest.raises(zoo.NoPretrainedWeightsError):
        resolve_start("ulkanet", pretrained=True)


def test_every_check_answers_within_a_second_before_any_volume_is_read(tmp_path, capsys):
    import time

    from zoo.cli import main

    task = make_mni_task(tmp_path / "mni", n_train=1, n_val=1, spacing_mm=4.0)
    out = tmp_path / "run"
    base = ["finetune", "fmunet", "--data", str(task), "--roi", "32", "32", "32", "--batch-size", "1",
            "--num-samples", "1", "--val-every", "2", "--preset", "default", "--in-chans", "1",
            "--model-kwargs", json.dumps(_TINY), "-q"]  # fmt: skip
    assert main([*base, "--out", str(out), "--steps", "2"]) == 0
    for volume in (tmp_path / "mni").rglob("*.nii.gz"):  # a check that read a volume would now fail
        volume.write_bytes(b"not a volume")
    capsys.readouterr()

    def timed(*argv):
        t0 = time.perf_counter()
        rc = main([*base, *argv])
        seconds = time.perf_counter() - t0
        assert seconds < 1.0, f"{argv}: {seconds:.2f} s"
        printed = capsys.readouterr()
        return rc, printed.out, printed.err

    rc, printed, _ = timed("--out", str(out), "--steps", "2")  # settings, resume, then "already complete"
    assert rc == 0 and "already complete (step 2 of 2)" in printed
    rc, _, err = timed("--out", str(out), "--steps", "2", "--lr", "0.5")  # a changed setting comes first
    assert rc == 2 and "lr 0.0001 → 0.5" in err and "already complete" not in err
    (tmp_path / "file").write_text("x")
    rc, _, err = timed("--out", str(tmp_path / "file"), "--steps", "2")  # the output folder
    assert rc == 2 and "is a file" in err
    rc, printed, err = timed("--out", str(tmp_path / "new"), "--steps", "2", "--device", "cuda:64")
    assert rc == 2 and "--device cuda:64" in err and "CUDA device(s) available here" in err
    assert "licence: none (random initialisation)" in printed  # the licence, said before the device
    assert not (tmp_path / "new").exists()


def test_the_licence_a_run_will_carry_is_said_before_it_starts():
    from zoo.finetune import licence_line, start_plan

    assert "licence: none (random initialisation)" in licence_line(start_plan("fmunet"))
    assert licence_line(start_plan("pctnet.vf110k")) == "licence: Apache-2.0, from pctnet.vf110k"
    restricted = licence_line(start_plan("qtunet-t.ct-ssl"))
    assert "publishes no licence" in restricted and "needs the licensor's permission" in restricted


_QT = {"embed_dim": 12, "window_size": 2, "img_size": 32, "in_chans": 1, "num_classes": 3}


def _qt_run(out, total, stop_at_call=None, lora=False):
    """A QT-UNet-T run through the loop (save and validate every step; the best by a score that grows)."""
    torch.manual_seed(0)
    model = zoo.create("qtunet-t", **_QT)
    if lora:
        from zoo.adapt import add_lora

        add_lora(model, r=2, alpha=4)
    g = torch.Generator().manual_seed(1)
    data = [
        {
            "image": torch.randn(1, 32, 32, 32, generator=g),
            "label": torch.randint(0, 3, (32, 32, 32), generator=g),
        }
        for _ in range(2)
    ]
    calls = {"n": 0}

    def loss_fn(net, batch):
        calls["n"] += 1
        if calls["n"] == stop_at_call:
            raise KeyboardInterrupt
        return torch.nn.functional.cross_entropy(net(batch["image"]), batch["label"])

    loop = LoopSettings(progress=False, save_every=1, val_every=1, monitor="score")
    optim = OptimConfig(lr=1e-3, warmup_steps=0)
    val = lambda net: {"score": float(calls["n"])}  # noqa: E731
    return model, train(model, loss_fn, make_loader(data, 1), out, optim, total, loop, val_fn=val)


def test_a_run_saves_no_derived_buffer_loads_like_the_trained_model_and_resumes(tmp_path):
    from zoo.layers.derived import derived_buffer_keys

    out = tmp_path / "run"
    model, _ = _qt_run(out, total=2)
    derived = derived_buffer_keys(model)
    assert derived and all(k.endswith("relative_position_index") for k in derived)
    learned = set(model.state_dict()) - derived
    for name in ("model.safetensors", "best.safetensors"):
        assert set(load_file(str(out / name))) == learned, name
    cfg = {"model_name": "qtunet-t", "model_args": {**_QT, "img_size": [32, 32, 32]}, "covers": "full"}
    (out / "config.json").write_text(json.dumps(cfg))  # what zoo finetune adds around the loop's files
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    loaded = zoo.create(str(out))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model.eval()(x))

    # Interrupted during step 2 and resumed from the lean file: the run an uninterrupted one is.
    with pytest.raises(KeyboardInterrupt):
        _qt_run(tmp_path / "resumed", total=2, stop_at_call=2)
    _, resumed = _qt_run(tmp_path / "resumed", total=2)
    assert (resumed.start_step, resumed.step) == (1, 2)
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("run", "resumed"))
    assert set(a) == set(b) == learned
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


def test_a_run_saved_with_derived_buffers_still_resumes_and_saves_without_them(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(KeyboardInterrupt):
        _qt_run(tmp_path / "old", total=2, stop_at_call=2)
    torch.manual_seed(0)
    fresh = zoo.create("qtunet-t", **_QT)
    saved = load_file(str(tmp_path / "old" / "model.safetensors"))
    old = {**fresh.state_dict(), **saved}  # the file as runs wrote it before: every buffer included
    assert set(old) - set(saved)
    save_file({k: v.contiguous() for k, v in old.items()}, str(tmp_path / "old" / "model.safetensors"))
    _, resumed = _qt_run(tmp_path / "old", total=2)
    assert (resumed.start_step, resumed.step) == (1, 2)
    assert set(load_file(str(tmp_path / "old" / "model.safetensors"))) == set(saved)
    # A learned tensor missing from the file is refused in one line, naming it.
    lean = load_file(str(tmp_path / "old" / "model.safetensors"))
    gone = next(k for k in lean if k.endswith("qkv.weight"))
    del lean[gone]
    save_file(lean, str(tmp_path / "old" / "model.safetensors"))
    with pytest.raises(zoo.CheckpointMismatchError, match=rf"1 key\(s\) missing \({gone}\)"):
        _qt_run(tmp_path / "old", total=3)


def test_zoo_finetune_of_qtunet_writes_lean_model_and_best_files_that_load(mni_task, tmp_path):
    from zoo.cli import main

    out = tmp_path / "run"
    kwargs = {"embed_dim": 12, "window_size": 2, "img_size": [32, 32, 32]}
    argv = ["finetune", "qtunet-t", "--data", str(mni_task), "--out", str(out), "--steps", "2",
            "--roi", "32", "32", "32", "--batch-size", "1", "--num-samples", "1", "--val-every", "1",
            "--preset", "default", "--model-kwargs", json.dumps(kwargs), "-q"]  # fmt: skip
    assert main(argv) == 0
    for name in ("model.safetensors", "best.safetensors"):
        assert not [k for k in load_file(str(out / name)) if k.endswith("relative_position_index")], name
    model = zoo.create(str(out))
    saved = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items() if k in saved)
    assert main([*argv[:7], "3", *argv[8:]]) == 0  # resumed from the lean file for one more step
    assert [e["step"] for e in read_log(out) if "loss" in e] == [1, 2, 3]


def test_a_lora_run_saves_no_derived_buffer_and_resumes_from_its_adapter_file(tmp_path):
    from zoo.layers.derived import derived_buffer_keys

    out = tmp_path / "lora"
    with pytest.raises(KeyboardInterrupt):
        _qt_run(out, total=2, stop_at_call=2, lora=True)
    model, resumed = _qt_run(out, total=2, lora=True)
    assert (resumed.start_step, resumed.step) == (1, 2)
    derived = derived_buffer_keys(model)
    adapters = load_file(str(out / "lora_state.safetensors"))
    assert derived and not derived & set(adapters)
    assert set(adapters) == set(model.state_dict()) - derived and any("lora_" in k for k in adapters)
    assert not derived & set(load_file(str(out / "model.safetensors")))
