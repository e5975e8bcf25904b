"""From what a sandboxed run left behind (its report lines, exit status, output) to a ``RunResult``.

Usage::

    counts = parse_report(report_bytes)           # Counts(started, done, passed, failed, ...)
    result = run_result(counts, exit_code=1, timed_out=False, cpu_limited=False,
                        stdout=out, stderr=err, truncated=False, wall_s=0.8, cpu_s=0.6)

Pure: no I/O. The report is the runner's JSON lines (``warriorcoder.sandbox.runner``):
``static_total`` and ``started`` before any untrusted code runs, then ``collect_error``,
``collected``, one ``test`` line per test phase, ``done``. Lines that are not JSON objects are
skipped.

Counting, per test (by node id): failed when its call failed; errored when its setup or teardown
failed and its call did not; passed when its call passed; skipped/xfailed count in none. A
collection error with no test collected (the solution does not import, e.g. a syntax error)
errors every test: ``total`` is then the tests' static count. When the run did not finish (no
``done``: killed at a limit, or the code under test exited the process), the tests that never
reported an outcome count as errored.

Status: ``sandbox_error`` when the runner never reported ``started`` (the sandbox did not come up:
not the answer's fault); ``timeout`` when the wall timer killed it or the CPU limit did; else
``ran``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from warriorcoder.proto.messages import RunResult, RunStatus

__all__ = ["Counts", "parse_report", "run_result"]


@dataclass
class Counts:
    """What the report says (before the exit status is known)."""

    started: bool = False
    done: bool = False
    static_total: int = 0
    collected: int | None = None
    collect_errors: int = 0
    cpu_s: float | None = None  # the runner's own CPU time (with its children), from ``done``
    outcomes: dict[str, dict[str, str]] = field(default_factory=dict)  # nodeid -> when -> outcome

    @property
    def passed(self) -> int:
        return sum(self._verdict(o) == "passed" for o in self.outcomes.values())

    @property
    def failed(self) -> int:
        return sum(self._verdict(o) == "failed" for o in self.outcomes.values())

    @property
    def skipped(self) -> int:
        return sum(self._verdict(o) == "skipped" for o in self.outcomes.values())

    @property
    def total(self) -> int:
        if self.collected:
            return self.collected
        if self.collected is None or self.collect_errors:  # the tests never all got collected
            return self.static_total
        return 0

    @property
    def errored(self) -> int:
        if not self.collected and (self.collect_errors or not self.done):
            return self.total  # nothing collected: every test errored
        n = sum(self._verdict(o) == "errored" for o in self.outcomes.values())
        if not self.done:  # killed: what never reported an outcome did not run
            n = max(n, self.total - self.passed - self.failed - self.skipped)
        return n

    @staticmethod
    def _verdict(phases: dict[str, str]) -> str:
        if phases.get("call") == "failed":
            return "failed"
        if "failed" in (phases.get("setup"), phases.get("teardown")):
            return "errored"
        if phases.get("call") == "passed":
            return "passed"
        if "skipped" in phases.values():
            return "skipped"
        return "running"  # call not reported yet (killed during it)


def parse_report(data: bytes) -> Counts:
    """The runner's report lines, read leniently (the code under test could write to them)."""
    c = Counts()
    for line in data.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if not isinstance(ev, dict):
            continue
        kind = ev.get("event")
        match kind:
            case "started":
                c.started = True
            case "done":
                c.done = True
                if isinstance(ev.get("cpu_s"), (int, float)):
                    c.cpu_s = max(0.0, float(ev["cpu_s"]))
            case "static_total" if isinstance(ev.get("total"), int):
                c.static_total = max(0, ev["total"])
            case "collected" if isinstance(ev.get("total"), int):
                c.collected = max(0, ev["total"])
            case "collect_error":
                c.collect_errors += 1
            case "test":
                nodeid, when, outcome = ev.get("nodeid"), ev.get("when"), ev.get("outcome")
                if isinstance(nodeid, str) and isinstance(when, str) and isinstance(outcome, str):
                    c.outcomes.setdefault(nodeid, {})[when] = outcome
    return c


def run_result(
    counts: Counts,
    *,
    exit_code: int | None,
    timed_out: bool,
    cpu_limited: bool,
    stdout: str,
    stderr: str,
    truncated: bool,
    wall_s: float,
    cpu_s: float,
) -> RunResult:
    """The run's ``RunResult`` (status rules in the module docstring)."""
    status: RunStatus
    if not counts.started:
        status = "sandbox_error"
    elif timed_out or cpu_limited:
        status = "timeout"
    else:
        status = "ran"
    ran = status != "sandbox_error"
    return RunResult(
        status=status,
        passed=counts.passed if ran else 0,
        failed=counts.failed if ran else 0,
        errored=counts.errored if ran else 0,
        total=counts.total if ran else 0,
        exit_code=exit_code,
        stdout=stdout,
        stderr=stderr,
        output_truncated=truncated,
        wall_s=max(0.0, wall_s),
        cpu_s=max(0.0, cpu_s),
    )
