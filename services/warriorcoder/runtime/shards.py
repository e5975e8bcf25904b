"""Training samples as JSONL shards in a data directory, each sample written once.

Usage::

    writer = ShardWriter(Path("data"), max_per_shard=1000)
    await writer.open()
    await writer.write(sample)      # False when the sample is already in the directory

Each writer appends to its own shard files (``samples-<writer>-<n>.jsonl``) and rotates them at
``max_per_shard`` lines. At start it reads the ids of every shard in the directory, so a
restarted or second writer never writes a battle twice. Lines are flushed and fsync'ed before
``write`` returns, so an acked battle is on disk. A line is a ``ShardLine`` of
``warriorcoder.proto.state``: the Sample as on the bus.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path
from typing import IO

import msgspec

from warriorcoder.proto.messages import Sample
from warriorcoder.proto.state import ShardLine, ShardLineId, encode

__all__ = ["ShardWriter", "read_samples"]

log = logging.getLogger(__name__)

SHARD_GLOB = "samples-*.jsonl"


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


class ShardWriter:
    def __init__(self, data_dir: Path, *, max_per_shard: int, writer_id: str | None = None):
        self.dir = data_dir
        self.max = max_per_shard
        self.writer_id = writer_id or f"{socket.gethostname()}-{os.getpid()}"
        self.ids: set[str] = set()
        self._file: IO[bytes] | None = None
        self._lines = 0
        self._index = 0
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ids = await asyncio.to_thread(self._scan)
        log.info("dataset opened", extra={"dir": str(self.dir), "samples": len(self.ids)})

    def _scan(self) -> set[str]:
        ids: set[str] = set()
        for path in self.dir.glob(SHARD_GLOB):
            with path.open("rb") as f:
                for line in f:
                    try:
                        ids.add(_id_decoder.decode(line).id)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        continue  # a line torn by a crash: its battle is redelivered
        return ids

    async def write(self, sample: Sample) -> bool:
        async with self._lock:
            if sample.id in self.ids:
                return False
            line = encode(sample) + b"\n"
            await asyncio.to_thread(self._append, line)
            self.ids.add(sample.id)
            return True

    def _append(self, line: bytes) -> None:
        if self._file is None or self._lines >= self.max:
            self._rotate()
        assert self._file is not None
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._lines += 1

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
        while True:
            path = self.dir / f"samples-{self.writer_id}-{self._index:05d}.jsonl"
            self._index += 1
            if not path.exists():
                break
        self._file = path.open("ab")
        self._lines = 0

    async def close(self) -> None:
        async with self._lock:
            if self._file is not None:
                await asyncio.to_thread(self._file.close)
                self._file = None
