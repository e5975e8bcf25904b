"""The challenger through the in-process fakes: one mining step end to end, the quality gate and
its re-ask, de-duplication across replicas, the shared budget, and task ownership."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.conftest import SCRIPTED_MODELS
from tests.helpers import arena_settings, band_members
from warriorcoder.arena.quality import QUESTION_START_MARK, SCORE_REASK_NOTE
from warriorcoder.proto import subjects
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.stores import Budget, RejectionStats
from warriorcoder.runtime.triton import InferenceError
from warriorcoder.stages.challenger.quality import QualityGate
from warriorcoder.stages.challenger.service import BUCKETS, STAGE, Miner, _wait_or_stop
from warriorcoder.testing.fakes import FakeInference, FakeKV, FakePublisher
from warriorcoder.testing.scripted import ScriptedModel, load_models


def miner(s, kvs=None, inference=None, seed=0):
    roster = Roster.from_settings(s, STAGE.models(s))
    inference = inference or FakeInference(load_models(SCRIPTED_MODELS))
    kvs = kvs or {b: FakeKV(b) for b in BUCKETS}
    m = Miner(s, roster, inference, FakePublisher(), kvs)
    m.rng = random.Random(seed)
    return m, inference


async def test_one_mining_step_publishes_a_clean_scored_challenge():
    s = arena_settings()
    m, inference = miner(s)
    assert await m.mine_one()
    [ch] = m.publisher.messages(subjects.CHALLENGES)
    assert (ch.attacker, ch.defender) == m.cycle[0]
    assert ch.attacker != ch.defender
    assert ch.instruction.startswith("Write a Python function")
    assert "<|" not in ch.instruction and "Sure!" not in ch.instruction
    assert (ch.sampling.temperature, ch.sampling.top_p) == s.sampling.challenge.grid()[0]
    assert ch.quality is not None and ch.quality >= s.challenger.quality.threshold
    assert ch.quality_scorer not in (None, ch.attacker)
    [mined] = inference.calls(role="challenge")
    assert mined.model == ch.attacker and mined.params["stop"]  # cut at the user turn's end
    [scored] = inference.calls(role="quality")
    assert scored.model == ch.quality_scorer and QUESTION_START_MARK in scored.prompt


async def test_a_vague_instruction_fails_the_quality_gate_and_frees_its_claim():
    s = arena_settings(challenger={"decontamination": {"enabled": False}})
    m, _ = miner(s)
    results = [await m.mine_one() for _ in range(3 * 7)]  # every 7th mined per model is vague
    stats = await RejectionStats.read(m.stats.kv)
    assert stats.get("low_quality", 0) == results.count(False) > 0
    published = m.publisher.messages(subjects.CHALLENGES)
    assert len(published) == results.count(True)
    assert all("something useful" not in c.instruction for c in published)
    # rejected instructions hold no near-duplicate keys; admitted ones do (one key per band,
    # shared by its members: count memberships)
    lsh = await band_members(m.dedup.kv)
    assert len(lsh) == len(published) * len(m.dedup.bands.keys(published[0].instruction))
    assert {k.rsplit("/", 1)[1] for k in lsh} == {c.id for c in published}


async def test_the_same_instruction_from_two_replicas_is_published_once():
    s = arena_settings()
    shared = {subjects.KV_DEDUP: FakeKV(), subjects.KV_STATS: FakeKV()}
    # Two replicas draw the same slot (own schedule buckets) with the same seed: same text.
    a, _ = miner(s, {**shared, subjects.KV_SCHEDULE: FakeKV()})
    b, _ = miner(s, {**shared, subjects.KV_SCHEDULE: FakeKV()})
    assert await asyncio.gather(a.mine_one(), b.mine_one()) in ([True, False], [False, True])
    assert await RejectionStats.read(shared[subjects.KV_STATS]) == {"duplicate": 1}


async def test_a_spent_budget_publishes_nothing_more_and_releases_the_claim():
    s = arena_settings(challenger={"quality": {"enabled": False}})
    m, _ = miner(s)
    budget = Budget(m.schedule)
    await budget.set(1)
    assert await m.mine_one()
    lsh_before = await band_members(m.dedup.kv)
    assert not await m.mine_one()  # mined, then found the budget spent
    assert await budget.remaining() == 0
    assert len(m.publisher.messages(subjects.CHALLENGES)) == 1
    assert await band_members(m.dedup.kv) == lsh_before


class _Mumbler(ScriptedModel):
    """Rates questions without a score the first time it is asked."""

    asked = 0

    def generate(self, prompt, params):
        if QUESTION_START_MARK in prompt:
            type(self).asked += 1
            if type(self).asked == 1:
                return "A fine question, I suppose."
        return super().generate(prompt, params)


async def test_the_quality_gate_reasks_a_scorer_and_never_asks_the_attacker():
    s = arena_settings(challenger={"quality": {"scorers": ["beta", "gamma"], "max_reasks": 1}})
    roster = Roster.from_settings(s, STAGE.models(s))
    scripted = [_Mumbler(name="beta", strength=5), ScriptedModel(name="gamma", strength=2)]
    inference = FakeInference(scripted)
    gate = QualityGate(s, roster, inference)
    score, scorer = await gate.rate("Write a Python function `f` that sorts.", "Python", "alpha")
    assert (score, scorer) == (8, "beta")
    first, second = inference.calls(role="quality")
    assert SCORE_REASK_NOTE in second.prompt
    assert SCORE_REASK_NOTE not in first.prompt
    for _ in range(3):
        assert (await gate.rate("Write some Python code.", "Python", "beta"))[1] == "gamma"
    assert {r.model for r in inference.calls(role="quality")[2:]} == {"gamma"}


def test_judge_only_scorers_are_among_the_models_the_challenger_calls():
    s = arena_settings(judges=["garbler"])
    assert "garbler" in s.scorer_pool
    assert "garbler" in STAGE.models(s)
    assert STAGE.consumes is None and STAGE.run is not None


async def test_waiting_for_either_event_leaves_no_task_behind():
    a, stop = asyncio.Event(), asyncio.Event()
    before = asyncio.all_tasks()
    waiter = asyncio.create_task(_wait_or_stop(stop, a.wait()))
    await asyncio.sleep(0.01)
    assert len(asyncio.all_tasks() - before) == 3  # the waiter and its two event waits
    stop.set()
    await waiter
    assert asyncio.all_tasks() - before == set()
    # The awaited side finishing first ends it too; a stop already set starts nothing.
    waiter = asyncio.create_task(_wait_or_stop(asyncio.Event(), a.wait()))
    await asyncio.sleep(0.01)
    a.set()
    await waiter
    await _wait_or_stop(stop, asyncio.sleep(3600))
    assert asyncio.all_tasks() - before == set()


# -- an instruction admitted by the de-dup index but dropped later frees every key it holds ------


class _FailingScorer(FakeInference):
    async def generate(self, model, prompt, params, *, stop=None, choices=None, role):
        if role == "quality":
            raise InferenceError(model, "scorer crashed")
        return await super().generate(model, prompt, params, stop=stop, choices=choices, role=role)


class _FailingPublisher(FakePublisher):
    async def publish(self, subject, msg, *, msg_id):
        raise TimeoutError("no ack")


class _Crowded:
    """A diversity gate that finds every instruction too close to an admitted one."""

    async def check(self, text):
        return None, 0.99

    def too_close(self, nearest):
        return True


async def _drop_once(m: Miner) -> None:
    """Mine one instruction that is dropped after its claim; assert nothing stays claimed."""
    assert not await m.mine_one()
    assert m.dedup.kv.held_keys() == []


async def test_a_quality_rejection_frees_the_exact_key_too():
    s = arena_settings(challenger={"quality": {"threshold": 10}})  # the scripted scorer gives 8
    m, _ = miner(s)
    await _drop_once(m)
    assert await RejectionStats.read(m.stats.kv) == {"low_quality": 1}


async def test_a_failing_scorer_frees_the_claim():
    s = arena_settings()
    m, _ = miner(s, inference=_FailingScorer(load_models(SCRIPTED_MODELS)))
    with pytest.raises(InferenceError):
        await m.mine_one()
    assert m.dedup.kv.held_keys() == []


async def test_a_diversity_rejection_frees_the_claim():
    s = arena_settings()
    m, _ = miner(s)
    m.diversity = _Crowded()  # type: ignore[assignment]
    await _drop_once(m)
    assert await RejectionStats.read(m.stats.kv) == {"too_similar": 1}


async def test_a_spent_budget_frees_the_claim():
    s = arena_settings()
    m, _ = miner(s)
    await Budget(m.schedule).set(0)
    await _drop_once(m)
    assert m.publisher.messages(subjects.CHALLENGES) == []


async def test_a_failed_publish_frees_the_claim_and_the_budget_and_the_text_is_mined_again():
    s = arena_settings(challenger={"quality": {"enabled": False}})
    m, _ = miner(s, seed=3)
    budget = Budget(m.schedule)
    await budget.set(1)
    m.publisher = _FailingPublisher()
    with pytest.raises(TimeoutError):
        await m.mine_one()
    assert m.dedup.kv.held_keys() == []
    assert await budget.remaining() == 1
    # The same slot and seed mine the same text again: nothing blocks it now.
    m.publisher = FakePublisher()
    m.rng = random.Random(3)
    await m.cursor.kv.delete(subjects.SCHEDULE_KEY)
    assert await m.mine_one()
    assert [k for k in m.dedup.kv.held_keys() if k.startswith("exact.")]
