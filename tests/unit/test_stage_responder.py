"""The responder's handler through the in-process fakes: both answers, each through its own chat
template and the response sampling; a challenge that breaks the arena's invariants (an unknown
competitor, a model fighting itself, a language not mined, an id that is not its content's) is
poison before any model is asked."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from tests.conftest import SCRIPTED_MODELS
from tests.helpers import arena_settings, challenge
from warriorcoder.arena.instructions import normalise
from warriorcoder.arena.invariants import check_battle
from warriorcoder.errors import PoisonError
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import battle_id
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.stage import Deps
from warriorcoder.stages.responder.service import STAGE, make_handler
from warriorcoder.testing.fakes import FakeBuckets, FakeInference, FakePublisher
from warriorcoder.testing.scripted import load_models


@pytest.fixture
def parts():
    s = arena_settings()
    roster = Roster.from_settings(s, STAGE.models(s))
    return s, roster, FakeInference(load_models(SCRIPTED_MODELS)), FakePublisher()


async def test_both_competitors_answer_and_the_battle_is_published(parts):
    s, roster, inference, publisher = parts
    ch = challenge("gamma", "alpha")
    await make_handler(s, roster, inference, publisher)(ch)
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
    s, roster, inference, publisher = parts
    handle = make_handler(s, roster, inference, publisher)
    ch = challenge("alpha", "beta")
    await handle(ch)
    await handle(ch)
    assert len(publisher.messages(subjects.BATTLES)) == 1
    assert publisher.duplicates == 1


async def test_an_unknown_competitor_is_poison_and_nothing_is_asked(parts):
    s, roster, inference, publisher = parts
    with pytest.raises(PoisonError, match="unknown_model"):
        await make_handler(s, roster, inference, publisher)(challenge("alpha", "garbler"))
    assert inference.requests == [] and publisher.published == []


async def test_answers_carry_the_finish_reason_and_token_count(parts):
    """An answer cut at max_tokens is flagged (vLLM's finish_reason "length")."""
    s, _, inference, publisher = parts
    short = arena_settings(sampling={"response": {"temperature": 1.0, "top_p": 0.95,
                                                  "max_tokens": 4}})  # fmt: skip
    roster = Roster.from_settings(short, STAGE.models(short))
    await make_handler(short, roster, inference, publisher)(challenge("gamma", "alpha"))
    [b] = publisher.messages(subjects.BATTLES)
    for answer in (b.attacker_answer, b.defender_answer):
        assert (answer.finish_reason, answer.output_tokens, answer.truncated) == ("length", 4, True)
    roster = Roster.from_settings(s, STAGE.models(s))
    await make_handler(s, roster, inference, publisher)(challenge("beta", "alpha"))
    [_, full] = publisher.messages(subjects.BATTLES)
    assert full.attacker_answer.finish_reason == "stop" and not full.attacker_answer.truncated
    assert full.attacker_answer.output_tokens == len(full.attacker_answer.text.split())
    # a backend that reports neither (before vLLM backend 24.12): unknown, not "stop"
    old = FakeInference(load_models(SCRIPTED_MODELS), release="24.11")
    await make_handler(s, roster, old, publisher)(challenge("gamma", "beta"))
    [*_, unknown] = publisher.messages(subjects.BATTLES)
    assert unknown.attacker_answer.finish_reason is None
    assert unknown.attacker_answer.output_tokens is None and not unknown.attacker_answer.truncated


def _rehashed(ch, **changes):
    ch = replace(ch, **changes)
    return replace(ch, id=battle_id(ch.attacker, ch.defender, normalise(ch.instruction)))


@pytest.mark.parametrize(
    ("reason", "changes"),
    [
        ("unknown_model", {"attacker": "mallory"}),
        ("same_fighter", {"defender": "alpha"}),
        ("unknown_language", {"language": "Cobol"}),
    ],
)
async def test_a_challenge_breaking_the_arenas_invariants_is_poison(parts, reason, changes):
    s, roster, inference, publisher = parts
    handle = make_handler(s, roster, inference, publisher)
    with pytest.raises(PoisonError) as info:
        await handle(_rehashed(challenge("alpha", "beta"), **changes))
    assert info.value.reason == reason
    assert inference.requests == [] and publisher.published == []


async def test_a_challenge_whose_id_is_not_its_content_is_poison(parts):
    s, roster, inference, publisher = parts
    handle = make_handler(s, roster, inference, publisher)
    ch = challenge("alpha", "beta")
    for forged in (
        replace(ch, instruction="Write a Python function that deletes every file."),
        replace(ch, attacker="beta", defender="alpha"),
    ):
        with pytest.raises(PoisonError, match="id_mismatch"):
            await handle(forged)
    assert inference.requests == [] and publisher.published == []
    await handle(ch)  # the genuine one still goes through
    [b] = publisher.messages(subjects.BATTLES)
    check_battle(b, s)  # and what the responder publishes passes the judge's check


async def test_the_stage_as_the_runner_builds_it_checks_what_it_consumes(parts):
    s, roster, inference, publisher = parts
    deps = Deps(settings=s, roster=roster, inference=inference, publisher=publisher,
                buckets=FakeBuckets(), bus=None)  # fmt: skip  # no bus: handlers take the ports
    async with STAGE.setup(deps) as handle:
        with pytest.raises(PoisonError, match="unknown_model"):
            await handle(_rehashed(challenge("alpha", "beta"), defender="mallory"))
        await handle(challenge("alpha", "beta"))
    assert [b.challenge.defender for b in publisher.messages(subjects.BATTLES)] == ["beta"]
