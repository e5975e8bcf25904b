"""Judge family bias: how often a judge sides with its own family against a neutral panel.

Usage::

    rows = judge_bias(samples, {"qwen-72b": "qwen", "qwen-7b": "qwen", "llama-70b": "llama"})
    print(format_bias_table(rows))
    data = bias_to_json(rows)

Pure, no I/O. ``families`` maps a model to its family (``ModelSettings.family``; a model left out,
or mapped to None, has none). For one judge J of family f, each of its valid votes on a battle is
compared with the **panel**: the battle's other valid votes by judges of neither fighter's family
(neutral judges; a tie vote counts half for each side). The panel's majority is the side with
more of those votes; there is none when they tie or there are none.

- **same-family rate**: over J's votes on battles where exactly one fighter is of family f (its
  "own" fighter) and the panel's majority went to the other fighter, the share of votes J gave
  its own fighter. A fair judge disagrees with the panel only as often as it does elsewhere.
- **other-family rate** (the baseline): over J's votes on battles where no fighter is of family f
  (every battle for a judge without a family) and the panel has a majority, the share of votes J
  gave the fighter the panel's majority did not pick.
- **bias** = same-family rate - other-family rate: about 0 for a fair judge, up to 1 for a judge
  that always sides with its family. A tie vote by J is never a vote "for" a fighter.

Each rate has its Wilson score interval (95% with the default ``z``) and the bias Newcombe's
hybrid score interval for a difference of independent proportions (Newcombe 1998, method 10),
built from the two Wilson intervals. A rate with no trials is None, and so is the bias then:
under ``judge.family_policy: exclude`` a judge never judges its family's battles, so its
same-family rate has no trials. Battles whose two fighters are both of J's family say nothing
about a preference between them and are left out; so are J's invalid votes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from warriorcoder.proto.messages import Sample

__all__ = [
    "BIAS_CSV_FIELDS",
    "BIAS_HEADER",
    "JudgeBias",
    "Rate",
    "bias_table_rows",
    "bias_to_csv_rows",
    "bias_to_json",
    "format_bias_table",
    "judge_bias",
    "newcombe_interval",
    "wilson_interval",
]

Side = Literal["attacker", "defender"]
_Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


@dataclass(frozen=True, slots=True)
class Rate:
    """``hits`` of ``trials``, their share and its score interval (None without trials)."""

    hits: int
    trials: int
    rate: float | None
    lower: float | None
    upper: float | None


@dataclass(frozen=True, slots=True)
class JudgeBias:
    """One judge's family bias (see the module docstring for each measure)."""

    judge: str
    family: str | None
    votes: int  # its valid votes
    own_family_battles: int  # valid votes on battles with exactly one fighter of its family
    same_family: Rate  # votes for its own fighter when the neutral panel chose the other
    other_family: Rate  # votes against the panel's choice in battles without its family
    bias: float | None  # same_family.rate - other_family.rate
    bias_lower: float | None
    bias_upper: float | None


