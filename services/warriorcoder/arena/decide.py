"""Decide a judged battle: the winning answer, the score card and the rating change.

Usage::

    sample = decide(judgement, r_attacker, r_defender, scoring)   # None: no valid vote
    sample = decide(judgement, r_attacker, r_defender, scoring, rating_seq=17)

Pure: the same judgement and pre-battle ratings always give the same sample, which is how a
redelivered judgement is rebuilt exactly after a crash.
"""

from __future__ import annotations

from warriorcoder.arena.scoring import (
    EloParams,
    elo_expected,
    elo_update,
    final_scores,
    local_score,
    pick_winner,
    vote_tally,
)
from warriorcoder.proto.messages import Judgement, Sample, ScoreCard, Turn
from warriorcoder.runtime.settings import ScoringSettings

__all__ = ["decide"]


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
    x = local_score(outcomes)
    if x is None:
        return None
    elo = EloParams(k=p.k, scale=p.scale, base=p.base)
    expected = elo_expected(r_attacker, r_defender, elo)
    e_a, e_d = final_scores(expected, x, p.alpha)
    winner_role = pick_winner(e_a, e_d, b.attacker_answer.text, b.defender_answer.text)
    win, lose = (
        (b.attacker_answer, b.defender_answer)
        if winner_role == "attacker"
        else (b.defender_answer, b.attacker_answer)
    )
    new_a, new_d = elo_update(r_attacker, r_defender, outcomes, elo)
    t_a, t_d = vote_tally(outcomes)
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
        ),
        ratings_before={ch.attacker: r_attacker, ch.defender: r_defender},
        ratings_after={ch.attacker: new_a, ch.defender: new_d},
        created_at=j.judged_at,
        rating_seq=rating_seq,
    )
