"""Battle schedule: every ordered (attacker, defender) pair, round-robin, with optional weights.

Usage::

    cycle = round_robin(["a", "b", "c"], {"a>b": 2})
    attacker, defender = cycle[cursor % len(cycle)]

A pair with weight w gets w turns per round, spread through the round (smooth weighted
round-robin, as nginx balances upstreams), so no pair waits a whole round behind a heavy one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["round_robin"]


def round_robin(
    competitors: Sequence[str], weights: Mapping[str, int] | None = None
) -> list[tuple[str, str]]:
    """One round of ordered pairs; a pair's key in ``weights`` is ``"attacker>defender"``."""
    weights = weights or {}
    pairs = [(a, b) for a in competitors for b in competitors if a != b]
    w = {p: weights.get(f"{p[0]}>{p[1]}", 1) for p in pairs}
    active = [p for p in pairs if w[p] > 0]
    if not active:
        raise ValueError("every pair has weight 0: nothing to schedule")
    total = sum(w[p] for p in active)
    current = dict.fromkeys(active, 0)
    cycle: list[tuple[str, str]] = []
    for _ in range(total):
        for p in active:
            current[p] += w[p]
        best = max(active, key=lambda p: current[p])  # first maximum: stable order
        current[best] -= total
        cycle.append(best)
    return cycle
