"""From the runner's report lines and the exit status to a RunResult: hand-counted cases."""

from __future__ import annotations

import json

from warriorcoder.sandbox.report import parse_report, run_result
from warriorcoder.sandbox.runner import static_test_count


def _lines(*events: dict[str, object]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def _test(nodeid: str, when: str, outcome: str) -> dict[str, object]:
    return {"event": "test", "nodeid": nodeid, "when": when, "outcome": outcome}


def _result(report: bytes, **kw: object):
    args: dict[str, object] = dict(
        exit_code=1, timed_out=False, cpu_limited=False, stdout="", stderr="",
        truncated=False, wall_s=1.0, cpu_s=0.5,
    )  # fmt: skip
    args.update(kw)
    return run_result(parse_report(report), **args)  # type: ignore[arg-type]


STARTED = ({"event": "static_total", "total": 3}, {"event": "started"})


def test_a_finished_run_counts_each_test_once():
    report = _lines(
        *STARTED,
        {"event": "collected", "total": 4},
        _test("t::a", "setup", "passed"),
        _test("t::a", "call", "passed"),
        _test("t::a", "teardown", "passed"),
        _test("t::b", "setup", "passed"),
        _test("t::b", "call", "failed"),
        _test("t::b", "teardown", "failed"),  # a failed call stays a failure
        _test("t::c", "setup", "failed"),  # fixture error: errored, call never ran
        _test("t::c", "teardown", "passed"),
        _test("t::d", "setup", "skipped"),
        {"event": "done", "exit_code": 1, "cpu_s": 0.25},
    )
    r = _result(report)
    assert (r.status, r.passed, r.failed, r.errored, r.total) == ("ran", 1, 1, 1, 4)
    assert (r.exit_code, r.wall_s, r.cpu_s) == (1, 1.0, 0.5)
    assert parse_report(report).cpu_s == 0.25


def test_collection_error_errors_every_test_by_the_static_count():
    report = _lines(
        *STARTED,
        {"event": "collect_error", "nodeid": "test_solution.py"},
        {"event": "collected", "total": 0},
        {"event": "done", "exit_code": 2},
    )
    r = _result(report, exit_code=2)
    assert (r.status, r.passed, r.failed, r.errored, r.total) == ("ran", 0, 0, 3, 3)


def test_a_run_killed_half_way_keeps_its_counts_and_errors_the_rest():
    report = _lines(
        *STARTED,
        {"event": "collected", "total": 5},
        _test("t::a", "call", "passed"),
        _test("t::b", "call", "failed"),
        _test("t::c", "setup", "passed"),  # killed during its call
    )
    r = _result(report, timed_out=True, exit_code=-9)
    assert (r.status, r.passed, r.failed, r.errored, r.total) == ("timeout", 1, 1, 3, 5)


def test_killed_during_import_errors_the_static_count():
    r = _result(_lines(*STARTED), cpu_limited=True, exit_code=152)
    assert (r.status, r.passed, r.failed, r.errored, r.total) == ("timeout", 0, 0, 3, 3)


def test_without_started_the_sandbox_failed_and_counts_nothing():
    # even a report the code could not have forged before starting counts nothing
    report = _lines({"event": "static_total", "total": 3}, _test("t::a", "call", "passed"))
    r = _result(report, exit_code=1, stderr="bwrap: Creating new namespace failed")
    assert (r.status, r.passed, r.total) == ("sandbox_error", 0, 0)
    assert r.stderr.startswith("bwrap:")


def test_garbage_lines_are_skipped():
    report = b"not json\n[1, 2]\n" + _lines(
        *STARTED, {"event": "collected", "total": "x"}, _test("t::a", "call", "passed")
    )
    report += b'{"event": "test", "nodeid": 3}\n' + _lines({"event": "done", "exit_code": 0})
    c = parse_report(report)
    assert (c.started, c.done, c.collected, c.passed) == (True, True, None, 1)
    # collection never reported: the static count is the total
    assert (c.total, c.errored) == (3, 0)


def test_output_fields_are_passed_through():
    r = _result(_lines(*STARTED), stdout="out", stderr="err", truncated=True)
    assert (r.stdout, r.stderr, r.output_truncated) == ("out", "err", True)


def test_static_test_count():
    tests = (
        "import pytest\n\ndef helper():\n    pass\n\ndef test_a():\n    pass\n\n"
        "async def test_b():\n    pass\n\nclass TestC:\n    def test_d(self):\n        pass\n"
        "    def setup_method(self):\n        pass\n\nclass Other:\n    def test_e(self):\n"
        "        pass\n"
    )
    assert static_test_count(tests) == 3
    assert static_test_count("def helper(): pass\n") == 1
    assert static_test_count("def test_(:\n") == 1
