"""The responder's handler through the in-process fakes: both answers, each through its own chat
template and the response sampling; a challenge that breaks the arena's invariants (an unknown
competitor, a model fighting itself, a language not mined, an id that is not its content's) is
poison before any model is asked. With the verifier on, a model fighting in neither corner writes
the challenge's tests at the same time (chosen per battle id, re-asked when unparseable) and the
battle goes to the verifier."""

from __future__ import annotations

import asyncio

import pytest
from msgspec.structs import replace

from tests.conftest import SCRIPTED_MODELS
from tests.helpers import arena_settings, challenge
from warriorcoder.arena.instructions import normalise
from warriorcoder.arena.invariants import check_battle
from warriorcoder.arena.test_writing import TESTS_REASK_NOTE, choose_writer
from warriorcoder.errors import PoisonError
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import battle_id
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.stage import Deps
from warriorcoder.runtime.triton import RetryableInferenceError
from warriorcoder.stages.responder.service import STAGE, make_handler
from warriorcoder.testing.fakes import FakeBuckets, FakeInference, FakePublisher
from warriorcoder.testing.scripted import ScriptedModel, load_models, role_of


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


# --- verifier on: tests written by an uninvolved model, beside the answers -----------------------

TASK = "Write a Python function `dedupe_sorted` that returns the sorted distinct items of a list."


def _verified(**changes):
    s = arena_settings(verifier={"enabled": True, **changes.pop("verifier", {})}, **changes)
    return s, Roster.from_settings(s, STAGE.models(s))


def _models(**overrides):
    """The scripted test models, some replaced (e.g. a writer that garbles its first replies)."""
    return [overrides.get(m.name, m) for m in load_models(SCRIPTED_MODELS)]


async def test_an_uninvolved_model_writes_the_tests_and_the_battle_goes_to_the_verifier():
    s, roster = _verified()
    inference, publisher = FakeInference(load_models(SCRIPTED_MODELS)), FakePublisher()
    ch = challenge("gamma", "alpha", TASK)
    await make_handler(s, roster, inference, publisher)(ch)
    assert publisher.messages(subjects.BATTLES) == []
    [b] = publisher.messages(subjects.ANSWERED)
    assert (
        b.id == ch.id and b.attacker_answer.model == "gamma" and b.defender_answer.model == "alpha"
    )
    t = b.tests
    assert (t.writer, t.language, t.framework, t.usable, t.asked) == (
        "beta",
        "Python",
        "pytest",
        True,
        1,
    )
    assert t.tests == [
        "test_empty_input_gives_an_empty_list",
        "test_sorted_distinct_input_is_unchanged",
        "test_unsorted_input_comes_back_sorted",
        "test_duplicates_are_dropped",
    ]
    assert t.code.startswith("from solution import *\n") and "dedupe_sorted([3, 1, 2])" in t.code
    cfg = s.sampling.tests
    assert (t.sampling.temperature, t.sampling.max_tokens) == (cfg.temperature, cfg.max_tokens)
    [req] = inference.calls(role="tests")
    # through the writer's own chat template (Llama 3 for beta) and the tests sampling
    assert req.model == "beta" and req.prompt.startswith("<|start_header_id|>system")
    assert TASK in req.prompt and "<|im_start|>" not in req.prompt
    assert req.params["temperature"] == cfg.temperature and req.choices is None
    assert {r.model for r in inference.calls(role="response")} == {"gamma", "alpha"}


async def test_the_tests_are_asked_at_the_same_time_as_the_answers():
    s, roster = _verified()
    inference, publisher = FakeInference(load_models(SCRIPTED_MODELS)), FakePublisher()
    handle = make_handler(s, roster, inference, publisher)
    # the writer is held: both answers are still asked (they do not wait for the tests)
    inference.set_available("beta", False)
    task = asyncio.create_task(handle(challenge("gamma", "alpha", TASK)))
    try:
        for _ in range(20):
            await asyncio.sleep(0)
        assert {r.model for r in inference.calls(role="response")} == {"gamma", "alpha"}
        assert publisher.published == []
        inference.set_available("beta", True)
        await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
    # the fighters are held: the writer is asked all the same (it does not wait for the answers)
    inference.set_available("gamma", False)
    inference.set_available("alpha", False)
    task = asyncio.create_task(handle(challenge("alpha", "gamma", TASK)))
    try:
        for _ in range(20):
            await asyncio.sleep(0)
        assert [r.model for r in inference.calls(role="tests")] == ["beta", "beta"]
        assert len(publisher.messages(subjects.ANSWERED)) == 1
        inference.set_available("gamma", True)
        inference.set_available("alpha", True)
        await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
    assert [b.tests.writer for b in publisher.messages(subjects.ANSWERED)] == ["beta", "beta"]


