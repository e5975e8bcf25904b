"""Judge verdicts: parse a label from the judge's own output and combine orders into a vote.

Usage::

    v = parse_verdict(judge_output)               # "A", "B", "tie" or None
    winner = combine(["attacker", "defender"], ["A", "B"])   # -> "attacker"

Only the judge's own output is parsed (the backend excludes the prompt), and only the last
well-formed label counts, so labels quoted earlier in the judge's reasoning do not decide.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

__all__ = ["VERDICT_CHOICES", "Label", "combine", "parse_verdict", "winner_of"]

Label = Literal["A", "B", "tie"]
Role = Literal["attacker", "defender"]

# The answers a constrained (guided-choice) judge may give.
VERDICT_CHOICES = ["[[A]]", "[[B]]", "[[Tie]]"]

_LABEL_RE = re.compile(r"\[\[\s*(A|B|Tie)\s*\]\]", re.IGNORECASE)


def parse_verdict(output: str) -> Label | None:
    """The last well-formed ``[[A]]``, ``[[B]]`` or ``[[Tie]]`` in ``output``, else None."""
    matches = _LABEL_RE.findall(output)
    if not matches:
        return None
    last = matches[-1].upper()
    return "tie" if last == "TIE" else last


def winner_of(first: Role, label: Label) -> Literal["attacker", "defender", "tie"]:
    """Map a label to a competitor role, given whose answer was shown as Assistant A."""
    if label == "tie":
        return "tie"
    other: Role = "defender" if first == "attacker" else "attacker"
    return first if label == "A" else other


def combine(
    orders: Sequence[Role], labels: Sequence[Label | None]
) -> Literal["attacker", "defender", "tie", "invalid"]:
    """One judge's vote from its verdicts: any missing verdict makes it invalid; orders that
    disagree make a tie (position bias cancels out)."""
    if not labels or len(orders) != len(labels):
        raise ValueError("orders and labels must be non-empty and of equal length")
    winners = set()
    for first, label in zip(orders, labels, strict=True):
        if label is None:
            return "invalid"
        winners.add(winner_of(first, label))
    return winners.pop() if len(winners) == 1 else "tie"
