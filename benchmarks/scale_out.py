"""Scale-out: battles per second of two replicas of every service against one, latency-bound.

Usage::

    python benchmarks/scale_out.py --battles 40 [--base-step-s 0.1] [--profile defaults|production]
        [--set KEY=VALUE ...]

The backend is the continuous-batching test backend (``warriorcoder.testing.continuous_batching``)
made latency-bound: a capacity far above what is ever in flight and no per-sequence step cost, so
every request takes its tokens x ``base_step_s`` however many run at once. Throughput is then
bound by the requests each replica keeps in flight (``service.max_in_flight``, the challenger's
mining concurrency, each model's concurrency limit), and a second replica of every service should
double it. Steady state counts: battles per second from the N/4-th sample on disk to the N-th
(the pipeline filled, every replica up). Runs the five-model arena with the code's default
settings (``--profile production``: the arena section of charts/warriorcoder/values-production.yaml,
whose depths make one replica CPU-bound on a small machine rather than latency-bound) plus
``--set`` overrides on one replica, then on ``--replicas`` of every service, and prints battles/s
of both and the ratio; the target is >= 1.8.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

# run as a script: its own directory is on sys.path
from _arena import Backend, arena_settings, production_overrides, serve_backend, streaming
from saturation import overrides


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--battles", type=int, default=40)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--base-step-s", type=float, default=0.1)
    ap.add_argument("--profile", choices=("defaults", "production"), default="defaults")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    backend = Backend(capacity=4096, base_step_s=args.base_step_s, per_seq_step_s=0.0)
    changes = production_overrides() if args.profile == "production" else {}
    changes.update(overrides(args.set))
    print(f"backend: 5 models x {backend} (latency-bound)")
    print(f"settings: {args.profile} {changes}")
    runs = {}
    for replicas in (1, args.replicas):
        with (
            tempfile.TemporaryDirectory() as tmp_dir,
            serve_backend(backend, Path(tmp_dir)) as (
                url,
                record,
            ),
        ):
            settings = arena_settings(url, changes)
            run, _ = asyncio.run(
                streaming(
                    settings, args.battles, Path(tmp_dir) / "arena", record, replicas=replicas
                )
            )
        runs[replicas] = run
        print(run.line(f"{replicas} replica(s) of every service"))
    one, many = runs[1], runs[args.replicas]
    assert one.steady_battles_per_s and many.steady_battles_per_s
    print(
        f"ratio {args.replicas}/1: steady battles/s "
        f"{many.steady_battles_per_s / one.steady_battles_per_s:.2f} (target >= 1.8); whole "
        f"window: battles/s {many.battles_per_s / one.battles_per_s:.2f}, "
        f"tokens/s {many.tokens_per_s / one.tokens_per_s:.2f}"
    )


if __name__ == "__main__":
    main()
