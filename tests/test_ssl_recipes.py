"""Each pretraining recipe runs a few steps on real volumes (nilearn's MNI152 images, 4 mm) with a
falling loss, and writes a checkpoint that ``zoo.create(..., checkpoint_path=)`` loads strictly.

Models are small configurations of the registered architectures (the recipes do not depend on
the size); the paper sizes are exercised by the benchmark (``benchmarks/pretrain_smoke.py``).
"""

from __future__ import annotations

import functools
import json
import warnings

import pytest
import torch
from safetensors import safe_open

import zoo
from zoo.ssl.catalog import get_recipe
from zoo.ssl.data import Preprocessing, load_volumes, mni152_paths
from zoo.ssl.runner import PretrainOptions, RunOptions, run_recipe

warnings.filterwarnings("ignore", category=UserWarning)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small convolutions on shared, busy cores run an order of magnitude faster on one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def _volumes(axis_order: str = "xyz", intensity: str = "zscore_nonzero") -> list[torch.Tensor]:
    prep = Preprocessing(
        spacing_mm=(4.0, 4.0, 4.0),
        intensity={"kind": intensity},
        axis_order=axis_order,
        crop_foreground=intensity != "none",
    )
    return load_volumes(mni152_paths(), prep)


def _run(method, name, model_args, recipe_args, out, steps, settings, volumes, **kw):
    torch.manual_seed(kw.get("seed", 0))  # the same initial weights for runs compared with each other
    model = zoo.create(name, **model_args).train()
    recipe = get_recipe(method)(model, **recipe_args)
    args = dict(model.pretrained_cfg["model_args"])
    return run_recipe(
        recipe, volumes, out, steps, name, args, settings=settings, run=RunOptions(log_every=1, **kw)
    )


