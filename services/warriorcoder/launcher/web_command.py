"""``warriorcoder web``: the arena's page for a deployed arena, read-only over NATS.

Usage::

    warriorcoder web --nats nats://nats:4222 --port 8787
    warriorcoder web --nats nats://nats:4222 --config arena.yaml   # with the judges' family bias

Reads what ``warriorcoder up``'s page shows, all from NATS: backlogs, dead letters, ratings and
rejection counts from the streams and KV buckets (``StatusReader``'s pieces), and the battles from
the samples stream (``BattleIndex``). With no data directory at hand, the Bradley-Terry
leaderboard is fitted over the battle window (the newest ``--window`` samples); the Elo column is
the arena's live rating over every battle. The judges' family bias needs every model's family,
which only the arena config holds: ``--config`` reads it (with the environment's overrides, as the
services do); without it the page says that families are unknown. Writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from warriorcoder.data.bradley_terry import Row, leaderboard
from warriorcoder.data.pass_rates import PassRate, pass_rates
from warriorcoder.data.votes import votes_from_samples
from warriorcoder.launcher.battle_index import BattleIndex
from warriorcoder.launcher.status import NATS_DOWN, Snapshot, StatusReader
from warriorcoder.launcher.web import build_app, families_of
from warriorcoder.proto.messages import Sample
from warriorcoder.runtime.http import serve_app
from warriorcoder.runtime.settings import ConfigError, load_settings

__all__ = ["cmd_web", "deployed_snapshot", "fit_board", "register"]


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("web", help="serve the arena's web page for a deployed arena (read-only)")
    p.add_argument("--nats", required=True, metavar="URL", help="the arena's NATS server(s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8787, help="port (0: any free port)")
    p.add_argument(
        "--window", type=int, default=1000, help="newest samples kept in memory (charts, search)"
    )
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates of the CIs")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="the arena config, for the models' families (the judges' family bias)",
    )
    p.set_defaults(func=cmd_web)


def cmd_web(args: argparse.Namespace) -> int:
    if args.window < 1:
        print(f"warriorcoder web: --window must be at least 1, not {args.window}", file=sys.stderr)
        return 2
    families = None
    if args.config:
        try:
            families = families_of(load_settings(args.config, os.environ))
        except ConfigError as exc:
            print(f"warriorcoder web: {exc}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(_serve(args, families))
    except NATS_DOWN as exc:  # NATS unreachable at start, or the port taken
        print(f"warriorcoder web: {exc}", file=sys.stderr)
        return 1


async def deployed_snapshot(reader: StatusReader) -> Snapshot:
    """The arena now, from NATS alone (no leaderboard: see ``fit_board``)."""
    snap = Snapshot(samples=await reader.streamed())
    snap.streamed = snap.samples
    snap.backlog = await reader.backlog()
    snap.dead_letters = await reader.dead_letters()
    snap.elo, snap.battles_rated = await reader.ratings()
    snap.rejections = await reader.rejections()
    snap.budget = await reader.budget()
    return snap


def fit_board(
    samples: list[Sample], *, bootstrap: int = 200
) -> tuple[list[Row], dict[str, PassRate]]:
    """Bradley-Terry with bootstrap intervals and the pass rates over ``samples`` (CPU-heavy:
    call it in a thread)."""
    return leaderboard(votes_from_samples(samples), bootstrap_n=bootstrap), pass_rates(samples)


async def _serve(args: argparse.Namespace, families: dict[str, str | None] | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    snapshot = Snapshot()
    # The reader's samples_dir is never read here: counts come from the stream.
    async with (
        StatusReader(args.nats, Path("/nonexistent")) as reader,
        BattleIndex(args.nats, window=args.window) as index,
        serve_app(
            build_app(lambda: snapshot, index, families=families), args.host, args.port
        ) as port,
    ):
        print(f"arena page: http://{args.host}:{port}/  (Ctrl-C stops)", flush=True)
        fitted, board, rates = -1, snapshot.leaderboard, snapshot.pass_rates
        while not stop.is_set():
            started = time.monotonic()
            await index.refresh()
            if index.version != fitted:  # refit only when the window changed
                samples = [s for _, s in index.recent()]
                board, rates = await asyncio.to_thread(fit_board, samples, bootstrap=args.bootstrap)
                fitted = index.version
            try:
                fresh = await deployed_snapshot(reader)
                fresh.leaderboard, fresh.pass_rates = board, rates
                snapshot = fresh
            except NATS_DOWN as exc:  # keep showing the last state; the reader reconnects
                print(f"warriorcoder web: NATS unreachable: {exc!r}", file=sys.stderr)
            # a slow fit must not starve the page: wait at least as long as the round took
            wait = max(1.0, time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
    return 0
