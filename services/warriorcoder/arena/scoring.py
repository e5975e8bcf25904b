"""Battle scoring (PAPER.md): local score from judge votes, online Elo, final score, winner.

Usage::

    t_a, t_b = vote_tally(votes)
    t_a, t_b = vote_tally(votes, weights=[1.0, 0.5])      # a same-family judge's vote at 0.5
    new_a, new_b = elo_update(r_attacker, r_defender, votes, params, weights=[1.0, 0.5])

Pure functions, no I/O. Winners use the paper's final score e = alpha * E + (1 - alpha) * x with E
from the ratings before the battle; Elo applies one zero-sum update per valid judge vote, in
arrival order, each vote's expectation taken from the ratings the previous vote left (PAPER.md).
The live ratings (aggregator) and ``warriorcoder ratings`` over exported votes both use
``elo_update``, so replaying a run's votes in order gives its live ratings exactly.

Vote weights (``Vote.weight``; a judge of a fighter's family under ``judge.family_policy:
weight``) scale a vote everywhere it counts, consistently: w * S for the winner's side and
w * (1 - S) for the other in the tallies t_A/t_B (so x stays a weighted share of the votes), and
K * w * (S - E) in the vote's Elo update (a vote of weight w moves the ratings as a w-sized
vote). Weight 1 everywhere is PAPER.md's scoring exactly; weight 0 makes a vote count nowhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "EloParams",
    "Outcome",
    "elo_expected",
    "elo_update",
    "final_scores",
    "local_score",
    "pick_winner",
    "vote_tally",
]

Outcome = Literal["attacker", "defender", "tie", "invalid"]

_SCORE = {"attacker": 1.0, "defender": 0.0, "tie": 0.5}


@dataclass(frozen=True, slots=True)
class EloParams:
    k: float = 40.0
    scale: float = 400.0
    base: float = 10.0


def elo_expected(r_a: float, r_b: float, p: EloParams = EloParams()) -> float:
    """E(A>B) = 1 / (1 + base^((R_B - R_A) / scale))."""
    return 1.0 / (1.0 + p.base ** ((r_b - r_a) / p.scale))


def _weighted(
    votes: Sequence[Outcome], weights: Sequence[float] | None
) -> list[tuple[Outcome, float]]:
    if weights is None:
        return [(v, 1.0) for v in votes]
    if len(weights) != len(votes):
        raise ValueError(f"{len(weights)} weights for {len(votes)} votes")
    return list(zip(votes, weights, strict=True))


def vote_tally(
    votes: Sequence[Outcome], *, weights: Sequence[float] | None = None
) -> tuple[float, float]:
    """(t_A, t_B): votes for attacker and defender, a tie giving each half; each vote counted
    with its weight (default 1); invalid votes skipped."""
    t_a = t_b = 0.0
    for v, w in _weighted(votes, weights):
        if v == "invalid":
            continue
        t_a += w * _SCORE[v]
        t_b += w * (1.0 - _SCORE[v])
    return t_a, t_b


def local_score(
    votes: Sequence[Outcome], *, weights: Sequence[float] | None = None
) -> float | None:
    """x(A>B) = t_A / (t_A + t_B); None when no valid vote has a weight above 0."""
    t_a, t_b = vote_tally(votes, weights=weights)
    total = t_a + t_b
    return None if total == 0 else t_a / total


def final_scores(expected_a: float, local_a: float, alpha: float) -> tuple[float, float]:
    """(e_A, e_B) with e_A = alpha * E(A>B) + (1 - alpha) * x(A>B) and e_B the mirror image."""
    e_a = alpha * expected_a + (1.0 - alpha) * local_a
    e_b = alpha * (1.0 - expected_a) + (1.0 - alpha) * (1.0 - local_a)
    return e_a, e_b


def pick_winner(
    e_attacker: float, e_defender: float, attacker_answer: str, defender_answer: str
) -> Literal["attacker", "defender"]:
    """Higher final score wins; on equal scores the shorter answer, then the defender's."""
    if e_attacker > e_defender:
        return "attacker"
    if e_defender > e_attacker:
        return "defender"
    if len(attacker_answer) < len(defender_answer):
        return "attacker"
    return "defender"


def elo_update(
    r_a: float,
    r_b: float,
    votes: Sequence[Outcome],
    p: EloParams = EloParams(),
    *,
    weights: Sequence[float] | None = None,
) -> tuple[float, float]:
    """Ratings after one zero-sum update per valid vote, in order.

    For each vote v of weight w (default 1): E = E(A>B) from the current ratings,
    R_A += K * w * (S_v - E), R_B -= the same.
    """
    for v, w in _weighted(votes, weights):
        if v == "invalid":
            continue
        delta = p.k * w * (_SCORE[v] - elo_expected(r_a, r_b, p))
        r_a, r_b = r_a + delta, r_b - delta
    return r_a, r_b