def _falls(losses) -> bool:
    values = [v for _, v in losses]
    third = max(1, len(values) // 3)
    return sum(values[-third:]) / third < sum(values[:third]) / third


def _load(run):
    cfg = json.loads(run.config.read_text())
    # The run folder is the checkpoint: config.json supplies the model arguments.
    model = zoo.create(cfg["model_name"], checkpoint_path=run.checkpoint.parent)
    with safe_open(str(run.checkpoint), "pt") as f:
        meta = f.metadata()
    return cfg, model, meta


_FMUNET = dict(feature_chns=(8, 16, 32, 64, 128))
_VF = dict(roi=(16, 32, 32), size_min=(2, 4, 4), size_max=(8, 16, 16))


def test_volume_fusion_loss_falls_and_the_full_checkpoint_loads(tmp_path):
    run = _run(
        "volume-fusion",
        "fmunet",
        _FMUNET,
        _VF,
        tmp_path / "vf",
        6,
        dict(batch_size=2, lr=3e-3),
        _volumes("zyx"),
    )
    assert _falls(run.losses), run.losses
    cfg, model, meta = _load(run)
    assert cfg["covers"] == meta["covers"] == "full" and meta["method"] == "volume-fusion"
    assert cfg["pretraining"]["recipe"]["num_levels"] == 4
    sd = model.state_dict()
    from safetensors.torch import load_file

    saved = load_file(str(run.checkpoint))
    assert sd.keys() == saved.keys() and all(torch.equal(sd[k], saved[k]) for k in sd)


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    settings = dict(batch_size=2, lr=3e-3)
    straight = _run(
        "volume-fusion", "fmunet", _FMUNET, _VF, tmp_path / "a", 4, settings, _volumes("zyx"), seed=3
    )

    torch.manual_seed(3)
    model = zoo.create("fmunet", **_FMUNET).train()
    recipe = get_recipe("volume-fusion")(model, **_VF)
    step_fn = recipe.training_step

    def stop_at_two(batch, step):
        if step == 2:
            raise KeyboardInterrupt("simulated interruption")
        return step_fn(batch, step)

    recipe.training_step = stop_at_two
    args = dict(model.pretrained_cfg["model_args"])
    with pytest.raises(KeyboardInterrupt):
        run_recipe(
            recipe, _volumes("zyx"), tmp_path / "b", 4, "fmunet", args, settings, run=RunOptions(seed=3)
        )
    resumed = _run(
        "volume-fusion", "fmunet", _FMUNET, _VF, tmp_path / "b", 4, settings, _volumes("zyx"), seed=3
    )
    assert resumed.resumed_from == 2 and resumed.steps == 4
    # The same batches, the same weights: steps 3 and 4 repeat the uninterrupted run's.
    assert [v for _, v in resumed.losses] == pytest.approx([v for _, v in straight.losses][2:], rel=1e-5)
    a = zoo.create("fmunet", checkpoint_path=straight.checkpoint, **_FMUNET).state_dict()
    b = zoo.create("fmunet", checkpoint_path=resumed.checkpoint, **_FMUNET).state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_byol_rotation_reconstruction_trains_and_saves_the_encoder_only(tmp_path):
    run = _run(
        "byol-rot-rec",
        "qtunet-t",
        dict(img_size=32),
        dict(hole_size=(8, 16), hidden_dim=256),
        tmp_path / "byol",
        5,
        dict(batch_size=2, lr=1e-3),
        _volumes(),
    )
    assert _falls(run.losses), run.losses
    cfg, model, meta = _load(run)
    assert cfg["covers"] == meta["covers"] == "encoder"
    from safetensors.torch import load_file

    from zoo.layers.derived import derived_buffer_keys

    derived = derived_buffer_keys(model)  # rebuilt at construction: not saved, neither here nor in trainer/
    keys = load_file(str(run.checkpoint)).keys()
    assert derived and keys == {k for k in model.state_dict() if k.startswith("encoder.")} - derived
    trainer = load_file(str(run.checkpoint.parent / "trainer" / "model.safetensors"))
    assert trainer and not [k for k in trainer if k.endswith("relative_position_index")]
    # The saved encoder is the trained one (not the fresh initialisation).
    fresh = zoo.create("qtunet-t", img_size=32).state_dict()
    trained = model.state_dict()
    assert not torch.equal(
        fresh["encoder.patch_embed.proj.weight"], trained["encoder.patch_embed.proj.weight"]
    )
    longer = _run(
        "byol-rot-rec",
        "qtunet-t",
        dict(img_size=32),
        dict(hole_size=(8, 16), hidden_dim=256),
        tmp_path / "byol",
        6,
        dict(batch_size=2, lr=1e-3),
        _volumes(),
    )
    assert longer.resumed_from == 5 and longer.steps == 6  # resumed from the trainer's lean file


_ULKA = dict(img_size=32, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), decoder_dims=(16, 16, 16, 8, 8))
_MC = dict(n_clusterers=3, k_range=(4, 8), kmeans_iterations=5, crops_per_volume=2)


def test_masked_multi_clustering_loss_falls_and_the_checkpoint_flags_the_untrained_head(tmp_path):
    run = _run(
        "multi-clustering", "ulkanet", _ULKA, _MC, tmp_path / "mc", 6, dict(batch_size=2, lr=1e-3), _volumes()
    )
    assert _falls(run.losses), run.losses
    cfg, model, meta = _load(run)
    assert cfg["untrained"] == ["classifier."] and meta["untrained"] == "classifier."
    # Resuming restores the clusterers' labels and the head sized by them.
    resumed = _run(
        "multi-clustering", "ulkanet", _ULKA, _MC, tmp_path / "mc", 7, dict(batch_size=2, lr=1e-3), _volumes()
    )
    assert resumed.resumed_from == 6 and resumed.steps == 7


def test_multi_clustering_runs_on_logonet_features():
    net = zoo.create(
        "logonet",
        img_size=32,
        dims=(8, 16, 32, 64),
        depths=(1, 1, 1, 1),
        decoder_dims=(16, 16, 16, 8, 8),
        local_dims=(8, 16),
        local_depths=(1, 1),
        local_decoder_dims=(8, 8, 8),
    ).train()
    recipe = get_recipe("multi-clustering")(net, head="linear", **_MC)
    ds = recipe.dataset(_volumes())
    recipe.setup(ds)
    batch = {"image": torch.stack([ds[0]["image"], ds[1]["image"]]), "index": torch.tensor([0, 1])}
    loss, logs = recipe(batch)
    loss.backward()
    assert torch.isfinite(loss) and net.global_net.encoder[0].patch_embed.proj.weight.grad is not None
    assert net.classifier.weight.grad is None  # the segmentation classifier is not trained


