"""Weights resolution against loopback servers: the real huggingface_hub client over real HTTP.

Upstream test checkpoints are written in the authors' exact formats (QT-UNet's flat
encoder dict, Lightning's ``state_dict`` with ``model.``/``swin_unet.`` prefixes), filled
with the golden deterministic weights.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from tests import golden
from tests.servers import SilentServer, torch_bytes, url_path
from zoo._registry import get_spec, override_weights
from zoo.cli import main as zoo_main
from zoo.hub import (
    DigestMismatchError,
    DownloadError,
    HubError,
    WeightsUnavailableError,
    converted_path,
    file_digest,
)

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
    """Temporary files and folders of unfinished downloads or conversions under ``root``."""
    return [p for p in root.rglob("*") if ".part" in p.name]


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
    # The Hub is asked once, for config.json; a repository it does not have is not asked for weights.
    assert hub_env.hits("/medzoo/qtunet-t.ct-ssl/resolve/main/config.json") == 1
    assert hub_env.hits("/medzoo/qtunet-t.ct-ssl/resolve/main/model.safetensors") == 0
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
    # Online: config.json at the pinned revision (the repository has none: the 404 names the commit),
    # then the weights at that commit. Offline: no request at all.
    commit = hub_env.routes.commits[("medzoo/qtunet-t.ct-ssl", "v1")]
    assert hub_env.hits("/medzoo/qtunet-t.ct-ssl/resolve/v1/config.json") == 1
    assert hub_env.hits(f"/medzoo/qtunet-t.ct-ssl/resolve/{commit}/model.safetensors") >= 1
    assert hub_env.hits("/medzoo/qtunet-t.ct-ssl/resolve/v1/model.safetensors") == 0


def test_each_load_of_a_registry_tag_on_the_hub_is_one_counted_request(hub_env, tmp_path, encoder_checkpoint):
    data, sha = _publish_on_hub(hub_env, tmp_path, encoder_checkpoint)
    hub_env.add_hub_file(HUB_REPO, "config.json", b'{"library_name": "medzoo"}', revision="v1")
    commit = hub_env.routes.commits[(HUB_REPO, "v1")]
    weights = f"/{HUB_REPO}/resolve/{commit}/model.safetensors"

    def counted():  # the Hub counts every request (GET or HEAD) for config.json, the default query file
        return [(m, p) for m, p, _ in hub_env.routes.requests if p.endswith("/config.json")]

    with override_weights(NAME, TAG, hf_hub_id=HUB_REPO, hf_revision="v1", sha256=sha, url=None):
        zoo.create(NAME, pretrained=True)
        assert counted() == [("GET", f"/{HUB_REPO}/resolve/v1/config.json")]
        assert hub_env.routes.requests[0][1].endswith("/config.json")  # asked first
        assert [m for m, p, _ in hub_env.routes.requests if p == weights].count("GET") == 1
        asked_for_weights = hub_env.hits(weights)
        model = zoo.create(NAME, pretrained=True)
        assert zoo_main(["download", f"{NAME}.{TAG}", "-q"]) == 0
    assert counted() == [("GET", f"/{HUB_REPO}/resolve/v1/config.json")] * 3
    assert hub_env.hits(weights) == asked_for_weights  # the commit's file, cached: not asked again
    assert all(f"medzoo/{zoo.__version__}" in ua for _, _, ua in hub_env.routes.requests)
    assert_encoder_loaded(model, encoder_checkpoint)


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


def _fetch_in_child(digest: str, queue) -> None:
    # A forked child: one thread, so torch never enters the parent's OpenMP pool.
    torch.set_num_threads(1)
    from zoo.hub import fetch_weights, file_digest

    with override_weights(NAME, TAG, upstream_digest=digest) as ws:
        path = fetch_weights(get_spec(NAME), ws, progress=False)
    record = path.with_suffix(".json")
    queue.put((str(path), file_digest(path), record.is_file()))


def test_concurrent_readers_and_writers_share_one_download(hub_env, encoder_bytes):
    """Three processes at once: one downloads under the lock, the others wait and read its file."""
    with serve_upstream(hub_env, encoder_bytes) as ws:
        ctx = mp.get_context("fork")  # the loopback server lives in this process
        queue = ctx.Queue()
        procs = [ctx.Process(target=_fetch_in_child, args=(ws.upstream_digest, queue)) for _ in range(3)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    assert len(set(results)) == 1
    path, digest, has_record = results[0]
    assert has_record and file_digest(path) == digest
    assert hub_env.hits(url_path(ws.url)) == 1
    assert not no_partial_files(Path(os.environ["MEDZOO_CACHE"]))


def test_cache_file_is_renamed_into_place_only_after_its_record(hub_env, encoder_bytes, monkeypatch):
    """The race of the probe: a reader arriving between the rename and the sidecar write."""
    import zoo.hub

    seen = []
    real_replace = os.replace

    def spying_replace(src, dst):
        dst = Path(dst)
        if dst.name == f"{NAME}.{TAG}.safetensors":
            seen.append(dst.with_suffix(".json").is_file())
        return real_replace(src, dst)

    monkeypatch.setattr(zoo.hub.os, "replace", spying_replace)
    with serve_upstream(hub_env, encoder_bytes):
        zoo.create(NAME, pretrained=True)
    assert seen == [True]


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


# ------------------------------------------------------- bounded, clean transfers (issue 14)

HUB_REPO = "medzoo/qtunet-t.ct-ssl"


@pytest.fixture(autouse=True)
def _fresh_unpinned_warnings(monkeypatch):
    # The unpinned-digest warning is once per process; each test starts from none shown.
    import zoo.hub

    monkeypatch.setattr(zoo.hub, "_WARNED", set())


def _cache_root() -> Path:
    return Path(os.environ["MEDZOO_CACHE"])


def test_server_announcing_50_gib_is_refused_before_a_byte_is_kept(hub_env):
    ws = get_spec(NAME).weight(TAG)
    hub_env.add_stream(url_path(ws.url), announce=50 << 30, count=1 << 30, byte=b"\0" * 65536)
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"announces 53,687,091,200 bytes, over the [\d,]+-byte bound"):
        zoo.create(NAME, pretrained=True)
    assert time.monotonic() - start < 20
    assert not converted_path(get_spec(NAME), ws).exists()
    assert not no_partial_files(_cache_root())


def test_stream_past_the_size_bound_is_aborted(hub_env, monkeypatch):
    """No Content-Length and zeros forever: cut at MEDZOO_DOWNLOAD_MAX_BYTES, nothing kept."""
    monkeypatch.setenv("MEDZOO_DOWNLOAD_MAX_BYTES", str(2 << 20))
    ws = get_spec(NAME).weight(TAG)
    hub_env.add_stream(url_path(ws.url), announce=None, count=1 << 20, byte=b"\0" * 65536)
    with pytest.raises(DownloadError, match=r"more than 2,097,152 bytes received"):
        zoo.create(NAME, pretrained=True)
    assert not no_partial_files(_cache_root())


def test_dripping_server_is_aborted_at_the_deadline(hub_env, monkeypatch):
    """1 byte every 0.2 s never stalls, yet would take forever: the overall deadline ends it."""
    monkeypatch.setenv("MEDZOO_DOWNLOAD_DEADLINE", "2")
    monkeypatch.setenv("MEDZOO_DOWNLOAD_STALL_TIMEOUT", "5")
    ws = get_spec(NAME).weight(TAG)
    hub_env.add_stream(url_path(ws.url), announce=1000, count=1000, byte=b"x", delay=0.2)
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"not complete after 2 s \(\d+ bytes received\)"):
        zoo.create(NAME, pretrained=True)
    assert 1.5 < time.monotonic() - start < 10
    assert not no_partial_files(_cache_root())


def test_stalled_server_is_aborted_at_the_stall_timeout(hub_env, monkeypatch):
    monkeypatch.setenv("MEDZOO_DOWNLOAD_STALL_TIMEOUT", "1")
    ws = get_spec(NAME).weight(TAG)
    hub_env.add_stream(url_path(ws.url), announce=1000, count=2, byte=b"x", delay=30)
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"no byte from the server for 1 s"):
        zoo.create(NAME, pretrained=True)
    assert time.monotonic() - start < 10
    assert not no_partial_files(_cache_root())


def test_zoo_download_against_a_hanging_upstream_is_one_line_naming_the_url(hub_env, monkeypatch, capsys):
    monkeypatch.setenv("MEDZOO_DOWNLOAD_STALL_TIMEOUT", "1")
    with SilentServer() as silent:
        monkeypatch.setenv("MEDZOO_UPSTREAM_ENDPOINT", silent.url)
        code = zoo_main(["download", f"{NAME}.{TAG}", "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("zoo download: error:")
    assert silent.url in err and "CT-SSL_pretrained.pt" in err and "no byte from the server for 1 s" in err
    assert "Traceback" not in err


def test_upstream_answering_with_an_html_page_is_named_a_web_page(hub_env):
    ws = get_spec(NAME).weight(TAG)
    page = "<!DOCTYPE html><html><head><title>Sign in to GitHub</title></head>" + "<p>x</p>" * 100
    hub_env.add_page(url_path(ws.url), page)
    with pytest.raises(DownloadError) as info:
        zoo.create(NAME, pretrained=True)
    msg = str(info.value)
    assert (
        "the server returned a web page, not a checkpoint: <!DOCTYPE html><html><head><title>Sign in" in msg
    )
    assert msg.endswith(page[:200]) and "weights_only=False" not in msg
    assert not no_partial_files(_cache_root())


def _download_in_child(digest: str) -> None:
    torch.set_num_threads(1)
    from zoo.hub import fetch_weights

    with override_weights(NAME, TAG, upstream_digest=digest) as ws:
        fetch_weights(get_spec(NAME), ws, progress=False)


def test_part_file_of_a_killed_process_is_removed_next_time_under_the_lock(
    hub_env, encoder_checkpoint, encoder_bytes
):
    ws = get_spec(NAME).weight(TAG)
    path = url_path(ws.url)
    hub_env.add_stream(path, announce=len(encoder_bytes), count=len(encoder_bytes), byte=b"x", delay=0.05)
    digest = f"gitsha1:{git_blob_sha1(encoder_bytes)}"
    child = mp.get_context("fork").Process(target=_download_in_child, args=(digest,))
    child.start()
    deadline = time.monotonic() + 60
    while not no_partial_files(_cache_root()) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=30)
    left = no_partial_files(_cache_root())
    assert left, "the killed download left no .part file: the probe did not reproduce"
    del hub_env.routes.streams[path]
    with serve_upstream(hub_env, encoder_bytes):
        model = zoo.create(NAME, pretrained=True)
    assert_encoder_loaded(model, encoder_checkpoint)
    assert not no_partial_files(_cache_root())


def test_swapped_cache_file_with_recomputed_record_is_rejected_and_replaced(
    hub_env, tmp_path, encoder_checkpoint, encoder_bytes
):
    with serve_upstream(hub_env, encoder_bytes) as ws:
        zoo.create(NAME, pretrained=True)
        target = converted_path(get_spec(NAME), ws)
        swapped = {k: torch.zeros_like(v) for k, v in encoder_checkpoint.items()}
        save_file(swapped, str(target))
        record = json.loads(target.with_suffix(".json").read_text())
        record["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
        target.with_suffix(".json").write_text(json.dumps(record))
        model = zoo.create(NAME, pretrained=True)
    assert_encoder_loaded(model, encoder_checkpoint)
    assert hub_env.hits(url_path(ws.url)) == 2


def test_cache_converted_from_another_source_than_the_pinned_one_is_rejected(hub_env, encoder_bytes):
    """A cache entry consistent in itself, but made from a file the registry no longer pins."""
    from safetensors import safe_open

    with serve_upstream(hub_env, encoder_bytes) as ws:
        zoo.create(NAME, pretrained=True)
        target = converted_path(get_spec(NAME), ws)
        old_pin = "gitsha1:" + "2" * 40
        with safe_open(str(target), framework="pt") as f:
            stamp = dict(f.metadata(), source_digest=old_pin)
        save_file(load_file(str(target)), str(target), metadata=stamp)
        record = json.loads(target.with_suffix(".json").read_text())
        record.update(source_digest=old_pin, sha256=hashlib.sha256(target.read_bytes()).hexdigest())
        target.with_suffix(".json").write_text(json.dumps(record))
        zoo.create(NAME, pretrained=True)
    assert hub_env.hits(url_path(ws.url)) == 2
    assert json.loads(target.with_suffix(".json").read_text())["source_digest"] == ws.upstream_digest


def test_hub_tag_without_pinned_digest_warns_once_with_its_sha256_and_info_says_unpinned(
    hub_env, tmp_path, encoder_checkpoint, caplog, capsys
):
    """A Hub repo serving valid but different weights for an unpinned tag is no longer silent."""
    data, sha = _publish_on_hub(hub_env, tmp_path, encoder_checkpoint)
    with override_weights(NAME, TAG, hf_hub_id=HUB_REPO, hf_revision="v1", sha256=None, url=None):
        with caplog.at_level("WARNING", logger="zoo.hub"):
            zoo.create(NAME, pretrained=True)
            zoo.create(NAME, pretrained=True)
        assert zoo_main(["info", NAME]) == 0
    warnings = [r for r in caplog.records if sha in r.getMessage()]
    assert len(warnings) == 1 and "unpinned" in warnings[0].getMessage()
    out = capsys.readouterr().out
    assert f"hub: {HUB_REPO}/model.safetensors @ v1 sha256 unpinned" in out


def test_zoo_info_marks_an_unpinned_upstream_digest(capsys):
    assert zoo_main(["info", "pctnet"]) == 0
    assert "upstream digest: unpinned" in capsys.readouterr().out


def test_hub_endpoint_that_never_answers_is_unreachable_within_seconds(hub_env, monkeypatch):
    monkeypatch.setenv("MEDZOO_DOWNLOAD_STALL_TIMEOUT", "2")
    with SilentServer() as silent, override_weights(NAME, TAG, hf_hub_id=HUB_REPO, url=None):
        monkeypatch.setenv("HF_ENDPOINT", silent.url)
        start = time.monotonic()
        with pytest.raises(HubError) as info:
            zoo.create(NAME, pretrained=True)
    assert time.monotonic() - start < 30
    assert info.value.kind == "unreachable"
    msg = str(info.value)
    assert HUB_REPO in msg and silent.url in msg and "timed out after 2 s" in msg and "HF_ENDPOINT" in msg


def test_hub_offline_and_not_cached_is_its_own_message(hub_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with override_weights(NAME, TAG, hf_hub_id=HUB_REPO, url=None), pytest.raises(HubError) as info:
        zoo.create(NAME, pretrained=True)
    assert info.value.kind == "offline"
    assert HUB_REPO in str(info.value) and f"zoo download {NAME}.{TAG}" in str(info.value)
    assert sum(hub_env.routes.hits.values()) == 0


def test_hub_404_is_its_own_message(hub_env):
    with override_weights(NAME, TAG, hf_hub_id=HUB_REPO, url=None), pytest.raises(HubError) as info:
        zoo.create(NAME, pretrained=True)
    assert info.value.kind == "not-found"
    assert HUB_REPO in str(info.value) and "404" in str(info.value)


def test_hub_unauthorised_is_its_own_message(hub_env, tmp_path, encoder_checkpoint):
    _publish_on_hub(hub_env, tmp_path, encoder_checkpoint)
    hub_env.deny_hub_repo(HUB_REPO, 401)
    with (
        override_weights(NAME, TAG, hf_hub_id=HUB_REPO, hf_revision="v1", url=None),
        pytest.raises(HubError) as info,
    ):
        zoo.create(NAME, pretrained=True)
    assert info.value.kind == "unauthorised"
    assert HUB_REPO in str(info.value) and "HF_TOKEN" in str(info.value) and "401" in str(info.value)


def test_hub_file_over_the_size_bound_is_refused(hub_env, tmp_path, monkeypatch, encoder_checkpoint):
    data, sha = _publish_on_hub(hub_env, tmp_path, encoder_checkpoint)
    monkeypatch.setenv("MEDZOO_DOWNLOAD_MAX_BYTES", str(len(data) - 1))
    with (
        override_weights(NAME, TAG, hf_hub_id=HUB_REPO, hf_revision="v1", sha256=sha, url=None),
        pytest.raises(HubError) as info,
    ):
        zoo.create(NAME, pretrained=True)
    assert info.value.kind == "too-large" and f"announces {len(data):,} bytes" in str(info.value)


def test_hub_file_larger_than_its_recorded_size_is_refused(hub_env, tmp_path, encoder_checkpoint):
    data, sha = _publish_on_hub(hub_env, tmp_path, encoder_checkpoint)
    with (
        override_weights(NAME, TAG, hf_hub_id=HUB_REPO, hf_revision="v1", sha256=sha, size=1000, url=None),
        pytest.raises(HubError, match=rf"announces {len(data):,} bytes, over the 1,000-byte bound"),
    ):
        zoo.create(NAME, pretrained=True)


def test_hub_digest_mismatch_names_the_repo_and_what_to_do(hub_env, tmp_path, encoder_checkpoint):
    _publish_on_hub(hub_env, tmp_path, encoder_checkpoint)
    with (
        override_weights(NAME, TAG, hf_hub_id=HUB_REPO, hf_revision="v1", sha256="0" * 64, url=None),
        pytest.raises(DigestMismatchError) as info,
    ):
        zoo.create(NAME, pretrained=True)
    assert HUB_REPO in str(info.value) and "report it" in str(info.value)


def test_print_digest_prints_the_registry_line_of_the_downloaded_file(hub_env, monkeypatch, capsys):
    """An unpinned upstream file: the line carries the sha256 and size of the bytes the server sent."""
    data = torch_bytes({k: torch.full((2,), float(i)) for i, k in enumerate(["a", "b"])})
    ws = get_spec(NAME).weight(TAG)
    hub_env.add_file(url_path(ws.url), data)
    with override_weights(NAME, TAG, upstream_digest=None):
        code = zoo_main(["download", f"{NAME}.{TAG}", "-q", "--print-digest"])
    out, err = capsys.readouterr()
    # The file is not a QT-UNet encoder: conversion fails, cleanly and in one line.
    assert code == 1 and err.count("\n") == 1 and out == ""
    encoder = {k: v for k, v in zoo.create(NAME).state_dict().items() if k.startswith("encoder.")}
    data = torch_bytes(encoder)
    hub_env.add_file(url_path(ws.url), data)
    with override_weights(NAME, TAG, upstream_digest=None):
        code = zoo_main(["download", f"{NAME}.{TAG}", "-q", "--print-digest"])
    out = capsys.readouterr().out
    assert code == 0
    line = out.strip()
    assert line.startswith(
        f'upstream_digest="sha256:{hashlib.sha256(data).hexdigest()}", upstream_size={len(data)},'
    )
    assert line.endswith(f"# {NAME}.{TAG}")


def _convert_cmd(src: Path, out: Path) -> list[str]:
    code = f"import sys; from zoo.cli import main; sys.exit(main(['convert', {str(src)!r}, '--model', "
    code += f"{NAME!r}, '-o', {str(out)!r}]))"
    return [sys.executable, "-c", code]


def test_convert_writes_through_a_unique_temporary_name(tmp_path, encoder_checkpoint):
    """Another writer's temporary file (the old fixed name) is neither clobbered nor renamed."""
    src = tmp_path / "CT-SSL_pretrained.pt"
    torch.save(encoder_checkpoint, src)
    out = tmp_path / "out" / "model.safetensors"
    out.parent.mkdir()
    foreign = out.with_name(out.name + ".part")
    foreign.write_bytes(b"another writer's bytes")
    assert zoo_main(["convert", str(src), "--model", NAME, "-o", str(out)]) == 0
    assert foreign.read_bytes() == b"another writer's bytes"
    assert set(load_file(str(out))) == {
        k for k in encoder_checkpoint if not k.endswith("relative_position_index")
    }
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.safetensors", "model.safetensors.part"]


