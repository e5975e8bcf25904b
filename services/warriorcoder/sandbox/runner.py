"""The in-sandbox test runner: one answer's code against the challenge's pytest tests.

Usage::

    python -m warriorcoder.sandbox.runner --report-fd 3 --uid 60000 --cpu-s 10 --memory-mb 1024

This file is bound read-only into the sandbox and run there by the sandbox's interpreter as a
plain script (``python -I -B /opt/sandbox/runner.py ...``): it imports only the standard library
and pytest, never ``warriorcoder``. Steps, in this order:

1. read ``{"solution": ..., "tests": ...}`` (JSON) from stdin, write ``solution.py`` and
   ``test_solution.py`` into the working directory (the sandbox's scratch tmpfs), then point stdin
   at ``/dev/null``;
2. set the resource limits (CPU seconds, address space, processes, file size, open files, no core
   dumps); with ``--uid`` (the sandbox started as root), drop supplementary groups, gid and uid to
   that unprivileged uid, which clears every capability, and refuse to go on if any is left; as
   uid 0 without ``--uid`` it refuses to run at all (the process limit would not apply);
3. report ``started`` on the report fd: everything after this line runs untrusted code;
4. run pytest in this process (``-q``, no cache, plugin autoload off) with a small plugin that
   reports every collection error, the number of tests collected and each test phase's outcome,
   one JSON line each, as they happen (so a run killed half-way still has its counts);
5. report ``done`` with pytest's exit code and the CPU time used, and exit with that code.

The report fd is a pipe separate from stdout/stderr, so the tests' own prints cannot be mistaken
for it. It is NOT a trust boundary: the code under test runs in this same process and can write
to any of its fds, so a hostile answer can forge its own report. The sandbox contains what such
code can do; it does not make a hostile answer's self-report trustworthy.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import sys
from typing import Any

__all__ = ["main", "static_test_count"]

_MB = 1024 * 1024


def static_test_count(tests: str) -> int:
    """Test functions in the tests' source (top level and ``Test*`` classes), at least 1.

    The total to report when collection fails (a solution that does not import): all tests errored.
    """
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError):
        return 1
    n = 0
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(
            "test"
        ):
            n += 1
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            n += sum(
                isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and m.name.startswith("test")
                for m in node.body
            )
    return max(n, 1)


class _Report:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __call__(self, **event: Any) -> None:
        data = (json.dumps(event) + "\n").encode()
        while data:  # a pipe write may be partial
            data = data[os.write(self.fd, data) :]


class _Collector:
    """pytest plugin: collection errors, the number of tests, each phase's outcome."""

    def __init__(self, report: _Report) -> None:
        self.report = report

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.report(event="collect_error", nodeid=report.nodeid)

    def pytest_collection_finish(self, session: Any) -> None:
        self.report(event="collected", total=len(session.items))

    def pytest_runtest_logreport(self, report: Any) -> None:
        self.report(event="test", nodeid=report.nodeid, when=report.when, outcome=report.outcome)


def _limit(name: str, value: int, hard: int | None = None) -> None:
    resource.setrlimit(getattr(resource, name), (value, value if hard is None else hard))


def _drop_to(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    with open("/proc/self/status") as f:
        caps = [ln.split()[1] for ln in f if ln.startswith(("CapPrm", "CapEff", "CapAmb"))]
    if os.getuid() == 0 or os.geteuid() == 0 or any(int(c, 16) for c in caps):
        raise SystemExit("runner: privileges not dropped")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="runner")
    p.add_argument("--report-fd", type=int, required=True)
    p.add_argument("--uid", type=int, default=None, help="drop to this uid (started as root)")
    p.add_argument("--cpu-s", type=int, default=10)
    p.add_argument("--memory-mb", type=int, default=1024)
    p.add_argument("--nproc", type=int, default=64)
    p.add_argument("--fsize-mb", type=int, default=64)
    p.add_argument("--nofile", type=int, default=256)
    p.add_argument("--probe", action="store_true", help="check the set-up, run no tests")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the tests read from stdin; the exit code is pytest's (see the module docstring)."""
    args = _parse_args(argv)
    report = _Report(args.report_fd)
    os.set_inheritable(args.report_fd, False)  # not handed to the tests' subprocesses
    if args.probe:
        payload = {"solution": "", "tests": ""}
    else:
        payload = json.loads(sys.stdin.buffer.read())
        for name, key in (("solution.py", "solution"), ("test_solution.py", "tests")):
            with open(name, "w", encoding="utf-8") as f:
                f.write(payload[key])
            os.chmod(name, 0o444)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)

    _limit("RLIMIT_CORE", 0)
    _limit("RLIMIT_CPU", args.cpu_s, args.cpu_s + 1)  # SIGXCPU, then SIGKILL a second later
    _limit("RLIMIT_AS", args.memory_mb * _MB)
    _limit("RLIMIT_FSIZE", args.fsize_mb * _MB)
    _limit("RLIMIT_NOFILE", args.nofile)
    _limit("RLIMIT_NPROC", args.nproc)
    if args.uid is not None:
        _drop_to(args.uid)
    elif os.getuid() == 0:
        raise SystemExit("runner: refusing to run tests as uid 0 (pass --uid)")

    import pytest  # after the limits: its import is part of the run's budget

    if args.probe:
        report(event="probe", uid=os.getuid(), pytest=pytest.__version__)
        return 0
    report(event="static_total", total=static_test_count(payload["tests"]))
    report(event="started")
    sys.path.insert(0, os.getcwd())
    code = pytest.main(
        ["-q", "-p", "no:cacheprovider", "--rootdir", os.getcwd(), "test_solution.py"],
        plugins=[_Collector(report)],
    )
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu_s = sum(u.ru_utime + u.ru_stime for u in usage)
    report(event="done", exit_code=int(code), cpu_s=round(cpu_s, 4))
    return int(code)


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # skip the atexit handlers the code under test may have registered
