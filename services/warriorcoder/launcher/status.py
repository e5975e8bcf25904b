"""A snapshot of a running arena for the terminal display and the leaderboard page.

Usage::

    async with StatusReader(nats_url, samples_dir) as reader:
        snap = await reader.snapshot()

Backlogs come from the work streams (work-queue streams hold exactly the messages not yet acked),
ratings and rejection counts from their KV buckets, samples from the data directory; the
Bradley-Terry leaderboard is recomputed from the samples' votes at most every ``bt_every_s``.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from warriorcoder.data.bradley_terry import Row, leaderboard
from warriorcoder.data.votes import votes_from_samples
from warriorcoder.launcher.arena import count_samples
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Ratings, decode
from warriorcoder.runtime.bus import connect
from warriorcoder.runtime.settings import NatsSettings
from warriorcoder.stages.aggregator.dataset import read_samples

__all__ = ["STAGES", "Snapshot", "StatusReader"]

# stage -> the work stream it consumes
STAGES = {
    "responder": subjects.STREAM_CHALLENGES,
    "judge": subjects.STREAM_BATTLES,
    "aggregator": subjects.STREAM_JUDGEMENTS,
}


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
    events: list[str] = field(default_factory=list)
    demo_note: str = ""

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
                }
                for r in self.leaderboard
            ],
            "events": self.events[-10:],
            "note": self.demo_note,
        }


class StatusReader:
    def __init__(
        self, nats_url: str, samples_dir: Path, *, bt_every_s: float = 5.0, bootstrap: int = 200
    ) -> None:
        self.cfg = NatsSettings(url=nats_url)
        self.samples_dir = samples_dir
        self.bt_every_s = bt_every_s
        self.bootstrap = bootstrap
        self._nc: Any = None
        self._history: deque[tuple[float, int]] = deque(maxlen=30)
        self._board: list[Row] = []
        self._board_at = 0.0
        self._board_samples = -1

    async def __aenter__(self) -> StatusReader:
        self._nc = await connect(self.cfg, name="warriorcoder-up", persistent=False)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._nc is not None:
            await self._nc.close()

    async def snapshot(self, *, final: bool = False) -> Snapshot:
        """The arena now; ``final`` recomputes the leaderboard whatever its age."""
        snap = Snapshot(samples=count_samples(self.samples_dir))
        now = time.monotonic()
        self._history.append((now, snap.samples))
        t0, n0 = self._history[0]
        snap.samples_per_s = (snap.samples - n0) / (now - t0) if now > t0 else 0.0
        js = self._nc.jetstream()
        for stage, stream in STAGES.items():
            try:
                snap.backlog[stage] = int((await js.stream_info(stream)).state.messages)
            except NotFoundError:
                snap.backlog[stage] = 0
        with contextlib.suppress(NotFoundError):
            snap.dead_letters = int((await js.stream_info(subjects.STREAM_DLQ)).state.messages)
        snap.elo, snap.battles_rated = await self._ratings(js)
        snap.rejections = await self._rejections(js)
        snap.budget = await self._budget(js)
        due = snap.samples != self._board_samples and now - self._board_at >= self.bt_every_s
        if final or due:
            samples = read_samples(self.samples_dir)
            self._board = leaderboard(votes_from_samples(samples), bootstrap_n=self.bootstrap)
            self._board_at, self._board_samples = now, snap.samples
        snap.leaderboard = self._board
        return snap

    async def _ratings(self, js: Any) -> tuple[dict[str, float], int]:
        try:
            kv = await js.key_value(subjects.KV_RATINGS)
            doc = decode((await kv.get(subjects.RATINGS_KEY)).value or b"", Ratings)
        except (BucketNotFoundError, NotFoundError, KeyNotFoundError):
            return {}, 0
        return dict(doc.ratings), doc.battles

    async def _rejections(self, js: Any) -> dict[str, int]:
        from warriorcoder.stages.challenger.filters import RejectionStats

        try:
            return await RejectionStats.read(await js.key_value(subjects.KV_STATS))
        except (BucketNotFoundError, NotFoundError):
            return {}

    async def _budget(self, js: Any) -> int | None:
        from warriorcoder.stages.challenger.filters import Budget

        try:
            return await Budget(await js.key_value(subjects.KV_SCHEDULE)).remaining()
        except (BucketNotFoundError, NotFoundError):
            return None