_SWIN = dict(embed_dim=12, img_size=32)


def test_simsiam_with_iou_positives_loss_falls_and_the_whole_model_loads(tmp_path):
    run = _run(
        "simsiam-iou",
        "swinvit2d-c48-simsiam-iou30-60",
        dict(_SWIN, proj_hidden_dim=64, out_dim=64, pred_hidden_dim=16),
        dict(crop_size=32),
        tmp_path / "ss",
        8,
        dict(batch_size=8, lr=0.2),
        _volumes(),
    )
    assert _falls(run.losses), run.losses
    cfg, _, meta = _load(run)
    assert cfg["covers"] == "full" and meta["method"] == "simsiam-iou"
    assert cfg["pretraining"]["recipe"]["min_iou"] == 0.3 and cfg["pretraining"]["recipe"]["max_iou"] == 0.6


def test_iou_pairs_fed_to_simsiam_lie_in_the_interval():
    recipe = get_recipe("simsiam-iou")(
        zoo.create(
            "swinvit2d-c48-simsiam-iou30-60", **_SWIN, proj_hidden_dim=64, out_dim=64, pred_hidden_dim=16
        ),
        crop_size=32,
    )
    ds = recipe.dataset(_volumes())
    items = [ds[i] for i in range(0, len(ds), max(1, len(ds) // 40))]
    found = [it for it in items if it["found"]]
    assert len(found) >= 0.9 * len(items)
    assert all(0.3 <= it["iou"] <= 0.6 for it in found)
    assert all(it["view1"].shape == it["view2"].shape == (1, 32, 32) for it in items)


def test_dino_trains_the_backbone_with_a_momentum_teacher(tmp_path):
    run = _run(
        "dino",
        "swinvit2d-c48",
        _SWIN,
        dict(crop_size=32, out_dim=64, hidden_dim=64, bottleneck_dim=16),
        tmp_path / "dino",
        3,
        dict(batch_size=8, lr=1e-3, warmup_steps=0),
        _volumes(),
    )
    cfg, model, _ = _load(run)
    assert cfg["model_name"] == "swinvit2d-c48" and cfg["covers"] == "full"
    state = torch.load(tmp_path / "dino" / "trainer" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 3


def test_zoo_pretrain_command_writes_a_run_that_zoo_create_loads(tmp_path, capsys):
    from zoo.cli import main

    datalist = tmp_path / "unlabelled.json"
    datalist.write_text(json.dumps({"training": [{"image": str(p)} for p in mni152_paths()]}))
    argv = [
        "pretrain",
        "volume-fusion",
        "--model",
        "fmunet",
        "--data",
        str(datalist),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--spacing",
        "4",
        "4",
        "4",
        "--intensity",
        "zscore-nonzero",
        "--model-kwargs",
        json.dumps(_FMUNET),
        "--recipe-kwargs",
        json.dumps(_VF),
        "-q",
    ]
    assert main(argv) == 0
    assert "covers full" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["pretraining"]["preprocessing"]["spacing_mm"] == [4.0, 4.0, 4.0]
    assert cfg["pretraining"]["data"]["volumes"] == 3
    zoo.create(cfg["model_name"], checkpoint_path=tmp_path / "run" / "model.safetensors", **cfg["model_args"])
    assert (
        main(
            [
                "pretrain",
                "no-such-method",
                "--model",
                "fmunet",
                "--data",
                str(datalist),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )


_DEFORM = dict(n_frames=8, img_size=(32, 32))


def test_masked_embedding_trains_the_transformer_with_the_resnet_frozen(tmp_path):
    vols = _volumes("zyx", "none")
    model = zoo.create("resnet50-deformattn", **_DEFORM).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = get_recipe("masked-embedding")(model)
    run = run_recipe(
        recipe,
        vols,
        tmp_path / "me",
        5,
        "resnet50-deformattn",
        dict(model.pretrained_cfg["model_args"]),
        settings=dict(batch_size=2, lr=0.05),
        run=RunOptions(log_every=1),
    )
    assert _falls(run.losses), run.losses
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("intra."))  # BN stats too
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("inter."))
    cfg, _, _ = _load(run)
    assert cfg["model_name"] == "resnet50-deformattn" and cfg["covers"] == "full"


_SWAV = dict(_DEFORM, nmb_prototypes=(16,))


def test_slice_swav_trains_the_resnet_trunk_and_saves_it_as_the_encoder(tmp_path):
    run = _run(
        "slice-swav",
        "resnet50-deformattn-swav",
        _SWAV,
        dict(global_size=32, n_local=2, local_size=16, n_prototypes=16, freeze_prototypes_steps=0),
        tmp_path / "s1",
        6,
        dict(batch_size=16, lr=0.05, warmup_fraction=0),
        _volumes("zyx", "none"),
    )
    assert _falls(run.losses), run.losses
    cfg, model, meta = _load(run)
    assert cfg["covers"] == meta["covers"] == "encoder"
    from safetensors.torch import load_file

    keys = set(load_file(str(run.checkpoint)))
    assert keys == {
        k for k in model.state_dict() if k.startswith("intra.") and not k.startswith("intra.deconv.")
    }


def test_volume_swav_loss_falls_over_the_whole_model(tmp_path):
    run = _run(
        "volume-swav",
        "resnet50-deformattn-swav",
        _SWAV,
        dict(freeze_prototypes_steps=0),
        tmp_path / "s3",
        4,
        dict(batch_size=3, lr=0.05, warmup_fraction=0),
        _volumes("zyx", "none"),
    )
    assert _falls(run.losses), run.losses
    cfg, model, _ = _load(run)
    assert cfg["model_name"] == "resnet50-deformattn-swav" and cfg["covers"] == "full"
    # Prototypes are kept on the unit sphere (normalised before every step).
    w = model.prototypes.prototypes0.weight
    assert torch.allclose(w.norm(dim=1), torch.ones(16), atol=0.05)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,name",
    [
        ("joint-2d3d", "resnet50-deformattn-swav"),
        ("joint-2d3d-deepcluster", "resnet50-deformattn-deepcluster"),
    ],
)
def test_joint_2d3d_pipeline_runs_its_three_stages_and_each_checkpoint_loads(tmp_path, method, name):
    from zoo.ssl import pretrain

    stage1 = dict(global_size=32, n_local=2, local_size=16, n_prototypes=16, freeze_prototypes_steps=0)
    if method.endswith("deepcluster"):
        stage1 = dict(global_size=32, ks=(8, 8))
    model_args = dict(_DEFORM, nmb_prototypes=(16,)) if name.endswith("swav") else dict(_DEFORM)
    r = pretrain(
        method,
        name,
        mni152_paths(),
        tmp_path / "j",
        steps=[2, 2, 2],
        options=PretrainOptions(
            model_args=model_args,
            recipe_args=[stage1, {}, {}],
            preprocessing=dict(spacing_mm=(4.0, 4.0, 4.0)),
            settings=[dict(batch_size=8), dict(batch_size=2), dict(batch_size=2)],
        ),
    )
    covers = {}
    for stage in sorted((tmp_path / "j").glob("stage*")):
        cfg = json.loads((stage / "config.json").read_text())
        zoo.create(cfg["model_name"], checkpoint_path=stage / "model.safetensors", **cfg["model_args"])
        covers[stage.name.split("-", 1)[1]] = (cfg["model_name"], cfg["covers"])
    assert list(covers.values()) == [(name, "encoder"), ("resnet50-deformattn", "full"), (name, "full")]
    assert json.loads(r.config.read_text())["model_name"] == name
