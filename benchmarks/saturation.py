"""Saturation: the streaming arena against offline phase-by-phase batches on a GPU-like backend.

Usage::

    python benchmarks/saturation.py --battles 60 [--profile production|defaults]
        [--set challenger.concurrency=16 ...]
        [--capacity 16 --base-step-s 0.03 --per-seq-step-s 0.006 --lengths text]

The same work, N battles of a five-model arena (mining, quality scores, two answers, both-order
votes of three judges), done twice on the continuous-batching test backend
(``warriorcoder.testing.continuous_batching``: one engine per model, ``capacity`` sequences a
batch): (b) by the streaming arena, nats-server and the services as processes (one replica each),
with the shipped production settings (the ``arena`` section of
charts/warriorcoder/values-production.yaml; ``--profile defaults``: the code's defaults) plus
``--set`` overrides, until N samples are on disk; then (a) offline, the way the
paper's scripts work: the very requests (b) made, recorded by the backend, sent straight to Triton
phase after phase, each phase all at once. Prints model-side tokens/s and battles/s of both and
the ratio (b)/(a); the target is >= 0.95.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

# run as a script: its own directory is on sys.path
from _arena import (
    Backend,
    arena_settings,
    production_overrides,
    read_records,
    replay,
    serve_backend,
    streaming,
)


def overrides(pairs: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE (a dotted settings key)")
        out[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--battles", type=int, default=60)
    ap.add_argument(
        "--profile",
        choices=("production", "defaults"),
        default="production",
        help="the arena section of charts/warriorcoder/values-production.yaml, or the code's "
        "defaults",
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--capacity", type=int, default=Backend.capacity)
    ap.add_argument("--base-step-s", type=float, default=Backend.base_step_s)
    ap.add_argument("--per-seq-step-s", type=float, default=Backend.per_seq_step_s)
    ap.add_argument("--lengths", default=Backend.lengths)
    args = ap.parse_args()
    backend = Backend(args.capacity, args.base_step_s, args.per_seq_step_s, args.lengths)
    changes = production_overrides() if args.profile == "production" else {}
    changes.update(overrides(args.set))
    print(f"backend: 5 models x {backend}, peak {backend.peak_tokens_per_s():.0f} tokens/s")
    print(f"settings: {args.profile} {changes}")
    with (
        tempfile.TemporaryDirectory() as tmp_dir,
        serve_backend(backend, Path(tmp_dir)) as (
            url,
            record,
        ),
    ):
        settings = arena_settings(url, changes)
        streamed, ended = asyncio.run(
            streaming(settings, args.battles, Path(tmp_dir) / "arena", record)
        )
        work = [r for r in read_records(record) if r["end"] <= ended]
        offline = asyncio.run(replay(url, work, args.battles))
    print(offline.line("(a) offline  "))
    print(streamed.line("(b) streaming"))
    print(
        f"ratio (b)/(a): tokens/s {streamed.tokens_per_s / offline.tokens_per_s:.3f}, "
        f"battles/s {streamed.battles_per_s / offline.battles_per_s:.3f} (target >= 0.95)"
    )


if __name__ == "__main__":
    main()
