"""Weights resolution against loopback servers: the real huggingface_hub client over real HTTP.

Upstream test checkpoints are written in the authors' exact formats (QT-UNet's flat
encoder dict, Lightning's ``state_dict`` with ``model.``/``swin_unet.`` prefixes), filled
with the golden deterministic weights.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from tests import golden
from tests.servers import torch_bytes, url_path
from zoo._registry import get_spec, override_weights
from zoo.hub import DigestMismatchError, WeightsUnavailableError, converted_path, file_digest

NAME, TAG = "qtunet-t", "ct-ssl"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture(scope="module")
def encoder_checkpoint() -> dict[str, torch.Tensor]:
    """The CT-SSL encoder file of QT-UNet-T as the authors save it: a flat dict of encoder.* keys."""
    model = zoo.create(NAME)
    full = golden.reference_state_dict_for("qtunet-t-btcv", model)
    return {k: v for k, v in full.items() if k.startswith("encoder.")}


@pytest.fixture(scope="module")
def encoder_bytes(encoder_checkpoint) -> bytes:
    return torch_bytes(encoder_checkpoint)


def serve_upstream(server, data: bytes, digest: str | None = None, truncate_to: int | None = None):
    """Serve the CT-SSL file at its upstream path; pin the registry to ``digest``."""
    ws = get_spec(NAME).weight(TAG)
    server.add_file(url_path(ws.url), data, truncate_to=truncate_to)
    return override_weights(NAME, TAG, upstream_digest=digest or f"gitsha1:{git_blob_sha1(data)}")


def assert_encoder_loaded(model, checkpoint):
    sd = model.state_dict()
    for k, v in checkpoint.items():
        assert torch.equal(sd[k], v), k


def no_partial_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and (p.suffix == ".part" or ".part" in p.name)]


def test_upstream_registry_pins_the_published_blob_digests():
    import json

    pins = json.loads((golden.GOLDEN_DIR.parent / "qtunet-upstream-weights.json").read_text())
    size = {"Tiny": "t", "Small": "s", "Base": "b"}
    tag = {
        "CT-SSL": "ct-ssl",
        "BraTS-SSL": "brats-ssl",
        "MSD-SSL-Task02": "msd-task02-ssl",
        "MSD-SSL-Task04": "msd-task04-ssl",
        "MSD-SSL-Task05": "msd-task05-ssl",
    }
    for f in pins["files"]:
        _, sz, fname = f["path"].split("/")
        ws = get_spec(f"qtunet-{size[sz]}").weight(tag[fname.removesuffix("_pretrained.pt")])
        assert ws.upstream_digest == f"gitsha1:{f['git_blob_sha1']}"
        assert ws.url == pins["raw_url_pattern"].format(commit=pins["commit"], path=f["path"])


def test_first_download_converts_and_caches_then_hits_cache(hub_env, encoder_checkpoint, encoder_bytes):
    with serve_upstream(hub_env, encoder_bytes) as ws:
        model = zoo.create(NAME, pretrained=True)
        assert_encoder_loaded(model, encoder_checkpoint)
        target = converted_path(get_spec(NAME), ws)
        assert target.exists() and target.with_suffix(".json").exists()
        assert set(load_file(str(target))) == set(encoder_checkpoint)
        again = zoo.create(f"{NAME}.{TAG}", pretrained=True)
        assert_encoder_loaded(again, encoder_checkpoint)
    assert hub_env.hits(url_path(ws.url)) == 1
    assert not no_partial_files(Path(os.environ["MEDZOO_CACHE"]))


def test_cache_hit_works_offline(hub_env, monkeypatch, encoder_checkpoint, encoder_bytes):
    with serve_upstream(hub_env, encoder_bytes):
        zoo.create(NAME, pretrained=True)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        model = zoo.create(NAME, pretrained=True)
    assert_encoder_loaded(model, encoder_checkpoint)


def test_offline_without_cache_is_a_clear_error(hub_env, monkeypatch, encoder_bytes):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with serve_upstream(hub_env, encoder_bytes), pytest.raises(WeightsUnavailableError, match="offline"):
        zoo.create(NAME, pretrained=True)
    assert sum(hub_env.routes.hits.values()) == 0


def test_hub_404_falls_back_to_upstream(hub_env, encoder_checkpoint, encoder_bytes):
    with (
        serve_upstream(hub_env, encoder_bytes) as ws,
        override_weights(NAME, TAG, hf_hub_id="medzoo/qtunet-t.ct-ssl", upstream_digest=ws.upstream_digest),
    ):
        model = zoo.create(NAME, pretrained=True)
    assert hub_env.hits("/medzoo/qtunet-t.ct-ssl/resolve/main/model.safetensors") >= 1
    assert hub_env.hits(url_path(ws.url)) == 1
    assert_encoder_loaded(model, encoder_checkpoint)


def _publish_on_hub(server, tmp_path, checkpoint) -> tuple[bytes, str]:
    path = tmp_path / "model.safetensors"
    save_file(checkpoint, str(path))
    data = path.read_bytes()
    server.add_hub_file("medzoo/qtunet-t.ct-ssl", "model.safetensors", data, revision="v1")
    return data, hashlib.sha256(data).hexdigest()


def test_hub_download_pinned_revision_and_offline_cache_hit(
    hub_env, tmp_path, monkeypatch, encoder_checkpoint
):
    data, sha = _publish_on_hub(hub_env, tmp_path, encoder_checkpoint)
    with override_weights(
        NAME, TAG, hf_hub_id="medzoo/qtunet-t.ct-ssl", hf_revision="v1", sha256=sha, url=None
    ):
        model = zoo.create(NAME, pretrained=True)
        assert_encoder_loaded(model, encoder_checkpoint)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        again = zoo.create(NAME, pretrained=True)
    assert_encoder_loaded(again, encoder_checkpoint)
    assert hub_env.hits("/medzoo/qtunet-t.ct-ssl/resolve/v1/model.safetensors") >= 1


def test_hub_file_with_wrong_digest_is_removed_and_refused(hub_env, tmp_path, encoder_checkpoint):
    _publish_on_hub(hub_env, tmp_path, encoder_checkpoint)
    with (
        override_weights(
            NAME, TAG, hf_hub_id="medzoo/qtunet-t.ct-ssl", hf_revision="v1", sha256="0" * 64, url=None
        ),
        pytest.raises(DigestMismatchError, match="does not match"),
    ):
        zoo.create(NAME, pretrained=True)
    blobs = list((Path(os.environ["HF_HUB_CACHE"])).rglob("blobs/*"))
    assert not [b for b in blobs if b.is_file() and not b.name.endswith(".lock")]


def test_upstream_digest_mismatch_leaves_nothing_in_cache(hub_env, encoder_bytes):
    with serve_upstream(hub_env, encoder_bytes, digest="gitsha1:" + "1" * 40) as ws:
        with pytest.raises(DigestMismatchError, match="gitsha1"):
            zoo.create(NAME, pretrained=True)
        target = converted_path(get_spec(NAME), ws)
    assert not target.exists()
    assert not no_partial_files(Path(os.environ["MEDZOO_CACHE"]))


def test_truncated_download_is_an_error_and_leaves_no_partial_file(hub_env, encoder_bytes):
    with serve_upstream(hub_env, encoder_bytes, truncate_to=len(encoder_bytes) // 2) as ws:
        with pytest.raises(WeightsUnavailableError, match="truncated"):
            zoo.create(NAME, pretrained=True)
        assert not converted_path(get_spec(NAME), ws).exists()
    assert not no_partial_files(Path(os.environ["MEDZOO_CACHE"]))


def test_corrupted_cache_file_is_redownloaded(hub_env, encoder_checkpoint, encoder_bytes):
    with serve_upstream(hub_env, encoder_bytes) as ws:
        zoo.create(NAME, pretrained=True)
        target = converted_path(get_spec(NAME), ws)
        raw = bytearray(target.read_bytes())
        raw[-100] ^= 0xFF
        target.write_bytes(bytes(raw))
        model = zoo.create(NAME, pretrained=True)
        assert file_digest(target) != hashlib.sha256(bytes(raw)).hexdigest()
    assert hub_env.hits(url_path(ws.url)) == 2
    assert_encoder_loaded(model, encoder_checkpoint)


def _fetch_in_subprocess(env: dict[str, str], digest: str, queue) -> None:
    os.environ.update(env)
    from zoo._registry import get_spec, override_weights
    from zoo.hub import fetch_weights, file_digest

    with override_weights(NAME, TAG, upstream_digest=digest) as ws:
        path = fetch_weights(get_spec(NAME), ws, progress=False)
    queue.put((str(path), file_digest(path)))


def test_concurrent_downloads_share_one_valid_cache_file(hub_env, encoder_bytes):
    env = {
        k: os.environ[k] for k in ("HF_ENDPOINT", "MEDZOO_UPSTREAM_ENDPOINT", "MEDZOO_CACHE", "HF_HUB_CACHE")
    }
    with serve_upstream(hub_env, encoder_bytes) as ws:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [
            ctx.Process(target=_fetch_in_subprocess, args=(env, ws.upstream_digest, queue)) for _ in range(2)
        ]
        for p in procs:
            p.start()
        results = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    assert results[0] == results[1]
    path, digest = results[0]
    assert file_digest(path) == digest
    assert hub_env.hits(url_path(ws.url)) == 1


# ------------------------------------------------------------------ strict loading


def test_checkpoint_missing_an_encoder_key_is_an_error_naming_it(tmp_path, encoder_checkpoint):
    sd = dict(encoder_checkpoint)
    del sd["encoder.layers.1.blocks.0.attn.qkv.weight"]
    path = tmp_path / "CT-SSL_pretrained.pt"
    torch.save(sd, path)
    with pytest.raises(
        zoo.CheckpointMismatchError, match=r"encoder\.layers\.1\.blocks\.0\.attn\.qkv\.weight"
    ):
        zoo.create(NAME, checkpoint_path=path)


def test_checkpoint_with_an_unexpected_key_is_an_error_naming_it(tmp_path, encoder_checkpoint):
    sd = dict(encoder_checkpoint)
    sd["encoder.layers.9.extra.weight"] = torch.zeros(3)
    path = tmp_path / "CT-SSL_pretrained.pt"
    torch.save(sd, path)
    with pytest.raises((zoo.CheckpointMismatchError, zoo.CheckpointFormatError), match=r"layers\.9\.extra"):
        zoo.create(NAME, checkpoint_path=path)


def test_authors_encoder_file_loads_and_reports_decoder_as_new(tmp_path, encoder_checkpoint, caplog):
    path = tmp_path / "CT-SSL_pretrained.pt"
    torch.save(encoder_checkpoint, path)
    with caplog.at_level("INFO", logger="zoo"):
        model = zoo.create(NAME, checkpoint_path=path)
    assert_encoder_loaded(model, encoder_checkpoint)
    assert "newly initialised" in caplog.text and "layers_up.0.expand.weight" in caplog.text


@pytest.mark.parametrize(
    ("name", "golden_id", "prefix"),
    [("qtunet-t", "qtunet-t-brats", "model."), ("vtunet-t", "vtunet-t-brats", "swin_unet.")],
)
def test_lightning_full_checkpoint_loads_strictly(tmp_path, name, golden_id, prefix):
    cfg = golden.load(golden_id)["config"]
    model = zoo.create(
        name, in_chans=cfg["in_chans"], num_classes=cfg["num_classes"], img_size=tuple(cfg["img_size"])
    )
    ref = golden.reference_state_dict_for(golden_id, model)
    ckpt = {
        "epoch": 3,
        "global_step": 10,
        "state_dict": {prefix + k: v for k, v in ref.items()},
        "optimizer_states": [],
        "lr_schedulers": [],
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    loaded = zoo.create(
        name,
        checkpoint_path=path,
        in_chans=cfg["in_chans"],
        num_classes=cfg["num_classes"],
        img_size=tuple(cfg["img_size"]),
    )
    sd = loaded.state_dict()
    assert set(sd) == set(ref)
    assert all(torch.equal(sd[k], v) for k, v in ref.items())


def test_new_num_classes_reinitialises_only_the_head(tmp_path, caplog):
    cfg = golden.load("vtunet-t-brats")["config"]
    base = zoo.create("vtunet-t", in_chans=4, num_classes=cfg["num_classes"], img_size=128)
    ref = golden.reference_state_dict_for("vtunet-t-brats", base)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"swin_unet." + k: v for k, v in ref.items()}}, path)
    with caplog.at_level("INFO", logger="zoo"):
        model = zoo.create("vtunet-t", checkpoint_path=path, in_chans=4, num_classes=5, img_size=128)
    sd = model.state_dict()
    head = [k for k in sd if k.startswith("output.")]
    assert head and all(sd[k].shape[0] == 5 for k in head)
    assert all(torch.equal(sd[k], v) for k, v in ref.items() if not k.startswith("output."))
    assert "output.weight" in caplog.text


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": Path("x")}, path)  # any non-tensor class needs code to unpickle
    with pytest.raises(zoo.CheckpointFormatError, match="weights_only"):
        zoo.create(NAME, checkpoint_path=path)


def test_bad_safetensors_file_is_reported(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(zoo.CheckpointFormatError, match="safetensors"):
        zoo.create(NAME, checkpoint_path=path)


def test_pctnet_vf110k_hub_404_then_pymic_file_from_upstream_digest_shown(hub_env, caplog):
    """Apache-2.0 weights: our Hub repo is tried first; upstream publishes no digest, so we show it."""
    spec, tag = zoo.resolve("pctnet-vf110k")
    model = zoo.create("pctnet")
    ref = golden.reference_state_dict_for("pctnet-demo", model)
    # The released pretext model has the 5-class Volume Fusion head; the golden run used 2 classes.
    own = model.state_dict()
    ref = {
        k: (golden.deterministic_value(k, list(own[k].shape)) if v.shape != own[k].shape else v)
        for k, v in ref.items()
    }
    container = {"iteration": 100000, "valid_pred": 0.5, "model_state_dict": ref, "optimizer_state_dict": {}}
    data = torch_bytes(container)
    ws = spec.weight(tag)
    hub_env.add_file(url_path(ws.url), data)
    with caplog.at_level("WARNING", logger="zoo.hub"):
        loaded = zoo.create("pctnet-vf110k", pretrained=True)
    assert hub_env.hits_any("/medzoo/pctnet-vf110k/") >= 1
    assert hashlib.sha256(data).hexdigest() in caplog.text
    sd = loaded.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ref.items())
