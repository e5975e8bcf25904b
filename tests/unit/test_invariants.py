"""The arena's invariants on consumed messages: every violation is poison with its stable reason,
and every message the arena itself produces passes."""

from __future__ import annotations

from typing import Any

import pytest
from msgspec.structs import replace

from tests.helpers import arena_judgement, arena_settings, arena_tree, arena_vote, battle, challenge
from warriorcoder.arena.instructions import normalise
from warriorcoder.arena.invariants import (
    REASONS,
    check_battle,
    check_challenge,
    check_judgement,
    orders_for,
)
from warriorcoder.arena.verdicts import combine
from warriorcoder.errors import PoisonError
from warriorcoder.proto.messages import Challenge, ChallengeTests, Judgement, Vote, battle_id
from warriorcoder.runtime.settings import ArenaSettings, parse_settings

# Competitors alpha, beta, gamma; garbler and slow judge only: three uninvolved judges a battle.
S = arena_settings(judges=["garbler", "slow"], languages=["Python", "Rust"])


def rehashed(ch: Challenge, **changes: Any) -> Challenge:
    """``ch`` with ``changes`` and the id its new content hashes to: only the change is wrong."""
    ch = replace(ch, **changes)
    return replace(ch, id=battle_id(ch.attacker, ch.defender, normalise(ch.instruction)))


def poison(reason: str, check: Any, msg: Any, s: ArenaSettings = S) -> PoisonError:
    assert reason in REASONS
    with pytest.raises(PoisonError) as info:
        check(msg, s)
    assert info.value.reason == reason, info.value
    assert not info.value.retryable
    return info.value


# --- what the arena produces passes ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["both", "alternate"])
@pytest.mark.parametrize(
    "winners", [["attacker", "defender", "tie"], ["invalid", "tie", "attacker"]]
)
def test_valid_messages_pass(mode: str, winners: list[str]):
    s = arena_settings(judges=["garbler", "slow"], judge={"position_mode": mode})
    for attacker, defender in [("alpha", "beta"), ("gamma", "alpha"), ("beta", "gamma")]:
        b = battle(attacker=attacker, defender=defender)
        check_challenge(b.challenge, s)
        check_battle(b, s)
        check_judgement(arena_judgement(b, s, winners), s)


def test_vote_order_is_free_and_the_judgement_mode_decides_the_orders():
    b = battle(attacker="alpha", defender="beta")
    j = arena_judgement(b, S, ["attacker", "tie", "defender"])
    check_judgement(replace(j, votes=list(reversed(j.votes))), S)  # gather order is not a rule
    # a judgement judged in the other mode before a config change still holds together
    one = orders_for("alternate", b.id)
    alt = replace(
        j, position_mode="alternate", votes=[arena_vote(v.judge, "tie", one) for v in j.votes]
    )
    check_judgement(alt, S)


def test_orders_follow_the_mode_and_the_id_parity():
    assert orders_for("both", "0" * 32) == ["attacker", "defender"]
    assert orders_for("alternate", "0" * 31 + "a") == ["attacker"]
    assert orders_for("alternate", "f" * 32) == ["defender"]


# --- challenges (and every battle and judgement that carries one) -----------------------------


def _challenge_cases() -> list[tuple[str, str, Challenge]]:
    ch = challenge("alpha", "beta")
    return [
        ("mallory attacks", "unknown_model", rehashed(ch, attacker="mallory")),
        ("mallory defends", "unknown_model", rehashed(ch, defender="mallory")),
        ("a judge-only model fights", "unknown_model", rehashed(ch, defender="garbler")),
        ("a model fights itself", "same_fighter", rehashed(ch, defender="alpha")),
        ("a language not mined", "unknown_language", rehashed(ch, language="Cobol")),
        ("an id of nothing", "id_mismatch", replace(ch, id="0" * 32)),
        ("instruction changed", "id_mismatch", replace(ch, instruction="rm -rf /, in Python")),
        ("fighters swapped", "id_mismatch", replace(ch, attacker="beta", defender="alpha")),
    ]


@pytest.mark.parametrize(("case", "reason", "ch"), _challenge_cases(), ids=lambda x: str(x)[:24])
def test_a_broken_challenge_is_poison_wherever_it_rides(case: str, reason: str, ch: Challenge):
    poison(reason, check_challenge, ch)
    ok = battle(attacker="alpha", defender="beta")
    b = replace(
        ok,
        id=ch.id,
        challenge=ch,
        attacker_answer=replace(ok.attacker_answer, model=ch.attacker),
        defender_answer=replace(ok.defender_answer, model=ch.defender),
    )
    poison(reason, check_battle, b)
    j = arena_judgement(ok, S)
    poison(reason, check_judgement, replace(j, id=ch.id, battle=b))


