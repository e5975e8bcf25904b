"""The global Elo ratings in a NATS KV bucket, changed by compare-and-set, once per battle.

Usage::

    store = RatingsStore(kv, scoring)
    applied = await store.apply(judgement.id, attacker, defender, step, in_dataset=False)
    await store.forget_legacy()     # only when no judgement is pending (see below)

``step(r_attacker, r_defender)`` returns the two ratings after the battle (or None for no change).

Once per battle by construction, with no window: the aggregators' durable consumer has
``max_ack_pending=1``, so JetStream hands out a judgement only when every judgement delivered
before it is settled (acked, which deletes it from the work-queue stream, or dead-lettered). At
most one battle is therefore applied but unacknowledged, and the document records it (``last``:
id, pre-battle ratings, rating sequence) in the same compare-and-set as the ratings change. A
redelivery, on this replica or another, is that battle: recognised, not applied again, and its
sample rebuilt from the same numbers. A judgement re-published by a judge after the judgements
stream's de-dup window is a new message for an old battle: its sample is already in the dataset
(``in_dataset``), so it changes nothing (``apply`` returns None).

Documents of the previous version carry ``recent`` (the last battles applied, a window) instead of
``last``: still consulted, so judgements that were pending at the upgrade are recognised; never
grown; dropped by ``forget_legacy`` once the consumer has nothing pending, when none of those
judgements can come back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from nats.js.errors import KeyNotFoundError

from warriorcoder.proto import subjects
from warriorcoder.proto.state import AppliedBattle, Ratings, decode_state
from warriorcoder.runtime import metrics
from warriorcoder.runtime.kv import Versioned, update_state, update_versioned
from warriorcoder.runtime.ports import KeyValueStore
from warriorcoder.runtime.settings import ScoringSettings

__all__ = ["Applied", "RatingsStore"]

Step = Callable[[float, float], tuple[float, float] | None]


@dataclass(frozen=True, slots=True)
class Applied:
    r_attacker: float  # ratings before the battle
    r_defender: float
    duplicate: bool  # the battle had already been applied
    ratings: dict[str, float]  # all ratings after this call
    seq: int | None = None  # its rating sequence (None: no rating change, or not recorded)


def _recorded(doc: Ratings, battle: str) -> Applied | None:
    """The battle as the document recorded it, if it is the one applied last (or, in a document
    of the previous version, one of its ``recent`` window)."""
    last = doc.last
    if last is not None and last.id == battle:
        return Applied(last.r_attacker, last.r_defender, True, dict(doc.ratings), last.seq or None)
    # recent_seq is aligned with the end of recent (the oldest documents lack it)
    offset = len(doc.recent) - len(doc.recent_seq)
    for i, (bid, ra, rd) in enumerate(doc.recent):
        if bid == battle:
            seq = doc.recent_seq[i - offset] if i >= offset else 0
            return Applied(ra, rd, True, dict(doc.ratings), seq or None)
    return None


class RatingsStore:
    def __init__(self, kv: KeyValueStore, scoring: ScoringSettings) -> None:
        self.kv = kv
        self.scoring = scoring
        # The document as this replica last read or wrote it: the next compare-and-set starts
        # from it (one round trip instead of a read and a write). The aggregators are one ordered
        # writer, so it is almost always current; a stale one fails the write (or, declining, is
        # read again) and the update falls back to read-then-write, as without a guess.
        self._last: Versioned[Ratings] | None = None

    async def read(self) -> tuple[Ratings, int | None]:
        """The document and its revision (None when the key does not exist yet)."""
        try:
            entry = await self.kv.get(subjects.RATINGS_KEY)
        except KeyNotFoundError:
            return Ratings(), None
        return decode_state(entry.value, Ratings), entry.revision

    async def apply(
        self, battle: str, attacker: str, defender: str, step: Step, *, in_dataset: bool = False
    ) -> Applied | None:
        """Apply the battle once and record it as the last one applied. A redelivery of the last
        battle returns its recorded outcome (``duplicate``); a battle not recorded but whose
        sample is already in the dataset (``in_dataset``: re-published after the de-dup window)
        changes nothing and returns None."""
        init = self.scoring.initial_rating
        # What the last attempt decided; a lost race (a replica whose delivery had expired wrote
        # first) reruns ``change`` on the newer document, so only the final attempt counts.
        outcome: list[Applied | None] = []

        def change(doc: Ratings) -> Ratings | None:
            recorded = _recorded(doc, battle)
            if recorded is not None or in_dataset:
                outcome.append(recorded)
                return None  # already applied: nothing to write
            ra = doc.ratings.get(attacker, init)
            rd = doc.ratings.get(defender, init)
            after = step(ra, rd)
            ratings = dict(doc.ratings)
            if after is not None:
                ratings[attacker], ratings[defender] = after
            battles = doc.battles + (after is not None)
            seq = battles if after is not None else 0
            outcome.append(Applied(ra, rd, False, ratings, seq or None))
            return msgspec.structs.replace(
                doc,
                ratings=ratings,
                battles=battles,
                last=AppliedBattle(id=battle, r_attacker=ra, r_defender=rd, seq=seq),
                updated_at=time.time(),
            )

        read, written = await update_versioned(
            self.kv,
            subjects.RATINGS_KEY,
            Ratings,
            change,
            on_conflict=metrics.RATING_CONFLICTS.inc,
            guess=self._last,
        )
        self._last = written or read
        return outcome[-1]

    async def forget_legacy(self) -> bool:
        """Drop the previous version's ``recent`` window (True when there was one). Call it only
        when the judgements consumer has no message pending: every judgement delivered before is
        then settled, so none that the window could recognise can be delivered again."""
        dropped: list[bool] = []

        def change(doc: Ratings) -> Ratings | None:
            dropped.append(bool(doc.recent or doc.recent_seq))
            if not dropped[-1]:
                return None
            return msgspec.structs.replace(doc, recent=[], recent_seq=[], updated_at=time.time())

        await update_state(
            self.kv,
            subjects.RATINGS_KEY,
            Ratings,
            change,
            on_conflict=metrics.RATING_CONFLICTS.inc,
        )
        return dropped[-1]
