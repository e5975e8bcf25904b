"""Verifier throughput and latency: sandboxed test runs per second per core, and the latency a
battle gains from the verifier (both answers run at once), with real bubblewrap.

Usage::

    python benchmarks/verifier.py                  # 20 runs at each concurrency, 10 battles
    python benchmarks/verifier.py --runs 60 --battles 30 --concurrency 1 2 4

Every run is a fresh sandbox (``warriorcoder.sandbox.Sandbox.run_pytest``) of a small correct
solution against 4 pytest tests, the default ``SandboxSettings`` (as the verifier uses them).

* throughput: ``--runs`` runs kept ``c`` in flight at once through one ``Sandbox(concurrency=c)``,
  runs per second of wall time, divided by the cores this process may use (``sched_getaffinity``),
  and the mean CPU time of a run as the runner reports it (interpreter start, pytest, the tests;
  bubblewrap's own set-up is not in it): ``1 / CPU per run`` is the per-core ceiling on an idle
  machine;
* battle latency: ``--battles`` battles one after another, each the two answers' runs in
  parallel (``concurrency=2``), as the verifier stage does; the median and 90th percentile of a
  battle's wall time is what the verifier adds to a battle (no model is called).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

from warriorcoder.runtime.settings import SandboxSettings
from warriorcoder.sandbox import Sandbox, SandboxUnavailable

SOLUTION = '''\
def fizzbuzz(n):
    """The FizzBuzz words for 1..n."""
    out = []
    for i in range(1, n + 1):
        word = ("Fizz" if i % 3 == 0 else "") + ("Buzz" if i % 5 == 0 else "")
        out.append(word or str(i))
    return out
'''

TESTS = """\
from solution import fizzbuzz


def test_first_five():
    assert fizzbuzz(5) == ["1", "2", "Fizz", "4", "Buzz"]


def test_fifteen():
    assert fizzbuzz(15)[-1] == "FizzBuzz"


def test_empty():
    assert fizzbuzz(0) == []


def test_length():
    assert len(fizzbuzz(100)) == 100
"""


async def _throughput(
    settings: SandboxSettings, runs: int, concurrency: int
) -> tuple[float, float]:
    sandbox = Sandbox(settings, concurrency=concurrency)
    try:
        started = time.perf_counter()
        results = await asyncio.gather(*(sandbox.run_pytest(SOLUTION, TESTS) for _ in range(runs)))
        wall = time.perf_counter() - started
    finally:
        await sandbox.close()
    bad = [r for r in results if (r.status, r.passed) != ("ran", 4)]
    if bad:
        raise SystemExit(f"a run did not pass: {bad[0]}")
    return runs / wall, statistics.mean(r.cpu_s for r in results)


async def _battles(settings: SandboxSettings, battles: int) -> list[float]:
    sandbox = Sandbox(settings, concurrency=2)
    took = []
    try:
        for _ in range(battles):
            started = time.perf_counter()
            await asyncio.gather(
                sandbox.run_pytest(SOLUTION, TESTS), sandbox.run_pytest(SOLUTION, TESTS)
            )
            took.append(time.perf_counter() - started)
    finally:
        await sandbox.close()
    return took


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--battles", type=int, default=10)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    settings = SandboxSettings()
    cores = len(os.sched_getaffinity(0))
    try:
        description = Sandbox(settings).description
    except SandboxUnavailable as exc:
        raise SystemExit(f"sandbox unavailable: {exc}") from exc
    print(f"{description}, {cores} cores, uid {os.geteuid()}, python {sys.version.split()[0]}")
    print("| concurrency | runs | runs/s | runs/s per core | mean run | CPU per run |")
    print("|---|---|---|---|---|---|")
    for c in args.concurrency:
        rate, cpu = await _throughput(settings, args.runs, c)
        print(
            f"| {c} | {args.runs} | {rate:.2f} | {rate / cores:.2f} | {c / rate:.2f} s "
            f"| {cpu:.2f} s |"
        )
    took = await _battles(settings, args.battles)
    p90 = statistics.quantiles(took, n=10, method="inclusive")[-1] if len(took) > 1 else took[0]
    print(
        f"battle latency (2 runs in parallel, {args.battles} battles): "
        f"median {statistics.median(took):.2f} s, p90 {p90:.2f} s, max {max(took):.2f} s"
    )


if __name__ == "__main__":
    asyncio.run(main())
