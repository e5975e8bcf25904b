"""The challenger's de-dup index in NATS KV: exact duplicates, and near-duplicates verified
against each LSH candidate's words (the protocol of ``warriorcoder.arena.near_dup``).

Usage::

    dedup = DedupIndex(kv, LshBands(num_perm=128, threshold=0.5))
    claim, reason = await dedup.claim(instruction, challenge_id)  # (None, "duplicate") or
    ...                                                           # (None, "near_duplicate")
    await claim.release()     # dropped later (quality, budget, scorer, publish): free every key

Exact duplicates: ``exact.<sha256 of the normalised text>`` is created atomically, so of two
replicas admitting the same text exactly one wins.

Near-duplicates, one key per band: ``lsh.<band key>`` holds the band's member ids
(``BandMembers``), changed only by compare-and-set (``runtime.kv.update_versioned``). An admission
adds its id to its 25 band keys (concurrently), THEN writes ``words.<id>`` (the commit point,
whose revision ranks it), THEN reads its 25 band keys (concurrent gets) and fetches the words of
the other members. Only an EARLIER committed member whose word-set Jaccard similarity is >= the
threshold rejects it; a member whose words are not written yet is ignored (it will see us). So a
distinct instruction that merely shares a band is admitted, and every step costs the same at 100k
admitted instructions as at 1k: 25 compare-and-sets, one put, 25 gets and the candidates' words
(no listing of the bucket, whose cost grows with it).

Why two racing near-duplicates A and B are never both admitted: revisions are totally ordered,
say ``words.A`` got the lower one. A's additions to its bands were acknowledged before it wrote
``words.A``; B reads its bands after writing ``words.B``, hence after A's additions. A
compare-and-set never loses a member (each write is computed from the latest value, or fails and
is retried), so B's read of a band they share lists A, and ``words.A`` exists when B fetches it.
B computes the same Jaccard (symmetric, deterministic) with the lower-ranked A and withdraws; A
ignores B (ranked later). If A withdraws meanwhile, B may be rejected by A (a rare extra
rejection in a race, never an extra admission). ``near_dup`` describes restarts and releases.

Releasing (a rejected claim, and later drops: quality gate, budget, scorer, failed publish)
deletes ``words.<id>`` first (a member without words is ignored by everyone), removes the id from
every band (compare-and-set; a band left empty is deleted with ``last=revision``, so a member
added meanwhile keeps it), then deletes the exact key only while it holds this claim's revision.
A word set never changes once written, so the candidates' words are cached per process (LRU, with
their revision) and only misses are fetched.

Round trips: a compare-and-set starts from a guess instead of a read (``runtime.kv``): a band this
process has not seen is guessed absent (one conditional create), one it has seen is guessed as it
last saw it (one conditional update), and a release starts from the claim's own post-commit read.
A wrong guess fails its condition and falls back to read-and-write, so the protocol is unchanged:
every write is still conditioned on the revision its input was read at, and the post-commit reads
always go to the bucket. A release's emptied band is deleted on the revision it just wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field

from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError

from warriorcoder.arena.instructions import normalise
from warriorcoder.arena.near_dup import Candidate, LshBands, decide, encode_words, word_hashes
from warriorcoder.proto.state import BandMembers, decode_state
from warriorcoder.runtime.kv import Versioned, get_many, update_versioned
from warriorcoder.runtime.ports import KeyValueEntry, KeyValueStore

__all__ = [
    "BandCache",
    "Claim",
    "DedupIndex",
    "WordsCache",
    "join_band",
    "leave_band",
    "read_band",
]

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 100_000  # word sets: every candidate of a 100k index, hot ones kept ...
WORDS_CACHE_BYTES = 32 * 1024 * 1024  # ... within 32 MiB of encoded words (~80k instructions)
# Bands remembered for their compare-and-set guesses: a band document grows with its members, so
# the bound is on member ids held (~100 B each: ~25 MiB), not only on bands.
BAND_CACHE_SIZE = 16_384
BAND_CACHE_MEMBERS = 262_144
_ABSENT: Versioned[BandMembers] = Versioned(BandMembers(), 0)


def _exact_key(instruction: str) -> str:
    return "exact." + hashlib.sha256(normalise(instruction).encode()).hexdigest()[:40]


async def join_band(
    kv: KeyValueStore, key: str, id: str, *, guess: Versioned[BandMembers] | None = None
) -> Versioned[BandMembers]:
    """Add ``id`` to the band ``key`` (compare-and-set; already a member: no write); the band as
    it is afterwards. ``guess``: the band as this process last saw it (revision 0: absent), which
    saves the read when it is still current (``runtime.kv``)."""

    def add(band: BandMembers) -> BandMembers | None:
        return None if id in band.ids else BandMembers(ids=[*band.ids, id])

    read, written = await update_versioned(kv, key, BandMembers, add, guess=guess)
    return written or read


async def leave_band(
    kv: KeyValueStore, key: str, id: str, *, guess: Versioned[BandMembers] | None = None
) -> None:
    """Remove ``id`` from the band ``key`` (compare-and-set); delete the band if that emptied it.

    The delete is conditional on the revision of the empty value just written, so an id added
    meanwhile keeps the band (its writer's compare-and-set then finds the key deleted and
    creates it afresh)."""

    def remove(band: BandMembers) -> BandMembers | None:
        return BandMembers(ids=[i for i in band.ids if i != id]) if id in band.ids else None

    _, written = await update_versioned(kv, key, BandMembers, remove, guess=guess)
    if written is None or written.doc.ids:
        return
    # Joined since (or deleted by another leaver): the band is someone else's now.
    with contextlib.suppress(KeyNotFoundError, KeyWrongLastSequenceError, BadRequestError):
        await kv.delete(key, last=written.revision)


async def read_band(kv: KeyValueStore, key: str) -> list[str]:
    """The member ids of the band ``key`` (none when it is absent)."""
    return (await _read_band(kv, key)).doc.ids


async def _read_band(kv: KeyValueStore, key: str) -> Versioned[BandMembers]:
    try:
        return _band(await kv.get(key))
    except KeyNotFoundError:
        return _ABSENT


def _band(entry: KeyValueEntry | None) -> Versioned[BandMembers]:
    if entry is None:
        return _ABSENT
    return Versioned(decode_state(entry.value, BandMembers), entry.revision or 0)


@dataclass
class Claim:
    """Keys an admitted instruction holds in the de-dup index: the exact key (with the revision
    it was created at), the band keys that list ``id`` and its ``words.<id>`` key."""

    kv: KeyValueStore
    exact_key: str = ""
    exact_rev: int = 0
    id: str = ""
    band_keys: list[str] = field(default_factory=list)
    words_key: str = ""
    # The bands as this claim last read them: the guesses its release starts from.
    seen: dict[str, Versioned[BandMembers]] = field(default_factory=dict)

    async def release(self) -> None:
        """Free every key: words first (a member without words is ignored by everyone), then the
        id leaves its bands, then the exact key, only while it holds this claim's revision, so a
        release never frees another claim. Best effort: what cannot be freed (NATS away) is
        logged and kept."""
        if self.words_key:
            await self._try(self.words_key, self.kv.delete(self.words_key))
        await asyncio.gather(
            *(
                self._try(k, leave_band(self.kv, k, self.id, guess=self.seen.get(k)))
                for k in self.band_keys
            )
        )
        if self.exact_key:
            await self._try(self.exact_key, self.kv.delete(self.exact_key, last=self.exact_rev))
        self.band_keys, self.words_key, self.exact_key, self.exact_rev = [], "", "", 0
        self.seen = {}

    @staticmethod
    async def _try(key: str, step: Awaitable[object]) -> None:
        try:
            await step
        except Exception as exc:  # NATS away, or the exact key was claimed anew since
            log.warning("could not release a de-dup key %s: %s", key, exc)


class WordsCache:
    """Bounded LRU of committed word sets: id -> (encoded words, revision of ``words.<id>``),
    at most ``size`` of them and ``max_bytes`` of encoded words."""

    def __init__(self, size: int = DEFAULT_CACHE_SIZE, max_bytes: int = WORDS_CACHE_BYTES) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[bytes, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, id: str) -> tuple[bytes, int] | None:
        entry = self._entries.get(id)
        if entry is not None:
            self._entries.move_to_end(id)
        return entry

    def put(self, id: str, words: bytes, rev: int) -> None:
        old = self._entries.get(id)
        self.bytes += len(words) - (len(old[0]) if old else 0)
        self._entries[id] = (words, rev)
        self._entries.move_to_end(id)
        while len(self._entries) > self.size or (self.bytes > self.max_bytes and self._entries):
            _, (dropped, _) = self._entries.popitem(last=False)
            self.bytes -= len(dropped)


class BandCache:
    """Bounded LRU of the bands this process last read or wrote, with their revisions: the
    guesses of its next compare-and-sets on them. A stale entry costs one failed write (the
    write is conditioned on its revision), never a wrong result. At most ``size`` bands and
    ``max_members`` member ids in all (a popular band's document grows with the index)."""

    def __init__(self, size: int = BAND_CACHE_SIZE, max_members: int = BAND_CACHE_MEMBERS) -> None:
        self.size = size
        self.max_members = max_members
        self.members = 0
        self._entries: OrderedDict[str, Versioned[BandMembers]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Versioned[BandMembers] | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: str, band: Versioned[BandMembers]) -> None:
        old = self._entries.get(key)
        self.members += len(band.doc.ids) - (len(old.doc.ids) if old else 0)
        self._entries[key] = band
        self._entries.move_to_end(key)
        while len(self._entries) > self.size or (self.members > self.max_members and self._entries):
            _, dropped = self._entries.popitem(last=False)
            self.members -= len(dropped.doc.ids)


class DedupIndex:
    """``bands`` None: exact duplicates only."""

    def __init__(
        self, kv: KeyValueStore, bands: LshBands | None, *, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        self.kv = kv
        self.bands = bands
        self.cache = WordsCache(cache_size)
        self.bands_seen = BandCache(min(cache_size, BAND_CACHE_SIZE))
        self.fetched = 0  # word sets read from the bucket (cache misses), for the benchmark

    async def claim(self, instruction: str, challenge_id: str) -> tuple[Claim | None, str]:
        """Claim the instruction's keys; (None, reason) when it duplicates an admitted one."""
        claim = Claim(self.kv, _exact_key(instruction), id=challenge_id)
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
        assert self.bands is not None
        own = word_hashes(instruction)
        claim.band_keys = [f"lsh.{b}" for b in self.bands.keys(instruction)]
        # Bands first. A band this process has not seen is guessed absent (most of a new
        # instruction's bands are): one conditional create instead of a read and a create.
        joined = await asyncio.gather(
            *(
                join_band(self.kv, k, id, guess=self.bands_seen.get(k) or _ABSENT)
                for k in claim.band_keys
            )
        )
        for k, band in zip(claim.band_keys, joined, strict=True):
            self.bands_seen.put(k, band)
        encoded = encode_words(own)
        claim.words_key = f"words.{id}"
        rank = await self.kv.put(claim.words_key, encoded)  # the commit point: ranks us
        # Read after the commit, from the bucket (never the cache): see the protocol above.
        entries = await get_many(self.kv, claim.band_keys)  # one batched read where possible
        read = [_band(entries.get(k)) for k in claim.band_keys]
        for k, band in zip(claim.band_keys, read, strict=True):
            self.bands_seen.put(k, band)
            claim.seen[k] = band
        members = [band.doc.ids for band in read]
        ids = {i for band in members for i in band} - {id}
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
        fetched = await get_many(self.kv, [f"words.{i}" for i in missing])
        self.fetched += len(missing)
        for i in missing:
            entry = fetched.get(f"words.{i}")
            if entry is None:  # not committed yet: it will see us when it decides
                out.append(Candidate(i, None, 0))
            else:
                words = (entry.value or b"", entry.revision or 0)
                self.cache.put(i, *words)
                out.append(Candidate(i, *words))
        return out
