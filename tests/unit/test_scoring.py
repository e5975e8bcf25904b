"""Scoring against numbers worked by hand (PAPER.md formulas, K=40, scale 400, base 10)."""

import math

import pytest

from warriorcoder.arena.scoring import (
    EloParams,
    elo_expected,
    elo_update,
    final_scores,
    local_score,
    pick_winner,
    vote_tally,
)


def test_expected_score_equal_ratings_is_half():
    assert elo_expected(1000, 1000) == 0.5


def test_expected_score_200_points_ahead():
    # 1 / (1 + 10^(-200/400)) = 1 / (1 + 0.316227766) = 0.759746927
    assert elo_expected(1200, 1000) == pytest.approx(0.759746927, abs=1e-9)
    assert elo_expected(1000, 1200) == pytest.approx(1 - 0.759746927, abs=1e-9)


def test_tally_and_local_score():
    assert vote_tally(["attacker", "tie", "defender", "invalid"]) == (1.5, 1.5)
    assert local_score(["attacker", "attacker", "tie"]) == pytest.approx(2.5 / 3)
    assert local_score(["defender", "defender"]) == 0.0
    assert local_score(["invalid", "invalid"]) is None
    assert local_score([]) is None


def test_elo_update_one_vote_at_a_time_in_arrival_order():
    a, b = elo_update(1000, 1000, ["attacker", "attacker", "tie"])
    # vote 1: E = 0.5, +40*(1-0.5) = +20 -> 1020 / 980
    # vote 2: E = 1/(1+10^(-40/400)) = 1/(1+0.7943282) = 0.5573116, +40*(1-0.5573116) = +17.70754
    #         -> 1037.70753 / 962.29247
    # vote 3: E = 1/(1+10^(-75.41507/400)) = 1/(1+0.6478319) = 0.6068580,
    #         40*(0.5-0.6068580) = -4.27432 -> 1033.43321 / 966.56679
    assert a == pytest.approx(1033.4332139, abs=1e-6)
    assert b == pytest.approx(966.5667861, abs=1e-6)
    assert a + b == pytest.approx(2000)
    # E = 0.759746927; one vote for B: 40 * (0 - 0.759746927) = -30.38987708
    a, b = elo_update(1200, 1000, ["defender"])
    assert a == pytest.approx(1169.61012292, abs=1e-6)
    assert b == pytest.approx(1030.38987708, abs=1e-6)


def test_elo_update_recomputes_the_expectation_after_every_vote():
    # The second vote sees 1020 vs 980: E = 0.5573116, so it moves 17.70754, not another 20.
    a, b = elo_update(1000, 1000, ["attacker", "attacker"])
    assert a == pytest.approx(1037.7075346, abs=1e-6)
    assert b == pytest.approx(962.2924654, abs=1e-6)


def test_live_and_exported_votes_give_the_same_ratings():
    """One battle's votes through elo_update equal the same votes replayed one by one."""
    votes = ["attacker", "defender", "tie", "invalid", "attacker"]
    battle = elo_update(1111.0, 987.0, votes)
    a, b = 1111.0, 987.0
    for v in votes:
        a, b = elo_update(a, b, [v])
    assert battle == (a, b)


def test_elo_update_is_zero_sum_and_skips_invalid():
    a, b = elo_update(1234.5, 987.25, ["attacker", "invalid", "tie", "defender"])
    assert a + b == pytest.approx(1234.5 + 987.25)
    assert elo_update(1000, 1000, ["invalid"]) == (1000, 1000)


def test_custom_elo_params():
    p = EloParams(k=32, scale=400, base=10)
    assert elo_update(1000, 1000, ["attacker"], p) == (1016, 984)
    # base e, scale 1: E = 1 / (1 + e^-1) = 0.731058579
    assert elo_expected(1, 0, EloParams(scale=1, base=math.e)) == pytest.approx(0.731058579)


def test_final_score_alpha_point_seven():
    # E(A>B) = 0.759746927, all judges for B (x = 0):
    # e_A = 0.7 * 0.759746927 + 0.3 * 0 = 0.531822849
    # e_B = 0.7 * 0.240253073 + 0.3 * 1 = 0.468177151 -> the stronger-rated attacker still wins
    e_a, e_b = final_scores(0.759746927, 0.0, 0.7)
    assert e_a == pytest.approx(0.531822849, abs=1e-9)
    assert e_b == pytest.approx(0.468177151, abs=1e-9)
    assert pick_winner(e_a, e_b, "long answer", "short") == "attacker"


def test_final_score_equal_ratings_follows_the_judges():
    e_a, e_b = final_scores(0.5, 2 / 3, 0.7)
    # 0.35 + 0.3 * 2/3 = 0.55 ; 0.35 + 0.3 * 1/3 = 0.45
    assert (e_a, e_b) == (pytest.approx(0.55), pytest.approx(0.45))


def test_tie_break_shorter_then_defender():
    assert pick_winner(0.5, 0.5, "short", "much longer") == "attacker"
    assert pick_winner(0.5, 0.5, "much longer", "short") == "defender"
    assert pick_winner(0.5, 0.5, "same", "same") == "defender"
