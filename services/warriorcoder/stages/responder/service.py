"""Responder service: attacker and defender answer the challenge concurrently.

Usage::

    warriorcoder serve responder --config arena.yaml

Each model answers through its own chat template, with the language's system prompt and the
response sampling of the config; the battle (challenge + both answers) goes to the judges.

With the verifier on (``verifier.enabled``), a model that fights in neither corner writes unit
tests for the challenge at the same time as the two answers: the writer is chosen from the
battle id (``warriorcoder.arena.test_writing.choose_writer`` over
``settings.test_writers_for``), so every replica and redelivery asks the same one; it is asked
through its own chat template with the ``tests`` sampling, and re-asked up to
``verifier.max_reasks`` times while its reply holds no parseable tests. The battle carries the
tests (``usable=False`` with empty code when none parsed: it goes on, unverified; ``None`` when
the challenge's language has no test format yet) and goes to the verifier (``ANSWERED``) instead
of the judges.

A failed call of the test writer is handled like a failed answer: the whole challenge fails and
the error boundary decides (a retryable error: redelivered, the answers asked again; a permanent
one: dead-lettered). Answers and tests are one unit of work, so a battle never reaches the
verifier without the tests it was meant to have.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from warriorcoder.arena.invariants import check_challenge
from warriorcoder.arena.prompts import PROMPT_SET_VERSION, response_system_prompt
from warriorcoder.arena.test_writing import choose_writer, parse_tests, supports, writer_messages
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Answer, Battle, Challenge, ChallengeTests
from warriorcoder.runtime import metrics
from warriorcoder.runtime.ask import Asked, ask
from warriorcoder.runtime.ports import Inference, Publisher
from warriorcoder.runtime.provenance import Stamper
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.settings import ArenaSettings
from warriorcoder.runtime.stage import Consumes, Deps, Handler, Stage
from warriorcoder.runtime.tasks import gather

__all__ = ["STAGE", "make_handler"]

log = logging.getLogger(__name__)


def make_handler(
    settings: ArenaSettings, roster: Roster, inference: Inference, publisher: Publisher
) -> Handler[Challenge]:
    """Answer each challenge with both of its competitors and, with the verifier on, have an
    uninvolved model write its tests (``roster``: the stage's models, ``STAGE.models``); a
    challenge that breaks the arena's invariants is poison, before any model is asked."""
    verify = settings.verifier.enabled
    stamper = Stamper("responder", settings, roster, prompt_set=PROMPT_SET_VERSION)
    inference = stamper.watch(inference)  # the versions served, for the battle's stamp

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

    async def write_tests(ch: Challenge) -> ChallengeTests | None:
        if not supports(ch.language):
            return None
        writer = choose_writer(ch.id, settings.test_writers_for(ch.attacker, ch.defender))
        m = roster[writer]
        asked: Asked[tuple[str, list[str]]] = await ask(
            inference,
            m,
            lambda reask: writer_messages(ch.instruction, ch.language, reask=reask),
            parse_tests,
            role="tests",
            max_reasks=settings.verifier.max_reasks,
        )
        code, names = asked.value or ("", [])
        if asked.value is None:
            log.warning("no usable tests", extra={"id": ch.id, "writer": writer})
        return ChallengeTests(
            writer=writer,
            language=ch.language,
            code=code,
            tests=names,
            usable=asked.value is not None,
            asked=asked.calls,
            sampling=m.sampling["tests"],
        )

    async def handle(ch: Challenge) -> None:
        check_challenge(ch, settings)
        answers = [answer(ch.attacker, "attacker", ch), answer(ch.defender, "defender", ch)]
        tests: ChallengeTests | None = None
        if verify:
            # one owner for all three calls: a failure cancels the others (tasks.gather)
            done: list[Any] = await gather(*answers, write_tests(ch))
            attacker, defender = cast(list[Answer], done[:2])
            tests = cast(ChallengeTests | None, done[2])
        else:
            attacker, defender = await gather(*answers)
        battle = Battle(
            id=ch.id,
            challenge=ch,
            attacker_answer=attacker,
            defender_answer=defender,
            answered_at=time.time(),
            tests=tests,
            stamp=stamper.stamp([ch.attacker, ch.defender, *([tests.writer] if tests else [])]),
        )
        subject = subjects.ANSWERED if verify else subjects.BATTLES
        await publisher.publish(subject, battle, msg_id=battle.id)
        metrics.BATTLES.inc()
        log.info("battle answered", extra={"id": ch.id})

    return handle


@asynccontextmanager
async def setup(deps: Deps) -> AsyncIterator[Handler[Challenge]]:
    yield make_handler(deps.settings, deps.roster, deps.inference, deps.publisher)


def _models(s: ArenaSettings) -> list[str]:
    """The competitors and, with the verifier on, every model that may write tests (judge-only
    models included)."""
    writers = (s.verifier.test_writers or s.judge_pool) if s.verifier.enabled else []
    return list(dict.fromkeys([*s.competitors, *writers]))


STAGE = Stage(
    name="responder",
    consumes=Consumes.declared("responder", Challenge),
    models=_models,
    setup=setup,
)
