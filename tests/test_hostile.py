"""Hostile and careless input (issue 26): each refusal comes before any cost, in one line.

Real files, real links, the real CLI; the loopback servers of ``tests/servers.py`` for transfers.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import zoo
import zoo.study
from zoo.cli import main
from zoo.study import StudySettings, list_cases, predict_study

from .test_predict import THRESHOLD, ThresholdNet


def _scan(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    data = (rng.random((12, 12, 12)) * 2 * THRESHOLD).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0])), path)
    return path


FAST = StudySettings(spacing_mm=(4.0, 4.0, 4.0), num_workers=0)


# ----------------------------------------------------------------------------- study input


def test_a_recursive_glob_through_folder_links_that_loop_walks_each_folder_once(tmp_path):
    data = tmp_path / "D"
    _scan(data / "a.nii.gz")
    _scan(data / "sub" / "b.nii.gz")
    (data / "loop1").symlink_to(data, target_is_directory=True)
    (data / "sub" / "loop2").symlink_to(data, target_is_directory=True)
    start = time.monotonic()
    found = list_cases(str(data / "**" / "*.nii.gz"))
    assert time.monotonic() - start < 10
    assert found == [data / "a.nii.gz", data / "sub" / "b.nii.gz"]


def test_a_walk_past_its_entry_bound_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo.study, "MAX_WALK_ENTRIES", 50)
    for i in range(60):
        (tmp_path / f"f{i}.txt").write_text("x")
    with pytest.raises(ValueError, match=r"more than 50 entries .*narrow the pattern") as info:
        list_cases(str(tmp_path / "**" / "*.nii.gz"))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"more than 50 entries"):
        list_cases(tmp_path)  # a folder is walked by the same bounded walk


def test_an_existing_path_with_glob_characters_is_a_path_not_a_pattern(tmp_path, capsys):
    own = _scan(tmp_path / "scan[1].nii.gz", seed=1)
    _scan(tmp_path / "scan1.nii.gz", seed=2)  # what the name matches as a pattern: another scan
    out = tmp_path / "seg.nii.gz"
    argv = ["predict", "fmunet", "--no-weights", "-q", "-i", str(own), "-o", str(out),
            "--spacing", "8", "8", "8", "--roi-size", "32", "32", "32"]  # fmt: skip
    assert main(argv) == 0
    assert out.is_file()
    assert nib.load(out).shape == nib.load(own).shape
    assert list_cases(str(own)) == [own]


def test_a_study_into_an_output_named_like_a_file_is_refused(tmp_path, capsys):
    _scan(tmp_path / "scans" / "a.nii.gz")
    argv = ["predict", "fmunet", "--no-weights", "-q", "-i", str(tmp_path / "scans" / "*.nii.gz"),
            "-o", str(tmp_path / "seg.nii.gz")]  # fmt: skip
    assert main(argv) == 2
    assert "named like a file" in capsys.readouterr().err
    assert not (tmp_path / "seg.nii.gz").exists()


def test_a_glob_that_matches_nothing_is_refused(tmp_path, capsys):
    argv = ["predict", "fmunet", "--no-weights", "-q", "-i", str(tmp_path / "*.nii.gz"),
            "-o", str(tmp_path / "segs")]  # fmt: skip
    assert main(argv) == 2
    assert "matches no .nii" in capsys.readouterr().err


# ----------------------------------------------------------------------------- study resume


def test_outputs_inside_the_input_tree_are_outputs_on_resume(tmp_path):
    data = tmp_path / "DATA"
    _scan(data / "p1" / "a.nii.gz", 1)
    _scan(data / "p2" / "b.nii.gz", 2)
    pattern, out = str(data / "**" / "*.nii.gz"), data / "segs"
    first = predict_study(ThresholdNet(), pattern, out, FAST, progress=False)
    assert len(first.written) == 2
    model = ThresholdNet()
    again = predict_study(model, pattern, out, FAST, progress=False)
    assert again.cases == 2 and len(again.skipped) == 2 and model.calls == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a.nii.gz", "b.nii.gz"]


def test_a_truncated_earlier_output_is_written_again(tmp_path):
    _scan(tmp_path / "in" / "a.nii.gz", 1)
    _scan(tmp_path / "in" / "b.nii.gz", 2)
    out = tmp_path / "out"
    predict_study(ThresholdNet(), tmp_path / "in", out, FAST, progress=False)
    whole = (out / "a.nii.gz").read_bytes()
    (out / "a.nii.gz").write_bytes(whole[: len(whole) // 2])
    again = predict_study(ThresholdNet(), tmp_path / "in", out, FAST, progress=False)
    assert [p.output.name for p in again.written] == ["a.nii.gz"] and len(again.skipped) == 1
    assert (out / "a.nii.gz").read_bytes() == whole


def test_a_scan_without_a_record_in_the_output_folder_is_still_an_input(tmp_path):
    data = tmp_path / "DATA"
    _scan(data / "a.nii.gz")
    _scan(data / "segs" / "stray.nii.gz")  # a scan the user keeps there: never written over
    model = ThresholdNet()
    with pytest.raises(ValueError, match="holds the input scans"):
        predict_study(model, str(data / "**" / "*.nii.gz"), data / "segs", FAST, progress=False)
    assert model.calls == 0


# ----------------------------------------------------------------------------- publish

_SPELLINGS = [
    "~/scans/datalist.json",
    "file:///home/alice/scans/datalist.json",
    "../../alice/scans/datalist.json",
    "C:\\Users\\alice\\scans\\datalist.json",
    "\\\\fileserver\\alice\\scans\\datalist.json",
    "/home/alice/scans/datalist.json",
]
# What must not leave the machine: the folders above the file, in any of those spellings.
_LOCAL = re.compile(r"alice|fileserver|home/|[/\\]Users|~/|file:/|\.\./")


@pytest.mark.parametrize("spelling", _SPELLINGS)
def test_no_local_path_in_any_spelling_is_in_any_published_file(tmp_path, monkeypatch, spelling):
    from tests.test_publish import _run
    from zoo.publish import PUBLISHED_FILES, publish_run

    monkeypatch.setenv("MEDZOO_CACHE", str(tmp_path / "medzoo-cache"))
    run = _run(tmp_path, "ft")
    cfg = json.loads((run / "config.json").read_text())
    cfg["finetune"]["data"] = spelling
    # Prose that reaches the card: a label name written by someone who pasted paths into it.
    cfg["labels"]["1"] = (
        f"liver: trained on {spelling}, split by ~bob/splits.json (see {tmp_path}/notes.txt)."
    )
    (run / "config.json").write_text(json.dumps(cfg))
    out = publish_run(run, "org/x", tmp_path / "o", dry_run=True, license="apache-2.0")
    for name in PUBLISHED_FILES:
        if name.endswith(".safetensors"):
            continue
        text = (out / name).read_text()
        assert str(tmp_path) not in text, name
        assert not _LOCAL.search(text), (name, _LOCAL.search(text))
    assert json.loads((out / "config.json").read_text())["finetune"]["data"] == "datalist.json"
    card = (out / "README.md").read_text()
    assert "trained on datalist.json, split by splits.json (see notes.txt)." in card


# ----------------------------------------------------------------------------- errors never echo files


def test_a_weights_file_linked_to_a_text_file_is_named_never_quoted(tmp_path):
    from zoo.convert import CheckpointFormatError

    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n")
    link = tmp_path / "model.safetensors"
    link.symlink_to(secret)
    with pytest.raises(CheckpointFormatError, match="a text file, not a checkpoint") as info:
        zoo.create("pctnet", checkpoint_path=link)
    assert "root:x" not in str(info.value) and "alice" not in str(info.value)
    page = tmp_path / "page.pt"
    page.write_text("<!DOCTYPE html><html><title>Sign in: secret-token-123</title></html>")
    with pytest.raises(CheckpointFormatError, match=r"a web page \(HTML\), not a checkpoint") as info:
        zoo.create("pctnet", checkpoint_path=page)
    assert "secret-token" not in str(info.value)


def test_a_pickled_trainer_state_is_one_line_not_a_medzoo_trainer_state(tmp_path):
    from tests.test_finetune import _tiny_run

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(out, total=4, stop_at_call=3)
    torch.save({"step": 2, "payload": Path("x")}, out / "trainer_state.pt")  # pickles a class
    with pytest.raises(ValueError, match=r"trainer_state\.pt: not a medzoo trainer state") as info:
        _tiny_run(out, total=4)
    msg = str(info.value)
    assert "\n" not in msg and "weights_only" not in msg and "add_safe_globals" not in msg
    (out / "trainer_state.pt").write_text("step = 2\n")
    with pytest.raises(ValueError, match="not a medzoo trainer state") as info:
        _tiny_run(out, total=4)
    assert "step = 2" not in str(info.value)


# ----------------------------------------------------------------------------- API: NaN


class _DivergedNet(ThresholdNet):
    """Weights that diverged: NaN logits for any input."""

    def forward(self, x):
        return super().forward(x) * float("nan")


def test_nan_logits_are_refused_in_python_as_in_the_cli_and_nothing_is_written(tmp_path):
    from zoo.predict import PredictSettings, predict_nifti

    scan = _scan(tmp_path / "a.nii.gz")
    out = tmp_path / "seg.nii.gz"
    with pytest.raises(ValueError, match=r"the model returned \d+ NaN/infinite logit\(s\)"):
        predict_nifti(_DivergedNet(), scan, out, PredictSettings(spacing_mm=(4.0, 4.0, 4.0)), progress=False)
    assert not out.exists()
    res = predict_study(_DivergedNet(), tmp_path / "a.nii.gz", tmp_path / "segs", FAST, progress=False)
    assert "NaN/infinite logit" in next(iter(res.failed.values()))


def test_nan_voxels_in_python_are_replaced_and_said(tmp_path, caplog):
    from zoo.predict import PredictSettings, predict_nifti

    scan = _scan(tmp_path / "a.nii.gz")
    img = nib.load(scan)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), scan)
    with caplog.at_level("WARNING", logger="zoo"):
        r = predict_nifti(ThresholdNet(), scan, tmp_path / "s.nii.gz", PredictSettings(spacing_mm=(4.0,) * 3))
    assert r.nonfinite_voxels == 1 and "1 non-finite voxel(s) (NaN/inf) set to 0" in caplog.text


# ----------------------------------------------------------------------------- order


def test_a_missing_input_is_named_before_the_encoder_only_weights(tmp_path, capsys):
    missing = tmp_path / "no-such-scan.nii.gz"
    rc = main(["predict", "qtunet-t.ct-ssl", "-q", "-i", str(missing), "-o", str(tmp_path / "seg.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no-such-scan.nii.gz" in err and "cover only the encoder" not in err


# ----------------------------------------------------------------------------- export


def test_an_export_under_a_file_is_refused_before_the_export_starts(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from zoo.export import to_onnx

    (tmp_path / "afile").write_text("x")
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"its parent .*afile is a file, expected a directory"):
        to_onnx("qtunet-t", tmp_path / "afile" / "sub" / "m.onnx")
    assert time.monotonic() - start < 5
    assert main(["export", "qtunet-t", "-o", str(tmp_path / "afile" / "m.onnx")]) == 2
    assert "is a file, expected a directory" in capsys.readouterr().err
    with pytest.raises(ValueError, match="found a folder"):
        to_onnx("qtunet-t", tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_an_export_into_a_read_only_folder_is_refused_before_the_export_starts(tmp_path):
    pytest.importorskip("onnxruntime")
    from zoo.export import to_onnx

    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(ValueError, match="not writable"):
        to_onnx("qtunet-t", ro / "m.onnx")


# ----------------------------------------------------------------------------- Hub: unpinned


def test_unpinned_hub_weights_load_with_one_warning_that_shows_the_sha256_to_pin(hub_env, tmp_path):
    import hashlib
    import subprocess
    import sys

    from safetensors.torch import save

    from tests.test_drive import SMALL, _small_weights

    sd = _small_weights("fmunet", 3)
    data = save({k: v.contiguous() for k, v in sd.items()})
    hub_env.add_hub_file("medzoo/fmunet-vf1k", "model.safetensors", data)
    sha = hashlib.sha256(data).hexdigest()
    code = (
        "import zoo\n"
        f"chns = {SMALL['fmunet']['feature_chns']}\n"
        "for _ in range(2):\n"
        "    zoo.create('fmunet-vf1k', pretrained=True, feature_chns=chns)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=os.environ
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.count("unpinned") == 1, run.stderr
    assert sha in run.stderr and f"sha256='{sha}'" in run.stderr


# ----------------------------------------------------------------------------- network failures


def _closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("endpoint", "kind"),
    [("http://nonexistent-host.invalid", "no name resolution"), ("closed", "connection refused")],
)
def test_a_network_failure_names_its_kind_once_in_one_line(hub_env, monkeypatch, capsys, endpoint, kind):
    url = _closed_port_url() if endpoint == "closed" else endpoint
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("MEDZOO_UPSTREAM_ENDPOINT", url)
    monkeypatch.setenv("MEDZOO_DOWNLOAD_STALL_TIMEOUT", "5")
    assert main(["download", "fmunet-vf1k", "-q"]) == 1
    err = capsys.readouterr().err
    assert kind in err and "did not answer within" not in err
    hub_sentence = "Hub medzoo/fmunet-vf1k/config.json@main"  # the load's first request
    assert err.count(hub_sentence) == 1, err  # not a WARNING and then the same sentence in the error
    assert len(err.strip().splitlines()) == 1, err


def test_a_silent_server_is_named_a_timeout_with_its_seconds(hub_env, monkeypatch):
    from tests.servers import SilentServer
    from zoo.hub import WeightsUnavailableError

    monkeypatch.setenv("MEDZOO_DOWNLOAD_STALL_TIMEOUT", "1")
    with SilentServer() as silent:
        monkeypatch.setenv("HF_ENDPOINT", silent.url)
        monkeypatch.setenv("MEDZOO_UPSTREAM_ENDPOINT", silent.url)
        with pytest.raises(
            WeightsUnavailableError, match=r"timed out after 1 s|no byte from the server for 1 s"
        ):
            zoo.create("qtunet-t.ct-ssl", pretrained=True)


# ----------------------------------------------------------------------------- progress bars


def test_the_sliding_window_bar_says_it_counts_windows(capsys):
    import torch

    from zoo.inference import sliding_window_predict

    net = ThresholdNet(roi=(8, 8, 8))
    sliding_window_predict(net, torch.rand(1, 1, 20, 20, 20), roi_size=(8, 8, 8), overlap=0.5, progress=True)
    err = capsys.readouterr().err
    assert "sliding window" in err and "window" in err.split("sliding window", 1)[1]
    assert "it/s" not in err and "s/it" not in err


# ----------------------------------------------------------------------------- SECURITY.md


def test_every_test_that_security_md_names_exists():
    root = Path(__file__).resolve().parents[1]
    named = re.findall(r"`(tests/\w+\.py)::(\w+)`", (root / "SECURITY.md").read_text())
    assert len(named) > 20
    missing = [f"{f}::{t}" for f, t in named if f"def {t}(" not in (root / f).read_text()]
    assert missing == []


# ----------------------------------------------------------------------------- rows nobody listed


@pytest.mark.parametrize("name", ["scan.nii.gz", "scan.nii"])
def test_a_scan_that_links_to_a_text_file_is_refused_without_quoting_it(tmp_path, capsys, name):
    secret = tmp_path / "passwd"
    secret.write_text("SECRETLINE:x:0:0:/bin/bash\n" * 40)
    (tmp_path / name).symlink_to(secret)
    argv = [
        "predict",
        "fmunet",
        "--no-weights",
        "-q",
        "-i",
        str(tmp_path / name),
        "-o",
        str(tmp_path / "o.nii.gz"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not a readable NIfTI file" in err and "SECRET" not in err and "b'" not in err


def test_a_datalist_past_its_byte_bound_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo.study, "MAX_DATALIST_BYTES", 1000)
    dl = tmp_path / "datalist.json"
    dl.write_text(json.dumps([f"scan{i}.nii.gz" for i in range(200)]))
    with pytest.raises(ValueError, match="over the 1,000-byte bound"):
        list_cases(dl)


def test_a_study_never_writes_through_a_link_in_its_output_folder(tmp_path):
    _scan(tmp_path / "in" / "a.nii.gz")
    keep = tmp_path / "precious.nii.gz"
    keep.write_bytes(b"the user's only copy")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.nii.gz").symlink_to(keep)
    res = predict_study(ThresholdNet(), tmp_path / "in", out, FAST, progress=False)
    assert len(res.written) == 1 and keep.read_bytes() == b"the user's only copy"
    assert not (out / "a.nii.gz").is_symlink()
