from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub (it reads its cache paths at import): the test run must
# never read or write the user's real caches (~/.cache/medzoo, ~/.cache/huggingface).
_CACHE_ROOT = Path(tempfile.mkdtemp(prefix="medzoo-tests-"))
_CACHE_VARS = {
    "MEDZOO_CACHE": "medzoo",
    "HF_HOME": "huggingface",
    "HF_HUB_CACHE": "huggingface/hub",
    "XDG_CACHE_HOME": "xdg",
    "TORCH_HOME": "torch",
}
for _var, _sub in _CACHE_VARS.items():
    os.environ[_var] = str(_CACHE_ROOT / _sub)

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.servers import LoopbackServer  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches():
    """Every cache of the run lives in one temporary folder, removed at the end."""
    yield _CACHE_ROOT
    shutil.rmtree(_CACHE_ROOT, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    # The golden vectors were recorded with 2 threads; CI machines have 2 cores.
    torch.set_num_threads(2)


@pytest.fixture
def server():
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture
def hub_env(tmp_path, monkeypatch, server):
    """Point the Hub client, the upstream mirror and every cache at loopback and tmp_path."""
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("MEDZOO_UPSTREAM_ENDPOINT", server.url)
    monkeypatch.setenv("MEDZOO_CACHE", str(tmp_path / "medzoo-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("MEDZOO_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return server


# The narrow QT-UNet-T export shared by the export tests (an export takes ~15 s: done once a run).
EXPORT_PREP = {
    "orientation": "RAS",
    "spacing_mm": [6.0, 6.0, 6.0],
    "intensity_transform": {"kind": "clip_scale", "a_min": 0, "a_max": 300, "b_min": -1, "b_max": 1},
}


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """A narrow QT-UNet at 32³ with stated preprocessing and labels, exported once at the default
    opset (parity at 1e-4 at batch sizes 1 and 2); tests read it and never change it."""
    import zoo
    from zoo.export import ExportSettings, to_onnx

    torch.manual_seed(0)
    model = zoo.create("qtunet-t", img_size=32, num_classes=4, embed_dim=12)
    model.pretrained_cfg["preprocessing"] = dict(EXPORT_PREP)
    model.pretrained_cfg["labels"] = ["background", "grey", "white", "csf"]
    model.pretrained_cfg["sliding_window"] = {"roi_size": [32, 32, 32], "overlap": 0.25}
    path = tmp_path_factory.mktemp("onnx") / "qt.onnx"
    to_onnx(model, path, ExportSettings(batch_sizes=(1, 2)), verbose=False)
    return model, path
