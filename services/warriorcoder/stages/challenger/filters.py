"""The challenger's de-dup index in NATS KV: exact duplicates, and near-duplicates verified
against each LSH candidate's words (the protocol of ``warriorcoder.arena.near_dup``).

Usage::

    dedup = DedupIndex(kv, LshBands(num_perm=128, threshold=0.5))
    claim, reason = await dedup.claim(instruction, challenge_id)  # (None, "duplicate") or
    ...                                                           # (None, "near_duplicate")
    await claim.release()     # dropped later (quality, budget, scorer, publish): free every key

Exact duplicates: ``exact.<sha256 of the normalised text>`` is created atomically, so of two
replicas admitting the same text exactly one wins. Near-duplicates: the newcomer writes its band
keys ``lsh.<band key>.<id>``, then ``words.<id>`` (the commit point, whose revision ranks it),
lists its bands' members with one server-filtered consumer (``runtime.kv_keys``), and is
rejected only by an EARLIER committed member whose word-set Jaccard similarity is >= the
threshold; so a distinct instruction that merely shares a band is admitted, and of two racing
near-duplicates the later one always sees the earlier and withdraws (``near_dup`` explains why).
A word set never changes once written, so the candidates' words are cached per process (LRU,
with their revision) and only misses are fetched.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from warriorcoder.arena.instructions import normalise
from warriorcoder.arena.near_dup import Candidate, LshBands, decide, encode_words, word_hashes
from warriorcoder.runtime.kv_keys import KeyLister, bucket_keys
from warriorcoder.runtime.ports import KeyValueStore

__all__ = ["Claim", "DedupIndex", "WordsCache"]

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 100_000  # ~40 MB of word sets: every candidate of a 100k index, hot ones kept


def _exact_key(instruction: str) -> str:
    return "exact." + hashlib.sha256(normalise(instruction).encode()).hexdigest()[:40]


@dataclass
class Claim:
    """Keys an admitted instruction holds in the de-dup index: the exact key (with the revision
    it was created at) and its near-duplicate keys (band keys and words)."""

    kv: KeyValueStore
    exact_key: str = ""
    exact_rev: int = 0
    near_keys: list[str] = field(default_factory=list)

    async def release(self) -> None:
        """Delete every key, words first (a member without words is ignored by everyone); the
        exact key only while it holds this claim's revision, so a release never frees another
        claim. Best effort: a key that cannot be deleted (NATS away) is logged and kept."""
        words = [k for k in self.near_keys if k.startswith("words.")]
        bands = [k for k in self.near_keys if not k.startswith("words.")]
        for keys in (words, bands):
            await asyncio.gather(*(self._delete(k) for k in keys))
        if self.exact_key:
            await self._delete(self.exact_key, last=self.exact_rev)
        self.near_keys, self.exact_key, self.exact_rev = [], "", 0

    async def _delete(self, key: str, last: int | None = None) -> None:
        try:
            await self.kv.delete(key, last=last)
        except Exception as exc:  # NATS away, or the exact key was claimed anew since
            log.warning("could not release a de-dup key %s: %s", key, exc)


class WordsCache:
    """Bounded LRU of committed word sets: id -> (encoded words, revision of ``words.<id>``)."""

    def __init__(self, size: int = DEFAULT_CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[bytes, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, id: str) -> tuple[bytes, int] | None:
        entry = self._entries.get(id)
        if entry is not None:
            self._entries.move_to_end(id)
        return entry

    def put(self, id: str, words: bytes, rev: int) -> None:
        self._entries[id] = (words, rev)
        self._entries.move_to_end(id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


class DedupIndex:
    """``bands`` None: exact duplicates only. ``lister`` lists band members (default: the
    bucket's own, ``runtime.kv_keys.bucket_keys``)."""

    def __init__(
        self,
        kv: KeyValueStore,
        bands: LshBands | None,
        *,
        lister: KeyLister | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.kv = kv
        self.bands = bands
        self.lister = lister if lister is not None or bands is None else bucket_keys(kv)
        self.cache = WordsCache(cache_size)
        self.fetched = 0  # word sets read from the bucket (cache misses), for the benchmark

    async def claim(self, instruction: str, challenge_id: str) -> tuple[Claim | None, str]:
        """Claim the instruction's keys; (None, reason) when it duplicates an admitted one."""
        claim = Claim(self.kv, _exact_key(instruction))
        try:
            claim.exact_rev = await self.kv.create(claim.exact_key, challenge_id.encode())
        except KeyWrongLastSequenceError:
            return None, "duplicate"
        if self.bands is None:
            return claim, ""
        try:
            admitted = await self._near(claim, instruction, challenge_id)
        except BaseException:
            await claim.release()  # a failed admission blocks nothing
            raise
        if not admitted:
            await claim.release()
            return None, "near_duplicate"
        return claim, ""

    async def _near(self, claim: Claim, instruction: str, id: str) -> bool:
        assert self.bands is not None and self.lister is not None
        band_keys = self.bands.keys(instruction)
        own = word_hashes(instruction)
        members = [f"lsh.{b}.{id}" for b in band_keys]
        words_key = f"words.{id}"
        claim.near_keys = [*members, words_key]
        await asyncio.gather(*(self.kv.put(k, b"") for k in members))  # band keys first
        encoded = encode_words(own)
        rank = await self.kv.put(words_key, encoded)  # the commit point: its revision ranks us
        listed = await self.lister.revisions([f"lsh.{b}.*" for b in band_keys])
        ids = {k.rsplit(".", 1)[1] for k in listed} - {id}
        decision = decide(own, rank, await self._candidates(ids), threshold=self.bands.threshold)
        if decision.admitted:
            self.cache.put(id, encoded, rank)
        else:
            log.info(
                "near-duplicate",
                extra={"id": id, "of": decision.by_id, "jaccard": round(decision.jaccard, 3)},
            )
        return decision.admitted

    async def _candidates(self, ids: set[str]) -> list[Candidate]:
        out: list[Candidate] = []
        missing: list[str] = []
        for i in sorted(ids):
            hit = self.cache.get(i)
            if hit is None:
                missing.append(i)
            else:
                out.append(Candidate(i, *hit))
        fetched = await asyncio.gather(*(self._words(i) for i in missing))
        self.fetched += len(missing)
        for i, entry in zip(missing, fetched, strict=True):
            if entry is None:  # not committed yet: it will see us when it decides
                out.append(Candidate(i, None, 0))
            else:
                self.cache.put(i, *entry)
                out.append(Candidate(i, *entry))
        return out

    async def _words(self, id: str) -> tuple[bytes, int] | None:
        try:
            entry = await self.kv.get(f"words.{id}")
        except KeyNotFoundError:
            return None
        return entry.value or b"", entry.revision or 0
