"""The challenger's de-dup index on the in-process KV: band collisions verified on the words,
racing replicas, restarts, releases (exact key included, never someone else's), the word
cache, and the one-key-per-band membership under racing joins and leaves."""

from __future__ import annotations

import asyncio

from tests.helpers import NEAR, band_members
from warriorcoder.arena.near_dup import LshBands
from warriorcoder.stages.challenger.filters import DedupIndex, join_band, leave_band, read_band
from warriorcoder.testing.fakes import FakeKV

BANDS = LshBands(num_perm=128, threshold=0.5)

# Distinct instructions (Jaccard 0.25) whose MinHash signatures share an LSH band.
ROMAN = (
    "Write a Python function that converts Roman numerals to integers and raises ValueError "
    "on bad input."
)
MATRIX = "Write a Python function that rotates a matrix by 90 degrees and returns the result."


def ids(n: int) -> list[str]:
    return [f"{i:032x}" for i in range(1, n + 1)]


def test_the_fixtures_collide_in_a_band_without_being_near_duplicates():
    assert LshBands.jaccard(ROMAN, MATRIX) < 0.4
    assert set(BANDS.keys(ROMAN)) & set(BANDS.keys(MATRIX))
    assert all(LshBands.jaccard(x, y) > 0.5 for x in NEAR for y in NEAR)


async def test_a_band_collision_with_a_distinct_instruction_is_admitted():
    dedup = DedupIndex(FakeKV(), BANDS)
    a, b = ids(2)
    first, _ = await dedup.claim(ROMAN, a)
    second, reason = await dedup.claim(MATRIX, b)
    assert first is not None and second is not None and reason == ""
    assert dedup.fetched == 0  # the candidate's words came from this process's cache


async def test_racing_replicas_admit_one_near_duplicate_and_every_distinct_one():
    kv = FakeKV()
    replicas = [DedupIndex(kv, BANDS) for _ in range(5)]
    texts = [*NEAR, ROMAN, MATRIX]
    results = await asyncio.gather(
        *(r.claim(t, i) for r, t, i in zip(replicas, texts, ids(5), strict=True))
    )
    reasons = [reason for _, reason in results]
    assert sorted(reasons[:3]) == ["", "near_duplicate", "near_duplicate"]
    assert reasons[3:] == ["", ""]
    # The two withdrawn ones hold nothing; the three admitted hold every key
    held = kv.held_keys()
    assert len([k for k in held if k.startswith("exact.")]) == 3
    assert len([k for k in held if k.startswith("words.")]) == 3
    # (one key per band, shared by its members: count memberships, not keys)
    members = await band_members(kv)
    assert len(members) == 3 * BANDS.bands
    admitted = {i for (claim, _), i in zip(results, ids(5), strict=True) if claim is not None}
    assert {m.rsplit("/", 1)[1] for m in members} == admitted


async def test_a_restarted_replica_sees_the_index_and_fetches_the_words_it_lacks():
    kv = FakeKV()
    a, b, c = ids(3)
    assert (await DedupIndex(kv, BANDS).claim(NEAR[0], a))[0] is not None
    fresh = DedupIndex(kv, BANDS)
    assert await fresh.claim(NEAR[1], b) == (None, "near_duplicate")
    assert fresh.fetched == 1
    assert await fresh.claim(NEAR[2], c) == (None, "near_duplicate")
    assert fresh.fetched == 1  # cached since the first fetch


async def test_exact_duplicates_are_refused_and_a_release_frees_every_key():
    kv = FakeKV()
    dedup = DedupIndex(kv, BANDS)
    a, b, c = ids(3)
    claim, _ = await dedup.claim(NEAR[0], a)
    assert claim is not None
    assert await dedup.claim(NEAR[0].upper(), b) == (None, "duplicate")
    await claim.release()
    assert kv.held_keys() == []
    again, _ = await dedup.claim(NEAR[0], c)  # neither exact nor near blocks it any more
    assert again is not None


