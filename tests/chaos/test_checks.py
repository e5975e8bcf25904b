"""The chaos suite's checker catches what it is there to catch (no arena needed)."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest

from tests.chaos.checks import Expect, StoreState, check
from tests.chaos.poison import CATEGORIES, INVARIANT_REASONS, make_poison
from tests.chaos.scenarios import chaos_settings
from tests.helpers import judgement
from warriorcoder.arena.decide import decide
from warriorcoder.proto.messages import DeadLetter, Judgement, Sample, decode
from warriorcoder.proto.state import Ratings
from warriorcoder.runtime.settings import ScoringSettings

pytestmark = pytest.mark.chaos

SCORING = ScoringSettings()
PAIRS = [("alpha", "beta"), ("beta", "gamma"), ("gamma", "alpha"), ("alpha", "gamma")]


def run(winners: list[list[str]]) -> tuple[list[Sample], Ratings]:
    """What an aggregator leaves after applying these battles in order."""
    ratings: dict[str, float] = {}
    samples = []
    for seq, (ws, (a, d)) in enumerate(zip(winners, PAIRS, strict=True), 1):
        j = judgement(ws, attacker=a, defender=d)
        s = decide(j, ratings.get(a, 1000.0), ratings.get(d, 1000.0), SCORING, rating_seq=seq)
        assert s is not None
        ratings.update(s.ratings_after)
        samples.append(s)
    return samples, Ratings(ratings=ratings, battles=len(samples))


@pytest.fixture
def state() -> Iterator[StoreState]:
    samples, ratings = run([["attacker"], ["defender", "tie"], ["attacker"], ["tie"]])
    yield StoreState(
        disk=list(samples),
        disk_lines=len(samples),
        stream=list(reversed(samples)),
        stream_messages=len(samples),
        backlog={"WARRIORCODER_V1_CHALLENGES": 0},
        ratings=ratings,
        dead_letters=[],
    )


def letter(reason: str, message_id: str | None) -> DeadLetter:
    return DeadLetter(stage="judge", reason=reason, error="e", subject="s", deliveries=1,
                      payload="", message_id=message_id, failed_at=1.0)  # fmt: skip


def test_a_clean_run_passes(state: StoreState):
    assert check(state, Expect(4, SCORING)).problems == []


def test_lost_duplicated_or_disagreeing_samples_are_caught(state: StoreState):
    assert check(state, Expect(5, SCORING)).problems  # one lost
    state.stream = state.stream[:-1]
    state.stream_messages -= 1
    problems = check(state, Expect(4, SCORING)).problems
    assert any("stream" in p for p in problems), problems
    state.stream = state.disk[:]
    state.stream_messages = 4
    state.disk.append(state.disk[0])
    state.disk_lines += 1
    assert any("duplicate" in p for p in check(state, Expect(4, SCORING)).problems)


def test_ratings_must_equal_the_replay_exactly(state: StoreState):
    assert state.ratings is not None
    off = dict(state.ratings.ratings)
    off["alpha"] += 1e-9
    state.ratings = msgspec.structs.replace(state.ratings, ratings=off)
    assert any("replay" in p for p in check(state, Expect(4, SCORING)).problems)


def test_a_battle_applied_twice_is_caught(state: StoreState):
    assert state.ratings is not None
    state.ratings = msgspec.structs.replace(state.ratings, battles=5)
    assert any("ratings.battles" in p for p in check(state, Expect(4, SCORING)).problems)


def test_every_dead_letter_is_explained(state: StoreState):
    injected = {"chaos-1": frozenset({"undecodable"}), "chaos-2": frozenset({"unknown_model"})}
    state.dead_letters = [letter("undecodable", "chaos-1"), letter("unknown_model", "chaos-2")]
    assert check(state, Expect(4, SCORING, injected=injected)).problems == []
    state.dead_letters[1] = letter("handler_error", "chaos-2")  # wrong reason
    assert check(state, Expect(4, SCORING, injected=injected)).problems
    state.dead_letters = state.dead_letters[:1]  # one never dead-lettered
    assert check(state, Expect(4, SCORING, injected=injected)).problems
    state.dead_letters = [letter("retries_exhausted", "abc")]  # the arena's own work failed
    assert check(state, Expect(4, SCORING)).problems
    assert not check(state, Expect(4, SCORING, organic=frozenset({"retries_exhausted"}))).problems


def test_poison_covers_every_category_and_subject():
    settings = chaos_settings("127.0.0.1:1")
    samples, _ = run([["attacker"], ["defender", "tie"], ["attacker"], ["tie"]])
    batch = make_poison(300, seed=1, settings=settings, applied=samples)
    assert {p.category for p in batch} == set(CATEGORIES)
    assert {(p.category, p.subject) for p in batch} >= {
        (c, s) for c in CATEGORIES for s in {p.subject for p in batch} if c != "oversized"
    }
    assert len({p.msg_id for p in batch}) == 300
    assert max(len(p.data) for p in batch) >= 900 * 1024 > max(len(p.data) for p in batch) - 200_000
    assert all(len(p.data) < 1024 * 1024 - 4096 for p in batch)  # under NATS's max_payload
    assert any(p.absorbable for p in batch)
    assert make_poison(300, seed=1, settings=settings, applied=samples) == batch  # reproducible
    faithful = [p for p in batch if p.absorbable and p.subject.endswith("judgements")]
    for p in faithful:  # a faithful copy is the applied battle itself
        j = decode(p.data, Judgement)
        assert j.id in {s.id for s in samples}


def test_the_invariant_reasons_are_the_arenas():
    from warriorcoder.arena.invariants import REASONS

    assert INVARIANT_REASONS == REASONS
