"""The bus on a real 3-node JetStream cluster: leader elections are waited out, never fatal.

Three nats-server processes on loopback ports (``tests.chaos.cluster.NatsCluster``: ``--cluster``,
``--routes``, ``--jetstream``, their stores under the test's tmp dir), streams and buckets with 3
replicas. While work flows through
``Bus`` (publish, consume, ack, KV), the leader of the work stream is killed with SIGKILL and
restarted on the same store; every message must still be handled, and no exception escape.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.chaos.cluster import NatsCluster
from tests.helpers import challenge
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Challenge
from warriorcoder.runtime.bus import Bus, connect
from warriorcoder.runtime.settings import NatsSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path):
    with NatsCluster(tmp_path / "cluster", name="bus") as c:
        yield c


def _node(cluster: NatsCluster, server_name: str | None) -> int:
    names = {f"n{i}": i for i in range(cluster.size)}
    assert server_name in names, server_name
    return names[server_name]


def _settings(cluster: NatsCluster) -> NatsSettings:
    return NatsSettings(
        url=cluster.url, stream_replicas=3, ack_wait_s=5, max_deliver=5, retry_delay_s=0.2
    )


async def test_killing_the_stream_leader_loses_nothing_and_crashes_nothing(cluster):
    """Publish and consume through the bus (with a KV write per message) while the leader of
    the work stream is killed and restarted: every message is handled, no exception escapes
    (a consume that raised, a publish that gave up), nothing is dead-lettered."""
    cfg = _settings(cluster)
    producer = Bus(await connect(cfg, name="producer"), cfg, stage="challenger")
    await producer.ensure_topology()
    consumer = Bus(await connect(cfg, name="consumer"), cfg, stage="responder")
    kv = await consumer.kv(subjects.KV_DEDUP)
    total = 150
    sent = [challenge(text=f"Write a Python function number {i} to sort.") for i in range(total)]
    handled: Counter[str] = Counter()

    async def handler(ch: Challenge) -> None:
        await kv.put(f"seen.{ch.id}", b"1")
        handled[ch.id] += 1

    async def produce() -> None:
        for ch in sent:
            await producer.publish(subjects.CHALLENGES, ch, msg_id=ch.id)
            await asyncio.sleep(0.02)

    stop = asyncio.Event()
    consuming = asyncio.create_task(
        consumer.consume(
            subjects.STREAM_CHALLENGES,
            subjects.CONSUMER_RESPONDER,
            Challenge,
            handler,
            stop=stop,
            max_in_flight=8,
            drain_timeout_s=5,
        )
    )
    producing = asyncio.create_task(produce())
    t0 = time.monotonic()
    try:
        while len(handled) < total // 3:
            assert not consuming.done(), consuming
            if producing.done():
                producing.result()  # raises what escaped a publish
            await asyncio.sleep(0.05)
        info = await producer.js.stream_info(subjects.STREAM_CHALLENGES)
        leader = _node(cluster, info.cluster.leader if info.cluster else None)
        await asyncio.to_thread(cluster.kill, leader)
        # A service starting during the election: its start-up is retried, not fatal.
        late_cfg = _settings(cluster)
        late = Bus(await connect(late_cfg, name="late"), late_cfg, stage="judge")
        await late.ensure_topology()
        await late.kv(subjects.KV_RATINGS)
        await asyncio.sleep(2)
        await asyncio.to_thread(cluster.start, leader)
        await asyncio.wait_for(producing, 60)  # raises what escaped a publish
        while len(handled) < total:
            assert not consuming.done(), consuming
            assert time.monotonic() - t0 < 60, f"{len(handled)}/{total} handled"
            await asyncio.sleep(0.1)
        new_leader = (await producer.js.stream_info(subjects.STREAM_CHALLENGES)).cluster
    finally:
        stop.set()
        await asyncio.wait_for(consuming, 20)  # raises what escaped consume
        producing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producing
    assert set(handled) == {ch.id for ch in sent}
    # At least once: a message whose ack died with the old leader may come back once.
    assert sum(handled.values()) - total <= 8, handled.most_common(3)
    assert await producer.stored(subjects.STREAM_DLQ) == 0
    assert new_leader is not None and _node(cluster, new_leader.leader) in range(cluster.size)
    assert await producer.stored(subjects.STREAM_CHALLENGES) == 0
    for entry_id in (sent[0].id, sent[-1].id):
        assert (await kv.get(f"seen.{entry_id}")).value == b"1"
    for b in (producer, consumer, late):
        await b.nc.close()
