"""Fixtures that start real servers: nats-server (JetStream) and Triton Inference Server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from warriorcoder.launcher.processes import ManagedProcess, start_nats, start_scripted_triton
from warriorcoder.testing.scripted import load_models

DATA = Path(__file__).parent / "data"
SCRIPTED_MODELS = DATA / "scripted-models.yaml"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[ManagedProcess]:
    """A fresh nats-server with JetStream and its own store, per test."""
    proc = start_nats(tmp_path / "jetstream", log_path=tmp_path / "nats-server.log")
    yield proc
    proc.stop()


@pytest.fixture
def nats_url(nats_server: ManagedProcess) -> str:
    return f"nats://127.0.0.1:{nats_server.ports['client']}"


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    """One real Triton Inference Server (PyTriton) with the scripted models, per session."""
    logs = tmp_path_factory.mktemp("triton")
    names = [m.name for m in load_models(SCRIPTED_MODELS)]
    proc = start_scripted_triton(SCRIPTED_MODELS, names, log_path=logs / "triton.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def triton_url(triton_server: ManagedProcess) -> str:
    return f"127.0.0.1:{triton_server.ports['grpc']}"


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[object]:
    import nats

    client = await nats.connect(nats_url)
    yield client
    await client.close()
