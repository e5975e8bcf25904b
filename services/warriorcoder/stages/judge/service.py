"""Judge service: every uninvolved judge compares the two answers of a battle.

Usage::

    warriorcoder serve judge --config arena.yaml

Judges are the arena's judge pool minus the battle's two competitors. In ``both`` mode (default)
each judge sees the answers in both orders and a judge whose orders disagree votes a tie; in
``alternate`` mode (the paper's) one order, chosen by the battle id's parity. A reply without a
verdict label is re-asked, then the vote is recorded invalid.
"""

from __future__ import annotations

import asyncio
import logging
import time

from warriorcoder.arena.prompts import judge_messages
from warriorcoder.arena.verdicts import (
    VERDICT_CHOICES,
    Label,
    Role,
    combine,
    parse_verdict,
    winner_of,
)
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Battle, Judgement, SamplingParams, Vote
from warriorcoder.runtime import metrics
from warriorcoder.runtime.service import Deps, Handler, ServiceSpec
from warriorcoder.runtime.settings import ArenaSettings
from warriorcoder.runtime.tasks import gather
from warriorcoder.runtime.templates import ChatTemplate

__all__ = ["SPEC", "orders_for", "run"]

log = logging.getLogger(__name__)


def orders_for(mode: str, battle_id: str) -> list[Role]:
    """Whose answer is shown as Assistant A, per judgement of one judge."""
    if mode == "both":
        return ["attacker", "defender"]
    return ["attacker" if int(battle_id, 16) % 2 == 0 else "defender"]


def make_handler(deps: Deps) -> Handler[Battle]:
    s = deps.settings
    pool = s.judge_pool
    templates = {m: ChatTemplate.from_settings(s.models[m].chat_template) for m in pool}
    cfg = s.sampling.judge
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)

    async def verdict(
        judge: str, question: str, first: str, second: str
    ) -> tuple[Label | None, int]:
        calls = 0
        choices = VERDICT_CHOICES if deps.triton.guided(judge) else None
        for attempt in range(s.judge.max_reasks + 1):
            messages = judge_messages(question, first, second, reask=attempt > 0)
            prompt = templates[judge].render(messages, add_generation_prompt=True)
            gen = await deps.triton.generate(judge, prompt, params, choices=choices, role="judge")
            calls += 1
            label = parse_verdict(gen.text)
            if label is not None:
                return label, calls
            if attempt < s.judge.max_reasks:
                metrics.REASKS.labels(judge=judge).inc()
        return None, calls

    async def vote(judge: str, b: Battle, orders: list[Role]) -> Vote:
        question = b.challenge.instruction
        answers = {"attacker": b.attacker_answer.text, "defender": b.defender_answer.text}
        results = await gather(
            *(verdict(judge, question, answers[first], answers[_other(first)]) for first in orders)
        )
        labels = [label for label, _ in results]
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
            asked=sum(calls for _, calls in results),
        )

    async def handle(b: Battle) -> None:
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
        )
        await deps.bus.publish(subjects.JUDGEMENTS, judgement, msg_id=b.id)
        log.info("battle judged", extra={"id": b.id, "votes": [v.winner for v in votes]})

    return handle


def _other(role: Role) -> Role:
    return "defender" if role == "attacker" else "attacker"


async def run(deps: Deps, stop: asyncio.Event) -> None:
    await deps.consume(
        subjects.STREAM_BATTLES, subjects.CONSUMER_JUDGE, Battle, make_handler(deps), stop
    )


def _models(s: ArenaSettings) -> list[str]:
    return s.judge_pool


SPEC = ServiceSpec(name="judge", run=run, models=_models)
