"""The responder's handler through the in-process fakes: both answers, each through its own chat
template and the response sampling; an unknown competitor is poison."""

from __future__ import annotations

import pytest

from tests.conftest import SCRIPTED_MODELS
from tests.helpers import arena_settings, challenge
from warriorcoder.errors import PoisonError
from warriorcoder.proto import subjects
from warriorcoder.runtime.roster import Roster
from warriorcoder.stages.responder.service import STAGE, make_handler
from warriorcoder.testing.fakes import FakeInference, FakePublisher
from warriorcoder.testing.scripted import load_models


@pytest.fixture
def parts():
    s = arena_settings()
    roster = Roster.from_settings(s, STAGE.models(s))
    return s, roster, FakeInference(load_models(SCRIPTED_MODELS)), FakePublisher()


async def test_both_competitors_answer_and_the_battle_is_published(parts):
    s, roster, inference, publisher = parts
    ch = challenge("gamma", "alpha")
    await make_handler(roster, inference, publisher)(ch)
    [b] = publisher.messages(subjects.BATTLES)
    assert b.id == ch.id and b.challenge == ch
    assert (b.attacker_answer.model, b.attacker_answer.role) == ("gamma", "attacker")
    assert (b.defender_answer.model, b.defender_answer.role) == ("alpha", "defender")
    assert b.attacker_answer.text.endswith("quality=2")
    assert b.defender_answer.text.endswith("quality=9")
    cfg = s.sampling.response
    assert b.attacker_answer.sampling.max_tokens == cfg.max_tokens
    calls = {r.model: r for r in inference.calls(role="response")}
    assert set(calls) == {"gamma", "alpha"}
    # each through its own template: ChatML for alpha, DeepSeek-Coder's for gamma
    assert calls["alpha"].prompt.startswith("<|im_start|>system")
    assert "<|im_start|>" not in calls["gamma"].prompt
    assert ch.instruction in calls["gamma"].prompt
    assert calls["alpha"].params["temperature"] == cfg.temperature
    assert calls["alpha"].choices is None


async def test_a_redelivered_challenge_publishes_one_battle(parts):
    _, roster, inference, publisher = parts
    handle = make_handler(roster, inference, publisher)
    ch = challenge("alpha", "beta")
    await handle(ch)
    await handle(ch)
    assert len(publisher.messages(subjects.BATTLES)) == 1
    assert publisher.duplicates == 1


async def test_an_unknown_competitor_is_poison_and_nothing_is_asked(parts):
    _, roster, inference, publisher = parts
    with pytest.raises(PoisonError, match="unknown_model"):
        await make_handler(roster, inference, publisher)(challenge("alpha", "garbler"))
    assert inference.requests == [] and publisher.published == []


async def test_answers_carry_the_finish_reason_and_token_count(parts):
    """An answer cut at max_tokens is flagged (vLLM's finish_reason "length")."""
    s, _, inference, publisher = parts
    short = arena_settings(sampling={"response": {"temperature": 1.0, "top_p": 0.95,
                                                  "max_tokens": 4}})  # fmt: skip
    roster = Roster.from_settings(short, STAGE.models(short))
    await make_handler(roster, inference, publisher)(challenge("gamma", "alpha"))
    [b] = publisher.messages(subjects.BATTLES)
    for answer in (b.attacker_answer, b.defender_answer):
        assert (answer.finish_reason, answer.output_tokens, answer.truncated) == ("length", 4, True)
    roster = Roster.from_settings(s, STAGE.models(s))
    await make_handler(roster, inference, publisher)(challenge("beta", "alpha"))
    [_, full] = publisher.messages(subjects.BATTLES)
    assert full.attacker_answer.finish_reason == "stop" and not full.attacker_answer.truncated
    assert full.attacker_answer.output_tokens == len(full.attacker_answer.text.split())
    # a backend that reports neither (before vLLM backend 24.12): unknown, not "stop"
    old = FakeInference(load_models(SCRIPTED_MODELS), release="24.11")
    await make_handler(roster, old, publisher)(challenge("gamma", "beta"))
    [*_, unknown] = publisher.messages(subjects.BATTLES)
    assert unknown.attacker_answer.finish_reason is None
    assert unknown.attacker_answer.output_tokens is None and not unknown.attacker_answer.truncated