async def test_a_release_never_frees_another_claim_of_the_same_text():
    kv = FakeKV()
    dedup = DedupIndex(kv, None)
    a, b = ids(2)
    old, _ = await dedup.claim(ROMAN, a)
    assert old is not None
    await kv.delete(old.exact_key)  # the key was freed and claimed anew meanwhile
    new, _ = await dedup.claim(ROMAN, b)
    assert new is not None
    await old.release()  # stale revision: the delete is refused, logged, and nothing changes
    assert (await kv.get(new.exact_key)).value == b.encode()
    assert await dedup.claim(ROMAN, a) == (None, "duplicate")


async def test_an_uncommitted_member_is_ignored_and_a_failed_claim_leaves_nothing():
    kv = FakeKV()
    a, b = ids(2)
    # A replica died between its band keys and its words: its keys rank nothing.
    for band in BANDS.keys(NEAR[0]):
        await join_band(kv, f"lsh.{band}", a)
    assert (await DedupIndex(kv, BANDS).claim(NEAR[1], b))[0] is not None

    class Broken(FakeKV):
        """Band reads fail once the claim's words are written (NATS went away mid-claim)."""

        async def get(self, key, revision=None):
            if key.startswith("lsh.") and any(k.startswith("words.") for k in self.held_keys()):
                raise TimeoutError
            return await super().get(key, revision)

    broken = Broken()
    try:
        await DedupIndex(broken, BANDS).claim(NEAR[0], a)
    except TimeoutError:
        pass
    else:
        raise AssertionError("the band read's error must reach the miner")
    assert broken.held_keys() == []


async def test_the_word_cache_is_bounded():
    kv = FakeKV()
    dedup = DedupIndex(kv, BANDS, cache_size=2)
    texts = [ROMAN, MATRIX, NEAR[0]]
    for text, i in zip(texts, ids(3), strict=True):
        assert (await dedup.claim(text, i))[0] is not None
    assert len(dedup.cache) == 2
    assert dedup.cache.get(ids(1)[0]) is None  # the least recently used went first


async def test_band_membership_survives_racing_joins_and_leaves():
    # Every interleaving of the fake's yields: a leave that empties a band never deletes a
    # member that joined meanwhile, and a band whose last member left is deleted.
    for delay in range(6):
        kv = FakeKV()
        await join_band(kv, "lsh.00.ab", "a")

        async def join_later(kv=kv, d=delay):
            for _ in range(d):
                await asyncio.sleep(0)
            await join_band(kv, "lsh.00.ab", "b")

        await asyncio.gather(leave_band(kv, "lsh.00.ab", "a"), join_later())
        assert await read_band(kv, "lsh.00.ab") == ["b"], delay
        await join_band(kv, "lsh.00.ab", "b")  # already a member: no write
        assert await read_band(kv, "lsh.00.ab") == ["b"]
        await leave_band(kv, "lsh.00.ab", "b")
        assert kv.held_keys() == []
        assert await read_band(kv, "lsh.00.ab") == []


def test_the_caches_are_bounded_by_what_they_hold_not_only_by_entries():
    """A challenger runs for weeks: its word cache is bounded in bytes and its band cache in
    member ids (a popular band's document grows with the index), so its memory levels off."""
    from warriorcoder.proto.state import BandMembers
    from warriorcoder.runtime.kv import Versioned
    from warriorcoder.stages.challenger.filters import BandCache, WordsCache

    words = WordsCache(size=100, max_bytes=250)
    for i in range(5):
        words.put(f"id{i}", b"x" * 100, i + 1)
    assert len(words) == 2 and words.bytes == 200  # the oldest three evicted
    assert words.get("id0") is None and words.get("id4") == (b"x" * 100, 5)
    words.put("id4", b"y" * 10, 6)  # replacing an entry counts its new size only
    assert words.bytes == 110

    bands = BandCache(size=100, max_members=10)
    for i in range(4):
        bands.put(f"b{i}", Versioned(BandMembers(ids=[f"m{j}" for j in range(4)]), i + 1))
    assert len(bands) == 2 and bands.members == 8
    assert bands.get("b0") is None and bands.get("b3") is not None
    bands.put("b3", Versioned(BandMembers(ids=["m0"]), 9))
    assert bands.members == 5
