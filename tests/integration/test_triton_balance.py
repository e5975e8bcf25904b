"""Balanced gRPC against two real Tritons (PyTriton, scripted vLLM-contract models): one
``dns:///`` name whose stand-in resolver answers both servers' addresses; Triton's own
statistics show where the requests went, and that a removed address gets no more."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Iterator

import msgspec
import pytest

from tests.conftest import SCRIPTED_MODELS
from tests.helpers import SP, arena_settings
from warriorcoder.launcher.processes import ManagedProcess, start_scripted_triton
from warriorcoder.runtime.triton import TritonPool

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_tritons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ManagedProcess]]:
    logs = tmp_path_factory.mktemp("balance")
    procs: list[ManagedProcess] = []
    try:
        for i in range(2):
            procs.append(
                start_scripted_triton(SCRIPTED_MODELS, ["alpha"], log_path=logs / f"t{i}.log")
            )
        yield procs
    finally:
        for p in procs:
            p.stop()


def served(proc: ManagedProcess) -> int:
    """Successful inferences of ``alpha`` on one server, by Triton's own metrics."""
    url = f"http://127.0.0.1:{proc.ports['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    found = re.search(r'^nv_inference_request_success\{model="alpha",[^}]*\} (\S+)$', text, re.M)
    assert found is not None, "Triton exports nv_inference_request_success for alpha"
    return int(float(found.group(1)))


async def test_requests_spread_over_two_tritons_and_follow_the_name(two_tritons):
    a, b = (f"127.0.0.1:{p.ports['grpc']}" for p in two_tritons)
    answer = [a, b]

    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("triton-alpha-headless", 8001)
        return list(answer)

    base = arena_settings("dns:///triton-alpha-headless:8001").models["alpha"]
    cfg = msgspec.structs.replace(base, resolve_interval_s=3600.0)
    before = [served(p) for p in two_tritons]
    async with TritonPool({"alpha": cfg}, resolver=resolver) as pool:
        assert await pool.ready() == {"alpha": True}
        await asyncio.gather(*(pool.generate("alpha", f"p{i}", SP, role="r") for i in range(16)))
        spread = [served(p) - n for p, n in zip(two_tritons, before, strict=True)]
        assert sum(spread) == 16
        assert min(spread) >= 4, spread  # both servers took a fair share
        assert set(pool.limits()) == {("alpha", a), ("alpha", b)}

        answer[:] = [b]  # a's pod went away: drained, then closed
        await pool.refresh("alpha")
        at = [served(p) for p in two_tritons]
        for i in range(6):
            await pool.generate("alpha", f"q{i}", SP, role="r")
        after = [served(p) - n for p, n in zip(two_tritons, at, strict=True)]
        assert after == [0, 6]
        assert pool.endpoints("alpha") == [b]

        answer[:] = [b, a]  # and came back
        await pool.refresh("alpha")
        at = [served(p) for p in two_tritons]
        await asyncio.gather(*(pool.generate("alpha", f"r{i}", SP, role="r") for i in range(8)))
        back = [served(p) - n for p, n in zip(two_tritons, at, strict=True)]
        assert sum(back) == 8 and min(back) >= 2, back
