"""One request, one plan, one run record (issue 23): the plan, the config schema, lineage, hostile configs.

Run folders are written as ``zoo finetune`` writes them, around a narrow QT-UNet-T (embed_dim 12,
32³); registered weights are placed in medzoo's cache as a conversion would leave them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import zoo
from tests.hub_upload_server import HubUploadServer
from zoo.hub import converted_path, file_digest
from zoo.plan import plan
from zoo.publish import publish, publish_run
from zoo.runconfig import SCHEMA_VERSION, ConfigError, RunConfig, read_config, write_config

TINY = {"embed_dim": 12, "window_size": 2, "img_size": [32, 32, 32], "in_chans": 1, "num_classes": 3}
ARGS = {k: tuple(v) if isinstance(v, list) else v for k, v in TINY.items()}


def _state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return zoo.create("qtunet-t", **ARGS).state_dict()


def _config(**extra) -> dict:
    cfg = {
        "library_name": "medzoo",
        "model_name": "qtunet-t",
        "model_args": dict(TINY),
        "covers": "full",
        "labels": {"0": "background", "1": "liver", "2": "spleen"},
        "preprocessing": {"orientation": "RAS", "spacing_mm": [1.5, 1.5, 2.0], "intensity_transform": None},
        "sliding_window": {"roi_size": [32, 32, 32], "overlap": 0.5, "mode": "gaussian"},
        "finetune": {"preset": "qtunet", "data": "datalist.json"},
    }
    cfg.update(extra)
    return cfg


def _run(parent: Path, name: str, sd: dict[str, torch.Tensor], **extra) -> Path:
    run = parent / name
    run.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(run / "model.safetensors"))
    (run / "config.json").write_text(json.dumps(_config(**extra)))
    return run


@pytest.fixture
def ct_ssl(tmp_path, monkeypatch) -> dict[str, torch.Tensor]:
    """qtunet-t.ct-ssl's encoder, converted into medzoo's cache (as `zoo download` leaves it)."""
    cache = tmp_path / "medzoo-cache"
    monkeypatch.setenv("MEDZOO_CACHE", str(cache))
    spec = zoo.get_spec("qtunet-t")
    enc = {k: v for k, v in _state(11).items() if k.startswith(tuple(spec.encoder_prefixes))}
    path = converted_path(spec, spec.weight("ct-ssl"))
    path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in enc.items()}, str(path))
    rec = {"name": "qtunet-t", "tag": "ct-ssl", "sha256": file_digest(path), "source_digest": "gitsha1:00"}
    (path.parent / "qtunet-t.ct-ssl.json").write_text(json.dumps(rec))
    return enc


# ------------------------------------------------------------------------------------ the plan


def test_a_plan_resolves_names_tags_aliases_and_run_folders_without_building(tmp_path, monkeypatch):
    built = []
    spec = zoo.get_spec("qtunet-t")
    monkeypatch.setattr(type(spec), "builder", property(lambda s: built.append(s) or None), raising=False)
    p = plan("qtunet-t.ct-ssl")
    assert (p.source, p.tag, p.covers, p.id) == ("registry", "ct-ssl", "encoder", "qtunet-t.ct-ssl")
    assert p.contract.spacing_mm == (1.0, 1.0, 1.0)
    assert plan("pctnet-vf110k").tag == "vf110k"
    assert plan("qtunet-t").source == "none"
    monkeypatch.undo()
    run = _run(tmp_path, "ft", _state(1))
    for request in (dict(request=str(run)), dict(request="qtunet-t", checkpoint=run)):
        p = plan(**request)
        assert (p.source, p.run, p.labels["1"]) == ("run", run, "liver")
        assert p.model_args["embed_dim"] == 12 and p.window["roi_size"] == (32, 32, 32)
    best = run / "best.safetensors"
    best.write_bytes((run / "model.safetensors").read_bytes())
    assert plan("qtunet-t", checkpoint=best).path == best  # the run's best checkpoint, with its config
    assert built == []


def test_booleans_are_booleans(tmp_path):
    with pytest.raises(ValueError, match=r"pretrained: expected True or False, found 'no'"):
        zoo.create("qtunet-t", pretrained="no")


def test_a_run_folder_of_another_model_is_named(tmp_path):
    run = _run(tmp_path, "ft", _state(1))
    with pytest.raises(ValueError, match=r"holds a 'qtunet-t' model, not 'vtunet-t'"):
        plan("vtunet-t", checkpoint=run)


def test_run_config_round_trips_through_one_writer_and_reader(tmp_path):
    run = _run(tmp_path, "ft", _state(1))
    old = read_config(run / "config.json")  # version 1: migrated
    assert old.kind == "finetune" and old.model_args["img_size"] == (32, 32, 32)
    write_config(run / "config.json", old)
    raw = json.loads((run / "config.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION and raw["model_name"] == "qtunet-t"
    again = read_config(run / "config.json")
    assert again == old and isinstance(again, RunConfig)
    (run / "config.json").write_text(json.dumps({**raw, "schema_version": 99}))
    with pytest.raises(ConfigError, match=r"schema_version 99 is not one this medzoo reads"):
        read_config(run / "config.json")


# ------------------------------------------------------------------------------------ lineage


def test_licence_travels_through_a_chain_of_runs(tmp_path, ct_ssl):
    # Run A started from ct-ssl (zoo finetune qtunet-t.ct-ssl); run B from run A (--checkpoint runs/A).
    enc_file = converted_path(zoo.get_spec("qtunet-t"), zoo.get_spec("qtunet-t").weight("ct-ssl"))
    record_a = zoo.create("qtunet-t", checkpoint_path=enc_file, **ARGS).pretrained_cfg["weights"]
    assert record_a["redistributable"] is False
    run_a = _run(tmp_path, "A", _state(2), init=record_a)
    with pytest.raises(PermissionError, match=r"qtunet-t\.ct-ssl"):
        publish_run(run_a, "org/a", tmp_path / "oa", dry_run=True)

    record_b = zoo.create("qtunet-t", checkpoint_path=run_a).pretrained_cfg["weights"]
    assert [link["id"] for link in record_b["lineage"]] == ["qtunet-t.ct-ssl", "A"]
    assert record_b["redistributable"] is False and record_b["license"] == "none"
    run_b = _run(tmp_path, "B", _state(3), init=record_b)
    with pytest.raises(
        PermissionError, match=r"descends from qtunet-t\.ct-ssl \(through qtunet-t\.ct-ssl → A\)"
    ):
        publish_run(run_b, "org/b", tmp_path / "ob", dry_run=True)
    assert not (tmp_path / "ob").exists()

    out = publish_run(run_b, "org/b", tmp_path / "ob", dry_run=True, permission_obtained=True)
    published = json.loads((out / "config.json").read_text())
    assert [link["id"] for link in published["lineage"]] == ["qtunet-t.ct-ssl", "A"]
    assert published["redistributable"] is False
    card = (out / "README.md").read_text()  # the card names the chain
    assert (
        "## Lineage" in card
        and "1. `qtunet-t.ct-ssl` (file, encoder, sha256" in card
        and "1. `A` (run" in card
    )


def test_a_byte_identical_encoder_carries_its_licence_without_any_record(tmp_path, ct_ssl):
    sd = _state(4)
    sd.update(ct_ssl)  # a frozen encoder, fine-tuned decoder; the config claims random initialisation
    run = _run(tmp_path, "frozen", sd)
    with pytest.raises(PermissionError, match=r"qtunet-t\.ct-ssl"):
        publish_run(run, "org/x", tmp_path / "o", dry_run=True)
    assert not (tmp_path / "o").exists()
    sd["encoder.layers.0.blocks.0.norm1.weight"] = sd["encoder.layers.0.blocks.0.norm1.weight"] + 1e-3
    other = _run(tmp_path, "changed", sd)  # one tensor differs: not the same encoder any more
    assert publish_run(other, "org/x", tmp_path / "o2", dry_run=True, license="apache-2.0").is_dir()


def test_a_frozen_encoder_is_identified_in_a_run_file_without_the_derived_buffers_the_cache_holds(
    tmp_path, ct_ssl
):
    from zoo.layers.derived import derived_buffer_keys, without_derived

    model = zoo.create("qtunet-t", **ARGS)
    lean = without_derived({**_state(4), **ct_ssl}, model)  # as a run saves it now
    assert derived_buffer_keys(model) & set(ct_ssl)  # the cached conversion holds some of them
    run = _run(tmp_path, "frozen", lean)
    with pytest.raises(PermissionError, match=r"qtunet-t\.ct-ssl"):
        publish_run(run, "org/x", tmp_path / "o", dry_run=True)


def test_a_tag_is_published_only_with_its_own_file(tmp_path, ct_ssl):
    unrelated = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in _state(5).items()}, str(unrelated))
    with pytest.raises(
        ValueError, match=r"other\.safetensors is not qtunet-t\.ct-ssl: that tag holds the encoder only"
    ):
        publish("qtunet-t.ct-ssl", "org/x", tmp_path / "o", dry_run=True, checkpoint_path=unrelated,
                permission_obtained=True)  # fmt: skip
    assert not (tmp_path / "o").exists()
    # A copy of the tag's own tensors, identified by content: published with the tag's provenance.
    copy = tmp_path / "copy.safetensors"
    save_file({k: v.contiguous() for k, v in ct_ssl.items()}, str(copy))
    out = publish("qtunet-t.ct-ssl", "org/x", tmp_path / "o2", dry_run=True, checkpoint_path=copy,
                  permission_obtained=True)  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["source_digest"] == zoo.get_spec("qtunet-t").weight("ct-ssl").upstream_digest


def test_a_second_plan_of_a_version_1_run_does_not_read_its_init_file_again(tmp_path, ct_ssl, monkeypatch):
    import zoo.hub

    spec = zoo.get_spec("qtunet-t")
    start = tmp_path / "start.safetensors"  # zoo pretrain --init FILE, as version 1 recorded it: the path
    save_file({k: v.contiguous() for k, v in _state(5).items() if k in ct_ssl}, str(start))
    run = _run(
        tmp_path, "ssl", _state(6), finetune=None, pretraining={"method": "byol-rot-rec", "init": str(start)}
    )
    digest = file_digest(start)
    reads = []
    real = zoo.hub.file_digests
    monkeypatch.setattr(zoo.hub, "file_digests", lambda path, *a: reads.append(Path(path)) or real(path, *a))

    first, second = plan(str(run)).lineage, plan(str(run)).lineage
    assert reads.count(start) == 1
    assert first == second and first[-1].sha256 == digest and first[-1].license is None

    # The same file rewritten (the same size) with the registered encoder: read again, and identified.
    time.sleep(0.02)
    save_file({k: v.contiguous() for k, v in ct_ssl.items()}, str(start))
    assert start.stat().st_size == (converted_path(spec, spec.weight("ct-ssl"))).stat().st_size
    changed = plan(str(run)).lineage
    assert reads.count(start) == 2
    assert (changed[-1].id, changed[-1].license, changed[-1].redistributable) == (
        "qtunet-t.ct-ssl",
        "none",
        False,
    )


def test_the_card_and_the_lineage_name_the_same_start_for_every_version_1_init(tmp_path, ct_ssl):
    from zoo.provenance import lineage_of_config
    from zoo.publish import run_starting_point

    spec = zoo.get_spec("qtunet-t")
    registered = converted_path(spec, spec.weight("ct-ssl"))
    copy = tmp_path / "renamed.safetensors"
    copy.write_bytes(registered.read_bytes())
    record = zoo.create("qtunet-t", checkpoint_path=copy, **ARGS).pretrained_cfg["weights"]
    hub = {"source": "hf-hub", "id": "hf-hub:org/mirror@abc", "sha256": "0" * 64, "covers": "encoder",
           "identified_as": "qtunet-t.ct-ssl", "license": "none", "redistributable": False}  # fmt: skip
    inits = {
        "name": "qtunet-t.ct-ssl",
        "path": str(copy),
        "record": {k: v for k, v in record.items() if k != "lineage"},
        "recorded lineage": record,
        "hub record identified at load": hub,
    }
    for what, init in inits.items():
        run = _run(tmp_path, what.replace(" ", "-"), _state(2), init=init)
        start = run_starting_point(json.loads((run / "config.json").read_text()), run)
        chain = lineage_of_config(read_config(run / "config.json"), run)
        assert start.registered == chain[-1].id == "qtunet-t.ct-ssl", what
        assert (start.license, start.redistributable) == ("none", False), what
        assert (chain[-1].license, chain[-1].redistributable) == ("none", False), what


# ------------------------------------------------------------------------------------ hostile configs


def _hostile(tmp_path: Path, name: str, config) -> Path:
    run = tmp_path / name
    run.mkdir()
    save_file({k: v.contiguous() for k, v in _state(1).items()}, str(run / "model.safetensors"))
    text = config if isinstance(config, str) else json.dumps(config)
    (run / "config.json").write_text(text)
    return run


HOSTILE = {
    "embed_dim-1536": (_config(model_args={**TINY, "embed_dim": 1536}), r"model_args .* build a qtunet-t of"),
    "depths-2000": (
        _config(model_args={**TINY, "depths": [2000, 2, 2, 1]}),
        r"model_args .* build a qtunet-t of",
    ),
    "window-2048": (
        _config(sliding_window={"roi_size": [2048, 2048, 2048], "overlap": 0.5}),
        r"sliding_window\.roi_size: expected 1\.\.1024 per axis",
    ),
    "args-list": (_config(model_args=[1, 2]), r"model_args: expected an object, found \[1, 2\]"),
    "array": ([1, 2, 3], r"expected a JSON object, found a JSON list"),
    "not-json": ("{model_name: qtunet-t", r"not a JSON config"),
    "checkpoint-arg": (
        _config(model_args={**TINY, "checkpoint_path": "/etc/passwd"}),
        r"model_args\.checkpoint_path: not an argument of qtunet-t",
    ),
    "wrong-type": (
        _config(labels="liver"),
        r"labels: expected an object of class index → name, found 'liver'",
    ),
    "unknown-key": (_config(exec="rm -rf /"), r"exec: not a key of a medzoo config"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_run_configs_are_refused_in_a_second_naming_the_key(tmp_path, case):
    config, message = HOSTILE[case]
    run = _hostile(tmp_path, case, config)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=message) as e:
        zoo.create("qtunet-t", checkpoint_path=run)
    assert time.perf_counter() - started < 1.0
    assert "\n" not in str(e.value) and "config.json" in str(e.value)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    with HubUploadServer() as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        for var in ("HF_HUB_OFFLINE", "MEDZOO_OFFLINE", "HF_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        yield srv


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_args": {**TINY, "depths": [200000, 2, 2, 1]}}, r"model_args .* build a qtunet-t of"),
        ({"sliding_window": {"roi_size": [2048, 2048, 2048]}}, r"sliding_window\.roi_size"),
    ],
    ids=["depths-200000", "window-2048"],
)
def test_hostile_hub_configs_are_refused_before_the_weights(tmp_path, hub, change, message):
    weights = _hostile(tmp_path, "w", _config()) / "model.safetensors"
    files = {"config.json": json.dumps(_config(**change)).encode(), "model.safetensors": weights.read_bytes()}
    hub.add_files("org/bomb", files)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        zoo.create("hf-hub:org/bomb")
    assert time.perf_counter() - started < 1.0
    assert not list((tmp_path / "hf-cache").rglob("model.safetensors"))  # never downloaded


# ------------------------------------------------------------------------------------ resolved once


class _ResolveCounter:
    """Counts calls of ``zoo._registry.resolve`` by its code object (however a module imported it)."""

    def __init__(self) -> None:
        from zoo._registry import resolve

        self.code, self.calls = resolve.__code__, []

    def __enter__(self):
        import sys

        def profile(frame, event, arg):
            if event == "call" and frame.f_code is self.code:
                self.calls.append(frame.f_locals.get("name"))

        self._old = sys.getprofile()
        sys.setprofile(profile)
        return self

    def __exit__(self, *exc):
        import sys

        sys.setprofile(self._old)


def test_the_counter_counts_resolutions():
    with _ResolveCounter() as c:
        zoo.resolve("qtunet-t")
        from zoo._registry import resolve as again

        again("vtunet-t.brats-ssl") if "brats-ssl" in zoo.get_spec("vtunet-t").tags else again("vtunet-t")
    assert len(c.calls) == 3  # get_spec resolves too


def test_every_cli_command_resolves_its_model_name_once(tmp_path, monkeypatch, capsys):
    import nibabel as nib
    import numpy as np

    from zoo.cli import main

    monkeypatch.setenv("MEDZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    run = _run(tmp_path, "run", _state(1))
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((40, 36, 34), np.float32), np.eye(4)), scan)
    datalist = tmp_path / "dl.json"
    datalist.write_text(json.dumps({"training": [{"image": "scan.nii.gz", "label": "missing.nii.gz"}]}))
    commands = {
        ("info", "qtunet-t.ct-ssl"): 0,
        (
            "predict",
            "qtunet-t",
            "--checkpoint",
            str(run),
            "-i",
            str(scan),
            "-o",
            str(tmp_path / "s.nii.gz"),
            "-q",
        ): 0,
        ("bench", "qtunet-t", "--img-size", "32", "--no-cpu", "--no-onnx", "--no-cuda", "-q", "--json"): 0,
        (
            "publish",
            str(run),
            "--repo",
            "org/x",
            "--dry-run",
            "--out",
            str(tmp_path / "pub"),
            "--license",
            "mit",
        ): 0,
        ("download", "qtunet-t.ct-ssl", "-q"): 1,  # offline: fails after the plan
        (
            "finetune",
            "qtunet-t.ct-ssl",
            "--data",
            str(datalist),
            "--out",
            str(tmp_path / "ft"),
        ): 2,  # bad datalist
        (
            "pretrain",
            "byol-rot-rec",
            "--model",
            "qtunet-t",
            "--data",
            str(datalist),
            "--out",
            str(tmp_path / "p"),
        ): 2,
        (
            "export",
            "qtunet-t.nope",
            "-o",
            str(tmp_path / "x.onnx"),
        ): 2,  # an unknown tag: one resolution says so
    }
    for argv, status in commands.items():
        with _ResolveCounter() as c:
            rc = main(list(argv))
        err = capsys.readouterr().err
        assert rc == status, (argv, rc, err)
        # A run folder names its model in its config.json: looked up as registered, not resolved.
        assert len(c.calls) == (0 if argv[0] == "publish" else 1), (argv[0], c.calls)


# ------------------------------------------------------------------------------------ run folders and ONNX


def test_a_run_never_writes_into_a_folder_it_does_not_own(tmp_path, capsys):
    from zoo.cli import main

    published = _run(tmp_path, "published", _state(1))  # a zoo publish folder: weights + config, no trainer
    (published / "README.md").write_text("# someone's model\n")
    before = {p.name: p.read_bytes() for p in published.iterdir()}
    for argv in (
        ["finetune", "qtunet-t", "--data", str(tmp_path / "none.json"), "--out", str(published)],
        ["pretrain", "byol-rot-rec", "--model", "qtunet-t", "--data", str(tmp_path / "none.json"),
         "--out", str(published)],
    ):  # fmt: skip
        started = time.perf_counter()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"--out {published} already holds" in err and "choose another --out" in err, err
        assert time.perf_counter() - started < 1.0  # refused before the (missing) data is read
    assert {p.name: p.read_bytes() for p in published.iterdir()} == before


def _onnx_with(path: Path, **changes: str) -> Path:
    """A one-node ONNX file carrying medzoo metadata, with some values replaced."""
    import onnx
    from onnx import TensorProto, helper

    from zoo.runconfig import METADATA_KEYS

    meta = {
        "medzoo.version": "0.1.0",
        "medzoo.model": "qtunet-t",
        "medzoo.family": "qtunet",
        "medzoo.weights_tag": "",
        "medzoo.weights_sha256": "",
        "medzoo.weights": "null",
        "medzoo.model_args": json.dumps(TINY),
        "medzoo.input_size": "[1, 32, 32, 32]",
        "medzoo.input_axes": '["batch", "channel", "x", "y", "z"]',
        "medzoo.axis_order": "xyz",
        "medzoo.preprocessing": json.dumps({"orientation": "RAS", "intensity_transform": "zscore"}),
        "medzoo.labels": "null",
        "medzoo.num_classes": "3",
        "medzoo.sliding_window": json.dumps({"roi_size": [32, 32, 32], "overlap": 0.5}),
    }
    meta.update({f"medzoo.{k}": v for k, v in changes.items()})
    assert set(meta) == set(METADATA_KEYS)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 32, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 32, 32, 32])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"sliding_window": json.dumps({"roi_size": [2048, 2048, 2048]})},
            r"medzoo\.sliding_window\.roi_size",
        ),
        ({"preprocessing": "[1, 2]"}, r"medzoo\.preprocessing: expected an object, found \[1, 2\]"),
        ({"num_classes": "many"}, r"medzoo\.num_classes: expected an integer, found 'many'"),
        (
            {"model_args": json.dumps({**TINY, "embed_dim": 12000})},
            r"medzoo\.model_args .* build a qtunet-t of",
        ),
    ],
    ids=["window-2048", "list-for-mapping", "string-for-int", "huge-model"],
)
def test_hostile_onnx_metadata_is_refused_naming_the_key(tmp_path, capsys, change, message):
    pytest.importorskip("onnx")
    import re

    import zoo.cli.apply  # noqa: F401  (what is timed is the check, not Python's first imports)
    import zoo.predict_checks  # noqa: F401
    from zoo.cli import main

    path = _onnx_with(tmp_path / "m.onnx", **change)
    scan = tmp_path / "scan.nii.gz"
    started = time.perf_counter()
    assert main(["predict", str(path), "-i", str(scan), "-o", str(tmp_path / "seg.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert time.perf_counter() - started < 1.0
    assert len(err.splitlines()) == 1 and re.search(message, err), err
