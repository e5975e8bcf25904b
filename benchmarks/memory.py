"""Flat memory: RSS of every service over a long run with backends that answer at once.

Usage::

    python benchmarks/memory.py --battles 2000 [--warmup 300] [--every 100]

Runs ``LocalArena`` with scripted models (near-instant, on the local PyTriton Triton; verifier
off) for ``--battles`` samples and reads each service's resident set size (``VmRSS`` of
``/proc/<pid>/status``) every ``--every`` samples. The slope is a least-squares line through the
points after ``--warmup`` samples (imports, caches and pools filled), in bytes per 1,000 battles:
flat memory means a slope near zero, and the starting RSS says what the level is.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from warriorcoder.launcher.arena import LocalArena

SERVICES = ("challenger", "responder", "verifier", "judge", "aggregator")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


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
        after = [(b, r) for b, r in pts if b >= args.warmup]
        s = slope([b for b, _ in after], [r for _, r in after]) * 1000
        first, last = after[0][1] if after else 0, pts[-1][1]
        print(
            f"rss {name}: {first / 2**20:.1f} -> {last / 2**20:.1f} MiB, "
            f"slope {s / 1024:+.1f} KiB per 1k battles"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--battles", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--every", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
