"""The long chaos run: every fault of the CI suite (``tests/chaos``), at full size.

Usage::

    python benchmarks/chaos/run.py --battles 1000 --poison 10000 --outage-s 60 --seed 1
    python benchmarks/chaos/run.py --battles 200 --only storm poison --json figures.json

Scenarios (``tests/chaos/scenarios.py``), each on a fresh arena of scripted models on a real
Triton (PyTriton) and real nats-servers, each checked afterwards: exactly N samples on disk and in
the samples stream, no duplicate, the ratings equal to a replay of the samples' votes, every dead
letter explained.

- ``storm``: kill -9 of a random service, one per 16 battles, spread over ``--battles`` battles
  (up to 8 kills of one service a minute: past the supervisor's crash-loop threshold);
- ``nats``: the arena's nats-server killed (SIGKILL, SIGTERM alternately) 4 times;
- ``cluster``: the JetStream meta leader of a 3-node cluster killed 3 times, each restarted 10 s
  later;
- ``triton``: Triton stopped for ``--outage-s`` seconds, twice;
- ``poison``: ``--poison`` messages on every subject from mid-run on;
- ``sigterm``: ``warriorcoder up``, 900 KB poison, SIGTERM, ``up`` again;
- ``up``: a second ``up`` refused, kill -9 of ``up``, ``up`` again.

Prints one line per scenario (and every broken invariant); exits 1 if any broke.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the scenarios live in the test tree: tests/chaos

from tests.chaos import scenarios  # noqa: E402
from tests.chaos.scenarios import MODELS, Figures  # noqa: E402
from warriorcoder.launcher.processes import start_scripted_triton  # noqa: E402
from warriorcoder.testing.scripted import SCRIPTED_MODELS  # noqa: E402

NAMES = ("storm", "nats", "cluster", "triton", "poison", "sigterm", "up")


def plan(args: argparse.Namespace, grpc: str) -> dict[str, Callable[[Path], Figures]]:
    n, seed, t = args.battles, args.seed, args.timeout
    return {
        "storm": lambda d: scenarios.kill_storm(d, triton_grpc=grpc, battles=n, seed=seed,
                                                kills=max(n // 16, 4), per_minute=8,
                                                timeout=t),
        "nats": lambda d: scenarios.nats_restart(d, triton_grpc=grpc, battles=n, restarts=4,
                                                 timeout=t),
        "cluster": lambda d: scenarios.cluster_node(d, triton_grpc=grpc, battles=n, kills=3,
                                                    down_s=10, timeout=t),
        "triton": lambda d: scenarios.triton_outage(d, battles=n, down_s=args.outage_s,
                                                    outages=2, timeout=t),
        "poison": lambda d: scenarios.poison(d, triton_grpc=grpc, battles=n,
                                             messages=args.poison, seed=seed, timeout=t),
        "sigterm": lambda d: scenarios.sigterm_resume(d, battles=n, oversized=2, timeout=t),
        "up": lambda d: scenarios.kill_up(d, battles=n, timeout=t),
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--battles", type=int, default=1000, help="samples per scenario")
    ap.add_argument("--poison", type=int, default=10_000, help="poison messages (poison)")
    ap.add_argument("--outage-s", type=float, default=60.0, help="each Triton outage (triton)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3600, help="per scenario, seconds")
    ap.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES))
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--keep", type=Path, help="keep the arenas' data and logs in this directory")
    args = ap.parse_args()

    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        base = args.keep or Path(tmp)
        triton = start_scripted_triton(SCRIPTED_MODELS, MODELS, log_path=base / "triton.log")
        try:
            grpc = f"127.0.0.1:{triton.ports['grpc']}"
            for name, run in plan(args, grpc).items():
                if name not in args.only:
                    continue
                began = time.monotonic()
                (base / name).mkdir(parents=True, exist_ok=True)
                try:
                    figures = run(base / name)
                except Exception as exc:  # the scenario could not finish: a failure, reported
                    figures = Figures(name, args.battles, seconds=time.monotonic() - began)
                    figures.extra_problems.append(f"{type(exc).__name__}: {exc}")
                results.append(figures)
                print(figures.report(), flush=True)
        finally:
            triton.stop()
        if args.json:
            scenarios.dump(results, args.json)
    failed = [f.scenario for f in results if f.problems]
    print(f"{len(results) - len(failed)}/{len(results)} scenarios held" +
          (f"; broken: {', '.join(failed)}" if failed else ""))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
