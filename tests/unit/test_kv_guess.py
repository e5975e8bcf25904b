"""Compare-and-set from a guess (``runtime.kv``): a right guess writes without reading, a wrong
one falls back to read-and-write with the same result, a declined guess is checked by a read, a
deleted key is re-created on its tombstone's revision; and the de-dup index's round trips."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.helpers import NEAR
from warriorcoder.arena.near_dup import LshBands
from warriorcoder.proto.state import BandMembers, Cursor, decode_state, encode
from warriorcoder.runtime.kv import Versioned, get_many, update_versioned
from warriorcoder.stages.challenger.filters import DedupIndex
from warriorcoder.testing.fakes import FakeKV


class CountingKV(FakeKV):
    """FakeKV that counts its calls by operation."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    async def get(self, key, revision=None):  # type: ignore[no-untyped-def]
        self.calls["get"] += 1
        return await super().get(key, revision)

    async def create(self, key, value):  # type: ignore[no-untyped-def]
        self.calls["create"] += 1
        return await super().create(key, value)

    async def update(self, key, value, last=None):  # type: ignore[no-untyped-def]
        self.calls["update"] += 1
        return await super().update(key, value, last)

    async def delete(self, key, last=None):  # type: ignore[no-untyped-def]
        self.calls["delete"] += 1
        return await super().delete(key, last)


def bump(c: Cursor) -> Cursor:
    return Cursor(next=c.next + 1)


async def test_a_right_guess_writes_once_without_reading():
    kv = CountingKV()
    rev = await kv.put("cursor", encode(Cursor(next=4)))
    read, written = await update_versioned(
        kv, "cursor", Cursor, bump, guess=Versioned(Cursor(next=4), rev)
    )
    assert kv.calls == Counter(update=1)
    assert read == Versioned(Cursor(next=4), rev)
    assert written == Versioned(Cursor(next=5), rev + 1)


async def test_a_guessed_absent_key_is_created_conditionally_in_one_call():
    kv = CountingKV()
    read, written = await update_versioned(kv, "cursor", Cursor, bump, guess=Versioned(Cursor(), 0))
    assert kv.calls == Counter(update=1)
    assert read.revision == 0 and written == Versioned(Cursor(next=1), 1)


async def test_a_stale_guess_falls_back_to_the_current_value():
    kv = CountingKV()
    old = await kv.put("cursor", encode(Cursor(next=4)))
    now = await kv.put("cursor", encode(Cursor(next=9)))  # another writer since
    conflicts: list[int] = []
    read, written = await update_versioned(
        kv, "cursor", Cursor, bump, guess=Versioned(Cursor(next=4), old),
        on_conflict=lambda: conflicts.append(1),
    )  # fmt: skip
    assert read == Versioned(Cursor(next=9), now)
    assert written is not None and written.doc == Cursor(next=10)
    assert kv.calls == Counter(update=2, get=1)
    assert decode_state((await kv.get("cursor")).value, Cursor) == Cursor(next=10)
    assert conflicts == []  # a stale guess is not a lost race


async def test_a_guessed_absent_key_that_exists_is_updated_not_overwritten():
    kv = CountingKV()
    await kv.put("band", encode(BandMembers(ids=["a"])))

    def add(b: BandMembers) -> BandMembers | None:
        return None if "b" in b.ids else BandMembers(ids=[*b.ids, "b"])

    _, written = await update_versioned(
        kv, "band", BandMembers, add, guess=Versioned(BandMembers(), 0)
    )
    assert written is not None and written.doc.ids == ["a", "b"]


async def test_a_declined_guess_is_decided_again_on_the_key_read():
    kv = CountingKV()
    await kv.put("band", encode(BandMembers(ids=["x"])))

    def add_b(b: BandMembers) -> BandMembers | None:
        return None if "b" in b.ids else BandMembers(ids=[*b.ids, "b"])

    # The guess says "b" is already there; the key says otherwise: the write still happens.
    _, written = await update_versioned(
        kv, "band", BandMembers, add_b, guess=Versioned(BandMembers(ids=["b"]), 1)
    )
    assert written is not None and written.doc.ids == ["x", "b"]
    assert kv.calls["get"] == 1


