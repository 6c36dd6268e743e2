"""The `zoo` command line, run in-process as a user would type it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests import golden
from tests.servers import torch_bytes, url_path
from tests.test_hub import git_blob_sha1
from zoo._registry import get_spec, override_weights
from zoo.cli import main


@pytest.fixture(scope="module")
def ct_ssl_encoder():
    import zoo

    model = zoo.create("qtunet-t")
    full = golden.reference_state_dict_for("qtunet-t-btcv", model)
    return {k: v for k, v in full.items() if k.startswith("encoder.")}


def test_list_shows_sizes_tags_and_availability(capsys):
    assert main(["list", "qtunet*"]) == 0
    out = capsys.readouterr().out
    assert "qtunet-t" in out and "ct-ssl*" in out and "qtunet-a-b" in out
    assert "vtunet" not in out


def test_list_with_no_match_fails(capsys):
    assert main(["list", "nothing-like-this*"]) == 1


def test_info_prints_provenance_and_digests(capsys):
    assert main(["info", "qtunet-t"]) == 0
    out = capsys.readouterr().out
    assert "gitsha1:59f4a6dd0f54ceeb517685b100c7dfae39013879" in out
    assert "not redistributable" in out
    assert main(["info", "qtunet-t", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["default_tag"] == "ct-ssl"


def test_unknown_name_is_a_clear_error(capsys):
    assert main(["info", "qtunet-q"]) == 2
    assert "Did you mean" in capsys.readouterr().err


def test_convert_writes_safetensors_of_the_authors_file(tmp_path, capsys, ct_ssl_encoder):
    src = tmp_path / "CT-SSL_pretrained.pt"
    torch.save(ct_ssl_encoder, src)
    out = tmp_path / "qtunet-t.safetensors"
    assert main(["convert", str(src), "--model", "qtunet-t", "-o", str(out)]) == 0
    got = load_file(str(out))
    derived = {k for k in ct_ssl_encoder if k.endswith("relative_position_index")}
    assert derived and set(got) == set(ct_ssl_encoder) - derived  # rebuilt at construction, not stored
    assert all(torch.equal(got[k], v) for k, v in ct_ssl_encoder.items() if k not in derived)
    assert "covers encoder" in capsys.readouterr().out
    again = tmp_path / "again.safetensors"
    assert main(["convert", str(src), "--model", "qtunet-t", "-o", str(again), "--json"]) == 0
    said = json.loads(capsys.readouterr().out)  # one JSON object and nothing else on stdout
    assert (said["output"], said["model"], said["tensors"], said["covers"]) == (
        str(again), "qtunet-t", len(ct_ssl_encoder) - len(derived), "encoder"
    )  # fmt: skip


def test_convert_of_a_broken_checkpoint_writes_nothing(tmp_path, capsys, ct_ssl_encoder):
    sd = dict(ct_ssl_encoder)
    sd.pop("encoder.norm.weight")
    src = tmp_path / "bad.pt"
    torch.save(sd, src)
    out = tmp_path / "out.safetensors"
    assert (
        main(["convert", str(src), "--model", "qtunet-t", "-o", str(out)]) == 2
    )  # a checkpoint that cannot fit
    assert "encoder.norm.weight" in capsys.readouterr().err
    assert not list(tmp_path.glob("out.safetensors*"))


def test_download_fetches_verifies_and_caches(hub_env, capsys, ct_ssl_encoder):
    data = torch_bytes(ct_ssl_encoder)
    ws = get_spec("qtunet-t").weight("ct-ssl")
    hub_env.add_file(url_path(ws.url), data)
    with override_weights("qtunet-t", "ct-ssl", upstream_digest=f"gitsha1:{git_blob_sha1(data)}"):
        assert main(["download", "qtunet-t.ct-ssl", "-q"]) == 0
    out = capsys.readouterr().out
    assert "qtunet-t.ct-ssl" in out and "sha256" in out


def test_publish_refuses_weights_without_a_redistribution_licence(tmp_path, capsys):
    assert (
        main(["publish", "qtunet-t.ct-ssl", "--repo", "org/x", "--dry-run", "--out", str(tmp_path / "o")])
        == 2  # refused as given: it needs --permission-obtained
    )
    assert "does not allow redistribution" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_publish_dry_run_writes_weights_config_and_card(tmp_path, capsys, ct_ssl_encoder):
    src = tmp_path / "CT-SSL_pretrained.pt"
    torch.save(ct_ssl_encoder, src)
    out = tmp_path / "hubfolder"
    rc = main(
        [
            "publish",
            "qtunet-t.ct-ssl",
            "--repo",
            "org/qtunet-t",
            "--dry-run",
            "--out",
            str(out),
            "--checkpoint",
            str(src),
            "--permission-obtained",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_name"] == "qtunet-t" and cfg["tag"] == "ct-ssl" and cfg["covers"] == "encoder"
    card = (out / "README.md").read_text()
    # The registered weights themselves: no base_model (only a Hub ORG/NAME may be one), licence named.
    assert card.startswith("---\nlibrary_name: medzoo") and "base_model" not in card
    assert "license_name: no-license" in card
    assert cfg["redistributable"] is False and cfg["permission_obtained"] is True
    published = load_file(str(out / "model.safetensors"))  # less the indices loading rebuilds
    assert set(published) == {k for k in ct_ssl_encoder if not k.endswith("relative_position_index")}
    assert all(torch.equal(v, ct_ssl_encoder[k]) for k, v in published.items())
    # This file is not the upstream one (its digest is not the registry's): no claim that it is.
    assert cfg["source_url"] is None and cfg["source_digest"] is None


def test_card_check_passes_on_the_checked_in_cards(capsys, monkeypatch):
    from zoo.cards import CARDS_DIR

    monkeypatch.chdir(CARDS_DIR.parent)  # the default folder is the checkout's, used from inside it
    assert main(["card", "--check"]) == 0
