"""tracemalloc in a service process the memory benchmark starts (``memory.py --tracemalloc``).

Usage::

    PYTHONPATH=benchmarks/_tracemem WARRIORCODER_BENCH_TRACEMALLOC=/tmp/snaps \\
        warriorcoder serve judge --config arena.yaml    # then: kill -USR2 <pid>

Python imports ``sitecustomize`` at start-up when it is on the path; this one does something only
when ``WARRIORCODER_BENCH_TRACEMALLOC`` names a directory: it starts tracemalloc (frames per
trace: ``WARRIORCODER_BENCH_TRACEMALLOC_FRAMES``, default 1) and, on each SIGUSR2, writes a
snapshot there as ``snap-<k>.pickle`` (k = 0, 1, ...; written to a temporary name first, so a
file that exists is whole). Benchmark harness only: nothing of the project imports it.
"""

from __future__ import annotations

import os
import signal
import tracemalloc
from pathlib import Path
from types import FrameType

__all__: list[str] = []

_DIR = os.environ.get("WARRIORCODER_BENCH_TRACEMALLOC")


def _dump(signum: int, frame: FrameType | None) -> None:
    assert _DIR is not None
    out = Path(_DIR)
    k = len(list(out.glob("snap-*.pickle")))
    tmp = out / f".snap-{k}.tmp"
    tracemalloc.take_snapshot().dump(str(tmp))
    tmp.rename(out / f"snap-{k}.pickle")


if _DIR:
    Path(_DIR).mkdir(parents=True, exist_ok=True)
    tracemalloc.start(int(os.environ.get("WARRIORCODER_BENCH_TRACEMALLOC_FRAMES", "1")))
    signal.signal(signal.SIGUSR2, _dump)
