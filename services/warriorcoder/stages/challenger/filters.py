"""The challenger's filters that keep state in NATS or call a model.

Usage::

    dedup = DedupIndex(kv, LshBands(num_perm=128, threshold=0.5))
    claim = await dedup.claim(instruction, challenge_id)   # None: a duplicate, with reason
    ...
    await claim.release()     # the instruction was rejected later: free its near-dup keys

    score = await QualityGate(deps).rate(instruction, language, attacker)

The exact and near-duplicate indexes are KV keys created with ``create`` (which fails when the key
exists), so of two replicas admitting near-duplicates at the same moment exactly one wins: both
claim the band they share, and only one create can succeed.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
from dataclasses import dataclass, field

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from warriorcoder.arena.instructions import normalise
from warriorcoder.arena.near_dup import LshBands
from warriorcoder.arena.quality import SCORE_CHOICES, parse_score, quality_messages
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime.kv import CasConflictError, compare_and_set
from warriorcoder.runtime.service import Deps
from warriorcoder.runtime.templates import ChatTemplate

__all__ = ["Budget", "Claim", "DedupIndex", "QualityGate", "RejectionStats"]

log = logging.getLogger(__name__)


@dataclass
class Claim:
    """Keys an admitted instruction holds in the de-dup index."""

    kv: KeyValue
    near_keys: list[str] = field(default_factory=list)

    async def release(self) -> None:
        for key in self.near_keys:
            with contextlib.suppress(Exception):
                await self.kv.delete(key)
        self.near_keys = []


class DedupIndex:
    def __init__(self, kv: KeyValue, bands: LshBands | None) -> None:
        self.kv = kv
        self.bands = bands

    async def claim(self, instruction: str, challenge_id: str) -> tuple[Claim | None, str]:
        """Claim the instruction's keys; (None, reason) when it duplicates an admitted one."""
        value = challenge_id.encode()
        exact = "exact." + hashlib.sha256(normalise(instruction).encode()).hexdigest()[:40]
        try:
            await self.kv.create(exact, value)
        except KeyWrongLastSequenceError:
            return None, "duplicate"
        claim = Claim(self.kv)
        if self.bands is None:
            return claim, ""
        for band in self.bands.keys(instruction):
            key = f"lsh.{band}"
            try:
                await self.kv.create(key, value)
            except KeyWrongLastSequenceError:
                await claim.release()
                return None, "near_duplicate"
            claim.near_keys.append(key)
        return claim, ""


class QualityGate:
    """Rates an instruction 1-10 with a scorer that is not the attacker (round-robin)."""

    def __init__(self, deps: Deps) -> None:
        s = deps.settings
        self.deps = deps
        self.cfg = s.challenger.quality
        self.templates = {
            m: ChatTemplate.from_settings(s.models[m].chat_template) for m in s.scorer_pool
        }
        q = s.sampling.quality
        self.params = SamplingParams(
            temperature=q.temperature, top_p=q.top_p, max_tokens=q.max_tokens
        )
        self._turn = itertools.count()

    def scorer_for(self, attacker: str) -> str:
        pool = self.deps.settings.scorers_for(attacker)
        return pool[next(self._turn) % len(pool)]

    async def rate(self, instruction: str, language: str, attacker: str) -> tuple[int | None, str]:
        """(score or None when unparseable after the re-asks, scorer)."""
        scorer = self.scorer_for(attacker)
        guided = self.deps.triton.guided(scorer)
        for attempt in range(self.cfg.max_reasks + 1):
            messages = quality_messages(instruction, language, reask=attempt > 0)
            prompt = self.templates[scorer].render(messages, add_generation_prompt=True)
            gen = await self.deps.triton.generate(
                scorer,
                prompt,
                self.params,
                choices=SCORE_CHOICES if guided else None,
                role="quality",
            )
            score = parse_score(gen.text)
            if score is not None:
                return score, scorer
        return None, scorer


class RejectionStats:
    """Rejection counts by reason in a KV key, summed over every challenger replica, for run
    summaries and dataset cards (metrics carry the same counts per process)."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def add(self, reason: str) -> None:
        def count(value: bytes | None) -> bytes:
            counts = orjson.loads(value or b"{}")
            counts[reason] = counts.get(reason, 0) + 1
            return orjson.dumps(counts)

        try:
            await compare_and_set(self.kv, subjects.STATS_REJECTIONS_KEY, count, attempts=20)
        except CasConflictError:
            log.warning("could not record rejection statistics", extra={"reason": reason})

    @staticmethod
    async def read(kv: KeyValue) -> dict[str, int]:
        try:
            entry = await kv.get(subjects.STATS_REJECTIONS_KEY)
        except KeyNotFoundError:
            return {}
        return {str(k): int(v) for k, v in orjson.loads(entry.value or b"{}").items()}


class Budget:
    """An optional arena-wide limit on the challenges still to publish, shared by every replica:
    the ``budget`` key of the schedule bucket. No key (or ``unlimited``) means no limit;
    ``warriorcoder up --battles N`` sets it."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @staticmethod
    def _left(value: bytes | None) -> int | None:
        raw = (value or b"").decode()
        return None if raw in ("", "unlimited") else int(raw)

    async def remaining(self) -> int | None:
        try:
            entry = await self.kv.get(subjects.BUDGET_KEY)
        except KeyNotFoundError:
            return None
        return self._left(entry.value)

    async def take(self) -> bool:
        """Take one challenge from the budget; False when it is spent."""

        def take_one(value: bytes | None) -> bytes | None:
            left = self._left(value)
            return None if left is None or left <= 0 else str(left - 1).encode()

        old, new = await compare_and_set(self.kv, subjects.BUDGET_KEY, take_one)
        return new is not None or self._left(old) is None

    async def give_back(self) -> None:
        await self.add(1)

    async def add(self, n: int) -> None:
        """Raise a limited budget by ``n`` (no limit stays no limit)."""

        def raise_by(value: bytes | None) -> bytes | None:
            left = self._left(value)
            return None if left is None else str(left + n).encode()

        await compare_and_set(self.kv, subjects.BUDGET_KEY, raise_by)

    async def set(self, n: int | None) -> None:
        """Set the budget (None: unlimited)."""
        await self.kv.put(subjects.BUDGET_KEY, b"unlimited" if n is None else str(n).encode())
