"""The challenger's quality gate: a model that is not the attacker rates each instruction 1-10.

Usage::

    gate = QualityGate(settings, roster, inference)
    score, scorer = await gate.rate(instruction, "Python", attacker)   # score None: unparseable

Scorers take turns (round-robin over the scorer pool minus the attacker). A reply without a
score is re-asked ``challenger.quality.max_reasks`` times; guided choice is used for models whose
backend takes it.
"""

from __future__ import annotations

import itertools

from warriorcoder.arena.quality import SCORE_CHOICES, parse_score, quality_messages
from warriorcoder.runtime.ask import ask
from warriorcoder.runtime.ports import Inference
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.settings import ArenaSettings

__all__ = ["QualityGate"]


class QualityGate:
    """Rates an instruction 1-10 with a scorer that is not the attacker (round-robin)."""

    def __init__(self, settings: ArenaSettings, roster: Roster, inference: Inference) -> None:
        self.settings = settings
        self.roster = roster
        self.inference = inference
        self._turn = itertools.count()

    def scorer_for(self, attacker: str) -> str:
        pool = self.settings.scorers_for(attacker)
        return pool[next(self._turn) % len(pool)]

    async def rate(self, instruction: str, language: str, attacker: str) -> tuple[int | None, str]:
        """(score or None when unparseable after the re-asks, scorer)."""
        scorer = self.scorer_for(attacker)
        asked = await ask(
            self.inference,
            self.roster[scorer],
            lambda reask: quality_messages(instruction, language, reask=reask),
            parse_score,
            role="quality",
            choices=SCORE_CHOICES,
            max_reasks=self.settings.challenger.quality.max_reasks,
        )
        return asked.value, scorer
