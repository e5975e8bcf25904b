"""Pipeline throughput: battles per second through the four services on one machine.

Usage::

    python benchmarks/pipeline.py --battles 60 [--mode scripted|demo]

Runs ``LocalArena`` (nats-server, a local Triton, the four services as processes) and times the
samples from the moment everything is up until the data directory holds N. With scripted models
the backend costs next to nothing, so this measures the services and the bus; with ``demo`` it
includes real (tiny) transformer generation on the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from warriorcoder.launcher.arena import LocalArena, Mode


async def run(mode: Mode, battles: int, data_dir: Path) -> None:
    started = time.monotonic()
    async with LocalArena(data_dir, mode=mode, battles=battles) as arena:
        ready = time.monotonic()
        async with asyncio.timeout(1800):
            await arena.wait_for_samples(battles, poll_s=0.1)
        done = time.monotonic()
    took = done - ready
    print(
        f"mode={mode} battles={battles} start-up={ready - started:.1f}s "
        f"run={took:.1f}s throughput={battles / took:.2f} samples/s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--battles", type=int, default=60)
    ap.add_argument("--mode", choices=("scripted", "demo"), default="scripted")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args.mode, args.battles, Path(tmp)))


if __name__ == "__main__":
    main()
