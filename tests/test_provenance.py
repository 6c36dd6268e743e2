"""Provenance by content: a file is identified by its digests, and every load says what it loaded."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

import zoo
from zoo._registry import override_weights
from zoo.hub import file_digest
from zoo.provenance import identify_file


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _encoder_file(tmp_path, name="qtunet-t"):
    spec = zoo.get_spec(name)
    torch.manual_seed(1)
    sd = {
        k: v
        for k, v in zoo.create(name).state_dict().items()
        if any(k.startswith(p) for p in spec.encoder_prefixes)
    }
    path = tmp_path / "some-renamed-file.safetensors"
    save_file(sd, str(path))
    return path, sd


def test_file_recorded_in_the_cache_is_identified_whatever_its_name(tmp_path, cache):
    path, _ = _encoder_file(tmp_path)
    (cache / "converted").mkdir(parents=True)
    record = {"name": "qtunet-t", "tag": "ct-ssl", "sha256": file_digest(path), "source_digest": "gitsha1:00"}
    (cache / "converted" / "qtunet-t.ct-ssl.json").write_text(json.dumps(record))
    sha, origin = identify_file(path)
    assert sha == file_digest(path)
    assert origin is not None and origin.id == "qtunet-t.ct-ssl"
    assert origin.redistributable is False  # the authors' repository has no licence file


def test_upstream_file_is_identified_by_the_registry_pin(tmp_path, cache):
    path, _ = _encoder_file(tmp_path)
    with override_weights("qtunet-t", "brats-ssl", upstream_digest=f"gitsha1:{file_digest(path, 'gitsha1')}"):
        _, origin = identify_file(path)
    assert origin is not None and (origin.id, origin.matched) == ("qtunet-t.brats-ssl", "upstream gitsha1")


def test_unknown_file_is_not_identified(tmp_path, cache):
    path, _ = _encoder_file(tmp_path)
    assert identify_file(path)[1] is None


def test_create_records_what_it_loaded_and_warns_once_about_random_parts(tmp_path, cache, caplog):
    path, sd = _encoder_file(tmp_path)
    assert zoo.create("qtunet-t").pretrained_cfg["weights"] is None
    with caplog.at_level(logging.WARNING, logger="zoo"):
        model = zoo.create("qtunet-t", checkpoint_path=path)
    rec = model.pretrained_cfg["weights"]
    assert rec["source"] == "file" and rec["sha256"] == file_digest(path)
    assert rec["covers"] == "encoder" and rec["identified_as"] is None
    assert "output" in rec["newly_initialised"]
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "randomly initialised" in r.message
    ]
    assert len(warnings) == 1 and "fine-tune" in warnings[0].message
    for k, v in sd.items():
        assert torch.equal(model.state_dict()[k], v)
