"""Training samples as JSONL shards in a data directory, each sample written once.

Usage::

    writer = ShardWriter(Path("data"), max_per_shard=1000)
    await writer.open()
    await writer.contains(sample.id)    # whether the sample is in the directory already
    await writer.write(sample)          # False when the sample is already in the directory
    await writer.close()

Each writer appends to its own shard files (``samples-<writer>-<n>.jsonl``) and rotates them at
``max_per_shard`` lines. Lines are flushed and fsync'ed before ``write`` returns, so an acked
battle is on disk. A line is a ``ShardLine`` of ``warriorcoder.proto.state``: the Sample as on
the bus.

Which samples the directory holds is answered by an index on disk, not a set in memory, so a
writer's memory stays flat however large the dataset grows: ``.samples-index.sqlite`` (stdlib
sqlite3) beside the shards, shared by every writer of the directory. It holds every sample id and,
per shard file, how many of its bytes are indexed. At ``open`` a writer indexes only the bytes
past that mark (the lines of a writer that crashed before its last flush, or of a writer of a
previous version), never the whole directory again; a missing or unreadable index is rebuilt from
the shards once.

Exact where it matters: a writer adds its own ids to the index in batches (one transaction per
``flush_every`` samples or ``flush_s`` seconds, so the commit's fsyncs cost microseconds per
sample), and answers ``contains`` from the index plus its own not-yet-flushed ids. Another
writer of the directory sees a sample at most ``flush_s`` after it is written: far inside the
de-dup window of the stream it came from (two minutes by default), within which JetStream drops
the re-published message itself. A crash loses only unflushed index rows, never a sample: the
shard line is on disk first, and the next ``open`` indexes it from the shard's unindexed tail.
The index uses sqlite's rollback journal, not WAL, because WAL cannot work on the network
filesystems (NFS, CephFS, EFS) that replicas share; sqlite locks the file with POSIX locks, which
those filesystems support.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TypeVar

import msgspec

from warriorcoder.proto.messages import Sample
from warriorcoder.proto.state import ShardLine, ShardLineId, encode

__all__ = ["INDEX_NAME", "ShardWriter", "read_samples"]

log = logging.getLogger(__name__)

SHARD_GLOB = "samples-*.jsonl"
INDEX_NAME = ".samples-index.sqlite"
_SCHEMA_VERSION = 1
_CATCH_UP_BATCH = 10_000  # ids per transaction while indexing shard tails (bounds memory)


T = TypeVar("T")

_id_decoder = msgspec.json.Decoder(ShardLineId)
_line_decoder = msgspec.json.Decoder(ShardLine)


def read_samples(data_dir: Path) -> list[Sample]:
    """Every complete sample in the directory's shards (a torn last line is skipped)."""
    out: list[Sample] = []
    for path in sorted(data_dir.glob(SHARD_GLOB)):
        with path.open("rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    out.append(_line_decoder.decode(line))
                except (msgspec.DecodeError, msgspec.ValidationError):
                    log.warning("skipping a torn or invalid line", extra={"shard": path.name})
    return out


async def _in_thread(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a worker thread; cancelled, it still waits for the thread to finish, so
    the caller's lock is never released while the thread uses the file or the index."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await fut
        raise


class _Index:
    """The sample ids of a data directory and how far each shard is indexed, in sqlite.
    Blocking: called from a worker thread, one call at a time (the writer's lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        # timeout: another writer of the directory may hold the lock for one commit
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            if db.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
                with db:
                    db.execute("BEGIN IMMEDIATE")
                    db.execute("CREATE TABLE IF NOT EXISTS ids (id TEXT PRIMARY KEY) WITHOUT ROWID")
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS shards"
                        " (name TEXT PRIMARY KEY, indexed INTEGER NOT NULL) WITHOUT ROWID"
                    )
                    db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def contains(self, id: str) -> bool:
        return self.db.execute("SELECT 1 FROM ids WHERE id = ?", (id,)).fetchone() is not None

    def add(self, ids: Iterable[str], marks: dict[str, int]) -> None:
        """Add ids and move shard marks forward (never back), in one transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT OR IGNORE INTO ids VALUES (?)", ((i,) for i in ids))
            self.db.executemany(
                "INSERT INTO shards VALUES (?, ?) ON CONFLICT(name)"
                " DO UPDATE SET indexed = max(indexed, excluded.indexed)",
                marks.items(),
            )

    def marks(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT name, indexed FROM shards").fetchall())

    def catch_up(self, data_dir: Path) -> int:
        """Index every shard's bytes past its mark; the number of lines read."""
        marks = self.marks()
        read = 0
        for path in sorted(data_dir.glob(SHARD_GLOB)):
            start = marks.get(path.name, 0)
            size = path.stat().st_size
            if size < start:  # the shard was replaced: index it again (ids are only added)
                start = 0
            if size > start:
                read += self._index_tail(path, start)
        return read

    def _index_tail(self, path: Path, start: int) -> int:
        ids: list[str] = []
        end = start
        read = 0
        with path.open("rb") as f:
            f.seek(start)
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a line torn by a crash: not indexed, read again next time
                end += len(line)
                read += 1
                try:
                    ids.append(_id_decoder.decode(line).id)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue  # an invalid line: its battle is redelivered
                if len(ids) >= _CATCH_UP_BATCH:
                    self.add(ids, {path.name: end})
                    ids = []
        self.add(ids, {path.name: end})
        return read

    def close(self) -> None:
        self.db.close()


def _open_index(data_dir: Path) -> tuple[_Index, int]:
    """The directory's index, caught up with the shards; rebuilt when it cannot be read."""
    path = data_dir / INDEX_NAME
    try:
        index = _Index(path)
        return index, index.catch_up(data_dir)
    except sqlite3.DatabaseError as exc:  # corrupt, or not a database: the shards are the truth
        log.warning("rebuilding the sample index", extra={"path": str(path), "error": str(exc)})
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{path}{suffix}")
        index = _Index(path)
        return index, index.catch_up(data_dir)


class ShardWriter:
    def __init__(
        self,
        data_dir: Path,
        *,
        max_per_shard: int,
        writer_id: str | None = None,
        flush_every: int = 256,
        flush_s: float = 1.0,
    ):
        self.dir = data_dir
        self.max = max_per_shard
        self.writer_id = writer_id or f"{socket.gethostname()}-{os.getpid()}"
        self.flush_every = flush_every
        self.flush_s = flush_s
        self.caught_up = 0  # shard lines ``open`` had to index (0: the index was up to date)
        self._index: _Index | None = None
        self._pending: set[str] = set()  # written, not yet in the index (<= flush_every)
        self._marks: dict[str, int] = {}  # this writer's shard bytes covered by _pending
        self._file: IO[bytes] | None = None
        self._name = ""
        self._offset = 0
        self._lines = 0
        self._index_n = 0
        self._lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index, self.caught_up = await _in_thread(_open_index, self.dir)
        self._flusher = asyncio.create_task(self._flush_periodically(), name="shard-index-flush")
        log.info("dataset opened", extra={"dir": str(self.dir), "indexed": self.caught_up})

    async def contains(self, id: str) -> bool:
        """Whether a sample with this id is in the directory (written by any writer)."""
        async with self._lock:
            if id in self._pending:
                return True
            index = self._opened()
            return await _in_thread(index.contains, id)

    async def write(self, sample: Sample) -> bool:
        async with self._lock:
            if sample.id in self._pending:
                return False
            index = self._opened()
            line = encode(sample) + b"\n"
            written = await _in_thread(self._write, index, sample.id, line)
            if written:
                self._pending.add(sample.id)
                self._marks[self._name] = self._offset
                if len(self._pending) >= self.flush_every:
                    await _in_thread(self._flush, index)
            return written

    def _opened(self) -> _Index:
        if self._index is None:
            raise RuntimeError("ShardWriter used before open() or after close()")
        return self._index

    def _write(self, index: _Index, id: str, line: bytes) -> bool:
        if index.contains(id):
            return False
        self._append(line)
        return True

    def _append(self, line: bytes) -> None:
        if self._file is None or self._lines >= self.max:
            self._rotate()
        assert self._file is not None
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._lines += 1
        self._offset += len(line)

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
        while True:
            path = self.dir / f"samples-{self.writer_id}-{self._index_n:05d}.jsonl"
            self._index_n += 1
            if not path.exists():
                break
        self._file = path.open("ab")
        self._name = path.name
        self._offset = 0
        self._lines = 0

    def _flush(self, index: _Index) -> None:
        if self._pending or self._marks:
            index.add(self._pending, self._marks)
            self._pending = set()
            self._marks = {}

    async def _flush_periodically(self) -> None:
        # Bounds how late another writer of the directory sees this writer's samples.
        while True:
            await asyncio.sleep(self.flush_s)
            async with self._lock:
                if self._pending and self._index is not None:
                    await _in_thread(self._flush, self._index)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        async with self._lock:
            if self._file is not None:
                await _in_thread(self._file.close)
                self._file = None
            if self._index is not None:
                index, self._index = self._index, None
                await _in_thread(self._close_index, index)

    def _close_index(self, index: _Index) -> None:
        try:
            self._flush(index)
        finally:
            index.close()
