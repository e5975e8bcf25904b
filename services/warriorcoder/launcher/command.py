"""``warriorcoder up``: run an arena on this machine until N samples, with a live leaderboard.

Usage::

    warriorcoder up --demo --battles 6                  # tiny random-weight transformers
    warriorcoder up --config examples/cpu-arena.yaml    # real models (local or remote Triton)
    warriorcoder up --scripted --battles 20             # scripted test models (fastest)

Starts nats-server, the model backends and the four services as supervised processes (a crashed
service is restarted and the event logged), shows progress, backlogs, rejections and the
leaderboard in the terminal and on a local web page, and stops cleanly once the data directory
holds N samples or on Ctrl-C (in-flight work is drained or left in the streams). Run again on the
same data directory, it resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("up", help="run an arena on this machine with a live leaderboard")
    backend = p.add_mutually_exclusive_group()
    backend.add_argument(
        "--config",
        metavar="FILE",
        help="arena config (models: Triton URLs or "
        "`triton_url: local` with a `local.path` to serve with transformers)",
    )
    backend.add_argument(
        "--demo", action="store_true", help="fully offline: tiny random-weight transformer models"
    )
    backend.add_argument(
        "--scripted",
        action="store_true",
        help="scripted test models (no LLM; the fastest way to see the pipeline)",
    )
    p.add_argument("--data-dir", default="arena-data", help="store, logs and samples (resumable)")
    p.add_argument(
        "--battles",
        type=int,
        default=None,
        help="stop once the data directory holds this many samples (default: run on)",
    )
    p.add_argument("--port", type=int, default=8787, help="leaderboard page (0: any free port)")
    p.add_argument("--timeout", type=float, default=0, help="give up after this many seconds")
    p.add_argument("--plain", action="store_true", help="plain progress lines, no live display")
    p.set_defaults(func=cmd_up)


def cmd_up(args: argparse.Namespace) -> int:
    from warriorcoder.launcher.arena import count_samples
    from warriorcoder.runtime.settings import ConfigError, parse_settings

    data_dir = Path(args.data_dir)
    tree = None
    if args.config:
        try:
            tree = yaml.safe_load(Path(args.config).read_text())
            parse_settings(tree)  # fail before starting anything, naming the key
        except (OSError, yaml.YAMLError, ConfigError) as exc:
            print(f"warriorcoder: {exc}", file=sys.stderr)
            return 2
    already = count_samples(data_dir / "samples")
    if args.battles is not None and already >= args.battles:
        print(f"{data_dir / 'samples'} already holds {already} samples (>= {args.battles})")
        return 0
    mode = "config" if tree is not None else ("demo" if args.demo else "scripted")
    try:
        return asyncio.run(_up(args, mode, tree, data_dir))
    except KeyboardInterrupt:
        return 130


async def _up(args: argparse.Namespace, mode: str, tree: Any, data_dir: Path) -> int:
    from warriorcoder.launcher.arena import LocalArena
    from warriorcoder.launcher.display import Display
    from warriorcoder.launcher.status import Snapshot, StatusReader
    from warriorcoder.launcher.web import serve_leaderboard

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    arena = LocalArena(data_dir, mode=mode, config_tree=tree, battles=args.battles)  # type: ignore[arg-type]
    if arena.note:
        print(arena.note, flush=True)
    print(
        f"starting: nats-server, model backends and 4 services (data: {arena.data_dir})", flush=True
    )
    start = time.monotonic()
    starting = asyncio.ensure_future(asyncio.to_thread(arena.__enter__))
    await asyncio.wait(
        {starting, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED
    )
    if not starting.done():  # Ctrl-C during start-up: let it finish, then stop everything
        with contextlib.suppress(Exception):
            await starting
        await asyncio.to_thread(arena.__exit__, None, None, None)
        print("interrupted during start-up: stopped", file=sys.stderr)
        return 130
    try:
        starting.result()
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"warriorcoder up: start-up failed: {exc}", file=sys.stderr)
        return 1
    snapshot = Snapshot(target=args.battles, demo_note=arena.note)
    code = 0
    try:
        async with (
            StatusReader(arena.nats_url, arena.samples_dir) as reader,
            serve_leaderboard("127.0.0.1", args.port, lambda: snapshot) as port,
        ):
            print(
                f"arena running after {time.monotonic() - start:.1f}s; leaderboard: "
                f"http://127.0.0.1:{port}/  (Ctrl-C stops)",
                flush=True,
            )
            with Display(enabled=sys.stdout.isatty() and not args.plain) as display:
                while not stop.is_set():
                    try:
                        await asyncio.to_thread(arena.supervise)
                    except RuntimeError as exc:
                        print(f"warriorcoder up: {exc}", file=sys.stderr)
                        code = 1
                        break
                    snapshot = await reader.snapshot()
                    snapshot.target, snapshot.demo_note = args.battles, arena.note
                    snapshot.events = list(arena.events)
                    display.update(snapshot)
                    if args.battles is not None and snapshot.samples >= args.battles:
                        break
                    if args.timeout and time.monotonic() - start > args.timeout:
                        print(
                            f"warriorcoder up: timed out after {args.timeout:g}s", file=sys.stderr
                        )
                        code = 1
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.5)
                snapshot = await reader.snapshot(final=True)
                snapshot.target, snapshot.demo_note = args.battles, arena.note
    finally:
        print("stopping: draining the services", flush=True)
        await asyncio.to_thread(arena.__exit__, None, None, None)
    _summary(snapshot, time.monotonic() - start, interrupted=stop.is_set())
    return 130 if stop.is_set() and code == 0 else code


def _summary(s: Any, seconds: float, *, interrupted: bool) -> None:
    from warriorcoder.data.bradley_terry import format_table

    how = "interrupted" if interrupted else "done"
    print(
        f"{how}: {s.samples} samples after {seconds:.1f}s; {s.battles_rated} battles rated; "
        f"{s.dead_letters} dead letters"
    )
    if s.rejections:
        print(
            "rejected challenges: " + ", ".join(f"{k} {v}" for k, v in sorted(s.rejections.items()))
        )
    if s.leaderboard:
        print(format_table(s.leaderboard))
    if s.demo_note:
        print(s.demo_note)
