"""Responder service: attacker and defender answer the challenge concurrently.

Usage::

    warriorcoder serve responder --config arena.yaml

Each model answers through its own chat template, with the language's system prompt and the
response sampling of the config; the battle (challenge + both answers) goes to the judges.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from warriorcoder.arena.invariants import check_challenge
from warriorcoder.arena.prompts import response_system_prompt
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Answer, Battle, Challenge
from warriorcoder.runtime import metrics
from warriorcoder.runtime.ports import Inference, Publisher
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.settings import ArenaSettings
from warriorcoder.runtime.stage import Consumes, Deps, Handler, Stage
from warriorcoder.runtime.tasks import gather

__all__ = ["STAGE", "make_handler"]

log = logging.getLogger(__name__)


def make_handler(
    settings: ArenaSettings, roster: Roster, inference: Inference, publisher: Publisher
) -> Handler[Challenge]:
    """Answer each challenge with both of its competitors (``roster``: the competitors); a
    challenge that breaks the arena's invariants is poison, before any model is asked."""

    async def answer(model: str, role: str, ch: Challenge) -> Answer:
        m = roster[model]
        params = m.sampling["response"]
        prompt = m.template.conversation(response_system_prompt(ch.language), ch.instruction)
        gen = await inference.generate(model, prompt, params, role="response")
        return Answer(
            model=model,
            role=role,  # type: ignore[arg-type]
            text=gen.text.strip(),
            latency_s=gen.latency_s,
            sampling=params,
            finish_reason=gen.finish_reason,
            output_tokens=gen.output_tokens,
        )

    async def handle(ch: Challenge) -> None:
        check_challenge(ch, settings)
        attacker, defender = await gather(
            answer(ch.attacker, "attacker", ch), answer(ch.defender, "defender", ch)
        )
        battle = Battle(
            id=ch.id,
            challenge=ch,
            attacker_answer=attacker,
            defender_answer=defender,
            answered_at=time.time(),
        )
        await publisher.publish(subjects.BATTLES, battle, msg_id=battle.id)
        metrics.BATTLES.inc()
        log.info("battle answered", extra={"id": ch.id})

    return handle


@asynccontextmanager
async def setup(deps: Deps) -> AsyncIterator[Handler[Challenge]]:
    yield make_handler(deps.settings, deps.roster, deps.inference, deps.publisher)


def _competitors(s: ArenaSettings) -> list[str]:
    return list(s.competitors)


STAGE = Stage(
    name="responder",
    consumes=Consumes.declared("responder", Challenge),
    models=_competitors,
    setup=setup,
)