@pytest.mark.slow
def test_two_concurrent_converts_to_one_output_both_succeed(tmp_path, encoder_checkpoint):
    src = tmp_path / "CT-SSL_pretrained.pt"
    torch.save(encoder_checkpoint, src)
    out = tmp_path / "model.safetensors"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen(_convert_cmd(src, out), env=env, stderr=subprocess.PIPE) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert set(load_file(str(out))) == {
        k for k in encoder_checkpoint if not k.endswith("relative_position_index")
    }
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]


def test_redirects_drop_the_token_on_another_host_and_their_bodies_are_not_read(hub_env, monkeypatch):
    """The token goes to HF_ENDPOINT only: a redirect elsewhere drops it (a same-host one keeps it)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from zoo.hub_repo import request_config

    seen: dict[str, str | None] = {}
    commit = "c" * 40

    class Elsewhere(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            seen[self.path] = self.headers.get("Authorization")
            if self.path.startswith("/org/moved/"):  # the Hub: a renamed repository, then another host
                self.send_response(307)
                self.send_header("Location", "/org/renamed/resolve/main/config.json")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path.startswith("/org/dripping/"):  # a redirect whose body never ends
                self.send_response(302)
                self.send_header("Location", "/org/renamed/resolve/main/config.json")
                self.end_headers()
                for _ in range(3000):
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:  # the client closed the connection: what it should do
                        return
                    time.sleep(0.1)
                return
            if self.path.startswith("/org/renamed/"):
                self.send_response(302)
                self.send_header("Location", f"{other_url}/cdn/config.json")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b'{"model_name": "qtunet-t"}'
            self.send_response(200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere) for _ in range(2)]
    hub_url, other_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub_url)
        monkeypatch.setenv("HF_TOKEN", "hf_not_for_others")
        cfg = request_config("org/moved", None, refetch="")
        start = time.monotonic()
        dripped = request_config("org/dripping", None, refetch="")
        followed_in = time.monotonic() - start
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
    assert cfg.commit == commit and cfg.path.read_bytes() == b'{"model_name": "qtunet-t"}'
    assert seen["/org/moved/resolve/main/config.json"] == "Bearer hf_not_for_others"
    assert seen["/org/renamed/resolve/main/config.json"] == "Bearer hf_not_for_others"  # same host
    assert seen["/cdn/config.json"] is None  # another host
    # A redirect is followed without reading its body (urllib would read it whole, bounded by nothing).
    assert dripped.commit == commit and followed_in < 10
