"""The challenger's de-dup index on the in-process KV: band collisions verified on the words,
racing replicas, restarts, releases (exact key included, never someone else's) and the word
cache."""

from __future__ import annotations

import asyncio

from warriorcoder.arena.near_dup import LshBands
from warriorcoder.stages.challenger.filters import DedupIndex
from warriorcoder.testing.fakes import FakeKV

BANDS = LshBands(num_perm=128, threshold=0.5)

# Distinct instructions (Jaccard 0.25) whose MinHash signatures share an LSH band.
ROMAN = (
    "Write a Python function that converts Roman numerals to integers and raises ValueError "
    "on bad input."
)
MATRIX = "Write a Python function that rotates a matrix by 90 degrees and returns the result."
NEAR = [
    "Write a Python function that merges overlapping intervals in a list and returns the merged "
    "list sorted by start.",
    "Write a Python function that merges overlapping intervals in a list and returns the merged "
    "list.",
    "write a python function that merges overlapping intervals in a list, returning the merged "
    "list sorted by start",
]


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
    assert len([k for k in held if k.startswith("lsh.")]) == 3 * BANDS.bands


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
        await kv.put(f"lsh.{band}.{a}", b"")
    assert (await DedupIndex(kv, BANDS).claim(NEAR[1], b))[0] is not None

    class Broken(FakeKV):
        async def revisions(self, patterns):
            raise TimeoutError

    broken = Broken()
    try:
        await DedupIndex(broken, BANDS).claim(NEAR[0], a)
    except TimeoutError:
        pass
    else:
        raise AssertionError("the listing's error must reach the miner")
    assert broken.held_keys() == []


async def test_the_word_cache_is_bounded():
    kv = FakeKV()
    dedup = DedupIndex(kv, BANDS, cache_size=2)
    texts = [ROMAN, MATRIX, NEAR[0]]
    for text, i in zip(texts, ids(3), strict=True):
        assert (await dedup.claim(text, i))[0] is not None
    assert len(dedup.cache) == 2
    assert dedup.cache.get(ids(1)[0]) is None  # the least recently used went first


async def test_fake_kv_lists_keys_by_subject_pattern():
    kv = FakeKV()
    await kv.put("lsh.00.ab.x1", b"")
    r2 = await kv.put("lsh.00.ab.x2", b"")
    await kv.put("lsh.00.abc.x3", b"")
    await kv.put("lsh.01.ab.x4", b"")
    await kv.delete("lsh.00.ab.x1")
    assert await kv.revisions(["lsh.00.ab.*"]) == {"lsh.00.ab.x2": r2}
    assert set(await kv.revisions(["lsh.00.>"])) == {"lsh.00.ab.x2", "lsh.00.abc.x3"}
    assert set(await kv.revisions(["lsh.*.ab.*", "nothing.*"])) == {"lsh.00.ab.x2", "lsh.01.ab.x4"}
    assert await kv.revisions(["lsh.00"]) == {}
