"""KV reads on a real nats-server: buckets created with direct gets where the topology allows
them, and ``RetryingKeyValue.get_many`` (one batched direct get) returning what single gets
return, with and without direct gets, across its batch limit."""

from __future__ import annotations

import uuid

import pytest
from nats.js import api as js_api

from warriorcoder.proto import subjects, topology
from warriorcoder.runtime.bus import Bus, RetryingKeyValue, connect, direct_gets
from warriorcoder.runtime.kv import get_many
from warriorcoder.runtime.settings import NatsSettings

pytestmark = pytest.mark.integration


def test_only_buckets_that_tolerate_stale_reads_are_direct_on_a_cluster():
    dedup, ratings = topology.bucket(subjects.KV_DEDUP), topology.bucket(subjects.KV_RATINGS)
    assert direct_gets(dedup, 1) and not direct_gets(dedup, 3)
    assert direct_gets(ratings, 1) and direct_gets(ratings, 3)


@pytest.fixture
async def bus(nats_url):
    cfg = NatsSettings(url=nats_url)
    nc = await connect(cfg)
    yield Bus(nc, cfg, stage="challenger")
    await nc.drain()


async def _bucket(bus: Bus, *, direct: bool) -> RetryingKeyValue:
    name = f"test_{uuid.uuid4().hex[:12]}"
    kv = await bus.js.create_key_value(js_api.KeyValueConfig(bucket=name, direct=direct))
    return RetryingKeyValue(kv, budget_s=5)


async def test_a_declared_bucket_is_created_with_direct_gets_on_a_single_server(bus):
    kv = await bus.kv(subjects.KV_DEDUP)
    info = await bus.js.stream_info(f"KV_{subjects.KV_DEDUP}")
    assert info.config.allow_direct is True
    assert kv.inner._direct is True  # nats.py reads it with direct gets


@pytest.mark.parametrize("direct", [True, False])
async def test_get_many_returns_what_single_gets_return(bus, direct):
    kv = await _bucket(bus, direct=direct)
    keys = [f"lsh.{i:03d}.x" for i in range(300)]  # more than one batch of 256
    for i, k in enumerate(keys):
        await kv.put(k, f"v{i}".encode())
    await kv.put(keys[1], b"newer")  # the latest value counts
    await kv.delete(keys[2])  # a delete marker: left out, like a get's KeyNotFoundError
    got = await kv.get_many([*keys, "lsh.absent", keys[0]])
    assert len(got) == 299 and keys[2] not in got and "lsh.absent" not in got
    for k in (keys[0], keys[1], keys[299]):
        single = await kv.get(k)
        assert (got[k].value, got[k].revision) == (single.value, single.revision)
    assert got[keys[1]].value == b"newer"
    assert await kv.get_many(["lsh.nothing"]) == {}
    assert await get_many(kv, [keys[3]]) == {keys[3]: got[keys[3]]}  # the helper uses it


async def test_writes_keep_nats_py_semantics(bus):
    from nats.js.errors import KeyWrongLastSequenceError, NoStreamResponseError

    from warriorcoder.runtime.bus import js_publish

    kv = await _bucket(bus, direct=True)
    assert kv._fast  # writes go through js_publish, not nats.py's KeyValue
    first = await kv.create("k", b"1")
    with pytest.raises(KeyWrongLastSequenceError):
        await kv.create("k", b"2")  # exists
    with pytest.raises(KeyWrongLastSequenceError):
        await kv.update("k", b"2", last=first + 100)
    second = await kv.update("k", b"2", last=first)
    await kv.delete("k")
    again = await kv.create("k", b"3")  # re-created on its delete marker
    assert first < second < again and (await kv.get("k")).value == b"3"
    assert await kv.put("other", b"x") == again + 1
    with pytest.raises(NoStreamResponseError):
        await js_publish(bus.nc, f"nostream.{uuid.uuid4().hex}", b"x", wait_s=2)
