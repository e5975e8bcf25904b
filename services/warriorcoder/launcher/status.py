"""The state of a running arena, read over one NATS connection: the supervisor's and the display's.

Usage::

    async with StatusReader(nats_url, samples_dir) as reader:
        await reader.set_budget(40 - await reader.samples() - await reader.pending())
        snap = await reader.snapshot()
        disk, streamed, pending = await reader.settlement()

The reader connects again whenever it finds its connection lost (nats-server restarted by the
supervisor); while the server is down its calls raise ``NATS_DOWN`` errors, which the callers
ride out.

Backlogs come from the work streams (work-queue streams hold exactly the messages not yet acked),
the budget from the schedule bucket, ratings and rejection counts from their KV buckets, samples
from the data directory; the Bradley-Terry leaderboard is recomputed from the samples' votes at
most every ``bt_every_s``. Shard scans and the bootstrap run in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from warriorcoder.data.bradley_terry import Row, leaderboard
from warriorcoder.data.pass_rates import PassRate, pass_rates
from warriorcoder.data.votes import votes_from_samples
from warriorcoder.proto import subjects, topology
from warriorcoder.proto.messages import decode
from warriorcoder.proto.state import Ratings
from warriorcoder.runtime.bus import Bus, connect
from warriorcoder.runtime.settings import NatsSettings
from warriorcoder.runtime.shards import SHARD_GLOB, read_samples
from warriorcoder.runtime.stores import Budget, RejectionStats

__all__ = ["NATS_DOWN", "STAGES", "Snapshot", "StatusReader", "count_samples"]

# stage -> the work stream it consumes
# stage -> the work stream it consumes
STAGES = {c.stage: c.stream for c in topology.CONSUMERS}
_MISSING = (BucketNotFoundError, NotFoundError, KeyNotFoundError)
# What a call raises while nats-server is down or restarting (JetStream not ready yet included).
NATS_DOWN: tuple[type[Exception], ...] = (nats.errors.Error, TimeoutError, OSError)


def count_samples(samples_dir: Path) -> int:
    """Complete sample lines in the shards of a data directory (blocking: a file scan)."""
    n = 0
    for path in samples_dir.glob(SHARD_GLOB):
        with path.open("rb") as f:
            n += sum(1 for line in f if line.endswith(b"\n") and line.strip())
    return n


@dataclass
class Snapshot:
    samples: int = 0
    target: int | None = None
    samples_per_s: float = 0.0
    backlog: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    budget: int | None = None
    rejections: dict[str, int] = field(default_factory=dict)
    elo: dict[str, float] = field(default_factory=dict)
    battles_rated: int = 0
    leaderboard: list[Row] = field(default_factory=list)
    pass_rates: dict[str, PassRate] = field(default_factory=dict)  # models whose answers ran
    events: list[str] = field(default_factory=list)
    demo_note: str = ""
    restarts: dict[str, int] = field(default_factory=dict)
    crash_looping: list[str] = field(default_factory=list)
    streamed: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "target": self.target,
            "samples_per_s": round(self.samples_per_s, 3),
            "backlog": self.backlog,
            "dead_letters": self.dead_letters,
            "budget": self.budget,
            "rejections": self.rejections,
            "battles_rated": self.battles_rated,
            "leaderboard": [
                {
                    "model": r.model,
                    "elo": round(self.elo.get(r.model, r.elo), 1),
                    "bt": round(r.bt, 1),
                    "bt_lower": None if r.bt_lower is None else round(r.bt_lower, 1),
                    "bt_upper": None if r.bt_upper is None else round(r.bt_upper, 1),
                    "votes": r.votes,
                    **_pass_json(self.pass_rates.get(r.model)),
                }
                for r in self.leaderboard
            ],
            "events": self.events[-10:],
            "note": self.demo_note,
            "restarts": self.restarts,
            "crash_looping": self.crash_looping,
            "streamed": self.streamed,
        }


class StatusReader:
    """One NATS connection for everything ``warriorcoder up`` reads or sets in the arena."""

    def __init__(
        self, nats_url: str, samples_dir: Path, *, bt_every_s: float = 5.0, bootstrap: int = 200
    ) -> None:
        self.cfg = NatsSettings(url=nats_url)
        self.samples_dir = samples_dir
        self.bt_every_s = bt_every_s
        self.bootstrap = bootstrap
        self._nc: NATS | None = None
        self._conn: Bus | None = None
        self._history: deque[tuple[float, int]] = deque(maxlen=30)
        self._board: list[Row] = []
        self._rates: dict[str, PassRate] = {}
        self._board_at = 0.0
        self._board_samples = -1
        self._entered = False

    async def __aenter__(self) -> StatusReader:
        self._entered = True
        await self._connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._entered = False
        if self._nc is not None:
            with contextlib.suppress(*NATS_DOWN):
                await self._nc.close()

    async def _connect(self) -> Bus:
        """A fresh connection (``persistent=False``: fails fast while the server is down)."""
        if self._nc is not None:
            with contextlib.suppress(*NATS_DOWN):
                await self._nc.close()
        self._nc = self._conn = None
        self._nc = await connect(self.cfg, name="warriorcoder-up", persistent=False)
        self._conn = Bus(self._nc, self.cfg, stage="up")
        return self._conn

    async def _bus(self) -> Bus:
        """The connection, made again if the server went away since (a restart)."""
        if not self._entered:
            raise RuntimeError("StatusReader is not entered")
        if self._conn is None or self._nc is None or not self._nc.is_connected:
            return await self._connect()
        return self._conn

    # -- the pieces -----------------------------------------------------------------------------

    async def samples(self) -> int:
        return await asyncio.to_thread(count_samples, self.samples_dir)

    async def backlog(self) -> dict[str, int]:
        """Messages waiting per consuming stage (0 for a stream not created yet)."""
        bus = await self._bus()
        counts = {}
        for stage, stream in STAGES.items():
            try:
                counts[stage] = await bus.stored(stream)  # in flight too: not done yet
            except NotFoundError:
                counts[stage] = 0
        return counts

    async def pending(self) -> int:
        """Battles in the pipeline: each becomes one sample."""
        return sum((await self.backlog()).values())

    async def streamed(self) -> int:
        """Samples in the samples stream (0 before the aggregator created it)."""
        with contextlib.suppress(NotFoundError):
            return await (await self._bus()).backlog(subjects.STREAM_SAMPLES)
        return 0

    async def settlement(self) -> tuple[int, int, int]:
        """``(samples on disk, samples in the stream, battles in flight)``: a run is done when
        they read ``(N, N, 0)`` (``warriorcoder.launcher.policy.settled``)."""
        pending = await self.pending()
        streamed = await self.streamed()
        return await self.samples(), streamed, pending

    async def budget(self) -> int | None:
        """Challenges still to mine (None: no limit, or no budget set yet)."""
        bus = await self._bus()
        try:
            return await Budget(await bus.js.key_value(subjects.KV_SCHEDULE)).remaining()
        except _MISSING:
            return None

    async def set_budget(self, n: int) -> None:
        """Set the arena-wide challenge budget (creating its bucket on a fresh arena)."""
        await Budget(await (await self._bus()).kv(subjects.KV_SCHEDULE)).set(n)

    async def add_budget(self, n: int) -> None:
        await Budget(await (await self._bus()).kv(subjects.KV_SCHEDULE)).add(n)

    async def dead_letters(self) -> int:
        with contextlib.suppress(NotFoundError):
            return await (await self._bus()).backlog(subjects.STREAM_DLQ)
        return 0

    async def ratings(self) -> tuple[dict[str, float], int]:
        """Elo ratings by model and the battles rated."""
        bus = await self._bus()
        try:
            kv = await bus.js.key_value(subjects.KV_RATINGS)
            doc = decode((await kv.get(subjects.RATINGS_KEY)).value or b"", Ratings)
        except _MISSING:
            return {}, 0
        return dict(doc.ratings), doc.battles

    async def rejections(self) -> dict[str, int]:
        bus = await self._bus()
        try:
            return await RejectionStats.read(await bus.js.key_value(subjects.KV_STATS))
        except (BucketNotFoundError, NotFoundError):
            return {}

    # -- the whole picture ----------------------------------------------------------------------

    async def snapshot(self, *, final: bool = False) -> Snapshot:
        """The arena now; ``final`` recomputes the leaderboard whatever its age."""
        snap = Snapshot(samples=await self.samples())
        now = time.monotonic()
        self._history.append((now, snap.samples))
        t0, n0 = self._history[0]
        snap.samples_per_s = (snap.samples - n0) / (now - t0) if now > t0 else 0.0
        snap.backlog = await self.backlog()
        snap.dead_letters = await self.dead_letters()
        snap.elo, snap.battles_rated = await self.ratings()
        snap.rejections = await self.rejections()
        snap.budget = await self.budget()
        due = snap.samples != self._board_samples and now - self._board_at >= self.bt_every_s
        if final or due:
            self._board, self._rates = await asyncio.to_thread(self._leaderboard)
            self._board_at, self._board_samples = now, snap.samples
        snap.leaderboard = self._board
        snap.pass_rates = self._rates
        return snap

    def _leaderboard(self) -> tuple[list[Row], dict[str, PassRate]]:
        """Bradley-Terry with bootstrap intervals over every sample's votes (CPU-heavy), and the
        models' pass rates from the samples' execution results."""
        samples = read_samples(self.samples_dir)
        board = leaderboard(votes_from_samples(samples), bootstrap_n=self.bootstrap)
        return board, pass_rates(samples)


def _pass_json(rate: PassRate | None) -> dict[str, Any]:
    """A leaderboard entry's execution columns (none when the model's answers never ran)."""
    if rate is None:
        return {}
    return {"runs": rate.runs, "pass_rate": rate.pass_rate}