def wilson_interval(hits: int, trials: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``hits / trials`` (``trials`` >= 1)."""
    if trials < 1 or not 0 <= hits <= trials:
        raise ValueError(f"need 0 <= hits <= trials and trials >= 1, got {hits} of {trials}")
    p = hits / trials
    z2 = z * z
    denom = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(a: Rate, b: Rate) -> tuple[float, float]:
    """Newcombe's hybrid score interval for ``a.rate - b.rate`` from the two Wilson intervals."""
    if a.rate is None or b.rate is None:
        raise ValueError("both rates need trials")
    assert a.lower is not None and a.upper is not None and b.lower is not None
    assert b.upper is not None
    d = a.rate - b.rate
    low = d - math.sqrt((a.rate - a.lower) ** 2 + (b.upper - b.rate) ** 2)
    high = d + math.sqrt((a.upper - a.rate) ** 2 + (b.rate - b.lower) ** 2)
    return max(-1.0, low), min(1.0, high)


def _rate(hits: int, trials: int, z: float) -> Rate:
    if trials == 0:
        return Rate(hits=0, trials=0, rate=None, lower=None, upper=None)
    lower, upper = wilson_interval(hits, trials, z)
    return Rate(hits=hits, trials=trials, rate=hits / trials, lower=lower, upper=upper)


def _other(side: Side) -> Side:
    return "defender" if side == "attacker" else "attacker"


def _majority(votes: Iterable[str]) -> Side | None:
    t_a = t_d = 0.0
    for w in votes:
        if w == "attacker":
            t_a += 1
        elif w == "defender":
            t_d += 1
        elif w == "tie":
            t_a += 0.5
            t_d += 0.5
    if t_a == t_d:
        return None
    return "attacker" if t_a > t_d else "defender"


@dataclass(slots=True)
class _Tally:
    votes: int = 0
    own_battles: int = 0
    same_hits: int = 0
    same_trials: int = 0
    other_hits: int = 0
    other_trials: int = 0


def judge_bias(
    samples: Iterable[Sample], families: Mapping[str, str | None], *, z: float = _Z95
) -> list[JudgeBias]:
    """Every judge's family bias over ``samples`` (see the module docstring), by judge name."""
    tallies: dict[str, _Tally] = {}
    for s in samples:
        fighters = {"attacker": families.get(s.attacker), "defender": families.get(s.defender)}
        fams = set(fighters.values()) - {None}
        valid = [v for v in s.votes if v.winner != "invalid"]
        for v in valid:
            t = tallies.setdefault(v.judge, _Tally())
            t.votes += 1
            family = families.get(v.judge)
            panel = _majority(
                o.winner for o in valid if o.judge != v.judge and families.get(o.judge) not in fams
            )
            sides: tuple[Side, Side] = ("attacker", "defender")
            own = [r for r in sides if family is not None and family == fighters[r]]
            if len(own) == 2:
                continue  # both fighters of its family: no side to favour
            if len(own) == 1:
                t.own_battles += 1
                if panel == _other(own[0]):
                    t.same_trials += 1
                    t.same_hits += v.winner == own[0]
            elif panel is not None:
                t.other_trials += 1
                t.other_hits += v.winner == _other(panel)
    rows: list[JudgeBias] = []
    for judge in sorted(tallies):
        t = tallies[judge]
        same = _rate(t.same_hits, t.same_trials, z)
        other = _rate(t.other_hits, t.other_trials, z)
        bias = lower = upper = None
        if same.rate is not None and other.rate is not None:
            bias = same.rate - other.rate
            lower, upper = newcombe_interval(same, other)
        rows.append(
            JudgeBias(
                judge=judge,
                family=families.get(judge),
                votes=t.votes,
                own_family_battles=t.own_battles,
                same_family=same,
                other_family=other,
                bias=bias,
                bias_lower=lower,
                bias_upper=upper,
            )
        )
    return rows


def _rate_json(r: Rate) -> dict[str, Any]:
    return {"hits": r.hits, "trials": r.trials, "rate": r.rate, "lower": r.lower, "upper": r.upper}


def bias_to_json(rows: Sequence[JudgeBias]) -> dict[str, dict[str, Any]]:
    """``{judge: {family, votes, own_family_battles, same_family: {hits, trials, rate, lower,
    upper}, other_family: {...}, bias, bias_lower, bias_upper}}`` (None where undefined)."""
    return {
        r.judge: {
            "family": r.family,
            "votes": r.votes,
            "own_family_battles": r.own_family_battles,
            "same_family": _rate_json(r.same_family),
            "other_family": _rate_json(r.other_family),
            "bias": r.bias,
            "bias_lower": r.bias_lower,
            "bias_upper": r.bias_upper,
        }
        for r in rows
    }


BIAS_CSV_FIELDS = (
    "judge",
    "family",
    "votes",
    "own_family_battles",
    "same_hits",
    "same_trials",
    "same_rate",
    "same_lower",
    "same_upper",
    "other_hits",
    "other_trials",
    "other_rate",
    "other_lower",
    "other_upper",
    "bias",
    "bias_lower",
    "bias_upper",
)


def bias_to_csv_rows(rows: Sequence[JudgeBias]) -> list[dict[str, Any]]:
    """Flat rows with the ``BIAS_CSV_FIELDS`` (for ``csv.DictWriter``; None: an empty cell)."""
    out: list[dict[str, Any]] = []
    for r in rows:
        flat: dict[str, Any] = {
            "judge": r.judge,
            "family": r.family,
            "votes": r.votes,
            "own_family_battles": r.own_family_battles,
        }
        for prefix, rate in (("same", r.same_family), ("other", r.other_family)):
            flat |= {
                f"{prefix}_hits": rate.hits,
                f"{prefix}_trials": rate.trials,
                f"{prefix}_rate": rate.rate,
                f"{prefix}_lower": rate.lower,
                f"{prefix}_upper": rate.upper,
            }
        flat |= {"bias": r.bias, "bias_lower": r.bias_lower, "bias_upper": r.bias_upper}
        out.append(flat)
    return out


def _share(r: Rate) -> str:
    if r.rate is None or r.lower is None or r.upper is None:
        return "- (0)"
    return f"{r.rate:.2f} [{r.lower:.2f}, {r.upper:.2f}] ({r.hits}/{r.trials})"


def bias_table_rows(rows: Sequence[JudgeBias]) -> list[tuple[str, ...]]:
    """The table's cells per judge: judge, family, same-family, other-family, bias."""
    out: list[tuple[str, ...]] = []
    for r in rows:
        bias = "-"
        if r.bias is not None and r.bias_lower is not None and r.bias_upper is not None:
            bias = f"{r.bias:+.2f} [{r.bias_lower:+.2f}, {r.bias_upper:+.2f}]"
        same, other = _share(r.same_family), _share(r.other_family)
        out.append((r.judge, r.family or "-", same, other, bias))
    return out


BIAS_HEADER = ("judge", "family", "same-family", "other-family", "bias")


def format_bias_table(rows: Sequence[JudgeBias]) -> str:
    """A plain-text table: each rate with its 95% interval and hits/trials, and the bias."""
    cells = [BIAS_HEADER, *bias_table_rows(rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(BIAS_HEADER))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )
