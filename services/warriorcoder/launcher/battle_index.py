"""The latest battles, read from the samples stream over NATS: a bounded window in memory, older
ones fetched by stream sequence on demand.

Usage::

    async with BattleIndex(nats_url, window=1000) as index:
        await index.refresh()
        rows, before = await index.search(BattleQuery(model="alpha"), before=None, limit=20)
        found = await index.get(rows[0][0]) if rows else None

The samples stream keeps every sample (limits retention), so a battle's stream sequence is its
address: the window holds the newest ``window`` samples; ``search`` pages backwards by sequence,
through the window first and then the stream, scanning at most ``scan`` older messages per call;
``get`` reads one sequence. ``refresh`` (at most once per ``refresh_s``) appends what the
aggregator published since; while NATS is down it keeps the window and says so in ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from warriorcoder.launcher.battle_views import BattleQuery
from warriorcoder.launcher.status import NATS_DOWN
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Sample, decode
from warriorcoder.runtime.bus import connect
from warriorcoder.runtime.settings import NatsSettings

__all__ = ["BattleIndex"]

log = logging.getLogger(__name__)
_CHUNK = 64  # concurrent message reads


class BattleIndex:
    """The newest samples of the arena by stream sequence, and the way to the older ones."""

    def __init__(
        self,
        nats_url: str,
        *,
        window: int = 1000,
        refresh_s: float = 1.0,
        stream: str = subjects.STREAM_SAMPLES,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self.cfg = NatsSettings(url=nats_url)
        self.window = window
        self.refresh_s = refresh_s
        self.stream = stream
        self.version = 0  # changes whenever the window does (a cache key)
        self.first_seq = 0  # the stream's oldest and newest sequence at the last refresh
        self.last_seq = 0
        self.error = ""  # why the last refresh failed ("" when it did not)
        self._recent: dict[int, Sample] = {}  # ascending sequence
        self._nc: NATS | None = None
        self._lock = asyncio.Lock()
        self._refreshed_at = -1e9

    async def __aenter__(self) -> BattleIndex:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(*NATS_DOWN):
                await nc.close()

    async def _js(self) -> JetStreamContext:
        if self._nc is None or not self._nc.is_connected:
            await self._close()
            self._nc = await connect(self.cfg, name="warriorcoder-web", persistent=False)
        return self._nc.jetstream()

    def recent(self) -> list[tuple[int, Sample]]:
        """The window, oldest first."""
        return list(self._recent.items())

    async def refresh(self, *, force: bool = False) -> None:
        """Read what the samples stream gained since the last call (throttled to ``refresh_s``)."""
        async with self._lock:
            now = time.monotonic()
            if not force and now - self._refreshed_at < self.refresh_s:
                return
            self._refreshed_at = now
            try:
                await self._refresh()
                self.error = ""
            except NotFoundError:
                self.error = "no samples stream yet"
            except NATS_DOWN as exc:
                self.error = f"NATS unreachable: {exc!r}"
                await self._close()

    async def _refresh(self) -> None:
        js = await self._js()
        info = await js.stream_info(self.stream)
        first, last = int(info.state.first_seq), int(info.state.last_seq)
        self.first_seq = first
        start = max(self.last_seq + 1, first, last - self.window + 1)
        if last < self.last_seq:  # the stream was recreated: start over
            self._recent.clear()
            start = max(first, last - self.window + 1)
        fetched = await self._fetch(list(range(start, last + 1)))
        for seq in sorted(fetched):
            self._recent[seq] = fetched[seq]
        for seq in [s for s in self._recent if s < max(first, last - self.window + 1)]:
            del self._recent[seq]
        if fetched or last != self.last_seq:
            self.version += 1
        self.last_seq = last

    async def _fetch(self, seqs: list[int]) -> dict[int, Sample]:
        """The samples at these sequences (a deleted or unreadable one is left out)."""
        js = await self._js()
        out: dict[int, Sample] = {}

        async def one(seq: int) -> None:
            try:
                msg = await js.get_msg(self.stream, seq)
                out[seq] = decode(msg.data or b"", Sample)
            except NotFoundError:
                pass  # aged out or deleted since
            except msgspec.ValidationError as exc:
                log.warning("samples stream seq %d is not a sample: %s", seq, exc)

        for i in range(0, len(seqs), _CHUNK):
            async with asyncio.TaskGroup() as tg:
                for seq in seqs[i : i + _CHUNK]:
                    tg.create_task(one(seq))
        return out

    async def search(
        self, query: BattleQuery, *, before: int | None, limit: int, scan: int = 2000
    ) -> tuple[list[tuple[int, Sample]], int | None]:
        """Up to ``limit`` battles matching ``query``, newest first, below sequence ``before``
        (None: from the newest); and the ``before`` of the next page (None: no more)."""
        top = self.last_seq if before is None else min(before - 1, self.last_seq)
        rows: list[tuple[int, Sample]] = []
        seq = top
        for seq in sorted((s for s in self._recent if s <= top), reverse=True):
            if query.matches(self._recent[seq]):
                rows.append((seq, self._recent[seq]))
                if len(rows) == limit:
                    return rows, seq if seq > self.first_seq else None
        seq = min([top + 1, *self._recent])  # the stream below the window
        scanned = 0
        while seq > max(self.first_seq, 1) and scanned < scan:
            lo = max(self.first_seq, 1, seq - _CHUNK)
            chunk = await self._fetch(list(range(lo, seq)))
            scanned += seq - lo
            for s in range(seq - 1, lo - 1, -1):
                if s in chunk and query.matches(chunk[s]):
                    rows.append((s, chunk[s]))
                    if len(rows) == limit:
                        return rows, s if s > self.first_seq else None
            seq = lo
        return rows, seq if seq > max(self.first_seq, 1) else None

    async def get(self, seq: int) -> Sample | None:
        """The battle at stream sequence ``seq`` (None when there is none)."""
        if seq in self._recent:
            return self._recent[seq]
        return (await self._fetch([seq])).get(seq)
