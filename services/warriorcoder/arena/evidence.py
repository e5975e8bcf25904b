"""Execution evidence: which of a battle's two answers passed more of the challenge's tests.

Usage::

    edge = execution_edge(battle.execution)        # "attacker", "defender", "even" or None
    x_exec = execution_score(battle.execution)     # 1.0, 0.0, 0.5 or None
    n = passed_tests(battle.execution.attacker)    # None: a sandbox error, no evidence

How runs compare (both answers ran against the same tests, so counts compare directly):

- ``ran``: the tests it passed.
- ``no_code`` and ``timeout``: 0 passed. The answer gave nothing to test, or its code hung or
  burnt its CPU time; either is the answer's fault. A killed run's partial counts are ignored:
  they depend on when the kill came.
- ``sandbox_error``: no evidence at all (the sandbox failed, not the answer), so a battle with
  one is never decided or marked test-backed by execution.

Pure functions, no I/O.
"""

from __future__ import annotations

from typing import Literal

from warriorcoder.proto.messages import Execution, RunResult

__all__ = ["Edge", "execution_edge", "execution_score", "pass_fraction", "passed_tests"]

Edge = Literal["attacker", "defender", "even"]


def passed_tests(run: RunResult) -> int | None:
    """Tests the run counts as passed: ``passed`` when it ran, 0 for no code or a timeout, None
    for a sandbox error (not the answer's fault: no evidence)."""
    if run.status == "sandbox_error":
        return None
    return run.passed if run.status == "ran" else 0


def pass_fraction(run: RunResult) -> float | None:
    """``passed / total`` of a run (0.0 without code, on a timeout, or when no test was
    collected); None for a sandbox error."""
    passed = passed_tests(run)
    if passed is None:
        return None
    return passed / run.total if run.status == "ran" and run.total > 0 else 0.0


def execution_edge(execution: Execution | None) -> Edge | None:
    """The role whose answer passed strictly more tests, ``"even"`` when both passed as many,
    None without comparable evidence (no execution, or a sandbox error on either side)."""
    if execution is None:
        return None
    a, d = passed_tests(execution.attacker), passed_tests(execution.defender)
    if a is None or d is None:
        return None
    if a > d:
        return "attacker"
    if d > a:
        return "defender"
    return "even"


_SCORE: dict[Edge, float] = {"attacker": 1.0, "defender": 0.0, "even": 0.5}


def execution_score(execution: Execution | None) -> float | None:
    """x_exec(A>B): 1.0, 0.0 or 0.5 as the attacker passed more, fewer or as many tests; None
    without comparable evidence."""
    edge = execution_edge(execution)
    return None if edge is None else _SCORE[edge]
