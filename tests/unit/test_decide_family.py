"""Vote weights (a same-family judge under ``judge.family_policy: weight``): counted w in t_A/t_B
and K * w in each Elo update, by hand; weight 1 is the paper's scoring bit for bit; exported
votes replay the live ratings exactly."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from tests.helpers import arena_vote, battle
from warriorcoder.arena.decide import decide
from warriorcoder.arena.scoring import elo_update, local_score, vote_tally
from warriorcoder.data.bradley_terry import online_elo
from warriorcoder.data.votes import votes_from_samples
from warriorcoder.proto.messages import Judgement, Sample
from warriorcoder.runtime.settings import ScoringSettings

OUTCOMES = ["attacker", "defender", "tie"]
WEIGHTS = [1.0, 0.5, 1.0]


def test_tally_and_local_score_count_each_vote_with_its_weight():
    # t_A = 1 + 0 + 0.5 = 1.5; t_B = 0 + 0.5 + 0.5 = 1.0; x = 1.5 / 2.5
    assert vote_tally(OUTCOMES, weights=WEIGHTS) == (1.5, 1.0)
    assert local_score(OUTCOMES, weights=WEIGHTS) == pytest.approx(0.6)
    assert vote_tally(OUTCOMES) == (1.5, 1.5)  # unweighted: the paper's
    assert local_score(["attacker", "invalid"], weights=[0.0, 1.0]) is None  # nothing counts
    with pytest.raises(ValueError, match="2 weights for 3 votes"):
        vote_tally(OUTCOMES, weights=[1.0, 1.0])


def test_elo_scales_each_update_by_its_votes_weight():
    # By hand (K 40, scale 400): vote 1: E 0.5, +20 -> 1020 / 980; vote 2 (defender, w 0.5):
    # E = 1 / (1 + 10^(-40/400)) = 0.557312, delta = 40 * 0.5 * (0 - 0.557312) = -11.146233
    # -> 1008.853767 / 991.146233; vote 3 (tie): E = 0.525461, delta = 40 * (0.5 - E) = -1.018446
    r_a, r_b = elo_update(1000.0, 1000.0, OUTCOMES, weights=WEIGHTS)
    assert (r_a, r_b) == pytest.approx((1007.835321, 992.164679), abs=1e-6)
    assert r_a + r_b == pytest.approx(2000.0)  # still zero-sum
    # weight 1 is bit for bit the unweighted update
    assert elo_update(1000.0, 1010.0, OUTCOMES, weights=[1.0] * 3) == elo_update(
        1000.0, 1010.0, OUTCOMES
    )
    # weight 0 moves nothing
    assert elo_update(1000.0, 1000.0, ["attacker"], weights=[0.0]) == (1000.0, 1000.0)


def weighted_sample(n: int, r_a: float, r_d: float, *, rating_seq: int) -> Sample:
    b = battle(attacker="alpha", defender="beta", text=f"Write task number {n} in Python.")
    votes = [
        replace(arena_vote(judge, w), weight=weight)
        for judge, w, weight in zip(["gamma", "garbler", "slow"], OUTCOMES, WEIGHTS, strict=True)
    ]
    j = Judgement(id=b.id, battle=b, votes=votes, position_mode="both", judged_at=3.0)
    s = decide(j, r_a, r_d, ScoringSettings(), rating_seq=rating_seq)
    assert s is not None
    return s


def test_decide_uses_the_weights_in_the_score_card_and_the_ratings():
    s = weighted_sample(1, 1000.0, 1000.0, rating_seq=1)
    assert (s.score.attacker_votes, s.score.defender_votes) == (1.5, 1.0)
    assert s.score.local_attacker == pytest.approx(0.6)
    # e_A = 0.7 * 0.5 + 0.3 * 0.6 = 0.53 > e_B = 0.47: the attacker's answer is kept
    assert s.score.final_attacker == pytest.approx(0.53) and s.winner == "alpha"
    assert s.ratings_after["alpha"] == pytest.approx(1007.835321, abs=1e-6)
    assert [v.weight for v in s.votes] == WEIGHTS


def test_exported_votes_carry_the_weights_and_replay_the_live_ratings_exactly():
    ratings = {"alpha": 1000.0, "beta": 1000.0}
    samples = []
    for n in range(1, 6):
        s = weighted_sample(n, ratings["alpha"], ratings["beta"], rating_seq=n)
        ratings.update(s.ratings_after)
        samples.append(s)
    votes = votes_from_samples(reversed(samples))  # put back in rating order
    assert [v.weight for v in votes] == WEIGHTS * 5
    assert online_elo(votes) == ratings  # float for float
    unweighted = [replace(v, weight=1.0) for v in votes]
    assert online_elo(unweighted) != ratings