async def test_the_writer_never_fights_and_writers_take_turns_across_battles():
    s, roster = _verified(judges=["garbler", "slow"])
    inference, publisher = FakeInference(load_models(SCRIPTED_MODELS)), FakePublisher()
    handle = make_handler(s, roster, inference, publisher)
    pairs = [(a, d) for a in s.competitors for d in s.competitors if a != d]
    challenges = [challenge(a, d, f"{TASK} Variant {i}.") for i in range(8) for a, d in pairs]
    for ch in challenges:
        await handle(ch)
    battles = publisher.messages(subjects.ANSWERED)
    assert len(battles) == len(challenges)
    by_pair: dict[tuple[str, str], set[str]] = {}
    for b in battles:
        a, d = b.challenge.attacker, b.challenge.defender
        assert b.tests.writer not in (a, d)
        assert b.tests.writer == choose_writer(b.id, s.test_writers_for(a, d))
        by_pair.setdefault((a, d), set()).add(b.tests.writer)
    # each pair has three candidates (the third competitor, garbler, slow); 8 battles use > 1
    assert all(len(writers) > 1 for writers in by_pair.values()), by_pair
    assert len({b.tests.writer for b in battles}) == 5  # every model of the pool wrote some
    # a redelivered challenge asks the same writer again
    await handle(challenges[0])
    tests_calls = inference.calls(role="tests")
    assert tests_calls[-1].model == battles[0].tests.writer
    assert publisher.duplicates == 1


async def test_configured_writers_are_used_even_judge_only_ones():
    s, roster = _verified(verifier={"test_writers": ["slow", "alpha"]})
    assert STAGE.models(s) == ["alpha", "beta", "gamma", "slow"]
    inference, publisher = FakeInference(load_models(SCRIPTED_MODELS)), FakePublisher()
    handle = make_handler(s, roster, inference, publisher)
    await handle(challenge("alpha", "beta", TASK))
    await handle(challenge("gamma", "beta", TASK))
    writers = [b.tests.writer for b in publisher.messages(subjects.ANSWERED)]
    ch = challenge("gamma", "beta", TASK)
    assert writers == ["slow", choose_writer(ch.id, ["slow", "alpha"])]


async def test_an_unparseable_reply_is_asked_again_with_the_reask_note():
    s, roster = _verified()
    beta = ScriptedModel("beta", 5, garble_first_tests=1)
    inference, publisher = FakeInference(_models(beta=beta)), FakePublisher()
    await make_handler(s, roster, inference, publisher)(challenge("gamma", "alpha", TASK))
    [b] = publisher.messages(subjects.ANSWERED)
    assert (b.tests.usable, b.tests.asked, len(b.tests.tests)) == (True, 2, 4)
    first, second = inference.calls(role="tests")
    assert TESTS_REASK_NOTE not in first.prompt and TESTS_REASK_NOTE in second.prompt


@pytest.mark.parametrize("max_reasks", [0, 1, 3])
async def test_tests_still_unparseable_after_the_reasks_leave_the_battle_unverified(max_reasks):
    s, roster = _verified(verifier={"max_reasks": max_reasks})
    beta = ScriptedModel("beta", 5, garble_first_tests=10**6)
    inference, publisher = FakeInference(_models(beta=beta)), FakePublisher()
    await make_handler(s, roster, inference, publisher)(challenge("gamma", "alpha", TASK))
    [b] = publisher.messages(subjects.ANSWERED)
    t = b.tests
    assert (t.writer, t.usable, t.code, t.tests, t.asked) == ("beta", False, "", [], max_reasks + 1)
    assert b.attacker_answer.text.endswith("quality=2")  # the battle goes on
    assert len(inference.calls(role="tests")) == max_reasks + 1


async def test_a_language_without_a_test_format_goes_on_without_tests():
    s, roster = _verified(languages=["Python", "Go"])
    inference, publisher = FakeInference(load_models(SCRIPTED_MODELS)), FakePublisher()
    go = _rehashed(challenge("gamma", "alpha", TASK.replace("Python", "Go")), language="Go")
    await make_handler(s, roster, inference, publisher)(go)
    [b] = publisher.messages(subjects.ANSWERED)
    assert b.tests is None and "```go" in b.attacker_answer.text
    assert inference.calls(role="tests") == []


class _FailingWriter(ScriptedModel):
    def generate(self, prompt, params):
        if role_of(prompt) == "tester":
            raise RetryableInferenceError(self.name, "backend overloaded")
        return super().generate(prompt, params)


async def test_a_failed_writer_call_fails_the_challenge_like_a_failed_answer():
    s, roster = _verified()
    inference = FakeInference(_models(beta=_FailingWriter("beta", 5)))
    publisher = FakePublisher()
    with pytest.raises(RetryableInferenceError, match="overloaded"):
        await make_handler(s, roster, inference, publisher)(challenge("gamma", "alpha", TASK))
    assert publisher.published == []  # redelivered later, answers and tests together


async def test_verifier_off_publishes_to_the_judges_without_tests():
    s = arena_settings()
    assert not s.verifier.enabled and STAGE.models(s) == ["alpha", "beta", "gamma"]
    roster = Roster.from_settings(s, STAGE.models(s))
    inference, publisher = FakeInference(load_models(SCRIPTED_MODELS)), FakePublisher()
    await make_handler(s, roster, inference, publisher)(challenge("gamma", "alpha", TASK))
    [b] = publisher.messages(subjects.BATTLES)
    assert b.tests is None and publisher.messages(subjects.ANSWERED) == []
    assert inference.calls(role="tests") == []


def test_the_stage_declares_the_writers_only_with_the_verifier_on():
    on = arena_settings(verifier={"enabled": True}, judges=["garbler"])
    assert STAGE.models(on) == ["alpha", "beta", "gamma", "garbler"]
    off = arena_settings(judges=["garbler"])
    assert STAGE.models(off) == ["alpha", "beta", "gamma"]
