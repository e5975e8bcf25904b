"""Responder service: attacker and defender answer the challenge concurrently.

Usage::

    warriorcoder serve responder --config arena.yaml

Each model answers through its own chat template, with the language's system prompt and the
response sampling of the config; the battle (challenge + both answers) goes to the judges.
"""

from __future__ import annotations

import asyncio
import logging
import time

from warriorcoder.arena.prompts import response_system_prompt
from warriorcoder.errors import PoisonError
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Answer, Battle, Challenge, SamplingParams
from warriorcoder.runtime import metrics
from warriorcoder.runtime.service import Deps, Handler, ServiceSpec
from warriorcoder.runtime.settings import ArenaSettings
from warriorcoder.runtime.tasks import gather
from warriorcoder.runtime.templates import ChatTemplate

__all__ = ["SPEC", "run"]

log = logging.getLogger(__name__)


def make_handler(deps: Deps) -> Handler[Challenge]:
    s = deps.settings
    templates = {m: ChatTemplate.from_settings(s.models[m].chat_template) for m in s.competitors}
    cfg = s.sampling.response
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)

    async def answer(model: str, role: str, ch: Challenge) -> Answer:
        prompt = templates[model].conversation(response_system_prompt(ch.language), ch.instruction)
        gen = await deps.triton.generate(model, prompt, params, role="response")
        return Answer(
            model=model,
            role=role,  # type: ignore[arg-type]
            text=gen.text.strip(),
            latency_s=gen.latency_s,
            sampling=params,
        )

    async def handle(ch: Challenge) -> None:
        for model in (ch.attacker, ch.defender):
            if model not in templates:
                raise PoisonError("unknown_model", f"{model!r} is not a competitor of this arena")
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
        await deps.bus.publish(subjects.BATTLES, battle, msg_id=battle.id)
        metrics.BATTLES.inc()
        log.info("battle answered", extra={"id": ch.id})

    return handle


async def run(deps: Deps, stop: asyncio.Event) -> None:
    await deps.consume(
        subjects.STREAM_CHALLENGES,
        subjects.CONSUMER_RESPONDER,
        Challenge,
        make_handler(deps),
        stop,
    )


def _models(s: ArenaSettings) -> list[str]:
    return list(s.competitors)


SPEC = ServiceSpec(name="responder", run=run, models=_models)
