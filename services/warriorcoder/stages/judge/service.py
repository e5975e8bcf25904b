"""Judge service: every uninvolved judge compares the two answers of a battle.

Usage::

    warriorcoder serve judge --config arena.yaml

Judges are the arena's judge pool minus the battle's two competitors and, under
``judge.family_policy: exclude`` (default), minus the judges of a fighter's family
(``ArenaSettings.judges_for``); under ``weight`` those judges vote with ``Vote.weight`` below 1
(``ArenaSettings.vote_weight``). Each vote keeps the judge's raw reply per order
(``Vote.reasons``: its reasoning and verdict, the last reply of a re-asked order) and the
sampling of its calls (``Vote.sampling``). In ``both`` mode (default)
each judge sees the answers in both orders and a judge whose orders disagree votes a tie; in
``alternate`` mode (the paper's) one order, chosen by the battle id's parity. A reply without a
verdict label is re-asked, then the vote is recorded invalid. A battle the verifier ran shows the
judges each answer's execution summary after the answers (``judge.show_execution``), swapped with
the answers in the other order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from warriorcoder.arena.invariants import check_battle, orders_for
from warriorcoder.arena.prompts import PROMPT_SET_VERSION, judge_messages
from warriorcoder.arena.verdicts import (
    VERDICT_CHOICES,
    Label,
    Role,
    combine,
    parse_verdict,
    winner_of,
)
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Battle, Judgement, RunResult, Vote
from warriorcoder.runtime import metrics
from warriorcoder.runtime.ask import Asked, ask
from warriorcoder.runtime.ports import Inference, Publisher
from warriorcoder.runtime.provenance import Stamper
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.settings import ArenaSettings
from warriorcoder.runtime.stage import Consumes, Deps, Handler, Stage
from warriorcoder.runtime.tasks import gather

__all__ = ["STAGE", "make_handler", "orders_for"]

log = logging.getLogger(__name__)


def make_handler(
    settings: ArenaSettings, roster: Roster, inference: Inference, publisher: Publisher
) -> Handler[Battle]:
    """Judge each battle with its uninvolved judges (``roster``: the judge pool); a battle that
    breaks the arena's invariants is poison, before any judge is asked. ``orders_for`` (whose
    answer each verdict shows first) is the rule the aggregator checks the votes against."""
    s = settings
    stamper = Stamper("judge", s, roster, prompt_set=PROMPT_SET_VERSION)  # provenance
    inference = stamper.watch(inference)

    async def verdict(
        judge: str,
        question: str,
        first: str,
        second: str,
        runs: tuple[RunResult, RunResult] | None,
    ) -> tuple[Asked[Label], str]:
        replies: list[str] = []

        def parse(text: str) -> Label | None:
            replies.append(text)  # the raw reply, kept as the vote's reason
            return parse_verdict(text)

        asked: Asked[Label] = await ask(
            inference,
            roster[judge],
            lambda reask: judge_messages(question, first, second, reask=reask, execution=runs),
            parse,
            role="judge",
            choices=VERDICT_CHOICES,
            max_reasks=s.judge.max_reasks,
        )
        if asked.reasks:
            metrics.REASKS.labels(judge=judge).inc(asked.reasks)
        return asked, replies[-1] if replies else ""

    async def vote(judge: str, b: Battle, orders: list[Role]) -> Vote:
        question = b.challenge.instruction
        answers = {"attacker": b.attacker_answer.text, "defender": b.defender_answer.text}
        ex = b.execution if s.judge.show_execution else None
        runs = None if ex is None else {"attacker": ex.attacker, "defender": ex.defender}
        results = await gather(
            *(
                verdict(
                    judge,
                    question,
                    answers[first],
                    answers[_other(first)],
                    None if runs is None else (runs[first], runs[_other(first)]),
                )
                for first in orders
            )
        )
        labels = [r.value for r, _ in results]
        winner = combine(orders, labels)
        metrics.VOTES.labels(judge=judge, outcome=winner).inc()
        parsed = [winner_of(o, lab) for o, lab in zip(orders, labels, strict=True) if lab]
        if len(orders) == 2 and len(parsed) == 2:
            result = "consistent" if parsed[0] == parsed[1] else "inconsistent"
            metrics.JUDGE_POSITION.labels(judge=judge, result=result).inc()
        return Vote(
            judge=judge,
            orders=list(orders),
            verdicts=[label if label is not None else "invalid" for label in labels],
            winner=winner,
            asked=sum(r.calls for r, _ in results),
            reasons=[reply for _, reply in results],
            sampling=roster[judge].sampling["judge"],
            weight=s.vote_weight(judge, b.challenge.attacker, b.challenge.defender),
        )

    async def handle(b: Battle) -> None:
        check_battle(b, s)
        ch = b.challenge
        judges = s.judges_for(ch.attacker, ch.defender)
        orders = orders_for(s.judge.position_mode, b.id)
        votes = await gather(*(vote(j, b, orders) for j in judges))
        judgement = Judgement(
            id=b.id,
            battle=b,
            votes=votes,
            position_mode=s.judge.position_mode,
            judged_at=time.time(),
            stamp=stamper.stamp(judges),
        )
        await publisher.publish(subjects.JUDGEMENTS, judgement, msg_id=b.id)
        log.info("battle judged", extra={"id": b.id, "votes": [v.winner for v in votes]})

    return handle


def _other(role: Role) -> Role:
    return "defender" if role == "attacker" else "attacker"


@asynccontextmanager
async def setup(deps: Deps) -> AsyncIterator[Handler[Battle]]:
    yield make_handler(deps.settings, deps.roster, deps.inference, deps.publisher)


def _judge_pool(s: ArenaSettings) -> list[str]:
    return s.judge_pool


STAGE = Stage(
    name="judge",
    consumes=Consumes.declared("judge", Battle),
    models=_judge_pool,
    setup=setup,
)
