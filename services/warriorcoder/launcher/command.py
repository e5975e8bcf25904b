"""``warriorcoder up``: run an arena on this machine until N samples, with a live leaderboard.

Usage::

    warriorcoder up --demo --battles 6                  # tiny random-weight transformers
    warriorcoder up --config examples/cpu-small-models.yaml  # real models (local or remote Triton)
    warriorcoder up --scripted --battles 20             # scripted test models (fastest)

Starts nats-server, the model backends and the services as supervised processes on one
event loop (any child that exits, nats-server and Triton included, is restarted with back-off and
the event logged; one that keeps dying is reported as a crash loop, never the end of the run),
shows progress, backlogs, rejections and the leaderboard in the terminal and on a local web page,
and stops cleanly once the data directory holds N samples and the samples stream holds the same N
(or on Ctrl-C: in-flight work is drained or left in the streams). Run again on the same data
directory, it resumes; while one runs, another on the same directory is refused (exit code 2).

The verifier (execution-checked battles) runs wherever code can be sandboxed on this machine
(bubblewrap); where it cannot, one line says why and the arena runs unverified. A config that sets
``verifier.enabled: true`` there is refused before anything starts (exit code 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warriorcoder.launcher.arena import LocalArena, Mode
    from warriorcoder.launcher.status import Snapshot
    from warriorcoder.launcher.verifier import Choice
    from warriorcoder.runtime.settings import ArenaSettings

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("up", help="run an arena on this machine with a live leaderboard")
    backend = p.add_mutually_exclusive_group()
    backend.add_argument(
        "--config",
        metavar="FILE",
        help="arena config (models: a `triton_url`, or a `local: {path: ...}` section to serve "
        "with transformers)",
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
    from warriorcoder.launcher.status import count_samples
    from warriorcoder.runtime.settings import ConfigError, load_settings

    data_dir = Path(args.data_dir)
    settings = None
    if args.config:
        try:
            # Fail before starting anything, naming the key; the services apply the environment.
            settings = load_settings(args.config, {})
        except ConfigError as exc:
            print(f"warriorcoder: {exc}", file=sys.stderr)
            return 2
    already = count_samples(data_dir / "samples")
    if args.battles is not None and already >= args.battles:
        print(f"{data_dir / 'samples'} already holds {already} samples (>= {args.battles})")
        return 0
    mode: Mode = "config" if settings is not None else ("demo" if args.demo else "scripted")
    from warriorcoder.launcher.verifier import verifier_choice

    choice = verifier_choice(Path(args.config) if args.config else None, os.environ)
    try:
        return asyncio.run(_up(args, mode, settings, data_dir, choice))
    except KeyboardInterrupt:  # before the signal handlers are installed
        return 130


async def _up(
    args: argparse.Namespace,
    mode: Mode,
    settings: ArenaSettings | None,
    data_dir: Path,
    choice: Choice,
) -> int:
    from warriorcoder.launcher.arena import DataDirLocked, LocalArena, SupervisorError
    from warriorcoder.launcher.verifier import VerifierUnavailable

    arena = LocalArena(
        data_dir, mode=mode, settings=settings, battles=args.battles, verifier=choice
    )
    try:
        # Before anything starts: a config that asks for the verifier where it cannot run fails
        # here, and the line saying whether battles are execution-checked comes first.
        print((await arena.decide_verifier()).line, flush=True)
    except VerifierUnavailable as exc:
        print(f"warriorcoder up: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    main = asyncio.current_task()
    assert main is not None
    starting = True

    def on_signal() -> None:
        # Ctrl-C during start-up cancels it (its children are stopped); afterwards it ends the
        # run: the services drain and the summary is printed.
        if not stop.is_set() and starting:
            main.cancel()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    if arena.note:
        print(arena.note, flush=True)
    print(
        f"starting: nats-server, model backends and {len(arena.services)} services "
        f"({', '.join(reversed(arena.services))}; data: {arena.data_dir})",
        flush=True,
    )
    start = time.monotonic()
    try:
        async with arena:
            starting = False
            snapshot, code = await _run(args, arena, stop, start)
            print("stopping: draining the services", flush=True)
    except asyncio.CancelledError:
        if starting and stop.is_set():
            main.uncancel()
            print("interrupted during start-up: stopped", file=sys.stderr)
            return 130
        raise
    except DataDirLocked as exc:
        print(f"warriorcoder up: {exc}", file=sys.stderr)
        return 2
    except SupervisorError as exc:
        print(f"warriorcoder up: {exc}", file=sys.stderr)
        return 1
    except (RuntimeError, TimeoutError, OSError) as exc:
        what = "start-up failed: " if starting else ""
        print(f"warriorcoder up: {what}{exc}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    _summary(snapshot, time.monotonic() - start, interrupted=stop.is_set())
    return 130 if stop.is_set() and code == 0 else code


async def _run(
    args: argparse.Namespace, arena: LocalArena, stop: asyncio.Event, start: float
) -> tuple[Snapshot, int]:
    """Show the running arena until N samples, the timeout or Ctrl-C; the final snapshot and the
    exit code."""
    from warriorcoder.launcher.display import Display
    from warriorcoder.launcher.status import Snapshot
    from warriorcoder.launcher.web import families_of, serve_leaderboard

    snapshot = Snapshot(target=args.battles, demo_note=arena.note)
    code = 0
    async with serve_leaderboard(
        "127.0.0.1",
        args.port,
        lambda: snapshot,
        nats_url=arena.state.cfg.url,
        families=families_of(arena.run_settings),  # the judges' family bias on the page
    ) as port:
        print(
            f"arena running after {time.monotonic() - start:.1f}s; leaderboard: "
            f"http://127.0.0.1:{port}/  (Ctrl-C stops)",
            flush=True,
        )
        with Display(enabled=sys.stdout.isatty() and not args.plain) as display:
            while not stop.is_set():
                snapshot = await _snapshot(args, arena, snapshot)
                display.update(snapshot)
                if args.battles is not None and snapshot.samples >= args.battles:
                    code = await _settle(arena)
                    break
                if args.timeout and time.monotonic() - start > args.timeout:
                    print(f"warriorcoder up: timed out after {args.timeout:g}s", file=sys.stderr)
                    code = 1
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)  # cancels its waiter on time-out
            snapshot = await _snapshot(args, arena, snapshot, final=True)
    return snapshot, code


async def _settle(arena: LocalArena) -> int:
    """Before reporting done: wait until the samples stream holds what the disk holds and
    nothing is in flight; 0 once they agree, else 1 (said loudly)."""
    from warriorcoder.launcher.policy import settled

    disk, streamed, pending = await arena.settle(timeout_s=0)
    if settled(disk, streamed, pending):
        return 0
    print(
        f"settling: {disk} samples on disk, {streamed} in the samples stream, {pending} in "
        f"flight; waiting up to {arena.settle_s():g}s",
        flush=True,
    )
    disk, streamed, pending = await arena.settle()
    if settled(disk, streamed, pending):
        return 0
    print(
        f"warriorcoder up: NOT SETTLED: {disk} samples on disk but {streamed} in the samples "
        f"stream and {pending} battles in flight after {arena.settle_s():g}s",
        file=sys.stderr,
    )
    return 1


async def _snapshot(
    args: argparse.Namespace, arena: LocalArena, previous: Snapshot, *, final: bool = False
) -> Snapshot:
    from warriorcoder.launcher.status import NATS_DOWN

    try:
        snapshot = await arena.state.snapshot(final=final)
    except NATS_DOWN:  # the supervisor restarts it: show the last known state meanwhile
        snapshot = dataclasses.replace(previous, samples=await arena.samples())
    snapshot.target, snapshot.demo_note = args.battles, arena.note
    snapshot.events = list(arena.events)
    snapshot.restarts, snapshot.crash_looping = arena.restarts(), arena.crash_looping()
    return snapshot


def _summary(s: Any, seconds: float, *, interrupted: bool) -> None:
    from warriorcoder.data.live import leaderboard_table

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
        print(leaderboard_table(s.leaderboard, s.pass_rates))
    if s.demo_note:
        print(s.demo_note)
