"""Client-side balancing over a ``dns:///`` name's addresses (TritonPool with a stand-in
resolver; the backend calls scripted): spread, added and removed endpoints, failed lookups."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.helpers import SP, arena_settings
from warriorcoder.runtime.settings import ConfigError, LocalModelSettings, ModelSettings
from warriorcoder.runtime.triton import TritonPool, _Received

NAME = "dns:///triton-alpha-headless:8001"


class Resolver:
    """A DNS stand-in: the addresses it answers now, the lookups it got."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.lookups: list[tuple[str, int]] = []
        self.fail = False

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append((host, port))
        if self.fail:
            raise OSError("Name or service not known")
        return list(self.addresses)


def model(**changes: object) -> ModelSettings:
    base = arena_settings(NAME).models["alpha"]
    fields = {f: getattr(base, f) for f in base.__struct_fields__}
    return ModelSettings(**{**fields, "resolve_interval_s": 3600, **changes})


async def balanced(resolver: Resolver, latency_s: float = 0.02, **changes: object):
    pool = TritonPool({"alpha": model(**changes)}, resolver=resolver)
    await pool.__aenter__()
    served: list[str] = []

    async def stream_once(backend, endpoint, *args) -> _Received:
        served.append(endpoint.address)
        await asyncio.sleep(latency_s)
        return _Received(["ok"], "stop", 3)

    pool._stream_once = stream_once  # type: ignore[method-assign]
    return pool, served


async def test_requests_spread_over_every_address_of_the_name():
    resolver = Resolver("10.0.0.1:8001", "10.0.0.2:8001")
    pool, served = await balanced(resolver, adaptive_concurrency=False, max_concurrency=4)
    try:
        assert resolver.lookups == [("triton-alpha-headless", 8001)]
        assert pool.endpoints("alpha") == ["10.0.0.1:8001", "10.0.0.2:8001"]
        assert pool.limits() == {("alpha", "10.0.0.1:8001"): 4, ("alpha", "10.0.0.2:8001"): 4}
        # 8 at once: each endpoint takes its 4 slots (the most free slots wins)
        await asyncio.gather(*(pool.generate("alpha", "p", SP, role="r") for _ in range(8)))
        assert Counter(served) == {"10.0.0.1:8001": 4, "10.0.0.2:8001": 4}
        # one after another: round robin among equally free endpoints
        served.clear()
        for _ in range(6):
            await pool.generate("alpha", "p", SP, role="r")
        assert Counter(served) == {"10.0.0.1:8001": 3, "10.0.0.2:8001": 3}
    finally:
        await pool.__aexit__(None, None, None)


async def test_a_busy_endpoint_gets_fewer_requests():
    resolver = Resolver("10.0.0.1:8001", "10.0.0.2:8001")
    pool, served = await balanced(resolver, adaptive_concurrency=False, max_concurrency=4)
    try:
        b = pool._backends["alpha"]
        slow = b.endpoints["10.0.0.1:8001"]
        async with slow.gate.slot(), slow.gate.slot(), slow.gate.slot():  # 3 of its 4 taken
            calls = [asyncio.create_task(pool.generate("alpha", "p", SP, role="r"))]
            calls += [asyncio.create_task(pool.generate("alpha", "p", SP, role="r"))]
            await asyncio.gather(*calls)
        assert served == ["10.0.0.2:8001", "10.0.0.2:8001"]
    finally:
        await pool.__aexit__(None, None, None)


async def test_an_added_address_is_used_and_a_removed_one_drained_then_closed():
    resolver = Resolver("10.0.0.1:8001")
    pool, served = await balanced(resolver, latency_s=0.2)
    try:
        b = pool._backends["alpha"]
        old = b.endpoints["10.0.0.1:8001"]
        closed: list[str] = []
        real_close = old.client.close

        async def close() -> None:
            closed.append(old.address)
            await real_close()

        old.client.close = close  # type: ignore[method-assign]
        running = asyncio.create_task(pool.generate("alpha", "p", SP, role="r"))
        await asyncio.sleep(0.05)  # in flight on the old address
        resolver.addresses = ["10.0.0.2:8001"]
        await pool.refresh("alpha")
        assert pool.endpoints("alpha") == ["10.0.0.2:8001"]
        assert closed == []  # drained first: its request still runs
        assert (await running).text == "ok"
        assert closed == ["10.0.0.1:8001"]  # closed once idle
        assert ("alpha", "10.0.0.1:8001") not in pool.limits()
        served.clear()
        await pool.generate("alpha", "p", SP, role="r")
        assert served == ["10.0.0.2:8001"]
    finally:
        await pool.__aexit__(None, None, None)


async def test_a_failed_lookup_keeps_the_known_addresses():
    resolver = Resolver("10.0.0.1:8001", "10.0.0.2:8001")
    pool, _ = await balanced(resolver)
    try:
        resolver.fail = True
        await pool.refresh("alpha")
        assert pool.endpoints("alpha") == ["10.0.0.1:8001", "10.0.0.2:8001"]
    finally:
        await pool.__aexit__(None, None, None)


async def test_the_name_is_resolved_again_periodically_by_an_owned_task():
    resolver = Resolver("10.0.0.1:8001")
    pool, _ = await balanced(resolver, resolve_interval_s=0.05)
    try:
        resolver.addresses = ["10.0.0.1:8001", "10.0.0.3:8001"]
        await asyncio.sleep(0.2)
        assert pool.endpoints("alpha") == ["10.0.0.1:8001", "10.0.0.3:8001"]
        assert len(resolver.lookups) >= 3
    finally:
        await pool.__aexit__(None, None, None)
    assert pool._tasks == []  # cancelled and awaited
    lookups = len(resolver.lookups)
    await asyncio.sleep(0.1)
    assert len(resolver.lookups) == lookups


async def test_a_name_with_no_address_is_an_outage_that_ends_when_one_appears():
    resolver = Resolver()
    pool, served = await balanced(resolver, probe_interval_s=0.02, max_outage_s=5)
    try:
        b = pool._backends["alpha"]

        async def ready(e) -> bool:
            return True

        b._ready = ready  # type: ignore[method-assign]
        call = asyncio.create_task(pool.generate("alpha", "p", SP, role="r"))
        await asyncio.sleep(0.1)
        assert b.circuit.is_open and not call.done()
        resolver.addresses = ["10.0.0.9:8001"]  # the prober resolves again
        assert (await asyncio.wait_for(call, 2)).text == "ok"
        assert served == ["10.0.0.9:8001"]
    finally:
        await pool.__aexit__(None, None, None)


@pytest.mark.parametrize("url", ["dns:///name", "dns://host/name:1", "dns:///a:b"])
def test_a_malformed_dns_url_is_refused_with_the_key_named(url: str) -> None:
    with pytest.raises(ConfigError, match=r"\$\.models\.alpha\.triton_url"):
        model(triton_url=url).check("alpha")


def test_a_local_model_cannot_take_the_trtllm_contract() -> None:
    cfg = model(triton_url=None, local=LocalModelSettings(path="/m"), contract="trtllm")
    with pytest.raises(ConfigError, match=r"\$\.models\.alpha\.contract"):
        cfg.check("alpha")
