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
