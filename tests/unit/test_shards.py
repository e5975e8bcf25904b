"""The shard writer's on-disk sample index: exact membership with flat memory, shards indexed
once (no rescan at start), crashes and torn lines repaired from the shards, a broken index
rebuilt, and other writers of the directory seeing a sample within ``flush_s``."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from tests.helpers import arena_settings, judgement
from warriorcoder.arena.decide import decide
from warriorcoder.proto.messages import Sample
from warriorcoder.proto.state import encode
from warriorcoder.runtime.shards import INDEX_NAME, ShardWriter, read_samples


def samples(n: int, start: int = 0) -> list[Sample]:
    out = []
    for i in range(start, start + n):
        j = judgement(["attacker"], text=f"Write a Python function number {i} to sort.")
        s = decide(j, 1000, 1000, arena_settings().scoring)
        assert s is not None
        out.append(s)
    return out


def indexed_ids(data: Path) -> set[str]:
    with sqlite3.connect(data / INDEX_NAME) as db:
        return {row[0] for row in db.execute("SELECT id FROM ids")}


async def test_a_reopened_writer_reads_no_shard_again(tmp_path):
    w = ShardWriter(tmp_path, max_per_shard=3, writer_id="w1")
    await w.open()
    for s in samples(7):
        assert await w.write(s)
    await w.close()
    w2 = ShardWriter(tmp_path, max_per_shard=3, writer_id="w2")
    await w2.open()
    assert w2.caught_up == 0  # every line was indexed by w1: no shard is read
    for s in samples(7):
        assert await w2.contains(s.id)
        assert not await w2.write(s)
    assert not await w2.contains(samples(1, start=7)[0].id)
    await w2.close()
    assert len(read_samples(tmp_path)) == 7


async def test_shards_of_the_previous_version_are_indexed_once(tmp_path):
    old = samples(5)
    # written by a writer that kept its ids in memory: shards, no index
    (tmp_path / "samples-old-00000.jsonl").write_bytes(b"".join(encode(s) + b"\n" for s in old))
    w = ShardWriter(tmp_path, max_per_shard=10)
    await w.open()
    assert w.caught_up == 5
    assert [await w.contains(s.id) for s in old] == [True] * 5
    await w.close()
    w = ShardWriter(tmp_path, max_per_shard=10)
    await w.open()
    assert w.caught_up == 0
    await w.close()


async def test_lines_written_after_the_last_flush_are_indexed_from_the_shard_tail(tmp_path):
    w = ShardWriter(tmp_path, max_per_shard=100, writer_id="w1", flush_every=3, flush_s=3600)
    await w.open()
    batch = samples(5)
    for s in batch:
        assert await w.write(s)
    assert indexed_ids(tmp_path) == {s.id for s in batch[:3]}  # one batch of three flushed
    # the process dies: the two unflushed ids are lost, their lines are on disk
    assert w._flusher is not None
    w._flusher.cancel()
    assert w._index is not None and w._file is not None
    w._index.close()
    w._file.close()
    with (tmp_path / "samples-w1-00000.jsonl").open("ab") as f:
        f.write(encode(samples(1, start=9)[0])[:40])  # and a torn line after them
    w2 = ShardWriter(tmp_path, max_per_shard=100, writer_id="w2")
    await w2.open()
    assert w2.caught_up == 2  # only the tail past the last flush, not the torn line
    assert indexed_ids(tmp_path) == {s.id for s in batch}
    for s in batch:
        assert not await w2.write(s)
    await w2.close()
    w3 = ShardWriter(tmp_path, max_per_shard=100, writer_id="w3")
    await w3.open()
    assert w3.caught_up == 0  # the torn line is not counted, however often it is read
    await w3.close()


async def test_pending_ids_stay_bounded_by_the_flush_size(tmp_path):
    w = ShardWriter(tmp_path, max_per_shard=4, flush_every=4, flush_s=3600)
    await w.open()
    for i, s in enumerate(samples(10), start=1):
        assert await w.write(s)
        assert len(w._pending) == i % 4
        assert await w.contains(s.id)  # answered from the pending ids before their flush
    assert len(indexed_ids(tmp_path)) == 8
    await w.close()
    assert len(indexed_ids(tmp_path)) == 10  # close flushes the rest


async def test_a_broken_index_is_rebuilt_from_the_shards(tmp_path):
    w = ShardWriter(tmp_path, max_per_shard=100)
    await w.open()
    batch = samples(3)
    for s in batch:
        await w.write(s)
    await w.close()
    (tmp_path / INDEX_NAME).write_bytes(b"this is not a database, it is garbage" * 200)
    w = ShardWriter(tmp_path, max_per_shard=100)
    await w.open()
    assert w.caught_up == 3
    for s in batch:
        assert not await w.write(s)
    await w.close()


async def test_another_writer_sees_a_sample_within_flush_s(tmp_path):
    a = ShardWriter(tmp_path, max_per_shard=100, writer_id="a", flush_s=0.05)
    b = ShardWriter(tmp_path, max_per_shard=100, writer_id="b", flush_s=0.05)
    await a.open()
    await b.open()
    [s] = samples(1)
    assert await a.write(s)
    assert not await b.contains(s.id)  # still in a's pending batch
    await asyncio.sleep(0.5)  # ten flush periods
    assert await b.contains(s.id)
    assert not await b.write(s)
    await a.close()
    await b.close()
    assert [x.id for x in read_samples(tmp_path)] == [s.id]
