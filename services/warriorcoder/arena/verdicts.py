"""Judge verdicts: parse a label from the judge's own output and combine orders into a vote.

Usage::

    v = parse_verdict(judge_output)               # "A", "B", "tie" or None
    winner = combine(["attacker", "defender"], ["A", "B"])   # -> "attacker"

Only the judge's own output is parsed (the backend excludes the prompt). The verdict is the judge's
final statement: the last line that holds a label. Labels earlier in the reasoning do not decide, a
line that merely echoes the answer format (``[[A]], [[B]] or [[Tie]]``) is not a statement, and a
final statement with conflicting labels (``[[A]] [[B]]``) is unparseable, so the judge is re-asked
rather than read as whichever label came last.
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

_LABEL = r"\[\[\s*(?:A|B|Tie)\s*\]\]"
_LABEL_RE = re.compile(r"\[\[\s*(A|B|Tie)\s*\]\]", re.IGNORECASE)
# Three or more labels joined only by list separators: the answer format, repeated.
_LIST_RE = re.compile(
    rf"{_LABEL}(?:\s*(?:,|/|\||;|\bor\b|\band\b)+\s*{_LABEL}){{2,}}", re.IGNORECASE
)


def _label(raw: str) -> Label:
    return "tie" if raw.upper() == "TIE" else "A" if raw.upper() == "A" else "B"


def _without_format_echo(line: str) -> str:
    def drop(m: re.Match[str]) -> str:
        found = {_label(x) for x in _LABEL_RE.findall(m.group(0))}
        return " " if found == {"A", "B", "tie"} else m.group(0)

    return _LIST_RE.sub(drop, line)


def parse_verdict(output: str) -> Label | None:
    """The label of the judge's final statement, or None when there is none or it conflicts.

    The final statement is the last line holding a label once echoes of the answer format are
    set aside; its labels must all agree.
    """
    for line in reversed(output.splitlines()):
        labels = {_label(x) for x in _LABEL_RE.findall(_without_format_echo(line))}
        if labels:
            return labels.pop() if len(labels) == 1 else None
    return None


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
