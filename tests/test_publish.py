"""Publish → load by Hub id, with the real huggingface_hub client against a loopback Hub that accepts uploads.

Run folders are built by hand (``model.safetensors`` + ``config.json``, as ``zoo finetune`` writes
them) around a narrow QT-UNet-T (embed_dim 12, 32³), so the round trip takes seconds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, ModelCardData
from safetensors.torch import load, load_file, save_file

import zoo
from tests.hub_upload_server import HubUploadServer
from zoo.cli import main
from zoo.hub import WeightsUnavailableError, file_digest
from zoo.publish import PublishError, publish_run

TINY = {"embed_dim": 12, "window_size": 2, "img_size": [32, 32, 32], "in_chans": 1, "num_classes": 3}
FILES = ["README.md", "config.json", "model.safetensors"]


@pytest.fixture
def hub(tmp_path, monkeypatch, request):
    """A loopback Hub; the Hub client, medzoo's cache and the HF cache point at it and at tmp_path.

    ``lfs=True`` (default): the weights go through the LFS batch + basic transfer, the path
    huggingface_hub takes without hf_xet (the Xet storage protocol is not emulated here).
    ``lfs=False``: the Hub answers "regular" for every file, so the default upload pipeline
    (hf_xet installed) commits them inline.
    """
    lfs = getattr(request, "param", True)
    if lfs:
        import huggingface_hub.constants as hf_constants

        monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    with HubUploadServer(lfs=lfs) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("MEDZOO_CACHE", str(tmp_path / "medzoo-cache"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        for var in ("HF_HUB_OFFLINE", "MEDZOO_OFFLINE", "HF_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        yield srv


def _tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return zoo.create("qtunet-t", **{k: tuple(v) if isinstance(v, list) else v for k, v in TINY.items()})


def _tiny_state(seed: int) -> dict[str, torch.Tensor]:
    return _tiny_model(seed).state_dict()


def _run(
    tmp_path: Path, name: str = "run", *, init=None, finetune: bool = True, seed: int = 3, old: bool = False
) -> Path:
    """A run folder as zoo finetune / zoo pretrain writes it (``old``: as they wrote it before
    derived buffers were left out)."""
    from zoo.layers.derived import without_derived

    run = tmp_path / name
    run.mkdir()
    model = _tiny_model(seed)
    state = model.state_dict() if old else without_derived(model.state_dict(), model)
    save_file({k: v.contiguous() for k, v in state.items()}, str(run / "model.safetensors"))
    cfg = {
        "library_name": "medzoo",
        "model_name": "qtunet-t",
        "tag": None,
        "family": "qtunet",
        "model_args": dict(TINY),
        "covers": "full",
        "labels": {"0": "background", "1": "liver", "2": "spleen"},
        "preprocessing": {"orientation": "RAS", "spacing_mm": [1.5, 1.5, 2.0], "intensity_transform": None},
        "sliding_window": {"roi_size": [32, 32, 32], "overlap": 0.5, "mode": "gaussian"},
    }
    if finetune:
        cfg["finetune"] = {"preset": "qtunet", "data": str(tmp_path / "datalist.json")}
        if init is not None:
            cfg["init"] = init
    else:
        cfg["pretraining"] = {"method": "byol-rot-rec", "init": init or "random"}
    (run / "config.json").write_text(json.dumps(cfg))
    return run


def _encoder_file(tmp_path: Path) -> Path:
    """An encoder checkpoint of the narrow model, as converted weights would be cached."""
    spec = zoo.get_spec("qtunet-t")
    sd = {k: v for k, v in _tiny_state(11).items() if k.startswith(tuple(spec.encoder_prefixes))}
    path = tmp_path / "renamed-encoder.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _register_as_ct_ssl(path: Path, cache: Path) -> None:
    """Write the cache sidecar that says ``path`` is the converted qtunet-t.ct-ssl file."""
    (cache / "converted").mkdir(parents=True, exist_ok=True)
    rec = {"name": "qtunet-t", "tag": "ct-ssl", "sha256": file_digest(path), "source_digest": "gitsha1:00"}
    (cache / "converted" / "qtunet-t.ct-ssl.json").write_text(json.dumps(rec))


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.endswith(".part"))


# ------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("hub", [True, False], indirect=True, ids=["lfs-transfer", "xet-client-inline"])
def test_publish_then_load_by_hub_id_gives_identical_outputs(tmp_path, hub, capsys):
    run = _run(tmp_path)
    out = tmp_path / "published"
    assert (
        main(["publish", str(run), "--repo", "org/tiny-qt", "--out", str(out), "--license", "apache-2.0"])
        == 0
    )
    assert "hf-hub:org/tiny-qt" in capsys.readouterr().out

    # Exactly the three files were committed, once, and the local copy holds the same three.
    assert hub.state.committed == [FILES]
    assert sorted(hub.files("org/tiny-qt")) == FILES
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert _leftovers(tmp_path) == []
    weights = (run / "model.safetensors").read_bytes()
    assert hub.files("org/tiny-qt")["model.safetensors"] == weights
    assert not [k for k in load(weights) if k.endswith("relative_position_index")]
    assert json.loads((out / "config.json").read_text())["sha256"] == hashlib.sha256(weights).hexdigest()
    if hub.state.use_lfs:  # the large file went through the LFS batch API and a basic PUT, not the commit
        assert hub.state.lfs_uploads == [hashlib.sha256(weights).hexdigest()]

    ours = zoo.create("qtunet-t", checkpoint_path=run)
    theirs = zoo.create("hf-hub:org/tiny-qt")
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    cfg = theirs.pretrained_cfg
    assert cfg["hub"] == {"repo_id": "org/tiny-qt", "revision": None, "commit": hub.head("org/tiny-qt")}
    assert cfg["weights"]["source"] == "hf-hub"
    assert cfg["weights"]["sha256"] == hashlib.sha256(weights).hexdigest()
    assert cfg["weights"]["id"] == f"hf-hub:org/tiny-qt@{hub.head('org/tiny-qt')}"
    assert cfg["labels"] == {"0": "background", "1": "liver", "2": "spleen"}
    assert cfg["preprocessing"]["spacing_mm"] == [1.5, 1.5, 2.0]
    # The downloads announce medzoo, so the Hub counts them for the library.
    agents = [ua for method, path, ua in hub.state.requests if "/resolve/" in path]
    assert agents and all(f"medzoo/{zoo.__version__}" in ua for ua in agents)
    # config.json is read first, then the weights at the commit the config came from.
    resolved = [path for method, path, _ in hub.state.requests if method == "GET" and "/resolve/" in path]
    assert resolved[0].endswith("/resolve/main/config.json")
    assert resolved[1].endswith(f"/resolve/{hub.head('org/tiny-qt')}/model.safetensors")


def test_an_older_run_holding_derived_buffers_loads_and_is_published_without_them(tmp_path, hub, capsys):
    from zoo.layers.derived import derived_buffer_keys

    run = _run(tmp_path, old=True)
    local = (run / "model.safetensors").read_bytes()
    ours = zoo.create(str(run))  # an older run's file still loads
    derived = derived_buffer_keys(ours)
    assert derived and derived <= set(load(local))
    out = tmp_path / "published"
    argv = ["publish", str(run), "--repo", "org/tiny-qt", "--out", str(out), "--license", "apache-2.0"]
    assert main(argv) == 0
    uploaded = hub.files("org/tiny-qt")["model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == uploaded
    assert (run / "model.safetensors").read_bytes() == local  # the run folder is left as it was
    published, before = load(uploaded), load(local)
    assert set(published) == set(before) - derived
    assert all(torch.equal(v, before[k]) for k, v in published.items())
    digest = hashlib.sha256(uploaded).hexdigest()
    assert (
        json.loads((out / "config.json").read_text())["sha256"] == digest != hashlib.sha256(local).hexdigest()
    )
    theirs = zoo.create("hf-hub:org/tiny-qt")
    assert theirs.pretrained_cfg["weights"]["sha256"] == digest
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_publish_private_creates_a_private_repository_and_reports_json(tmp_path, hub, capsys):
    run = _run(tmp_path)
    argv = ["publish", str(run), "--repo", "org/secret-qt", "--out", str(tmp_path / "a"), "--private"]
    argv += ["--json", "--license", "apache-2.0"]  # a run from random weights names its licence
    assert main(argv) == 0
    said = json.loads(capsys.readouterr().out)
    assert (said["repo"], said["uploaded"], said["files"]) == ("org/secret-qt", True, FILES)
    assert said["usage"] == "zoo.create('hf-hub:org/secret-qt')"
    assert (
        main(["publish", str(run), "--repo", "org/open-qt", "--out", str(tmp_path / "b"), "--license", "mit"])
        == 0
    )
    # huggingface_hub sends "visibility" (older clients: "private"); the Hub reads either.
    made = {
        f"{c.get('organization')}/{c['name']}": c.get("visibility") == "private" or c.get("private") is True
        for c in hub.state.created
    }
    assert made == {"org/secret-qt": True, "org/open-qt": False}


def test_a_published_tags_card_shows_its_own_hub_id_as_usage():
    from zoo.cards import render_card

    published = render_card("qtunet-t", hub_tag="ct-ssl", hub_id="org/qt-ct")
    assert 'model = zoo.create("hf-hub:org/qt-ct")' in published
    assert 'zoo.create("qtunet-t.ct-ssl"' not in published
    assert 'zoo.create("qtunet-t", pretrained=True)' in render_card("qtunet-t")  # the registry's own card


def test_derived_buffers_may_be_absent_from_a_file_and_are_rebuilt(tmp_path):
    from zoo.layers.derived import derived_buffer_keys, without_derived

    args = dict(img_size=32, embed_dim=12)
    torch.manual_seed(0)
    model = zoo.create("qtunet-t", **args)
    derived = derived_buffer_keys(model)
    assert derived and all(k.endswith("relative_position_index") for k in derived)
    state = model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "old.safetensors"))
    lean = without_derived(state, model)
    assert set(state) - set(lean) == derived and not any(v.dtype == torch.int64 for v in lean.values())
    save_file({k: v.contiguous() for k, v in lean.items()}, str(tmp_path / "lean.safetensors"))
    x = torch.randn(1, 1, 32, 32, 32)
    outs = []
    for name in ("old", "lean"):  # a file that stores them (older caches, the authors') and one that does not
        loaded = zoo.create("qtunet-t", checkpoint_path=tmp_path / f"{name}.safetensors", **args)
        assert all(torch.equal(loaded.state_dict()[k], state[k]) for k in derived)
        with torch.no_grad():
            outs.append(loaded(x))
    assert torch.equal(outs[0], outs[1])
    del lean[next(k for k in lean if k.endswith("qkv.weight"))]  # a learned tensor may not be absent
    save_file({k: v.contiguous() for k, v in lean.items()}, str(tmp_path / "broken.safetensors"))
    with pytest.raises(zoo.CheckpointMismatchError, match="lacks 1 key"):
        zoo.create("qtunet-t", checkpoint_path=tmp_path / "broken.safetensors", **args)


def test_hub_id_as_checkpoint_path_revision_and_wrong_model(tmp_path, hub):
    run = _run(tmp_path)
    publish_run(run, "org/tiny-qt", tmp_path / "out", license="apache-2.0")
    first = hub.head("org/tiny-qt")
    # A later push to main does not change what @first loads.
    save_file({k: v.contiguous() for k, v in _tiny_state(9).items()}, str(tmp_path / "other.safetensors"))
    hub.add_files("org/tiny-qt", {"model.safetensors": (tmp_path / "other.safetensors").read_bytes()})
    pinned = zoo.create("qtunet-t", checkpoint_path=f"hf-hub:org/tiny-qt@{first}")
    assert pinned.pretrained_cfg["hub"]["commit"] == first
    assert pinned.pretrained_cfg["weights"]["sha256"] == file_digest(run / "model.safetensors")
    latest = zoo.create("hf-hub:org/tiny-qt")
    assert latest.pretrained_cfg["weights"]["sha256"] == file_digest(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="holds a 'qtunet-t' model, not 'pctnet'"):
        zoo.create("pctnet", checkpoint_path="hf-hub:org/tiny-qt")
    with pytest.raises(ValueError, match="expected hf-hub:ORG/NAME"):
        zoo.create("hf-hub:not-a-repo-id")


def test_a_repo_that_is_not_a_medzoo_repo_is_named_as_such(hub):
    hub.add_files("org/plain", {"README.md": b"# hello\n", "model.safetensors": b"\0" * 8})
    with pytest.raises(ValueError, match="not a medzoo repository: it has no config.json"):
        zoo.create("hf-hub:org/plain")
    hub.add_files("org/other-lib", {"config.json": b'{"architectures": ["Bert"]}'})
    with pytest.raises(ValueError, match=r"config.json has no 'model_name' \(found \['architectures'\]\)"):
        zoo.create("hf-hub:org/other-lib")
    with pytest.raises(WeightsUnavailableError, match="no such repository"):
        zoo.create("hf-hub:org/absent")
    # Refused before the weights were fetched.
    assert not any(p.endswith("org/plain/resolve/main/model.safetensors") for _, p, _ in hub.state.requests)


def test_model_arguments_that_would_allocate_far_more_than_the_weights_are_refused(tmp_path, hub):
    run = _run(tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["model_args"]["embed_dim"] = 12 * 512  # ~ 2000 GB of parameters on a 3 MB file
    hub.add_files(
        "org/bomb",
        {
            "config.json": json.dumps(config).encode(),
            "model.safetensors": (run / "model.safetensors").read_bytes(),
        },
    )
    # Refused from config.json alone (the estimate is past the memory budget), before the weights download.
    with pytest.raises(
        ValueError, match=r"build a qtunet-t of [\d.]+ GiB, but (model.safetensors holds|the memory)"
    ):
        zoo.create("hf-hub:org/bomb")


def _counted(requests, repo: str) -> list[tuple[str, str, str]]:
    """The requests the Hub counts as downloads of ``repo``: any request (GET or HEAD) for its
    config.json, the default query file of a library with no filter of its own."""
    return [r for r in requests if r[1].startswith(f"/{repo}/resolve/") and r[1].endswith("/config.json")]


def test_each_load_by_hub_id_is_one_counted_request_cold_or_warm(tmp_path, hub, capsys):
    publish_run(_run(tmp_path), "org/tiny-qt", tmp_path / "out", license="apache-2.0")
    commit = hub.head("org/tiny-qt")
    weights = f"/org/tiny-qt/resolve/{commit}/model.safetensors"
    hub.state.requests.clear()
    cold = zoo.create("hf-hub:org/tiny-qt")
    assert [(m, p) for m, p, _ in _counted(hub.state.requests, "org/tiny-qt")] == [
        ("GET", "/org/tiny-qt/resolve/main/config.json")
    ]
    assert [m for m, p, _ in hub.state.requests if p == weights].count("GET") == 1
    asked_for_weights = [p for _, p, _ in hub.state.requests].count(weights)  # HEADs (uncounted), the GET
    # Every request announces the library and its version, the config's first.
    assert hub.state.requests[0][1].endswith("/config.json")
    assert all(f"medzoo/{zoo.__version__}" in ua for _, _, ua in hub.state.requests)
    # Warm: the config is asked again (the load is counted, a moved branch is seen); the commit's
    # weights are in the cache and not asked for. The command line and torch.hub behave the same.
    warm = zoo.create("hf-hub:org/tiny-qt")
    assert main(["download", "hf-hub:org/tiny-qt", "-q"]) == 0
    repo = str(Path(zoo.__file__).parents[1])  # the folder of hubconf.py
    hub_model = torch.hub.load(repo, "qtunet_t", checkpoint_path="hf-hub:org/tiny-qt", source="local")
    assert len(_counted(hub.state.requests, "org/tiny-qt")) == 4
    assert all(m == "GET" for m, _, _ in _counted(hub.state.requests, "org/tiny-qt"))
    assert [p for _, p, _ in hub.state.requests].count(weights) == asked_for_weights
    for model in (warm, hub_model):
        for k, v in cold.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k


def test_an_unreachable_hub_loads_the_cached_commit_with_a_warning(tmp_path, hub, monkeypatch, caplog):
    from tests.hub_upload_server import HubUploadServer as _Closed  # a port that no longer answers

    publish_run(_run(tmp_path), "org/tiny-qt", tmp_path / "out", license="apache-2.0")
    online = zoo.create("hf-hub:org/tiny-qt")
    with _Closed() as gone:
        url = gone.url
    monkeypatch.setenv("HF_ENDPOINT", url)
    with caplog.at_level("WARNING", logger="zoo.hub"):
        again = zoo.create("hf-hub:org/tiny-qt")
    assert again.pretrained_cfg["hub"]["commit"] == online.pretrained_cfg["hub"]["commit"]
    warned = [r.getMessage() for r in caplog.records if "cached for commit" in r.getMessage()]
    assert len(warned) == 1 and "connection refused" in warned[0]
    with pytest.raises(WeightsUnavailableError, match="connection refused"):
        zoo.create("hf-hub:org/never-loaded")


def test_offline_loads_from_the_cache_and_says_offline_otherwise(tmp_path, hub, monkeypatch):
    publish_run(_run(tmp_path), "org/tiny-qt", tmp_path / "out", license="apache-2.0")
    online = zoo.create("hf-hub:org/tiny-qt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.state.requests)
    offline = zoo.create("hf-hub:org/tiny-qt")
    assert len(hub.state.requests) == before  # nothing asked of the Hub
    assert offline.pretrained_cfg["hub"]["commit"] == online.pretrained_cfg["hub"]["commit"]
    for k, v in online.state_dict().items():
        assert torch.equal(offline.state_dict()[k], v)
    with pytest.raises(WeightsUnavailableError, match="offline mode is on"):
        zoo.create("hf-hub:org/never-loaded")
    with pytest.raises(WeightsUnavailableError, match="offline mode is on"):  # a commit never fetched
        zoo.create(f"hf-hub:org/tiny-qt@{'f' * 40}")


def test_hub_id_weights_past_the_byte_bound_are_refused_before_the_transfer(tmp_path, hub, monkeypatch):
    from zoo.hub import HubError

    publish_run(_run(tmp_path), "org/tiny-qt", tmp_path / "out", license="apache-2.0")
    size = (tmp_path / "out" / "model.safetensors").stat().st_size
    monkeypatch.setenv("MEDZOO_DOWNLOAD_MAX_BYTES", str(size - 1))
    with pytest.raises(HubError) as e:
        zoo.create("hf-hub:org/tiny-qt")
    commit = hub.head("org/tiny-qt")
    assert e.value.kind == "too-large"
    assert str(e.value) == (
        f"hf-hub:org/tiny-qt@{commit} model.safetensors: the server announces {size:,} bytes, over the "
        f"{size - 1:,}-byte bound for this file; refused (MEDZOO_DOWNLOAD_MAX_BYTES raises the bound if "
        "the file really grew)"
    )
    # config.json (a fixed bound, not the weights') was read; the weights were never requested.
    gets = [path for method, path, _ in hub.state.requests if method == "GET"]
    assert any(p.endswith("/config.json") for p in gets)
    assert not any(p.endswith("/model.safetensors") for p in gets)
    assert not list((tmp_path / "hf-cache").rglob("model.safetensors*"))  # nothing half-written cached
    # The bound raised to the file's size: the same id loads.
    monkeypatch.setenv("MEDZOO_DOWNLOAD_MAX_BYTES", str(size))
    assert zoo.create("hf-hub:org/tiny-qt").pretrained_cfg["hub"]["commit"] == commit


# ------------------------------------------------------------------------- the output folder


def test_a_stray_file_in_out_is_refused_and_nothing_is_uploaded(tmp_path, hub, capsys):
    out = tmp_path / "hubfolder"
    out.mkdir()
    (out / ".env").write_text("HF_TOKEN=secret\n")
    rc = main(
        [
            "publish",
            str(_run(tmp_path)),
            "--repo",
            "org/tiny-qt",
            "--out",
            str(out),
            "--license",
            "apache-2.0",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and ".env" in err
    assert hub.state.requests == []  # not even the repository was created
    assert sorted(p.name for p in out.iterdir()) == [".env"]
    assert _leftovers(tmp_path) == []


def test_a_failed_upload_leaves_nothing_and_says_so_in_one_line(tmp_path, hub, capsys):
    hub.state.fail_commit = True
    out = tmp_path / "hubfolder"
    rc = main(
        [
            "publish",
            str(_run(tmp_path)),
            "--repo",
            "org/tiny-qt",
            "--out",
            str(out),
            "--license",
            "apache-2.0",
        ]
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("zoo publish:")]  # not tqdm's bars
    assert rc == 1 and len(errors) == 1 and "Traceback" not in err
    assert "upload to org/tiny-qt failed" in errors[0]
    assert not out.exists() and _leftovers(tmp_path) == []
    assert hub.state.committed == []


def test_a_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    import zoo.cards

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zoo.cards, "render_run_card", broken)
    out = tmp_path / "hubfolder"
    with pytest.raises(PublishError, match="No space left on device.*nothing was written"):
        publish_run(_run(tmp_path), "org/tiny-qt", out, dry_run=True, license="apache-2.0")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_an_interrupted_upload_leaves_nothing(tmp_path, monkeypatch):
    import zoo.publish

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo.publish, "_upload", interrupted)
    out = tmp_path / "hubfolder"
    with pytest.raises(KeyboardInterrupt):
        publish_run(_run(tmp_path), "org/tiny-qt", out, license="apache-2.0")
    assert not out.exists() and _leftovers(tmp_path) == []


# ------------------------------------------------------------------------- provenance by content


def test_run_from_a_renamed_non_redistributable_file_is_refused(tmp_path, monkeypatch):
    cache = tmp_path / "medzoo-cache"
    monkeypatch.setenv("MEDZOO_CACHE", str(cache))
    enc = _encoder_file(tmp_path)
    _register_as_ct_ssl(enc, cache)
    # What zoo.create records for the load that started the run (zoo finetune --checkpoint FILE).
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in TINY.items()}
    record = zoo.create("qtunet-t", checkpoint_path=enc, **args).pretrained_cfg["weights"]
    assert record["tag"] is None and record["sha256"] == file_digest(enc)
    run = _run(tmp_path, "ft", init=record)
    with pytest.raises(PermissionError, match=r"qtunet-t\.ct-ssl.*does not allow redistribution"):
        publish_run(run, "org/x", tmp_path / "o1", dry_run=True)
    assert not (tmp_path / "o1").exists()

    out = publish_run(run, "org/x", tmp_path / "o2", dry_run=True, permission_obtained=True)
    card = ModelCard.load(out / "README.md")
    started = f"Started from: a local checkpoint with sha256 `{file_digest(enc)}`"
    assert f"{started}: the registered weights `qtunet-t.ct-ssl`" in card.text
    assert card.data.license == "other" and card.data.license_name == "no-license"
    assert card.data.license_link == "https://github.com/AndreasHaaversen/QT-UNet"
    assert "fine-tuned" in card.data.tags and "self-supervised" not in card.data.tags
    assert card.data.pipeline_tag == "image-segmentation"
    assert card.data.base_model is None  # ct-ssl is not on the Hub
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["derived_from"] == "ct-ssl" and cfg["init"]["sha256"] == file_digest(enc)
    assert cfg["init"]["upstream_digest"] == zoo.get_spec("qtunet-t").weight("ct-ssl").upstream_digest
    assert cfg["finetune"]["data"] == "datalist.json"  # no local path on the Hub


def test_pretrain_run_with_init_path_and_old_tag_field_are_refused(tmp_path, monkeypatch):
    cache = tmp_path / "medzoo-cache"
    monkeypatch.setenv("MEDZOO_CACHE", str(cache))
    enc = _encoder_file(tmp_path)
    _register_as_ct_ssl(enc, cache)
    pre = _run(tmp_path, "ssl", init=str(enc), finetune=False)
    with pytest.raises(PermissionError, match=r"qtunet-t\.ct-ssl"):
        publish_run(pre, "org/x", tmp_path / "o1", dry_run=True)
    out = publish_run(pre, "org/x", tmp_path / "o2", dry_run=True, permission_obtained=True)
    card = ModelCard.load(out / "README.md")
    assert "self-supervised" in card.data.tags and "fine-tuned" not in card.data.tags
    assert card.data.pipeline_tag == "image-feature-extraction"

    old = _run(tmp_path, "old-ft")
    cfg = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({**cfg, "tag": "ct-ssl"}))
    with pytest.raises(PermissionError, match=r"qtunet-t\.ct-ssl"):
        publish_run(old, "org/x", tmp_path / "o3", dry_run=True)


def test_the_run_weights_themselves_being_registered_weights_are_refused(tmp_path, monkeypatch):
    cache = tmp_path / "medzoo-cache"
    monkeypatch.setenv("MEDZOO_CACHE", str(cache))
    run = _run(tmp_path, "copied")  # claims random init, but its file is (registered as) ct-ssl
    _register_as_ct_ssl(run / "model.safetensors", cache)
    with pytest.raises(PermissionError, match=r"sha256 of the registered weights qtunet-t\.ct-ssl"):
        publish_run(run, "org/x", tmp_path / "o", dry_run=True)


def test_run_from_an_unidentified_local_checkpoint_names_its_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDZOO_CACHE", str(tmp_path / "medzoo-cache"))
    enc = _encoder_file(tmp_path)
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in TINY.items()}
    record = zoo.create("qtunet-t", checkpoint_path=enc, **args).pretrained_cfg["weights"]
    out = publish_run(
        _run(tmp_path, "ft", init=record), "org/x", tmp_path / "o", dry_run=True, license="apache-2.0"
    )
    text = (out / "README.md").read_text()
    assert f"Started from: a local checkpoint with sha256 `{file_digest(enc)}`." in text
    assert "license: apache-2.0" in text


def test_run_from_a_hub_repo_of_non_redistributable_weights_is_refused(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("MEDZOO_CACHE", str(tmp_path / "medzoo-cache"))
    base = _run(tmp_path, "base")
    _register_as_ct_ssl(base / "model.safetensors", tmp_path / "medzoo-cache")
    publish_run(base, "org/mirror", tmp_path / "o1", permission_obtained=True)
    (tmp_path / "medzoo-cache" / "converted" / "qtunet-t.ct-ssl.json").unlink()  # not identifiable here
    loaded = zoo.create("hf-hub:org/mirror").pretrained_cfg["weights"]
    assert loaded["redistributable"] is False  # from the repository's config.json
    run = _run(tmp_path, "ft", init=loaded, seed=5)
    # Publisher A's permission does not pass to B's derived weights.
    with pytest.raises(PermissionError, match="org/mirror"):
        publish_run(run, "org/derived", tmp_path / "o2", dry_run=True)


def test_run_from_a_hub_repo_names_it_as_base_model(tmp_path, hub):
    publish_run(_run(tmp_path, "base"), "org/base-qt", tmp_path / "o1", license="apache-2.0")
    record = zoo.create("hf-hub:org/base-qt").pretrained_cfg["weights"]
    out = publish_run(_run(tmp_path, "ft", init=record, seed=5), "org/ft-qt", tmp_path / "o2", dry_run=True)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "org/base-qt"
    assert "[`org/base-qt`](https://huggingface.co/org/base-qt)" in card.text  # its card: linked
    assert f"`hf-hub:org/base-qt@{hub.head('org/base-qt')}`" in card.text


# ------------------------------------------------------------------------- cards


def _assert_hub_card(path: Path) -> None:
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["library_name"] == "medzoo"
    assert data["pipeline_tag"] in ("image-segmentation", "image-feature-extraction")
    assert all(v not in ([], None, "") for v in data.values()), data
    if data["license"] == "other":
        assert data.get("license_name") and data.get("license_link", "").startswith("https://")
    base = data.get("base_model")
    assert base is None or (isinstance(base, str) and len(base.split("/")) == 2 and all(base.split("/"))), (
        base
    )
    # Round trip: the front matter is exactly what ModelCardData writes for these values.
    front = path.read_text().split("\n---\n", 1)[0].removeprefix("---\n")
    assert ModelCardData(**data).to_yaml() == front
    assert ModelCard(str(card)).data.to_dict() == data


def test_every_checked_in_card_parses_and_round_trips():
    from zoo.cards import CARDS_DIR

    paths = sorted(CARDS_DIR.glob("*.md"))
    assert len(paths) == len(zoo.list_models())
    for path in paths:
        _assert_hub_card(path)
    seg = ModelCard.load(CARDS_DIR / "qtunet-t.md").data
    enc = ModelCard.load(CARDS_DIR / "swinvit2d-c48.md").data
    assert seg.pipeline_tag == "image-segmentation" and enc.pipeline_tag == "image-feature-extraction"
    assert seg.license == "other" and seg.license_name == "no-license"
    assert ModelCard.load(CARDS_DIR / "pctnet.md").data.license == "apache-2.0"


def test_published_cards_parse_and_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDZOO_CACHE", str(tmp_path / "medzoo-cache"))
    ft = publish_run(_run(tmp_path, "ft"), "org/ft", tmp_path / "o1", dry_run=True, license="apache-2.0")
    pre = publish_run(
        _run(tmp_path, "ssl", finetune=False), "org/ssl", tmp_path / "o2", dry_run=True, license="apache-2.0"
    )
    for out in (ft, pre):
        _assert_hub_card(out / "README.md")
        assert sorted(p.name for p in out.iterdir()) == FILES


# ------------------------------------------------------------------------- other entry points


def test_cli_and_torch_hub_entrypoints_take_a_hub_id(tmp_path, hub, capsys):
    import hubconf

    run = _run(tmp_path)
    publish_run(run, "org/tiny-qt", tmp_path / "out", license="apache-2.0")
    commit = hub.head("org/tiny-qt")
    assert main(["info", "hf-hub:org/tiny-qt"]) == 0
    out = capsys.readouterr().out
    assert f"commit {commit}" in out and "model_name: qtunet-t" in out and "QT-UNet" in out
    entry = hubconf.qtunet_t(checkpoint_path="hf-hub:org/tiny-qt")
    assert entry.pretrained_cfg["hub"]["commit"] == commit
    assert entry.pretrained_cfg["weights"]["sha256"] == file_digest(run / "model.safetensors")
    # Each command asks the Hub once: one counted request for config.json, whatever it does next.
    import nibabel as nib
    import numpy as np

    scan = tmp_path / "scan.nii.gz"
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).normal(size=(40, 36, 30)).astype(np.float32), np.eye(4)),
        scan,
    )
    for argv in (
        ["info", "hf-hub:org/tiny-qt"],
        ["predict", "hf-hub:org/tiny-qt", "-i", str(scan), "-o", str(tmp_path / "labels.nii.gz")],
    ):
        before = len(_counted(hub.state.requests, "org/tiny-qt"))
        assert main(argv) == 0, argv
        assert len(_counted(hub.state.requests, "org/tiny-qt")) == before + 1, argv


@pytest.mark.slow  # the ONNX export takes minutes on a loaded 2-core machine
def test_export_takes_a_hub_id(tmp_path, hub, capsys):
    publish_run(_run(tmp_path), "org/tiny-qt", tmp_path / "out", license="apache-2.0")
    onnx = tmp_path / "tiny.onnx"
    rc = main(["export", "hf-hub:org/tiny-qt", "-o", str(onnx), "--input-shape", "1", "32", "32", "32"])
    assert rc == 0 and onnx.is_file()
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out


@pytest.mark.slow  # full-size QT-UNet-T built three times: ~25 s on a loaded 2-core machine
def test_publish_a_registered_tag_then_load_it_by_hub_id(tmp_path, hub, capsys):
    spec = zoo.get_spec("qtunet-t")
    torch.manual_seed(4)
    encoder = {k: v for k, v in zoo.create("qtunet-t").state_dict().items() if k.startswith("encoder.")}
    src = tmp_path / "CT-SSL_pretrained.pt"
    torch.save(encoder, src)  # the authors' format: a flat dict of encoder keys
    argv = ["publish", "qtunet-t.ct-ssl", "--repo", "org/qt-ct", "--out", str(tmp_path / "o"), "--checkpoint"]
    assert main([*argv, str(src)]) == 2  # no licence to redistribute
    assert hub.state.requests == []
    assert main([*argv, str(src), "--permission-obtained"]) == 0
    assert hub.state.committed == [FILES]
    published = load_file(str(tmp_path / "o" / "model.safetensors"))
    assert published and not [k for k in published if k.endswith("relative_position_index")]
    card = (tmp_path / "o" / "README.md").read_text()
    assert 'zoo.create("hf-hub:org/qt-ct")' in card and 'zoo.create("qtunet-t.ct-ssl"' not in card
    model = zoo.create("hf-hub:org/qt-ct")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in encoder.items())
    cfg = model.pretrained_cfg
    assert cfg["tag"] == "ct-ssl" and cfg["preprocessing"] == dict(spec.weight("ct-ssl").preprocessing)
    rec = cfg["weights"]
    assert rec["covers"] == "encoder" and "output" in rec["newly_initialised"]
    assert (rec["license"], rec["redistributable"]) == ("none", False)  # from the repository's config.json


def test_a_config_an_earlier_version_cached_through_the_client_loads_offline(tmp_path, hub, monkeypatch):
    """Before medzoo cached Hub configs itself, the client's cache held them: offline loads still work."""
    from huggingface_hub import hf_hub_download

    publish_run(_run(tmp_path), "org/tiny-qt", tmp_path / "out", license="apache-2.0")
    commit = hub.head("org/tiny-qt")
    cache = str(tmp_path / "hf-cache")  # the client read HF_ENDPOINT and HF_HUB_CACHE at its import
    for name in ("config.json", "model.safetensors"):
        rev = None if name == "config.json" else commit
        hf_hub_download("org/tiny-qt", name, revision=rev, endpoint=hub.url, cache_dir=cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.state.requests)
    model = zoo.create("hf-hub:org/tiny-qt")
    assert len(hub.state.requests) == before
    assert model.pretrained_cfg["hub"]["commit"] == commit
    assert model.pretrained_cfg["weights"]["sha256"] == file_digest(tmp_path / "out" / "model.safetensors")
