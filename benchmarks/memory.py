"""Flat memory: RSS of every service over a long run with backends that answer at once.

Usage::

    python benchmarks/memory.py --battles 2000 [--warmup 300] [--every 100]
    python benchmarks/memory.py --service judge --battles 100000 [--warmup 5000] [--every 1000]
    python benchmarks/memory.py --service challenger --battles 100000 --max-seconds 1200
    python benchmarks/memory.py --service judge --battles 20000 --tracemalloc

The whole arena: runs ``LocalArena`` with scripted models (near-instant, on the local PyTriton
Triton; verifier off) for ``--battles`` samples and reads each service's resident set size
(``VmRSS`` of ``/proc/<pid>/status``) every ``--every`` samples. The slope is a least-squares
line through the points after ``--warmup`` samples (imports, caches and pools filled), in bytes
per 1,000 battles: flat memory means a slope near zero, and the starting RSS says what the level
is.

``--service NAME`` (challenger, responder, judge or aggregator): that one service alone, as its
real process, fed straight on its input stream at its own pace (``benchmarks/_drive.py``: valid
challenges, battles or judgements published in chunks as the backlog drains; the challenger
mines a budget of ``--battles``), so a long run takes minutes, not hours; the same samples and
the same slope, per message the service handled; ``--max-seconds`` ends it early (the line says
how many were done). ``--tracemalloc`` (with ``--service``) runs it under tracemalloc,
snapshots at ``--warmup`` and at the end, and prints the lines of code whose kept allocations
grew most in between (tracemalloc makes the service several times slower, and its own RSS grows
with what it traces: read the lines, not the slope).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from _drive import FLOW, Rig, rss_bytes

from warriorcoder.launcher.arena import LocalArena

SERVICES = ("challenger", "responder", "verifier", "judge", "aggregator")


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


async def run(args: argparse.Namespace, data_dir: Path) -> None:
    points: dict[str, list[tuple[int, int]]] = {}
    async with LocalArena(data_dir, mode="scripted", battles=args.battles, verifier="off") as arena:
        pids = {name: arena.procs[name].pid for name in SERVICES if name in arena.procs}
        target = 0
        while target < args.battles:
            target = min(target + args.every, args.battles)
            async with asyncio.timeout(3600):
                done = await arena.wait_for_samples(target, poll_s=0.2)
            restarted = {n for n in pids if arena.procs[n].pid != pids[n]}
            if restarted:
                raise RuntimeError(f"services restarted during the run: {sorted(restarted)}")
            for name, pid in pids.items():
                points.setdefault(name, []).append((done, rss_bytes(pid)))
            print(" ".join(f"{n}={rss_bytes(p) / 2**20:.1f}MiB" for n, p in pids.items()), done)
    for name, pts in points.items():
        print(summary(name, pts, args.warmup))


def summary(name: str, pts: list[tuple[int, int]], warmup: int) -> str:
    """One service's line: RSS at the warm-up mark and at the end, the slope fitted from the
    warm-up mark, and the slope of the last half alone (a level that still rises there is
    growing; one that rose early and then stopped is a cache filling)."""
    after = [(b, r) for b, r in pts if b >= warmup]
    late = [(b, r) for b, r in pts if b >= pts[-1][0] / 2]
    s, s2 = (slope([b for b, _ in p], [r for _, r in p]) * 1000 for p in (after, late))
    first, last = after[0][1] if after else 0, pts[-1][1]
    return (
        f"rss {name}: {first / 2**20:.1f} -> {last / 2**20:.1f} MiB over {pts[-1][0]} battles "
        f"(slope from {warmup}), slope {s / 1024:+.1f} KiB per 1k battles, "
        f"last half {s2 / 1024:+.1f} KiB per 1k"
    )


def run_service(args: argparse.Namespace, tmp: Path) -> None:
    started = time.monotonic()
    with Rig(args.service, tmp, trace_at=args.warmup if args.tracemalloc else None) as rig:
        ready = time.monotonic()
        drive = rig.drive(args.battles, every=args.every, log=True, max_s=args.max_seconds)
        points = asyncio.run(drive)
        took = time.monotonic() - ready
        for line in rig.growth():
            print(line)
    done = points[-1][0]
    print(
        f"{args.service}: {done} of {args.battles} in {took:.0f}s ({done / took:.1f}/s; "
        f"start-up {ready - started:.0f}s)"
    )
    print(summary(args.service, points, args.warmup))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--battles", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--service", choices=sorted(FLOW), help="one service alone, fed directly")
    ap.add_argument(
        "--max-seconds", type=float, help="with --service: stop there, fewer battles done"
    )
    ap.add_argument("--tracemalloc", action="store_true", help="with --service: what grew")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.tracemalloc and not args.service:
            ap.error("--tracemalloc needs --service")
        if args.service:
            run_service(args, Path(tmp))
        else:
            asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
