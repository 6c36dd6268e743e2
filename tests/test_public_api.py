"""The public API: submodules reachable after ``import zoo``, and imported only when used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import zoo

REPO = Path(__file__).resolve().parent.parent


def test_public_submodules_are_reached_from_import_zoo_and_loaded_only_when_used():
    code = (
        "import sys, zoo\n"
        "tasks = {'zoo.' + n for n in ('transforms', 'predict', 'finetune', 'export', 'train', 'ssl')}\n"
        "eager = sorted(m for m in sys.modules if m in tasks or m.startswith('monai.transforms'))\n"
        "t = zoo.transforms.for_model('qtunet-t.ct-ssl', keys=('image', 'label'))\n"
        "print(eager, 'zoo.transforms' in sys.modules, type(t).__name__, zoo.plan.plan.__module__,"
        " zoo.runconfig.RunConfig.__name__, zoo.adapt.set_grad_checkpointing.__name__,"
        " zoo.finetune.FinetuneOptions.__name__, zoo.predict.predict_nifti.__name__,"
        " zoo.export.to_onnx.__name__)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [
        "[]", "True", "Compose", "zoo.plan", "RunConfig", "set_grad_checkpointing", "FinetuneOptions",
        "predict_nifti", "to_onnx",
    ]  # fmt: skip


def test_every_listed_submodule_imports_and_unknown_names_still_fail():
    for name in sorted(zoo._SUBMODULES):
        module = getattr(zoo, name)
        assert module.__name__ == f"zoo.{name}" and name in dir(zoo)
    try:
        zoo.no_such_module  # noqa: B018
    except AttributeError as e:
        assert "no_such_module" in str(e)
    else:
        raise AssertionError("zoo.no_such_module did not raise AttributeError")
