"""Typed stores of the arena's shared state in KV buckets: the schedule cursor, the challenge budget
and the rejection counts, each a document changed by compare-and-set. The challengers write them;
`warriorcoder up`, `leaderboard` and the dataset card read them.

Usage::

    cursor = ScheduleCursor(schedule_kv)
    slot = await cursor.next()              # 0, 1, 2, ... across every replica

    budget = Budget(schedule_kv)
    await budget.set(10)                    # None: no limit
    if await budget.take():                 # False once the budget is spent
        ...

    stats = RejectionStats(stats_kv)
    await stats.add("duplicate")
    counts = await RejectionStats.read(stats_kv)   # {"duplicate": 1}

The documents are ``Cursor``, ``ChallengeBudget`` and ``RejectionCounts`` of
``warriorcoder.proto.state``; values written by earlier versions (a bare integer, ``unlimited``, a
plain JSON object) are still read, and rewritten as documents on their next change.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js.errors import KeyNotFoundError

from warriorcoder.proto import subjects
from warriorcoder.proto.state import (
    ChallengeBudget,
    Cursor,
    RejectionCounts,
    decode_state,
    encode,
)
from warriorcoder.runtime.kv import CasConflictError, Versioned, update_state, update_versioned
from warriorcoder.runtime.ports import KeyValueStore

__all__ = ["Budget", "RejectionStats", "ScheduleCursor", "next_cursor"]

log = logging.getLogger(__name__)


class ScheduleCursor:
    """The shared round-robin schedule: each call of ``next`` takes the next slot, once across
    every replica (the ``cursor`` key of the schedule bucket)."""

    def __init__(self, kv: KeyValueStore) -> None:
        self.kv = kv
        # The cursor as this process last wrote it: the guess of its next compare-and-set (one
        # round trip instead of two while no other replica took a slot since). Takes within the
        # process are serialised so that the guess stays right between them.
        self._known: Versioned[Cursor] | None = None
        self._lock = asyncio.Lock()

    async def next(self) -> int:
        async with self._lock:
            before, after = await update_versioned(
                self.kv,
                subjects.SCHEDULE_KEY,
                Cursor,
                lambda c: Cursor(next=c.next + 1),
                guess=self._known,
            )
            self._known = after
            return before.doc.next


async def next_cursor(kv: KeyValueStore) -> int:
    """Take the next slot of the shared round-robin schedule."""
    return await ScheduleCursor(kv).next()


class RejectionStats:
    """Rejection counts by reason in a KV key, summed over every challenger replica, for run
    summaries and dataset cards (metrics carry the same counts per process)."""

    def __init__(self, kv: KeyValueStore) -> None:
        self.kv = kv

    async def add(self, reason: str) -> None:
        def count(doc: RejectionCounts) -> RejectionCounts:
            return RejectionCounts(counts={**doc.counts, reason: doc.counts.get(reason, 0) + 1})

        try:
            await update_state(
                self.kv, subjects.STATS_REJECTIONS_KEY, RejectionCounts, count, attempts=20
            )
        except CasConflictError:
            log.warning("could not record rejection statistics", extra={"reason": reason})

    @staticmethod
    async def read(kv: KeyValueStore) -> dict[str, int]:
        try:
            entry = await kv.get(subjects.STATS_REJECTIONS_KEY)
        except KeyNotFoundError:
            return {}
        return dict(decode_state(entry.value, RejectionCounts).counts)


class Budget:
    """An optional arena-wide limit on the challenges still to publish, shared by every replica:
    the ``budget`` key of the schedule bucket. No key (or no limit in it) means no limit;
    ``warriorcoder up --battles N`` sets it."""

    def __init__(self, kv: KeyValueStore) -> None:
        self.kv = kv
        # The budget as this process last wrote it: the guess of its next take (see
        # ``ScheduleCursor``); a spent or unlimited budget is always read, never guessed.
        self._known: Versioned[ChallengeBudget] | None = None
        self._lock = asyncio.Lock()

    async def remaining(self) -> int | None:
        try:
            entry = await self.kv.get(subjects.BUDGET_KEY)
        except KeyNotFoundError:
            return None
        return decode_state(entry.value, ChallengeBudget).remaining

    async def take(self) -> bool:
        """Take one challenge from the budget; False when it is spent."""

        def take_one(doc: ChallengeBudget) -> ChallengeBudget | None:
            left = doc.remaining
            return None if left is None or left <= 0 else ChallengeBudget(remaining=left - 1)

        async with self._lock:
            before, after = await update_versioned(
                self.kv, subjects.BUDGET_KEY, ChallengeBudget, take_one, guess=self._known
            )
            self._known = after
        return after is not None or before.doc.remaining is None

    async def give_back(self) -> None:
        await self.add(1)

    async def add(self, n: int) -> None:
        """Raise a limited budget by ``n`` (no limit stays no limit)."""

        def raise_by(doc: ChallengeBudget) -> ChallengeBudget | None:
            left = doc.remaining
            return None if left is None else ChallengeBudget(remaining=left + n)

        await update_state(self.kv, subjects.BUDGET_KEY, ChallengeBudget, raise_by)

    async def set(self, n: int | None) -> None:
        """Set the budget (None: unlimited)."""
        await self.kv.put(subjects.BUDGET_KEY, encode(ChallengeBudget(remaining=n)))
