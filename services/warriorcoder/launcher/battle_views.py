"""What the web page shows of samples, as JSON-ready dicts: a battle in the list and in full, the
search filter, the win-rate matrix and the ratings over time. Pure: no I/O.

Usage::

    query = BattleQuery.parse({"model": "alpha", "disagree": "1"})
    rows = [battle_summary(seq, s) for seq, s in indexed if query.matches(s)]
    full = battle_detail(seq, sample)
    matrix = win_matrix(samples)
    history = rating_history(samples)

Model-written text (instruction, answers, judge replies, test output) goes out as plain strings:
the page renders it with ``textContent``, never as HTML.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from warriorcoder.launcher.judge_stats import role_verdicts
from warriorcoder.proto.messages import RunResult, Sample

__all__ = [
    "BattleQuery",
    "answers",
    "battle_detail",
    "battle_summary",
    "disagreement",
    "rating_history",
    "win_matrix",
]

_PREVIEW = 600  # characters of each text in the list; the battle view has all of it


def answers(sample: Sample) -> tuple[str, str]:
    """``(attacker's answer, defender's answer)``: a sample keeps them as chosen and rejected."""
    if sample.winner_role == "attacker":
        return sample.chosen, sample.rejected
    return sample.rejected, sample.chosen


def disagreement(sample: Sample) -> bool:
    """The judges' valid votes name more than one winner (a tie counts as one)."""
    return len({v.winner for v in sample.votes if v.winner != "invalid"}) > 1


@dataclass(frozen=True)
class BattleQuery:
    """A search over battles: every set field must match."""

    model: str | None = None  # fought in either corner
    winner: str | None = None  # the winning model
    disagree: bool | None = None  # the judges disagreed (True) or were unanimous (False)
    tested: bool | None = None  # the preference is test-backed (True) or not (False)
    text: str | None = None  # case-insensitive substring of the instruction

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> BattleQuery:
        """From query-string parameters; an empty value means "any". Raises ValueError naming a
        bad flag."""
        return cls(
            model=params.get("model") or None,
            winner=params.get("winner") or None,
            disagree=_flag(params, "disagree"),
            tested=_flag(params, "tested"),
            text=(params.get("q") or "").strip().lower() or None,
        )

    def matches(self, s: Sample) -> bool:
        if self.model is not None and self.model not in (s.attacker, s.defender):
            return False
        if self.winner is not None and s.winner != self.winner:
            return False
        if self.disagree is not None and disagreement(s) != self.disagree:
            return False
        if self.tested is not None and s.test_backed != self.tested:
            return False
        return self.text is None or self.text in s.prompt.lower()


def _flag(params: Mapping[str, str], name: str) -> bool | None:
    value = params.get(name, "")
    if value in ("", "any"):
        return None
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValueError(f"`{name}` must be 1/yes, 0/no or empty, not {value!r}")


def battle_summary(seq: int, s: Sample) -> dict[str, Any]:
    """A battle in the list: who fought, who won, and the start of each text."""
    attacker_answer, defender_answer = answers(s)
    return {
        "seq": seq,
        "id": s.id,
        "created_at": s.created_at,
        "language": s.language,
        "attacker": s.attacker,
        "defender": s.defender,
        "winner": s.winner,
        "winner_role": s.winner_role,
        "instruction": s.prompt[:_PREVIEW],
        "attacker_answer": attacker_answer[:_PREVIEW],
        "defender_answer": defender_answer[:_PREVIEW],
        "votes": [v.winner for v in s.votes],
        "disagree": disagreement(s),
        "test_backed": s.test_backed,
    }


def battle_detail(seq: int, s: Sample) -> dict[str, Any]:
    """A battle in full: the texts, every judge's verdicts per order with its reply, the
    execution results and the score card."""
    attacker_answer, defender_answer = answers(s)
    sc = s.score
    return {
        **battle_summary(seq, s),
        "instruction": s.prompt,
        "attacker_answer": attacker_answer,
        "defender_answer": defender_answer,
        "decided_by": s.decided_by,
        "judges": [
            {
                "judge": v.judge,
                "winner": v.winner,
                "asked": v.asked,
                "orders": [
                    {
                        "first": first,
                        "verdict": verdict,
                        "picked": picked,
                        "reason": v.reasons[i] if i < len(v.reasons) else "",
                    }
                    for i, (first, verdict, picked) in enumerate(
                        zip(v.orders, v.verdicts, role_verdicts(v), strict=False)
                    )
                ],
            }
            for v in s.votes
        ],
        "score": {
            "t_attacker": sc.attacker_votes,
            "t_defender": sc.defender_votes,
            "x_attacker": sc.local_attacker,
            "E_attacker": sc.elo_expected_attacker,
            "e_attacker": sc.final_attacker,
            "e_defender": sc.final_defender,
            "alpha": sc.alpha,
            "x_exec_attacker": sc.execution_attacker,
            "execution_weight": sc.execution_weight,
        },
        "ratings_before": s.ratings_before,
        "ratings_after": s.ratings_after,
        "rating_seq": s.rating_seq,
        "tests": None
        if s.tests is None
        else {
            "writer": s.tests.writer,
            "usable": s.tests.usable,
            "names": s.tests.tests,
            "code": s.tests.code,
        },
        "execution": None
        if s.execution is None
        else {
            "sandbox": s.execution.sandbox,
            "attacker": _run(s.execution.attacker),
            "defender": _run(s.execution.defender),
        },
    }


def _run(r: RunResult) -> dict[str, Any]:
    return {
        "status": r.status,
        "passed": r.passed,
        "failed": r.failed,
        "errored": r.errored,
        "total": r.total,
        "exit_code": r.exit_code,
        "stdout": r.stdout,
        "stderr": r.stderr,
        "wall_s": r.wall_s,
    }


def win_matrix(samples: Iterable[Sample]) -> dict[str, Any]:
    """Wins between every pair of models: ``rate[i][j]`` is the share of the battles between
    models i and j that i won (None where they never met)."""
    wins: dict[tuple[str, str], int] = defaultdict(int)
    models: set[str] = set()
    for s in samples:
        wins[(s.winner, s.loser)] += 1
        models.update((s.winner, s.loser))
    names = sorted(models)
    rate: list[list[float | None]] = []
    games: list[list[int]] = []
    for a in names:
        rate.append([])
        games.append([])
        for b in names:
            n = wins[(a, b)] + wins[(b, a)]
            games[-1].append(n)
            rate[-1].append(wins[(a, b)] / n if n else None)
    return {"models": names, "rate": rate, "games": games}


def rating_history(samples: Iterable[Sample], *, points: int = 400) -> dict[str, Any]:
    """Each model's Elo rating after every battle it fought, in rating order (``rating_seq``;
    samples without one keep their order), at most about ``points`` points per model."""
    ordered = sorted(
        enumerate(samples), key=lambda p: (p[1].rating_seq is None, p[1].rating_seq or 0, p[0])
    )
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for i, (_, s) in enumerate(ordered, 1):
        x = s.rating_seq if s.rating_seq is not None else i
        for model in (s.attacker, s.defender):
            if model in s.ratings_after:
                series[model].append((x, round(s.ratings_after[model], 1)))
    return {m: _thin(pts, points) for m, pts in sorted(series.items())}


def _thin(pts: list[tuple[int, float]], points: int) -> list[tuple[int, float]]:
    """Every k-th point (always the last): a chart needs no more points than pixels."""
    if len(pts) <= points:
        return pts
    step = -(-len(pts) // points)
    kept = pts[::step]
    return kept if kept[-1] == pts[-1] else [*kept, pts[-1]]
