"""The MIS-FM weights on Google Drive, through gdown, against the loopback Drive imitation.

The imitation (``tests/servers.py``) answers what gdown asks: the "cannot scan for viruses"
page with its download form, the confirmed download, and a shared folder's listing. gdown
reaches it through ``MEDZOO_UPSTREAM_ENDPOINT``, like every other upstream. Checkpoints are
PyMIC files (``model_state_dict`` + optimizer state) of reduced-width models, except the
2023 ``pctnet-vf110k`` file, which is full size.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.parse
from pathlib import Path

import pytest
import torch

import zoo
from tests import golden
from tests.servers import torch_bytes
from zoo._registry import get_spec, override_weights
from zoo.convert import CheckpointFormatError
from zoo.hub import DigestMismatchError, DownloadError, converted_path

FOLDER_ID = "13OQh2eM0QFnwBRwBcKCqhKa46CnDojrD"  # the 2024/25 MIS-FM folder
SMALL = {
    "pctnet": dict(feature_chns=(4, 8, 16, 32, 64), num_heads=(1, 2, 4)),
    "fmunet": dict(feature_chns=(4, 8, 16, 32, 64)),
}


@pytest.fixture(autouse=True)
def _fresh_unpinned_warnings(monkeypatch):
    import zoo.hub

    monkeypatch.setattr(zoo.hub, "_WARNED", set())


def _partial(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".part" in p.name]


def _pymic(state_dict: dict[str, torch.Tensor], with_optimizer: bool = True) -> bytes:
    """A PyMIC checkpoint as the MIS-FM authors save it, with an optimizer state beside the weights."""
    moments = {
        k: torch.zeros_like(v) for k, v in state_dict.items() if v.is_floating_point() and with_optimizer
    }
    return torch_bytes(
        {
            "iteration": 100000,
            "valid_pred": 0.5,
            "model_state_dict": state_dict,
            "optimizer_state_dict": {"state": {0: {"exp_avg": moments}}, "param_groups": []},
        }
    )


def _small_weights(name: str, seed: int) -> dict[str, torch.Tensor]:
    """Weights of the reduced-width model that no fresh initialisation could reproduce."""
    model = zoo.create(name, num_classes=5, **SMALL[name])
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }


def _drive_id(seed: str) -> str:
    return ("1" + hashlib.sha256(seed.encode()).hexdigest())[:33]


def test_vf110k_full_size_file_past_the_virus_scan_page_loads_with_its_digest_shown(hub_env, caplog):
    """Apache-2.0 weights: our Hub repo is tried first (404), then the 2023 Drive file."""
    spec, tag = zoo.resolve("pctnet-vf110k")
    model = zoo.create("pctnet")
    ref = golden.reference_state_dict_for("pctnet-demo", model)
    # The released pretext model has the 5-class Volume Fusion head; the golden run used 2 classes.
    own = model.state_dict()
    ref = {
        k: (golden.deterministic_value(k, list(own[k].shape)) if v.shape != own[k].shape else v)
        for k, v in ref.items()
    }
    data = _pymic(ref, with_optimizer=False)  # full size: the optimizer moments would only add time
    ws = spec.weight(tag)
    file_id = urllib.parse.parse_qs(urllib.parse.urlsplit(ws.url).query)["id"][0]
    hub_env.add_drive_file(file_id, "pctnet_pretrain.pt", data, confirm=True)
    with caplog.at_level("WARNING", logger="zoo.hub"):
        loaded = zoo.create("pctnet-vf110k", pretrained=True)
    assert hub_env.hits_any("/medzoo/pctnet-vf110k/") >= 1
    assert hub_env.hits("/uc") == 1 and hub_env.hits("/download") == 1  # the page, then the form's target
    sha = hashlib.sha256(data).hexdigest()
    assert sha in caplog.text and "unpinned" in caplog.text
    sd = loaded.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ref.items())
    record = json.loads(converted_path(spec, ws).with_suffix(".json").read_text())
    assert record["source_sha256"] == sha and record["source_size"] == len(data)
    assert not _partial(Path(os.environ["MEDZOO_CACHE"]))


@pytest.mark.parametrize(
    ("alias", "name", "file_name"),
    [
        ("pctnet-vf10k", "pctnet", "pctnet_ct10k_volf.pt"),
        # The README spells it abk1k, the cfg abd1k: the registry accepts either name.
        ("fmunet-vf1k", "fmunet", "fmunet_abk1k_volf.pt"),
    ],
)
def test_folder_file_is_picked_by_name_verified_converted_and_loaded(hub_env, alias, name, file_name):
    weights = _small_weights(name, seed=len(alias))
    data = _pymic(weights)
    decoy = _pymic(_small_weights(name, seed=99))
    entries = {file_name: _drive_id(file_name), "decoy_volf.pt": _drive_id("decoy")}
    hub_env.add_drive_folder(FOLDER_ID, "MIS-FM weights", entries)
    hub_env.add_drive_file(entries[file_name], file_name, data, confirm=False)
    hub_env.add_drive_file(entries["decoy_volf.pt"], "decoy_volf.pt", decoy, confirm=True)
    spec, tag = zoo.resolve(alias)
    with override_weights(spec.name, tag, upstream_digest=f"sha256:{hashlib.sha256(data).hexdigest()}"):
        model = zoo.create(alias, pretrained=True, **SMALL[name])
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in weights.items())
    assert hub_env.hits("/embeddedfolderview") == 1 and hub_env.hits("/uc") == 1
    assert not _partial(Path(os.environ["MEDZOO_CACHE"]))


def test_drive_file_with_another_digest_than_the_pinned_one_is_refused(hub_env):
    data = _pymic(_small_weights("fmunet", seed=1))
    hub_env.add_drive_folder(FOLDER_ID, "MIS-FM weights", {"fmunet_abd1k_volf.pt": _drive_id("f")})
    hub_env.add_drive_file(_drive_id("f"), "fmunet_abd1k_volf.pt", data)
    with (
        override_weights("fmunet", "vf1k", upstream_digest="sha256:" + "0" * 64) as ws,
        pytest.raises(DigestMismatchError, match="does not match the pinned"),
    ):
        zoo.create("fmunet-vf1k", pretrained=True, **SMALL["fmunet"])
    assert not converted_path(get_spec("fmunet"), ws).exists()
    assert not _partial(Path(os.environ["MEDZOO_CACHE"]))


def test_folder_without_the_file_names_what_it_holds(hub_env):
    hub_env.add_drive_folder(FOLDER_ID, "MIS-FM weights", {"readme.txt": _drive_id("r")})
    with pytest.raises(DownloadError, match=r"has no file pctnet_ct10k_volf\.pt \(it holds: readme\.txt\)"):
        zoo.create("pctnet-vf10k", pretrained=True, **SMALL["pctnet"])


def test_drive_page_that_is_not_a_confirmation_is_named_a_web_page(hub_env):
    """Drive's quota page (no download form): the user sees the page, not an unpickling error."""
    page = (
        "<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>"
        "<p>Too many users have viewed or downloaded this file recently.</p></body></html>"
    )
    hub_env.add_page("/uc", page)
    with pytest.raises(DownloadError) as info:
        zoo.create("pctnet-vf110k", pretrained=True)
    msg = str(info.value)
    assert "the server returned a web page, not a checkpoint: <!DOCTYPE html><html><head><title>Google" in msg
    assert "Too many users" in msg and "weights_only" not in msg


