"""The challenger against real servers: mining, cleaning, de-dup, water marks, shared schedule."""

from __future__ import annotations

import asyncio

import pytest

from proto import subjects
from proto.messages import Challenge, decode
from services.challenger.service import admit, next_cursor
from services.challenger.service import run as run_challenger
from services.runtime.bus import Bus, connect
from services.runtime.service import Deps
from services.runtime.triton import TritonPool
from tests.helpers import arena_settings

pytestmark = pytest.mark.integration


async def challenges_in_stream(bus: Bus) -> list[Challenge]:
    n = await bus.backlog(subjects.STREAM_CHALLENGES)
    out = []
    for seq in range(1, n + 20):
        try:
            msg = await bus.js.get_msg(subjects.STREAM_CHALLENGES, seq)
        except Exception:
            continue
        out.append(decode(msg.data, Challenge))
    return out


async def test_backlog_stays_between_water_marks_and_challenges_are_clean(nats_url, triton_url):
    s = arena_settings(
        triton_url,
        nats_url,
        challenger={"low_water": 1, "high_water": 4, "concurrency": 2, "poll_interval_s": 0.05},
    )
    nc = await connect(s.nats)
    bus = Bus(nc, s.nats, stage="challenger")
    await bus.ensure_topology()
    stop = asyncio.Event()
    async with TritonPool(s.models, names=s.competitors) as pool:
        task = asyncio.create_task(run_challenger(Deps(s, bus, pool), stop))
        await asyncio.sleep(4)  # no responder consumes: the backlog must stop growing
        stop.set()
        await asyncio.wait_for(task, 10)
    found = await challenges_in_stream(bus)
    await nc.drain()

    # Mining pauses at the high water mark; at most `concurrency` calls were already in flight.
    assert 4 <= len(found) <= 4 + 2
    assert len({c.id for c in found}) == len(found)
    assert len({c.instruction for c in found}) == len(found)
    for c in found:
        assert c.attacker != c.defender
        assert c.attacker in s.competitors and c.defender in s.competitors
        assert "<|" not in c.instruction and "###" not in c.instruction
        assert c.language == "Python"
        assert c.sampling.temperature == 1.2 and c.sampling.top_p == 0.99
    # Round-robin: the first pairs are distinct ordered pairs.
    pairs = [(c.attacker, c.defender) for c in found]
    assert len(set(pairs)) == len(pairs)


async def test_max_challenges_stops_mining(nats_url, triton_url):
    s = arena_settings(triton_url, nats_url, challenger={"max_challenges": 3, "concurrency": 3})
    nc = await connect(s.nats)
    bus = Bus(nc, s.nats, stage="challenger")
    await bus.ensure_topology()
    stop = asyncio.Event()
    async with TritonPool(s.models, names=s.competitors) as pool:
        task = asyncio.create_task(run_challenger(Deps(s, bus, pool), stop))
        for _ in range(100):
            if await bus.backlog(subjects.STREAM_CHALLENGES) >= 3:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        stop.set()
        await asyncio.wait_for(task, 10)
    assert await bus.backlog(subjects.STREAM_CHALLENGES) == 3
    await nc.drain()


async def test_exact_duplicates_are_refused_across_replicas(nats_url):
    s = arena_settings(nats_url=nats_url)
    ncs = [await connect(s.nats) for _ in range(2)]
    kvs = [await Bus(nc, s.nats, stage="challenger").kv(subjects.KV_DEDUP) for nc in ncs]
    results = await asyncio.gather(
        admit(kvs[0], "Write a  Parser", "a" * 32), admit(kvs[1], "write a parser", "b" * 32)
    )
    assert sorted(results) == [False, True]
    assert await admit(kvs[0], "Write a tokenizer", "c" * 32)
    for nc in ncs:
        await nc.drain()


async def test_schedule_cursor_is_shared_by_replicas(nats_url):
    s = arena_settings(nats_url=nats_url)
    ncs = [await connect(s.nats) for _ in range(3)]
    kvs = [await Bus(nc, s.nats, stage="challenger").kv(subjects.KV_SCHEDULE) for nc in ncs]
    cursors = await asyncio.gather(*(next_cursor(kvs[i % 3]) for i in range(30)))
    assert sorted(cursors) == list(range(30))  # every slot taken exactly once
    for nc in ncs:
        await nc.drain()
