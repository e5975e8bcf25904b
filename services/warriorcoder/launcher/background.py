"""A ``LocalArena`` on its own event loop in a thread, for synchronous callers (tests, scripts).

Usage::

    with BackgroundArena(data_dir, battles=10) as arena:
        arena.kill("judge")                      # the supervisor restarts it
        arena.wait_for_samples(10, timeout=180)

Entering starts the arena (and raises its start-up error); leaving stops it and raises the
supervisor's error, if it stopped on one. The caller's thread keeps no event loop busy, so it may
run ``asyncio.run(...)`` of its own meanwhile.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from warriorcoder.launcher.arena import LocalArena
from warriorcoder.launcher.children import Child
from warriorcoder.launcher.status import count_samples

__all__ = ["BackgroundArena"]


class BackgroundArena:
    """Runs ``LocalArena(data_dir, **options)`` in a thread until the context is left."""

    def __init__(self, data_dir: Path, **options: Any) -> None:
        self.arena = LocalArena(data_dir, **options)
        self._thread = threading.Thread(target=self._run, name="local-arena", daemon=True)
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> BackgroundArena:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        if self._error is not None and exc is None:
            raise self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to the caller's thread
            self._error = exc
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with self.arena:
            self._started.set()
            await self._stop.wait()

    def _check(self) -> None:
        if not self._thread.is_alive():
            raise self._error or RuntimeError("the arena stopped")

    # -- the running arena ----------------------------------------------------------------------

    @property
    def procs(self) -> dict[str, Child]:
        return self.arena.procs

    @property
    def events(self) -> list[str]:
        return self.arena.events

    @property
    def samples_dir(self) -> Path:
        return self.arena.samples_dir

    @property
    def nats_url(self) -> str:
        return self.arena.nats_url

    def dead(self) -> list[str]:
        return self.arena.dead()

    def samples(self) -> int:
        return count_samples(self.arena.samples_dir)

    def kill(self, name: str) -> int:
        """SIGKILL a child and wait until it is gone; returns its exit code."""
        self._check()
        assert self._loop is not None
        child = self.arena.procs[name]
        child.proc.send_signal(signal.SIGKILL)
        return asyncio.run_coroutine_threadsafe(child.proc.wait(), self._loop).result(30)

    def wait_for_samples(self, n: int, *, timeout: float, poll_s: float = 0.5) -> int:
        """Block until the data directory holds ``n`` samples; raises if the arena stops."""
        deadline = time.monotonic() + timeout
        while (count := self.samples()) < n:
            self._check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count}/{n} samples after {timeout:g}s")
            time.sleep(poll_s)
        return count
