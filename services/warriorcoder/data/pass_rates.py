"""Execution statistics of arena samples: per-model pass rates, test-backed share, deciders.

Usage::

    rates = pass_rates(samples)                 # {model: PassRate}, models with a run only
    stats = execution_stats(samples)
    print(stats.test_backed, stats.decided_by, rates["alpha"].pass_rate)

An answer counts as run unless the sandbox failed (``sandbox_error`` says nothing about the
answer, so it is left out). It passed all when its test run finished with every test of a
non-empty suite passed; its pass fraction is passed / total, 0 without code, on a timeout or
with no test collected (the rules of ``warriorcoder.arena.evidence``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from warriorcoder.arena.evidence import pass_fraction
from warriorcoder.proto.messages import RunResult, Sample

__all__ = ["ExecutionStats", "PassRate", "execution_stats", "pass_rates"]


@dataclass(frozen=True, slots=True)
class PassRate:
    """One model's answers run against tests."""

    model: str
    runs: int = 0  # answers run (sandbox errors left out)
    passed_all: int = 0  # runs that passed every test of a non-empty suite
    fraction_sum: float = 0.0  # sum of the runs' pass fractions

    @property
    def pass_rate(self) -> float | None:
        """Share of runs that passed every test; None without runs."""
        return self.passed_all / self.runs if self.runs else None

    @property
    def mean_pass_fraction(self) -> float | None:
        """Mean share of tests passed per run; None without runs."""
        return self.fraction_sum / self.runs if self.runs else None


@dataclass(frozen=True, slots=True)
class ExecutionStats:
    """What the execution evidence of a set of samples says, taken together."""

    samples: int = 0
    with_execution: int = 0  # samples whose answers the verifier ran
    with_tests: int = 0  # samples with usable tests
    test_backed: int = 0  # the chosen answer passed strictly more tests than the rejected one
    sandbox_errors: int = 0  # runs the sandbox failed (not counted as runs)
    decided_by: dict[str, int] = field(default_factory=dict)  # "votes"/"execution" -> samples
    models: dict[str, PassRate] = field(default_factory=dict)

    @property
    def test_backed_share(self) -> float | None:
        """Test-backed samples among those with execution results; None without any."""
        return self.test_backed / self.with_execution if self.with_execution else None


def _runs(s: Sample) -> list[tuple[str, RunResult]]:
    ex = s.execution
    return [] if ex is None else [(s.attacker, ex.attacker), (s.defender, ex.defender)]


def pass_rates(samples: Iterable[Sample]) -> dict[str, PassRate]:
    """Per model (sorted by name), its answers' runs: count, passed all, summed pass fraction."""
    runs: Counter[str] = Counter()
    passed: Counter[str] = Counter()
    fractions: dict[str, float] = {}
    for s in samples:
        for model, run in _runs(s):
            fraction = pass_fraction(run)
            if fraction is None:
                continue
            runs[model] += 1
            fractions[model] = fractions.get(model, 0.0) + fraction
            if run.status == "ran" and run.total > 0 and run.passed == run.total:
                passed[model] += 1
    return {
        m: PassRate(model=m, runs=runs[m], passed_all=passed[m], fraction_sum=fractions[m])
        for m in sorted(runs)
    }


def execution_stats(samples: Iterable[Sample]) -> ExecutionStats:
    """Execution evidence over ``samples``: counts, deciders and per-model pass rates."""
    items = list(samples)
    with_ex = [s for s in items if s.execution is not None]
    return ExecutionStats(
        samples=len(items),
        with_execution=len(with_ex),
        with_tests=sum(1 for s in items if s.tests is not None and s.tests.usable),
        test_backed=sum(1 for s in items if s.test_backed),
        sandbox_errors=sum(
            1 for s in with_ex for _, run in _runs(s) if run.status == "sandbox_error"
        ),
        decided_by=dict(sorted(Counter(s.decided_by for s in items).items())),
        models=pass_rates(items),
    )
