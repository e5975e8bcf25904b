"""Decide a judged battle: the winning answer, the score card and the rating change.

Usage::

    sample = decide(judgement, r_attacker, r_defender, scoring)   # None: no valid vote
    sample = decide(judgement, r_attacker, r_defender, scoring, rating_seq=17)

Pure: the same judgement and pre-battle ratings always give the same sample, which is how a
redelivered judgement is rebuilt exactly after a crash. The battle's execution results (verifier
on) are part of the judgement, so they keep it pure, and so are the votes' weights
(``Vote.weight``: a judge of a fighter's family under ``judge.family_policy: weight``), which
scale each vote in t_A/t_B, hence x, and in its Elo update (``warriorcoder.arena.scoring``).

Execution evidence (``scoring.execution``; ``warriorcoder.arena.evidence`` says how two runs
compare) folds into the choice of the training target, never into the ratings:

- ``weight`` w > 0: the local score becomes x' = (1 - w) x + w x_exec (x_exec 1, 0 or 0.5 as the
  attacker passed more, fewer or as many tests; x unchanged without comparable evidence), and
  the final scores e use x'. The Elo update stays one update per judge vote (PAPER.md), so
  the ratings measure the judges alone and ``warriorcoder ratings`` over exported votes still
  replays them exactly.
- ``rule: tiebreak`` (default): when the final scores tie exactly (where PAPER.md falls back to
  the shorter answer), the answer that passed strictly more tests wins. ``rule: off``: the
  results are recorded in the sample and decide nothing (the weight is ignored too).

``decided_by`` is ``"execution"`` when the evidence chose a winner the votes alone did not: a
tie it broke, or (weight) a winner it changed. ``test_backed`` says the chosen answer passed
strictly more tests than the rejected one, whoever decided.
"""

from __future__ import annotations

from typing import Literal

from warriorcoder.arena.evidence import execution_edge, execution_score
from warriorcoder.arena.scoring import (
    EloParams,
    elo_expected,
    elo_update,
    final_scores,
    local_score,
    pick_winner,
    vote_tally,
)
from warriorcoder.proto.messages import Judgement, Role, Sample, ScoreCard, Turn
from warriorcoder.runtime.settings import ScoringSettings

__all__ = ["decide"]


def _leader(e_attacker: float, e_defender: float) -> Role | None:
    if e_attacker == e_defender:
        return None
    return "attacker" if e_attacker > e_defender else "defender"


def decide(
    j: Judgement,
    r_attacker: float,
    r_defender: float,
    p: ScoringSettings,
    *,
    rating_seq: int | None = None,
) -> Sample | None:
    """The sample of a judged battle (None without a valid vote); ``rating_seq`` is the battle's
    place in the rating history, recorded so the votes can be replayed in applied order."""
    b = j.battle
    ch = b.challenge
    outcomes = [v.winner for v in j.votes]
    weights = [v.weight for v in j.votes]  # below 1: a same-family judge (judge.family_policy)
    x = local_score(outcomes, weights=weights)
    if x is None:
        return None
    elo = EloParams(k=p.k, scale=p.scale, base=p.base)
    expected = elo_expected(r_attacker, r_defender, elo)
    ex = p.execution
    evidence = execution_edge(b.execution)
    edge = None if ex.rule == "off" else evidence  # off: recorded, never deciding
    x_exec = execution_score(b.execution) if edge is not None and ex.weight > 0 else None
    # x + w (x_exec - x) is (1 - w) x + w x_exec, exact when x_exec == x (no spurious non-tie).
    x_used = x if x_exec is None else x + ex.weight * (x_exec - x)
    e_a, e_d = final_scores(expected, x_used, p.alpha)
    # The winner the votes alone give (None: their final scores tie).
    by_votes = _leader(*final_scores(expected, x, p.alpha))
    winner_role = _leader(e_a, e_d)
    decided_by: Literal["votes", "execution"] = "votes"
    if winner_role is None and (edge == "attacker" or edge == "defender"):
        winner_role = edge
        decided_by = "execution"
    elif winner_role is not None and winner_role != by_votes:
        decided_by = "execution"  # the weight broke a tie or turned the votes around
    if winner_role is None:
        winner_role = pick_winner(e_a, e_d, b.attacker_answer.text, b.defender_answer.text)
    win, lose = (
        (b.attacker_answer, b.defender_answer)
        if winner_role == "attacker"
        else (b.defender_answer, b.attacker_answer)
    )
    new_a, new_d = elo_update(r_attacker, r_defender, outcomes, elo, weights=weights)
    t_a, t_d = vote_tally(outcomes, weights=weights)
    return Sample(
        id=j.id,
        messages=[
            Turn(role="user", content=ch.instruction),
            Turn(role="assistant", content=win.text),
        ],
        prompt=ch.instruction,
        chosen=win.text,
        rejected=lose.text,
        language=ch.language,
        winner=win.model,
        loser=lose.model,
        winner_role=winner_role,
        attacker=ch.attacker,
        defender=ch.defender,
        votes=list(j.votes),
        score=ScoreCard(
            attacker_votes=t_a,
            defender_votes=t_d,
            local_attacker=x,
            elo_expected_attacker=expected,
            final_attacker=e_a,
            final_defender=e_d,
            alpha=p.alpha,
            execution_attacker=x_exec,
            execution_weight=ex.weight if x_exec is not None else 0.0,
        ),
        ratings_before={ch.attacker: r_attacker, ch.defender: r_defender},
        ratings_after={ch.attacker: new_a, ch.defender: new_d},
        created_at=j.judged_at,
        rating_seq=rating_seq,
        tests=b.tests,
        execution=b.execution,
        test_backed=evidence == winner_role,
        decided_by=decided_by,
    )
