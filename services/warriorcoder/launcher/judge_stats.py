"""Per-judge statistics over a set of samples: how often a judge changes its mind when the answers
swap places, how often it calls a tie or gives no verdict, and how often it agrees with the rest of
the panel.

Usage::

    stats = judge_stats(samples)
    print(stats[0].judge, stats[0].position_consistency, stats[0].majority_agreement)

Definitions (each rate is None when no vote qualifies, never a made-up 0):

- ``position_consistency``: among the judge's votes judged in both orders with a verdict in each,
  the fraction whose two verdicts pick the same answer (or tie in both). A verdict names a position
  ("A"/"B"); ``Vote.orders`` says which role sat in position A, so "A" in the order "defender"
  is a vote for the defender.
- ``tie_rate`` / ``invalid_rate``: the share of the judge's votes whose combined ``winner`` is
  "tie" / "invalid".
- ``majority_agreement``: among the judge's valid votes on battles where the *other* judges'
  valid votes have a single most common winner (leave-one-out, so a judge is not counted as
  agreeing with itself), the fraction where its winner is that one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from warriorcoder.proto.messages import Sample, Vote

__all__ = ["JudgeStats", "judge_stats", "majority", "role_verdicts"]


@dataclass(frozen=True)
class JudgeStats:
    judge: str
    votes: int
    position_consistency: float | None
    tie_rate: float
    invalid_rate: float
    majority_agreement: float | None
    both_orders: int  # votes that qualified for position_consistency
    compared: int  # votes that qualified for majority_agreement


def role_verdicts(vote: Vote) -> list[str]:
    """Each order's verdict as the role it picked: "attacker", "defender", "tie" or "invalid"."""
    out: list[str] = []
    for first, verdict in zip(vote.orders, vote.verdicts, strict=False):
        if verdict == "A":
            out.append(first)
        elif verdict == "B":
            out.append("defender" if first == "attacker" else "attacker")
        else:
            out.append(verdict)
    return out


def majority(winners: Iterable[str]) -> str | None:
    """The single most common valid winner, None when there is none or a tie for the top."""
    counts = Counter(w for w in winners if w != "invalid").most_common(2)
    if not counts or (len(counts) == 2 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


@dataclass
class _Tally:
    votes: int = 0
    ties: int = 0
    invalid: int = 0
    both: int = 0
    consistent: int = 0
    compared: int = 0
    agreed: int = 0


def judge_stats(samples: Iterable[Sample]) -> list[JudgeStats]:
    """The statistics of every judge that voted in ``samples``, sorted by judge name."""
    tallies: dict[str, _Tally] = {}
    for sample in samples:
        for i, vote in enumerate(sample.votes):
            t = tallies.setdefault(vote.judge, _Tally())
            t.votes += 1
            t.ties += vote.winner == "tie"
            t.invalid += vote.winner == "invalid"
            picks = role_verdicts(vote)
            if len(picks) == 2 and "invalid" not in picks:
                t.both += 1
                t.consistent += picks[0] == picks[1]
            if vote.winner == "invalid":
                continue
            others = majority(v.winner for j, v in enumerate(sample.votes) if j != i)
            if others is not None:
                t.compared += 1
                t.agreed += vote.winner == others
    return [
        JudgeStats(
            judge=judge,
            votes=t.votes,
            position_consistency=t.consistent / t.both if t.both else None,
            tie_rate=t.ties / t.votes,
            invalid_rate=t.invalid / t.votes,
            majority_agreement=t.agreed / t.compared if t.compared else None,
            both_orders=t.both,
            compared=t.compared,
        )
        for judge, t in sorted(tallies.items())
    ]
