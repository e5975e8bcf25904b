"""The state documents: round trips, today's stored formats, and the typed compare-and-set that
the cursor, the budget, the rejection counts and the ratings share (on the in-process KV fake)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError

from tests.helpers import arena_settings, judgement
from warriorcoder.arena.decide import decide
from warriorcoder.proto import subjects
from warriorcoder.proto.state import (
    BandMembers,
    ChallengeBudget,
    Cursor,
    Ratings,
    RejectionCounts,
    ShardLine,
    ShardLineId,
    decode_state,
    encode,
)
from warriorcoder.runtime.kv import CasConflictError, update_state
from warriorcoder.runtime.stores import Budget, RejectionStats, ScheduleCursor
from warriorcoder.stages.aggregator.ratings import RatingsStore
from warriorcoder.testing.fakes import FakeKV

DOCUMENTS = [
    Ratings(ratings={"alpha": 1010.5, "beta": 989.5}, battles=1, recent=[("a" * 32, 1e3, 1e3)]),
    Cursor(next=7),
    ChallengeBudget(remaining=3),
    ChallengeBudget(remaining=None),
    RejectionCounts(counts={"duplicate": 2, "too_short": 1}),
    BandMembers(ids=["a" * 32, "b" * 32]),
]


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda d: type(d).__name__)
def test_documents_round_trip_with_a_versioned_tag(doc):
    data = encode(doc)
    assert msgspec.json.decode(data)["type"].startswith("warriorcoder.v1.")
    assert decode_state(data, type(doc)) == doc


@pytest.mark.parametrize("type_", [Ratings, Cursor, ChallengeBudget, RejectionCounts, BandMembers])
def test_an_absent_key_is_the_empty_document(type_):
    assert decode_state(None, type_) == type_()
    assert decode_state(b"", type_) == type_()


def test_documents_are_frozen_and_ignore_unknown_fields():
    with pytest.raises(AttributeError):
        Cursor(next=1).next = 2  # type: ignore[misc]
    data = b'{"type": "warriorcoder.v1.cursor", "next": 4, "added_later": [1]}'
    assert decode_state(data, Cursor) == Cursor(next=4)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (b"42", Cursor(next=42)),
        (b"unlimited", ChallengeBudget(remaining=None)),
        (b"17", ChallengeBudget(remaining=17)),
        (b"0", ChallengeBudget(remaining=0)),
        (
            b'{"duplicate": 3, "near_duplicate": 1}',
            RejectionCounts(counts={"duplicate": 3, "near_duplicate": 1}),
        ),
    ],
)
def test_the_values_stored_before_the_documents_are_still_read(stored, expected):
    assert decode_state(stored, type(expected)) == expected


@pytest.mark.parametrize(
    ("stored", "type_"),
    [
        (b"nonsense", Cursor),
        (b"{", RejectionCounts),
        (b'{"type": "warriorcoder.v1.cursor", "next": -1}', Cursor),
        (b'{"type": "warriorcoder.v1.ratings", "ratings": {}}', Cursor),  # another document
        (b"12", Ratings),  # the ratings never had another format
        (b'{"duplicate": "many"}', RejectionCounts),
    ],
)
def test_other_values_are_rejected(stored, type_):
    with pytest.raises(msgspec.DecodeError):
        decode_state(stored, type_)


def _sample():
    sample = decide(judgement(["attacker"]), 1000.0, 1000.0, arena_settings().scoring)
    assert sample is not None
    return sample


def test_a_shard_line_is_the_sample_as_on_the_bus():
    sample = _sample()
    line = encode(sample) + b"\n"
    assert msgspec.json.decode(line, type=ShardLine) == sample
    assert msgspec.json.decode(line)["type"] == "warriorcoder.v1.sample"
    assert msgspec.json.decode(line, type=ShardLineId) == ShardLineId(id=sample.id)


# -- typed compare-and-set ------------------------------------------------------------------------


async def test_update_state_creates_changes_and_declines():
    kv = FakeKV()
    before, after = await update_state(kv, "cursor", Cursor, lambda c: Cursor(next=c.next + 5))
    assert (before, after) == (Cursor(), Cursor(next=5))
    before, after = await update_state(kv, "cursor", Cursor, lambda c: None)
    assert (before, after) == (Cursor(next=5), None)
    assert decode_state((await kv.get("cursor")).value, Cursor) == Cursor(next=5)


async def test_update_state_migrates_a_legacy_value_on_its_first_write():
    kv = FakeKV()
    await kv.put(subjects.SCHEDULE_KEY, b"41")
    assert await ScheduleCursor(kv).next() == 41
    stored = (await kv.get(subjects.SCHEDULE_KEY)).value
    assert msgspec.json.decode(stored) == {"type": "warriorcoder.v1.cursor", "next": 42}


async def test_lost_races_are_retried_and_reported():
    kv = FakeKV()
    conflicts = 0

    def lost() -> None:
        nonlocal conflicts
        conflicts += 1

    async def take() -> int:
        before, _ = await update_state(
            kv, "cursor", Cursor, lambda c: Cursor(next=c.next + 1), on_conflict=lost
        )
        return before.next

    slots = await asyncio.gather(*(take() for _ in range(20)))
    assert sorted(slots) == list(range(20))
    assert conflicts > 0  # the fake interleaves the readers, so some writes lost


async def test_update_state_gives_up_after_its_attempts():
    class Contended(FakeKV):
        async def update(self, key: str, value: bytes, last: int | None = None) -> int:
            await self.put(key, value)  # another writer gets there first, every time
            return await super().update(key, value, last)

    kv = Contended()
    await kv.put("cursor", encode(Cursor(next=1)))
    conflicts: list[None] = []
    with pytest.raises(CasConflictError):
        await update_state(
            kv,
            "cursor",
            Cursor,
            lambda c: Cursor(next=c.next + 1),
            attempts=3,
            on_conflict=lambda: conflicts.append(None),
        )
    assert len(conflicts) == 3
    assert CasConflictError("x").retryable


# -- the stores on top of it ----------------------------------------------------------------------


async def test_schedule_cursor_hands_out_each_slot_once():
    kv = FakeKV()
    cursors = [ScheduleCursor(kv) for _ in range(3)]
    slots = await asyncio.gather(*(cursors[i % 3].next() for i in range(30)))
    assert sorted(slots) == list(range(30))


async def test_budget_reads_today_s_values_and_keeps_its_api():
    kv = FakeKV()
    budget = Budget(kv)
    assert await budget.remaining() is None
    assert await budget.take()  # no key: no limit, nothing written
    with pytest.raises(KeyNotFoundError):
        await kv.get(subjects.BUDGET_KEY)
    await kv.put(subjects.BUDGET_KEY, b"2")  # written by the previous version
    assert await budget.remaining() == 2
    assert await budget.take()
    assert await budget.take()
    assert not await budget.take()
    assert await budget.remaining() == 0
    await budget.give_back()
    await budget.add(2)
    assert await budget.remaining() == 3
    await kv.put(subjects.BUDGET_KEY, b"unlimited")
    assert await budget.remaining() is None
    await budget.add(5)  # no limit stays no limit
    assert await budget.remaining() is None
    await budget.set(1)
    assert decode_state((await kv.get(subjects.BUDGET_KEY)).value, ChallengeBudget).remaining == 1
    await budget.set(None)
    assert await budget.remaining() is None
    assert await budget.take()


async def test_rejection_stats_sum_over_replicas_from_today_s_object():
    kv = FakeKV()
    assert await RejectionStats.read(kv) == {}
    await kv.put(subjects.STATS_REJECTIONS_KEY, b'{"duplicate": 2}')
    replicas = [RejectionStats(kv) for _ in range(3)]
    await asyncio.gather(
        *(r.add("duplicate" if i % 2 else "too_short") for i, r in enumerate(replicas * 2))
    )
    assert await RejectionStats.read(kv) == {"duplicate": 5, "too_short": 3}


async def test_ratings_store_applies_each_battle_once_and_counts_conflicts():
    from prometheus_client import REGISTRY

    def conflicts() -> float:
        return REGISTRY.get_sample_value("warriorcoder_rating_conflicts_total") or 0.0

    scoring = arena_settings().scoring
    kv = FakeKV()
    stores = [RatingsStore(kv, scoring) for _ in range(4)]

    def step(ra: float, rd: float) -> tuple[float, float]:
        return ra + 10, rd - 10

    conflicts_before = conflicts()
    battles = [f"{i:032x}" for i in range(8)]
    applied = await asyncio.gather(
        *(stores[i % 4].apply(b, "alpha", "beta", step) for i, b in enumerate(battles))
    )
    assert not any(a.duplicate for a in applied)
    doc, revision = await stores[0].read()
    assert revision is not None
    assert doc.battles == 8
    assert doc.ratings == {
        "alpha": scoring.initial_rating + 80,
        "beta": scoring.initial_rating - 80,
    }
    assert conflicts() > conflicts_before  # the fake interleaves the replicas

    # The one battle that can come back (the ordered consumer delivers nothing new until it is
    # acked): the last applied, whichever the race made it.
    assert doc.last is not None
    k = battles.index(doc.last.id)
    again = await stores[1].apply(battles[k], "alpha", "beta", step)
    assert again is not None
    assert again.duplicate
    assert again.r_attacker == applied[k].r_attacker
    assert (await stores[0].read())[0].battles == 8
