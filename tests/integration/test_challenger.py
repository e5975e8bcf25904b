"""The challenger against real servers: mining, cleaning, de-dup, water marks, shared schedule."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.errors import NoKeysError

from tests.conftest import SCRIPTED_MODELS
from tests.helpers import NEAR, arena_settings
from warriorcoder.arena.near_dup import LshBands
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Challenge, decode
from warriorcoder.proto.state import BandMembers, decode_state
from warriorcoder.runtime.bus import Bus, connect
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.stage import Deps
from warriorcoder.runtime.stores import Budget, next_cursor
from warriorcoder.runtime.triton import TritonPool
from warriorcoder.stages.challenger.filters import DedupIndex
from warriorcoder.stages.challenger.service import BUCKETS, STAGE, Miner
from warriorcoder.stages.challenger.service import run as run_challenger
from warriorcoder.testing.fakes import FakeInference, FakePublisher
from warriorcoder.testing.scripted import load_models

pytestmark = pytest.mark.integration


def deps(s, bus, pool) -> Deps:
    return Deps.build(s, STAGE.models(s), inference=pool, bus=bus)


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
    async with TritonPool(s.models, names=STAGE.models(s)) as pool:
        task = asyncio.create_task(run_challenger(deps(s, bus, pool), stop))
        await asyncio.sleep(4)  # no responder consumes: the backlog must stop growing
        settled = await bus.backlog(subjects.STREAM_CHALLENGES)
        await asyncio.sleep(1.5)
        assert await bus.backlog(subjects.STREAM_CHALLENGES) == settled
        stop.set()
        await asyncio.wait_for(task, 10)
    found = await challenges_in_stream(bus)
    await nc.drain()

    # Mining pauses once backlog + calls in flight reach the high water mark (4); calls in
    # flight then land or are rejected, so the backlog settles at or below the mark.
    assert len(found) == settled
    assert 1 < len(found) <= 4
    assert len({c.id for c in found}) == len(found)
    assert len({c.instruction for c in found}) == len(found)
    for c in found:
        assert c.attacker != c.defender
        assert c.attacker in s.competitors and c.defender in s.competitors
        assert "<|" not in c.instruction and "###" not in c.instruction
        assert c.language == "Python"
        assert (c.sampling.temperature, c.sampling.top_p) in s.sampling.challenge.grid()
        assert c.quality is not None and c.quality >= 5
        assert c.quality_scorer not in (None, c.attacker)
    # Round-robin: the first pairs are distinct ordered pairs.
    pairs = [(c.attacker, c.defender) for c in found]
    assert len(set(pairs)) == len(pairs)


async def test_the_shared_budget_limits_mining_across_replicas(nats_url, triton_url):
    s = arena_settings(triton_url, nats_url, challenger={"concurrency": 3})
    ncs = [await connect(s.nats) for _ in range(2)]
    buses = [Bus(nc, s.nats, stage="challenger") for nc in ncs]
    await buses[0].ensure_topology()
    budget = Budget(await buses[0].kv(subjects.KV_SCHEDULE))
    assert await budget.remaining() is None  # no key: no limit
    await budget.set(5)
    stop = asyncio.Event()
    async with TritonPool(s.models, names=STAGE.models(s)) as pool:
        tasks = [asyncio.create_task(run_challenger(deps(s, b, pool), stop)) for b in buses]
        for _ in range(100):
            if await budget.remaining() == 0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)  # both replicas idle, healthy, at budget 0
        assert await buses[0].backlog(subjects.STREAM_CHALLENGES) == 5
        await budget.add(2)  # raising the budget resumes mining
        for _ in range(100):
            if await buses[0].backlog(subjects.STREAM_CHALLENGES) == 7:
                break
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert await buses[0].backlog(subjects.STREAM_CHALLENGES) == 7
    assert await budget.remaining() == 0
    for nc in ncs:
        await nc.drain()


async def _dedup_indexes(nats_url, n, bands):
    s = arena_settings(nats_url=nats_url)
    ncs = [await connect(s.nats) for _ in range(n)]
    kvs = [await Bus(nc, s.nats, stage="challenger").kv(subjects.KV_DEDUP) for nc in ncs]
    return ncs, [DedupIndex(kv, bands) for kv in kvs]


async def test_exact_duplicates_are_refused_across_replicas(nats_url):
    ncs, (a, b) = await _dedup_indexes(nats_url, 2, None)
    results = await asyncio.gather(
        a.claim("Write a  Parser", "a" * 32), b.claim("write a parser", "b" * 32)
    )
    assert sorted(reason for _, reason in results) == ["", "duplicate"]
    claim, reason = await a.claim("Write a tokenizer", "c" * 32)
    assert claim is not None and reason == ""
    for nc in ncs:
        await nc.drain()


async def test_near_duplicates_are_never_both_admitted_across_replicas(nats_url):
    bands = LshBands(num_perm=128, threshold=0.5)
    ncs, indexes = await _dedup_indexes(nats_url, 3, bands)
    # Three replicas race to admit three near-duplicates (Jaccard > 0.5 with each other).
    assert all(LshBands.jaccard(x, y) > 0.5 for x in NEAR for y in NEAR)
    results = await asyncio.gather(
        *(
            ix.claim(text, f"{i:032x}")
            for i, (ix, text) in enumerate(zip(indexes, NEAR, strict=True))
        )
    )
    admitted = [claim for claim, _ in results if claim is not None]
    assert len(admitted) == 1
    assert sorted(r for _, r in results if r) == ["near_duplicate", "near_duplicate"]
    # A different instruction is admitted; a restart (new connection) keeps the index.
    other = "Implement a trie with insert, search and prefix-count operations for words."
    claim, _ = await indexes[0].claim(other, "f" * 32)
    assert claim is not None
    ncs2, (fresh,) = await _dedup_indexes(nats_url, 1, bands)
    assert (await fresh.claim(NEAR[1] + " Thanks", "e" * 32))[1] == "near_duplicate"
    # Releasing an admitted claim frees its band keys (e.g. it failed the quality gate).
    await claim.release()
    assert (await fresh.claim(other + " Please.", "d" * 32))[0] is not None
    for nc in ncs + ncs2:
        await nc.drain()


# Distinct instructions (Jaccard 0.25) whose MinHash signatures share an LSH band.
BAND_COLLIDING = [
    "Write a Python function that converts Roman numerals to integers and raises ValueError "
    "on bad input.",
    "Write a Python function that rotates a matrix by 90 degrees and returns the result.",
]


async def test_distinct_instructions_sharing_a_band_are_both_admitted_across_replicas(nats_url):
    bands = LshBands(num_perm=128, threshold=0.5)
    x, y = BAND_COLLIDING
    assert LshBands.jaccard(x, y) < 0.4 and set(bands.keys(x)) & set(bands.keys(y))
    ncs, indexes = await _dedup_indexes(nats_url, 4, bands)
    # Two replicas race the distinct pair, two others race a near-duplicate of each.
    texts = [x, y, x.replace("bad input", "invalid input"), y + " Thanks."]
    results = await asyncio.gather(
        *(
            ix.claim(t, f"{i + 1:032x}")
            for i, (ix, t) in enumerate(zip(indexes, texts, strict=True))
        )
    )
    reasons = [r for _, r in results]
    assert sorted(reasons[0::2]) == ["", "near_duplicate"]
    assert sorted(reasons[1::2]) == ["", "near_duplicate"]
    # Two admitted, which do not block each other; the withdrawn ones left no key behind.
    # (one key per band, shared by its members: count memberships rather than band keys)
    kv = indexes[0].kv
    held = await kv.keys()
    members = [
        (k, i)
        for k in held
        if k.startswith("lsh.")
        for i in decode_state((await kv.get(k)).value, BandMembers).ids
    ]
    others = [k for k in held if not k.startswith("lsh.")]
    assert len(members) + len(others) == 2 * (bands.bands + 2)
    assert {i for _, i in members} == {f"{i + 1:032x}" for i, (c, _) in enumerate(results) if c}
    for nc in ncs:
        await nc.drain()


async def test_a_failed_publish_releases_every_de_dup_key_on_a_real_bucket(nats_url):
    class Unreachable(FakePublisher):
        async def publish(self, subject, msg, *, msg_id):
            raise TimeoutError("no ack")

    s = arena_settings(nats_url=nats_url, challenger={"quality": {"enabled": False}})
    nc = await connect(s.nats)
    bus = Bus(nc, s.nats, stage="challenger")
    kvs = {b: await bus.kv(b) for b in BUCKETS}
    roster = Roster.from_settings(s, STAGE.models(s))
    m = Miner(s, roster, FakeInference(load_models(SCRIPTED_MODELS)), Unreachable(), kvs)
    with pytest.raises(TimeoutError):
        await m.mine_one()
    with pytest.raises(NoKeysError):  # nats.py: no live key left in the bucket
        await kvs[subjects.KV_DEDUP].keys()
    # A stale release never frees the key another claim holds (delete with last=revision).
    dedup = DedupIndex(kvs[subjects.KV_DEDUP], None)
    old, _ = await dedup.claim("Write a tokenizer", "a" * 32)
    assert old is not None
    await kvs[subjects.KV_DEDUP].delete(old.exact_key)
    new, _ = await dedup.claim("Write a tokenizer", "b" * 32)
    assert new is not None
    await old.release()
    assert (await kvs[subjects.KV_DEDUP].get(new.exact_key)).value == b"b" * 32
    await nc.drain()


async def test_schedule_cursor_is_shared_by_replicas(nats_url):
    s = arena_settings(nats_url=nats_url)
    ncs = [await connect(s.nats) for _ in range(3)]
    kvs = [await Bus(nc, s.nats, stage="challenger").kv(subjects.KV_SCHEDULE) for nc in ncs]
    cursors = await asyncio.gather(*(next_cursor(kvs[i % 3]) for i in range(30)))
    assert sorted(cursors) == list(range(30))  # every slot taken exactly once
    for nc in ncs:
        await nc.drain()


async def test_the_diversity_gate_admits_and_records_each_published_challenge(nats_url, triton_url):
    s = arena_settings(
        triton_url,
        nats_url,
        challenger={"diversity": {"enabled": True, "max_similarity": 0.99}},
    )
    nc = await connect(s.nats)
    bus = Bus(nc, s.nats, stage="challenger")
    await bus.ensure_topology()
    await Budget(await bus.kv(subjects.KV_SCHEDULE)).set(4)
    stop = asyncio.Event()
    async with TritonPool(s.models, names=STAGE.models(s)) as pool:
        task = asyncio.create_task(run_challenger(deps(s, bus, pool), stop))
        for _ in range(300):
            if await bus.backlog(subjects.STREAM_CHALLENGES) == 4:
                break
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 20)
    found = await challenges_in_stream(bus)
    embeddings = await bus.js.stream_info(subjects.STREAM_EMBEDDINGS)
    assert len(found) == 4
    assert embeddings.state.messages == 4  # one admitted embedding per published challenge
    await nc.drain()
