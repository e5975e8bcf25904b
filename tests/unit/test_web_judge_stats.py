"""Per-judge statistics on a hand-built panel, every number checked by hand."""

from __future__ import annotations

import pytest

from tests.unit.test_web_views import make_sample, vote
from warriorcoder.launcher.judge_stats import judge_stats, majority, role_verdicts

AD, DA = ["attacker", "defender"], ["defender", "attacker"]


def test_role_verdicts_map_positions_to_roles():
    assert role_verdicts(vote("j", "attacker", DA, ["B", "A"])) == ["attacker", "attacker"]
    assert role_verdicts(vote("j", "tie", AD, ["A", "A"])) == ["attacker", "defender"]
    assert role_verdicts(vote("j", "invalid", AD, ["tie", "invalid"])) == ["tie", "invalid"]


def test_majority_needs_a_single_top_valid_winner():
    assert majority(["attacker", "tie", "attacker"]) == "attacker"
    assert majority(["attacker", "tie"]) is None
    assert majority(["invalid", "defender"]) == "defender"
    assert majority(["invalid"]) is None


def test_judge_stats_by_hand():
    samples = [
        make_sample(1, votes=[
            vote("j1", "attacker", AD, ["A", "B"]),  # both orders pick the attacker
            vote("j2", "tie", AD, ["A", "A"]),  # swaps with the order: inconsistent
            vote("j3", "attacker", DA, ["B", "A"]),  # attacker twice
        ]),
        make_sample(2, votes=[
            vote("j1", "defender", AD, ["B", "A"]),  # defender twice
            vote("j2", "invalid", AD, ["B", "invalid"]),  # not comparable
            vote("j3", "tie", AD, ["tie", "tie"]),  # consistent tie
        ]),
        make_sample(3, votes=[  # alternate mode: one order each
            vote("j1", "attacker", ["attacker"], ["A"]),
            vote("j3", "attacker", ["defender"], ["B"]),
        ]),
    ]  # fmt: skip
    j1, j2, j3 = judge_stats(samples)
    # j1: consistent in s1 and s2 (2/2); no ties or invalid votes. Leave-one-out majorities:
    # s1 others {tie, attacker} have none; s2 others {invalid, tie} -> tie (j1 said defender:
    # disagrees); s3 other {attacker} -> attacker (agrees): 1 of 2.
    assert (j1.judge, j1.votes, j1.both_orders, j1.position_consistency) == ("j1", 3, 2, 1.0)
    assert (j1.tie_rate, j1.invalid_rate) == (0.0, 0.0)
    assert (j1.compared, j1.majority_agreement) == (2, 0.5)
    # j2: s1 inconsistent (0/1; s2 has an invalid order); 1 tie and 1 invalid of 2 votes;
    # s1 others {attacker, attacker} -> attacker, j2 said tie: 0 of 1; s2 is its invalid vote.
    assert (j2.votes, j2.both_orders, j2.position_consistency) == (2, 1, 0.0)
    assert (j2.tie_rate, j2.invalid_rate) == (0.5, 0.5)
    assert (j2.compared, j2.majority_agreement) == (1, 0.0)
    # j3: consistent in s1 and s2 (2/2), 1 tie of 3; s1 others {attacker, tie}: none; s2 others
    # {defender, invalid} -> defender, j3 said tie (no); s3 other {attacker}, j3 attacker: 1 of 2.
    assert (j3.votes, j3.both_orders, j3.position_consistency) == (3, 2, 1.0)
    assert j3.tie_rate == pytest.approx(1 / 3) and j3.invalid_rate == 0.0
    assert (j3.compared, j3.majority_agreement) == (2, 0.5)


def test_no_qualifying_votes_means_none_not_zero():
    (only,) = judge_stats([make_sample(1, votes=[vote("solo", "attacker", ["attacker"], ["A"])])])
    assert only.position_consistency is None and only.majority_agreement is None
    assert judge_stats([]) == []
