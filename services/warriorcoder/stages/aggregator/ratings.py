"""The global Elo ratings in a NATS KV bucket, changed by compare-and-set, once per battle.

Usage::

    store = RatingsStore(kv, scoring)
    applied = await store.apply(judgement.id, attacker, defender, step)

``step(r_attacker, r_defender)`` returns the two ratings after the battle (or None for no change).
The document remembers the last ``idempotency_window`` battles with the pre-battle ratings they
saw, so a redelivered judgement — on this replica or another — is recognised, not applied twice,
and its result rebuilt from the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from nats.js.errors import KeyNotFoundError

from warriorcoder.proto import subjects
from warriorcoder.proto.state import Ratings, decode_state
from warriorcoder.runtime import metrics
from warriorcoder.runtime.kv import update_state
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


class RatingsStore:
    def __init__(self, kv: KeyValueStore, scoring: ScoringSettings) -> None:
        self.kv = kv
        self.scoring = scoring

    async def read(self) -> tuple[Ratings, int | None]:
        """The document and its revision (None when the key does not exist yet)."""
        try:
            entry = await self.kv.get(subjects.RATINGS_KEY)
        except KeyNotFoundError:
            return Ratings(), None
        return decode_state(entry.value, Ratings), entry.revision

    async def apply(self, battle: str, attacker: str, defender: str, step: Step) -> Applied:
        init = self.scoring.initial_rating
        # What the last attempt decided; a lost race (another replica wrote first) reruns
        # ``change`` on the newer document, so only the final attempt's outcome counts.
        outcome: list[Applied] = []

        def change(doc: Ratings) -> Ratings | None:
            # recent_seq is aligned with the end of recent (documents of older versions lack it)
            offset = len(doc.recent) - len(doc.recent_seq)
            for i, (bid, ra, rd) in enumerate(doc.recent):
                if bid == battle:
                    seq = doc.recent_seq[i - offset] if i >= offset else 0
                    outcome.append(Applied(ra, rd, True, dict(doc.ratings), seq or None))
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
            window = self.scoring.idempotency_window
            return msgspec.structs.replace(
                doc,
                ratings=ratings,
                battles=battles,
                recent=[*doc.recent, (battle, ra, rd)][-window:],
                recent_seq=[*doc.recent_seq, seq][-window:],
                updated_at=time.time(),
            )

        await update_state(
            self.kv,
            subjects.RATINGS_KEY,
            Ratings,
            change,
            on_conflict=metrics.RATING_CONFLICTS.inc,
        )
        return outcome[-1]
