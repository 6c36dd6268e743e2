"""Each optional feature, without its extra, fails with one line naming the extra to install.

A missing package is simulated the way Python itself blocks an import: ``sys.modules[name] =
None`` makes ``import name`` raise ``ModuleNotFoundError``.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
from torch import nn

import zoo
from zoo._optional import EXTRAS, MissingExtraError, require
from zoo.cli import main

REPO = Path(__file__).resolve().parent.parent


def _block(monkeypatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def test_require_names_the_extra(monkeypatch):
    _block(monkeypatch, "onnxruntime")
    with pytest.raises(MissingExtraError) as e:
        require("onnxruntime", feature="ONNX export")
    assert str(e.value) == "ONNX export needs onnxruntime: pip install 'medzoo[onnx]'"
    assert require("json").__name__ == "json"  # present modules are imported and returned


def test_every_extra_in_the_table_exists_in_pyproject():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS.values()) <= set(extras)
    core = " ".join(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    for heavy in ("onnx", "peft", "lightly", "nilearn", "scikit-learn", "matplotlib"):
        assert heavy not in core, heavy

    def closure(group: str) -> set[str]:
        out = {group}
        for req in extras[group]:
            if req.startswith("medzoo["):
                for g in req[len("medzoo[") : -1].split(","):
                    out |= closure(g.strip())
        return out

    # [all] and [test] bring every feature's extra, so the README's two commands run everything.
    features = {"onnx", "train", "lora", "demo", "plots", "bundle", "io", "tensorboard", "mlflow"}
    assert features <= closure("all") and features | {"all", "examples"} <= closure("test")
    assert any(r.startswith("pytest-timeout") for r in extras["test"])


def test_lora_without_peft(monkeypatch):
    from zoo.adapt import add_lora

    model = zoo.create("logonet", img_size=32, dims=(8, 16, 32, 64))
    _block(monkeypatch, "peft")
    with pytest.raises(MissingExtraError, match=r"LoRA needs peft: pip install 'medzoo\[lora\]'"):
        add_lora(model, r=4)


@pytest.mark.parametrize(
    ("module", "recipe", "blocked"),
    [
        ("zoo.ssl.multi_clustering", "MaskedMultiClustering", "sklearn"),
        ("zoo.ssl.slice_swav", "SliceSwAV", "lightly"),
        ("zoo.ssl.slice_swav", "VolumeSwAV", "lightly"),
    ],
)
def test_ssl_recipes_without_the_train_extra(monkeypatch, module, recipe, blocked):
    import importlib

    cls = getattr(importlib.import_module(module), recipe)
    _block(monkeypatch, blocked)
    with pytest.raises(MissingExtraError, match=rf"needs {blocked}: pip install 'medzoo\[train\]'"):
        cls(nn.Identity())  # the check comes first: no real model is needed to learn the extra is missing


def test_cli_export_without_onnx_is_one_line_and_exit_1(monkeypatch, tmp_path, capsys):
    _block(monkeypatch, "onnx", "onnxruntime", "onnxscript")
    rc = main(["export", "logonet", "-o", str(tmp_path / "m.onnx"), "--img-size", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err == ["zoo export: error: ONNX export needs onnx: pip install 'medzoo[onnx]'"]  # one line
    assert not list(tmp_path.iterdir())


def test_core_features_work_without_any_extra(monkeypatch):
    # Registry, models and weights loading are core: they import none of the extras.
    _block(monkeypatch, *EXTRAS)
    assert "qtunet-t" in zoo.list_models()
    model = zoo.create("qtunet-t", img_size=32, embed_dim=12)
    assert sum(p.numel() for p in model.parameters()) > 0