def test_a_judgement_where_mallory_fights_is_poison_though_its_votes_are_consistent():
    """The issue's case: a battle naming a model outside the arena, judged by real judges."""
    mallory = rehashed(challenge("alpha", "beta"), defender="mallory")
    ok = battle(attacker="alpha", defender="beta")
    b = replace(
        ok,
        id=mallory.id,
        challenge=mallory,
        defender_answer=replace(ok.defender_answer, model="mallory"),
    )
    votes = [arena_vote(j, "defender") for j in ("beta", "gamma", "garbler", "slow")]
    j = Judgement(id=b.id, battle=b, votes=votes, position_mode="both", judged_at=3.0)
    err = poison("unknown_model", check_judgement, j)
    assert "mallory" in str(err)


# --- battles ---------------------------------------------------------------------------------


def test_a_battle_reuses_its_challenge_id():
    b = battle()
    other = challenge("alpha", "beta", text="Write a Rust function that adds two numbers.")
    poison("id_mismatch", check_battle, replace(b, id=other.id))


@pytest.mark.parametrize(
    ("side", "changes"),
    [
        ("attacker_answer", {"model": "gamma"}),  # an uninvolved model answers
        ("defender_answer", {"model": "mallory"}),
        ("attacker_answer", {"role": "defender"}),  # right model, wrong role
        ("defender_answer", {"model": "alpha", "role": "attacker"}),
    ],
)
def test_each_answer_is_by_the_fighter_of_its_role(side: str, changes: dict[str, str]):
    b = battle(attacker="alpha", defender="beta")
    poison(
        "answer_mismatch", check_battle, replace(b, **{side: replace(getattr(b, side), **changes)})
    )


def test_swapped_answers_are_poison():
    b = battle(attacker="alpha", defender="beta")
    swapped = replace(b, attacker_answer=b.defender_answer, defender_answer=b.attacker_answer)
    poison("answer_mismatch", check_battle, swapped)


@pytest.mark.parametrize(("writer", "ok"), [("alpha", False), ("beta", False), ("gamma", True)])
def test_tests_are_written_by_a_model_outside_the_battle(writer: str, ok: bool):
    b = battle(attacker="alpha", defender="beta")
    tests = ChallengeTests(
        writer=writer, language="Python", code="", tests=[], usable=False, asked=1
    )
    b = replace(b, tests=tests)
    if ok:
        check_battle(b, S)
    else:
        poison("tests_by_fighter", check_battle, b)


# --- judgements ------------------------------------------------------------------------------


def _with_votes(j: Judgement, votes: list[Vote]) -> Judgement:
    return replace(j, votes=votes)


def test_a_judgement_reuses_its_battle_id():
    j = arena_judgement(battle(), S)
    poison("id_mismatch", check_judgement, replace(j, id="f" * 32))


@pytest.mark.parametrize(
    ("reason", "votes"),
    [
        ("judge_not_in_pool", ["gamma", "garbler", "mallory"]),
        ("judge_not_in_pool", ["gamma", "garbler", "slow", "mallory"]),
        ("judge_is_fighter", ["gamma", "garbler", "slow", "alpha"]),
        ("judge_is_fighter", ["gamma", "garbler", "beta"]),
        ("duplicate_judge", ["gamma", "garbler", "slow", "gamma"]),
        ("duplicate_judge", ["gamma", "garbler", "garbler"]),
        ("votes_mismatch", ["gamma", "garbler"]),  # slow left out
        ("votes_mismatch", []),
    ],
)
def test_the_judges_are_exactly_this_arenas_judges_of_the_battle(reason: str, votes: list[str]):
    j = arena_judgement(battle(attacker="alpha", defender="beta"), S)  # gamma, garbler, slow
    poison(reason, check_judgement, _with_votes(j, [arena_vote(v, "tie") for v in votes]))


def test_a_judgement_of_a_configuration_with_fewer_judges_is_poison():
    fewer = arena_settings()  # gamma alone judges alpha against beta
    j = arena_judgement(battle(attacker="alpha", defender="beta"), fewer, ["tie"])
    check_judgement(j, fewer)
    poison("votes_mismatch", check_judgement, j)  # garbler and slow did not vote