def test_drive_download_past_the_size_bound_is_aborted(hub_env, monkeypatch):
    data = _pymic(_small_weights("fmunet", seed=2))
    monkeypatch.setenv("MEDZOO_DOWNLOAD_MAX_BYTES", str(len(data) // 2))
    hub_env.add_drive_folder(FOLDER_ID, "MIS-FM weights", {"fmunet_abd1k_volf.pt": _drive_id("g")})
    hub_env.add_drive_file(_drive_id("g"), "fmunet_abd1k_volf.pt", data)
    with pytest.raises(DownloadError, match=rf"announces {len(data):,} bytes, over the"):
        zoo.create("fmunet-vf1k", pretrained=True, **SMALL["fmunet"])
    assert not _partial(Path(os.environ["MEDZOO_CACHE"]))


def test_dripping_drive_download_is_aborted_at_the_deadline(hub_env, monkeypatch):
    monkeypatch.setenv("MEDZOO_DOWNLOAD_DEADLINE", "2")
    monkeypatch.setenv("MEDZOO_DOWNLOAD_STALL_TIMEOUT", "5")
    attachment = {"Content-Disposition": 'attachment; filename="pctnet_pretrain.pt"'}
    hub_env.add_stream("/uc", announce=10_000, count=10_000, byte=b"x", delay=0.1, headers=attachment)
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"not complete after 2 s"):
        zoo.create("pctnet-vf110k", pretrained=True)
    assert time.monotonic() - start < 15
    assert not _partial(Path(os.environ["MEDZOO_CACHE"]))


def test_a_redirect_whose_body_never_ends_is_followed_without_reading_it(hub_env, monkeypatch):
    """requests reads a redirect's body whole before following it; the Drive path must not."""
    monkeypatch.setenv("MEDZOO_DOWNLOAD_DEADLINE", "60")
    weights = _small_weights("fmunet", seed=4)
    data = _pymic(weights)
    hub_env.add_drive_folder(FOLDER_ID, "MIS-FM weights", {"fmunet_abd1k_volf.pt": _drive_id("moved")})
    hub_env.add_drive_file(_drive_id("elsewhere"), "fmunet_abd1k_volf.pt", data, confirm=True)
    target = (
        f"https://drive.usercontent.google.com/download?id={_drive_id('elsewhere')}"
        "&export=download&confirm=t&uuid=0b9c-loopback"
    )
    # /uc?id=<moved> answers 302 and then drips its body for 300 s.
    hub_env.add_stream(
        "/uc", announce=None, count=3000, byte=b"x", delay=0.1, headers={"Location": target}, status=302
    )
    start = time.monotonic()
    with override_weights("fmunet", "vf1k", upstream_digest=f"sha256:{hashlib.sha256(data).hexdigest()}"):
        model = zoo.create("fmunet-vf1k", pretrained=True, **SMALL["fmunet"])
    assert time.monotonic() - start < 30
    assert hub_env.hits("/uc") == 1 and hub_env.hits("/download") == 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_local_html_file_is_named_a_web_page_and_pickles_never_suggest_weights_only_false(tmp_path):
    page = tmp_path / "pctnet_pretrain.pt"
    page.write_text(
        "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>"
    )
    with pytest.raises(
        CheckpointFormatError, match=r"a web page \(HTML\), not a checkpoint \(a download link"
    ):
        zoo.create("pctnet", checkpoint_path=page)
    evil = tmp_path / "evil.pt"
    torch.save({"payload": Path("x")}, evil)
    with pytest.raises(CheckpointFormatError) as info:
        zoo.create("pctnet", checkpoint_path=evil)
    msg = str(info.value)
    assert "Unsupported global" in msg and "pathlib" in msg
    assert "weights_only=False" not in msg and "set to `False`" not in msg and "add_safe_globals" not in msg


def test_endless_drive_page_is_read_only_to_the_page_bound_and_named_a_web_page(hub_env, monkeypatch):
    """An HTML body with no Content-Disposition from /uc: gdown would read it whole; it is cut at
    the page bound, long before the size bound and the deadline."""
    monkeypatch.setenv("MEDZOO_DOWNLOAD_DEADLINE", "30")
    page = {"Content-Type": "text/html; charset=utf-8"}
    hub_env.add_stream("/uc", announce=None, count=10**7, byte=b"<p>" + b"x" * 4093, headers=page)
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"a web page longer than 1,048,576 bytes, not a checkpoint"):
        zoo.create("pctnet-vf110k", pretrained=True)
    assert time.monotonic() - start < 10
    assert not _partial(Path(os.environ["MEDZOO_CACHE"]))


def test_drive_page_bytes_count_against_the_size_bound(hub_env, monkeypatch):
    monkeypatch.setenv("MEDZOO_DOWNLOAD_MAX_BYTES", "100000")
    page = {"Content-Type": "text/html; charset=utf-8"}
    hub_env.add_stream("/uc", announce=None, count=1000, byte=b"y" * 1024, headers=page)
    with pytest.raises(DownloadError, match=r"more than 100,000 bytes received, over the bound"):
        zoo.create("pctnet-vf110k", pretrained=True)


def test_default_deadline_of_the_largest_upstream_file_is_minutes_not_an_hour(monkeypatch):
    from zoo.hub import download_limits

    monkeypatch.delenv("MEDZOO_DOWNLOAD_DEADLINE", raising=False)
    monkeypatch.delenv("MEDZOO_DOWNLOAD_MAX_BYTES", raising=False)
    spec, tag = zoo.resolve("pctnet-vf110k")
    limits = download_limits(spec, spec.weight(tag))
    assert limits.max_bytes > 500_000_000
    assert limits.deadline_s <= 15 * 60
