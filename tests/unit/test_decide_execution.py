"""Execution evidence in the decision: how two runs compare, the default tie-break, the optional
weight on the local score (hand-checked numbers), the off switch, and ratings that the evidence
never touches (they stay a replay of the judges' votes)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from msgspec.structs import replace

from tests.helpers import judgement
from warriorcoder.arena.decide import decide
from warriorcoder.arena.evidence import (
    execution_edge,
    execution_score,
    pass_fraction,
    passed_tests,
)
from warriorcoder.arena.scoring import elo_update
from warriorcoder.proto.messages import ChallengeTests, Execution, Judgement, RunResult
from warriorcoder.runtime.settings import ExecutionScoring, ScoringSettings

TESTS = ChallengeTests(
    writer="gamma",
    language="Python",
    code="from solution import *\n\ndef test_a():\n    assert f(1) == 2\n",
    tests=["test_a", "test_b", "test_c", "test_d"],
    usable=True,
    asked=1,
)


def run(status: str = "ran", passed: int = 0, total: int = 4, **kw: Any) -> RunResult:
    failed = total - passed if status == "ran" else 0
    return RunResult(status=status, passed=passed, failed=failed, total=total, **kw)  # type: ignore[arg-type]


def with_runs(j: Judgement, attacker: RunResult, defender: RunResult) -> Judgement:
    ex = Execution(
        attacker=attacker, defender=defender, sandbox="bubblewrap 0.8.0", verified_at=2.5
    )
    return replace(j, battle=replace(j.battle, tests=TESTS, execution=ex))


def scoring(rule: str = "tiebreak", weight: float = 0.0) -> ScoringSettings:
    return ScoringSettings(execution=ExecutionScoring(rule=rule, weight=weight))  # type: ignore[arg-type]


# The helpers' battle: the attacker's answer ("ok\nquality=9", 12 characters) is the shorter one,
# so PAPER.md's tie-break alone picks the attacker.
TIED = ["attacker", "defender"]  # x = 0.5; with equal ratings e_A = e_D = 0.5


# -- how runs compare -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("r", "passed", "fraction"),
    [
        (run(passed=3), 3, 0.75),
        (run(passed=0, total=0), 0, 0.0),  # nothing collected
        (run("no_code", total=0), 0, 0.0),
        (run("timeout", passed=3), 0, 0.0),  # a killed run's partial count is ignored
        (run("sandbox_error", passed=4), None, None),  # not the answer's fault: no evidence
    ],
)
def test_passed_tests_and_pass_fraction(r, passed, fraction):
    assert passed_tests(r) == passed
    assert pass_fraction(r) == fraction


@pytest.mark.parametrize(
    ("attacker", "defender", "edge", "score"),
    [
        (run(passed=4), run(passed=2), "attacker", 1.0),
        (run(passed=1), run(passed=3), "defender", 0.0),
        (run(passed=2), run(passed=2), "even", 0.5),
        (run(passed=1), run("timeout", passed=3), "attacker", 1.0),
        (run("no_code"), run(passed=1), "defender", 0.0),
        (run("no_code"), run(passed=0), "even", 0.5),
        (run("timeout"), run("no_code"), "even", 0.5),
        (run(passed=4), run("sandbox_error"), None, None),
        (run("sandbox_error"), run("no_code"), None, None),
    ],
)
def test_execution_edge(attacker, defender, edge, score):
    ex = Execution(attacker=attacker, defender=defender, sandbox="bwrap", verified_at=1.0)
    assert execution_edge(ex) == edge
    assert execution_score(ex) == score


def test_no_execution_is_no_evidence():
    assert execution_edge(None) is None and execution_score(None) is None


# -- the tie-break (default) ------------------------------------------------------------------


def test_equal_scores_go_to_the_answer_that_passed_more_tests():
    plain = decide(judgement(TIED), 1000.0, 1000.0, scoring())
    assert plain is not None and plain.winner_role == "attacker"  # shorter answer
    assert plain.decided_by == "votes" and not plain.test_backed and plain.execution is None

    j = with_runs(judgement(TIED), run(passed=2), run(passed=4))
    s = decide(j, 1000.0, 1000.0, scoring())
    assert s is not None
    assert s.score.final_attacker == s.score.final_defender == 0.5
    assert s.winner_role == "defender" and s.winner == "beta"
    assert s.chosen == j.battle.defender_answer.text
    assert s.decided_by == "execution" and s.test_backed
    assert s.tests == TESTS and s.execution == j.battle.execution
    assert s.score.execution_attacker is None and s.score.execution_weight == 0.0


def test_votes_that_decide_are_not_overruled_by_the_tests():
    # x = 2/3, e_A = 0.7 * 0.5 + 0.3 * 2/3 = 0.55 > e_D = 0.45: the attacker wins, although the
    # defender passed more tests; the sample says the preference is not test-backed.
    j = with_runs(judgement(["attacker", "attacker", "defender"]), run(passed=1), run(passed=4))
    s = decide(j, 1000.0, 1000.0, scoring())
    assert s is not None and s.winner_role == "attacker"
    assert s.score.final_attacker == pytest.approx(0.55)
    assert s.decided_by == "votes" and not s.test_backed


def test_a_test_backed_winner_by_votes_is_marked_but_not_decided_by_execution():
    j = with_runs(judgement(["attacker", "attacker", "defender"]), run(passed=4), run(passed=1))
    s = decide(j, 1000.0, 1000.0, scoring())
    assert s is not None and s.winner_role == "attacker"
    assert s.decided_by == "votes" and s.test_backed


def test_the_tie_break_needs_an_exact_tie_of_the_final_scores():
    # Ratings 1100 vs 1000: E(A>B) = 1 / (1 + 10^(-0.25)) = 0.640065, so e_A = 0.598046 with
    # x = 0.5: no tie, the Elo expectation decides even though the defender passed more tests.
    j = with_runs(judgement(TIED), run(passed=0), run(passed=4))
    s = decide(j, 1100.0, 1000.0, scoring())
    assert s is not None and s.winner_role == "attacker"
    assert s.score.final_attacker == pytest.approx(0.598046, abs=1e-6)
    assert s.decided_by == "votes" and not s.test_backed


@pytest.mark.parametrize(
    ("attacker", "defender"),
    [
        (run(passed=0), run("sandbox_error")),  # no evidence at all
        (run("no_code"), run(passed=0)),  # as many passed (none)
        (run(passed=2), run(passed=2)),
    ],
)
def test_without_a_strict_edge_the_shorter_answer_wins(attacker, defender):
    s = decide(with_runs(judgement(TIED), attacker, defender), 1000.0, 1000.0, scoring())
    assert s is not None and s.winner_role == "attacker"
    assert s.decided_by == "votes" and not s.test_backed


def test_a_timeout_loses_to_an_answer_that_passed_one_test():
    j = with_runs(judgement(TIED), run("timeout", passed=3), run(passed=1))
    s = decide(j, 1000.0, 1000.0, scoring())
    assert s is not None and s.winner_role == "defender" and s.decided_by == "execution"


def test_rule_off_records_the_results_and_decides_nothing():
    j = with_runs(judgement(TIED), run(passed=0), run(passed=4))
    s = decide(j, 1000.0, 1000.0, scoring("off", weight=0.5))
    assert s is not None and s.winner_role == "attacker"  # shorter answer, as without tests
    assert s.decided_by == "votes" and not s.test_backed
    assert s.execution == j.battle.execution and s.tests == TESTS
    assert s.score.execution_attacker is None and s.score.execution_weight == 0.0
    assert s.score.final_attacker == 0.5


# -- the weight on the local score ------------------------------------------------------------


def test_the_weight_can_turn_the_votes_around():
    # x = 2/3, x_exec = 0 (the defender passed more), w = 0.5: x' = 2/3 - 0.5 * 2/3 = 1/3;
    # e_A = 0.7 * 0.5 + 0.3 * 1/3 = 0.45, e_D = 0.55.
    j = with_runs(judgement(["attacker", "attacker", "defender"]), run(passed=1), run(passed=4))
    s = decide(j, 1000.0, 1000.0, scoring(weight=0.5))
    assert s is not None
    assert s.score.local_attacker == pytest.approx(2 / 3)  # the judges' own local score
    assert s.score.execution_attacker == 0.0 and s.score.execution_weight == 0.5
    assert s.score.final_attacker == pytest.approx(0.45)
    assert s.score.final_defender == pytest.approx(0.55)
    assert s.winner_role == "defender" and s.decided_by == "execution" and s.test_backed


def test_a_small_weight_leaves_the_votes_winner():
    # w = 0.1: x' = 2/3 - 0.1 * 2/3 = 0.6; e_A = 0.35 + 0.18 = 0.53 > 0.47.
    j = with_runs(judgement(["attacker", "attacker", "defender"]), run(passed=1), run(passed=4))
    s = decide(j, 1000.0, 1000.0, scoring(weight=0.1))
    assert s is not None and s.winner_role == "attacker"
    assert s.score.final_attacker == pytest.approx(0.53)
    assert s.decided_by == "votes" and not s.test_backed


def test_the_weight_breaks_a_vote_tie():
    # x = 0.5, x_exec = 1, w = 0.2: x' = 0.6; e_A = 0.35 + 0.18 = 0.53.
    j = with_runs(judgement(TIED), run(passed=3), run(passed=1))
    s = decide(j, 1000.0, 1000.0, scoring(weight=0.2))
    assert s is not None and s.winner_role == "attacker"
    assert s.score.final_attacker == pytest.approx(0.53)
    assert s.decided_by == "execution" and s.test_backed


def test_an_even_run_under_a_weight_keeps_an_exact_tie():
    # x = 0.5 and x_exec = 0.5: x' is exactly 0.5 for any w, so the scores still tie exactly and
    # the shorter answer wins by PAPER.md's rule, not by a rounding error.
    for w in (0.1, 0.3, 0.7, 1.0):
        j = with_runs(judgement(TIED), run(passed=2), run(passed=2))
        s = decide(j, 1000.0, 1000.0, scoring(weight=w))
        assert s is not None
        assert s.score.final_attacker == s.score.final_defender == 0.5
        assert s.winner_role == "attacker" and s.decided_by == "votes"


def test_without_comparable_evidence_the_weight_changes_nothing():
    j = with_runs(
        judgement(["attacker", "attacker", "defender"]), run(passed=0), run("sandbox_error")
    )
    s = decide(j, 1000.0, 1000.0, scoring(weight=0.9))
    assert s is not None and s.score.execution_attacker is None
    assert s.score.execution_weight == 0.0
    assert s.score.final_attacker == pytest.approx(0.55)


def test_ratings_follow_the_votes_only():
    # Three votes from 1000/1000 (K 40): +20 -> 1020/980; E = 0.557312, +17.7075 ->
    # 1037.7075/962.2925; E = 0.606938, -24.2775 -> 1013.4332/986.5668. The weight turns the
    # winner around; the ratings are those of the votes, as a replay of the exported votes gives.
    votes = ["attacker", "attacker", "defender"]
    j = with_runs(judgement(votes), run(passed=1), run(passed=4))
    s = decide(j, 1000.0, 1000.0, scoring(weight=1.0))
    assert s is not None and s.winner_role == "defender"
    assert s.ratings_after["alpha"] == pytest.approx(1013.4332, abs=1e-4)
    assert s.ratings_after["beta"] == pytest.approx(986.5668, abs=1e-4)
    assert (s.ratings_after["alpha"], s.ratings_after["beta"]) == elo_update(1000, 1000, votes)


def test_decide_is_pure_in_the_judgement_and_the_ratings_before():
    j = with_runs(judgement(TIED), run(passed=2), run("timeout"))
    a = decide(j, 1010.0, 990.0, scoring(weight=0.3), rating_seq=5)
    b = decide(
        msgspec.json.decode(msgspec.json.encode(j), type=Judgement),
        1010.0,
        990.0,
        scoring(weight=0.3),
        rating_seq=5,
    )
    assert a == b and a is not None