def test_each_vote_has_the_orders_of_the_judgements_mode():
    b = battle(attacker="alpha", defender="beta")
    j = arena_judgement(b, S)
    gamma, garbler, slow = j.votes
    for bad in (
        replace(gamma, orders=["defender", "attacker"], verdicts=["A", "B"], winner="defender"),
        replace(gamma, orders=["attacker"], verdicts=["A"]),  # one order in both mode
        replace(gamma, orders=["attacker", "attacker"], verdicts=["A", "A"]),
        replace(gamma, verdicts=["A"]),  # one verdict for two orders
        replace(gamma, verdicts=["A", "B", "B"]),
        replace(gamma, asked=1),  # fewer calls than orders
    ):
        poison("orders_mismatch", check_judgement, _with_votes(j, [bad, garbler, slow]))
    # alternate mode: one order, the one the id's parity picks
    [first] = orders_for("alternate", b.id)
    other = "defender" if first == "attacker" else "attacker"
    alt = replace(
        j, position_mode="alternate", votes=[arena_vote(v.judge, "tie", [first]) for v in j.votes]
    )
    check_judgement(alt, S)
    wrong = [arena_vote(v.judge, "tie", [other]) for v in j.votes]
    poison("orders_mismatch", check_judgement, replace(alt, votes=wrong))
    both = [arena_vote(v.judge, "tie") for v in j.votes]
    poison("orders_mismatch", check_judgement, replace(alt, votes=both))


@pytest.mark.parametrize(
    ("verdicts", "claimed"),
    [
        (["A", "B"], "defender"),  # attacker both ways, claimed for the defender
        (["A", "A"], "attacker"),  # orders disagree: a tie, not a win
        (["B", "A"], "tie"),
        (["invalid", "A"], "attacker"),  # a missing verdict makes the vote invalid
        (["A", "B"], "invalid"),
    ],
)
def test_a_vote_wins_for_what_its_verdicts_combine_to(verdicts: list[str], claimed: str):
    j = arena_judgement(battle(attacker="alpha", defender="beta"), S)
    gamma, garbler, slow = j.votes
    labels = [None if v == "invalid" else v for v in verdicts]
    assert combine(gamma.orders, labels) != claimed  # type: ignore[arg-type]
    bad = replace(gamma, verdicts=verdicts, winner=claimed)
    poison("winner_mismatch", check_judgement, _with_votes(j, [bad, garbler, slow]))


def test_every_reason_is_short_and_stable():
    assert all(r.isidentifier() and r.islower() and len(r) <= 24 for r in REASONS)


def _family_settings(policy: str) -> ArenaSettings:
    """S with alpha and garbler of one family, under ``judge.family_policy: policy``."""
    tree = arena_tree(judges=["garbler", "slow"], judge={"family_policy": policy})
    tree["models"]["alpha"]["family"] = tree["models"]["garbler"]["family"] = "qwen"
    return parse_settings(tree)


def test_under_exclude_a_vote_by_a_judge_of_a_fighters_family_is_poison():
    s = _family_settings("exclude")
    b = battle(attacker="alpha", defender="beta")
    j = arena_judgement(b, s)
    assert [v.judge for v in j.votes] == ["gamma", "slow"]  # garbler (qwen) left out
    check_judgement(j, s)
    poison(
        "votes_mismatch",
        check_judgement,
        _with_votes(j, [*j.votes, arena_vote("garbler", "tie")]),
        s,
    )
    # in a battle without a qwen fighter garbler judges as before
    check_judgement(arena_judgement(battle(attacker="beta", defender="gamma"), s), s)


def test_under_weight_each_vote_carries_the_weight_the_arena_gives_its_judge():
    s = _family_settings("weight")
    j = arena_judgement(battle(attacker="beta", defender="alpha"), s)
    assert [(v.judge, v.weight) for v in j.votes] == [
        ("gamma", 1.0),
        ("garbler", 0.5),
        ("slow", 1.0),
    ]
    check_judgement(j, s)
    gamma, garbler, slow = j.votes
    for bad in (
        [gamma, replace(garbler, weight=1.0), slow],
        [replace(gamma, weight=0.5), garbler, slow],
    ):
        err = poison("weight_mismatch", check_judgement, _with_votes(j, bad), s)
        assert "the arena gives" in str(err)
    # the same judgement under another policy: garbler's weight of 0.5 is forged there
    poison("weight_mismatch", check_judgement, j, _family_settings("off"))