class TombstoneKV(CountingKV):
    """nats.py 2.16's ``KeyValue.get`` of a deleted key: KeyNotFoundError naming the delete
    marker (``entry.revision``), and ``create``/``update(last=0)`` of it fail (nats.js.kv)."""

    async def get(self, key, revision=None):  # type: ignore[no-untyped-def]
        from nats.js.errors import KeyNotFoundError
        from nats.js.kv import KeyValue

        slot = self._slots.get(key)
        if slot is not None and slot.deleted:
            self.calls["get"] += 1
            entry = KeyValue.Entry("fake", key, None, slot.revision, None, None, "DEL")
            raise KeyNotFoundError(entry, "DEL")
        return await super().get(key, revision)

    async def create(self, key, value):  # type: ignore[no-untyped-def]
        self.calls["create"] += 1
        return await FakeKV.update(self, key, value, 0)  # no re-read: shows a wasted create


async def test_a_deleted_key_is_recreated_on_its_tombstone_revision():
    kv = TombstoneKV()
    await kv.put("cursor", encode(Cursor(next=3)))
    await kv.delete("cursor")
    kv.calls.clear()
    _, written = await update_versioned(kv, "cursor", Cursor, bump)
    assert written is not None and written.doc == Cursor(next=1)
    assert kv.calls == Counter(get=1, update=1)  # no create that would fail on the marker


async def test_get_many_leaves_out_absent_and_deleted_keys():
    kv = FakeKV()
    await kv.put("a", b"1")
    rev_b = await kv.put("b", b"2")
    await kv.put("c", b"3")
    await kv.delete("c")
    got = await get_many(kv, ["a", "b", "c", "zz", "a"])
    assert sorted(got) == ["a", "b"]
    assert got["b"].value == b"2" and got["b"].revision == rev_b


async def test_an_admission_on_an_empty_index_reads_no_band_before_writing_it():
    kv = CountingKV()
    dedup = DedupIndex(kv, LshBands(num_perm=128, threshold=0.5))
    claim, _ = await dedup.claim(NEAR[0], "a" * 32)
    assert claim is not None
    bands = dedup.bands.bands if dedup.bands else 0
    # exact create, one conditional create per band, and the post-commit read of every band
    assert kv.calls["update"] == bands
    assert kv.calls["get"] == bands  # FakeKV has no batched read: one get per band
    kv.calls.clear()
    await claim.release()
    # each band: one conditional write from the claim's own read, one conditional delete
    assert kv.calls["update"] == bands and kv.calls["get"] == 0
    assert kv.calls["delete"] == bands + 2  # + words and exact keys
    assert kv.held_keys() == []


async def test_the_schedule_cursor_writes_once_per_slot_and_stays_shared():
    from warriorcoder.runtime.stores import ScheduleCursor

    kv = CountingKV()
    mine, other = ScheduleCursor(kv), ScheduleCursor(kv)
    assert [await mine.next() for _ in range(3)] == [0, 1, 2]
    assert kv.calls == Counter(get=1, create=1, update=2)  # a read only at the first take
    assert await other.next() == 3  # another replica took a slot: our guess is stale
    slots = await asyncio.gather(*(c.next() for c in (mine, other, mine, other)))
    assert sorted(slots) == [4, 5, 6, 7]


async def test_the_budget_is_never_overspent_from_a_guess():
    from warriorcoder.runtime.stores import Budget

    kv = CountingKV()
    a, b = Budget(kv), Budget(kv)
    await a.set(3)
    taken = await asyncio.gather(*(x.take() for x in (a, b, a, b, a)))
    assert sorted(taken) == [False, False, True, True, True]
    await b.set(1)  # raised behind a's back: a's guess (spent) is read again, not trusted
    assert await a.take() is True and await a.take() is False
