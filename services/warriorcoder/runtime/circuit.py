"""A per-backend circuit: calls wait out an outage instead of failing, while one prober watches.

Usage::

    circuit = Circuit("qwen", probe=model_ready, probe_interval_s=1.0)
    circuit.trip("gRPC UNAVAILABLE: connection refused")  # the backend is down: open
    if not await circuit.wait_closed(deadline=circuit.outage_deadline(900.0)):
        ...  # still down 900 s after the outage began
    await circuit.aclose()  # stops the prober

Closed, calls pass. A call that meets an outage trips the circuit open; from then on one prober
task awaits ``probe()`` every ``probe_interval_s`` and closes the circuit the first time it
answers True, waking every waiting call at once: work resumes within one probe interval of the
backend being ready, with no blind back-off. ``probe`` answers False for a backend that is down;
an exception it raises is logged and counts as False. The prober is the circuit's own task,
cancelled and awaited by ``aclose``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

__all__ = ["Circuit"]

log = logging.getLogger(__name__)


class Circuit:
    """Closed (calls pass) or open (calls wait while one prober checks the backend's readiness)."""

    def __init__(
        self,
        name: str,
        probe: Callable[[], Awaitable[bool]],
        *,
        probe_interval_s: float = 1.0,
    ) -> None:
        self.name = name
        self.probe_interval_s = probe_interval_s
        self.opened_at: float | None = None  # time.monotonic() of the current outage's start
        self.reason = ""  # the failure that opened it (the latest one while open)
        self.outages = 0  # how often it opened
        self._probe = probe
        self._closed = asyncio.Event()
        self._closed.set()
        self._prober: asyncio.Task[None] | None = None

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set()

    def trip(self, reason: str) -> None:
        """Open the circuit (if closed) and start probing; ``reason``: the failure seen."""
        self.reason = reason
        if self.is_open:
            return
        self.opened_at = time.monotonic()
        self.outages += 1
        self._closed.clear()
        log.warning(
            "backend down: calls wait until it is ready again",
            extra={"model": self.name, "error": reason[:500]},
        )
        self._prober = asyncio.create_task(self._watch(), name=f"circuit-{self.name}")

    def outage_deadline(self, max_outage_s: float) -> float:
        """When calls stop waiting for the current outage (a ``time.monotonic()`` value); counted
        from now when the circuit is closed."""
        start = self.opened_at if self.is_open and self.opened_at is not None else time.monotonic()
        return start + max_outage_s

    def down_s(self) -> float:
        """How long the current outage has lasted (0 when closed)."""
        if not self.is_open or self.opened_at is None:
            return 0.0
        return time.monotonic() - self.opened_at

    async def wait_closed(self, deadline: float | None = None) -> bool:
        """True once the circuit is closed (at once when it is); False when ``deadline`` (a
        ``time.monotonic()`` value; None: no limit) comes first."""
        if self._closed.is_set():
            return True
        if deadline is None:
            await self._closed.wait()
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(self._closed.wait(), remaining)
        except TimeoutError:
            return self._closed.is_set()
        return True

    async def aclose(self) -> None:
        """Stop the prober (cancelled and awaited); the circuit's state stays as it was."""
        task, self._prober = self._prober, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            if await self._ready():
                break
        down = time.monotonic() - (self.opened_at or time.monotonic())
        self._closed.set()
        log.info(
            "backend ready again: calls resume",
            extra={"model": self.name, "down_s": round(down, 2)},
        )

    async def _ready(self) -> bool:
        try:
            return bool(await self._probe())
        except Exception as exc:  # a probe that cannot tell: still down
            log.debug("readiness probe failed: %r", exc, extra={"model": self.name})
            return False
