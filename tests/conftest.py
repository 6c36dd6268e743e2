from __future__ import annotations

import pytest
import torch

from tests.servers import LoopbackServer


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
