"""The bus on a real 3-node JetStream cluster: leader elections are waited out, never fatal.

Three nats-server processes on loopback ports (``--cluster``, ``--routes``, ``--jetstream``, their
stores under the test's tmp dir), streams and buckets with 3 replicas. While work flows through
``Bus`` (publish, consume, ack, KV), the leader of the work stream is killed with SIGKILL and
restarted on the same store; every message must still be handled, and no exception escape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import challenge
from warriorcoder.launcher.processes import free_port, nats_server_binary, port_open
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Challenge
from warriorcoder.runtime.bus import Bus, connect
from warriorcoder.runtime.settings import NatsSettings

pytestmark = pytest.mark.integration


@dataclass
class Node:
    name: str
    client: int
    route: int
    monitor: int
    store: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class JetStreamCluster:
    """``size`` nats-server processes clustered on loopback, each with its own JetStream store.

    Usage::

        cluster = JetStreamCluster.start(tmp_path, size=3)
        cluster.wait_for_meta_leader()
        cluster.kill("n1"); cluster.restart("n1")
        cluster.stop()
    """

    nodes: dict[str, Node] = field(default_factory=dict)

    @classmethod
    def start(cls, root: Path, size: int = 3) -> JetStreamCluster:
        cluster = cls()
        for i in range(size):
            name = f"n{i}"
            cluster.nodes[name] = Node(
                name, free_port(), free_port(), free_port(), root / name, root / f"{name}.log"
            )
        for name in cluster.nodes:
            cluster.restart(name)
        return cluster

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{n.client}" for n in self.nodes.values())

    def restart(self, name: str) -> None:
        node = self.nodes[name]
        node.store.mkdir(parents=True, exist_ok=True)
        routes = ",".join(f"nats://127.0.0.1:{n.route}" for n in self.nodes.values())
        argv = [
            nats_server_binary(),
            "--jetstream",
            "--store_dir", str(node.store),
            "--server_name", name,
            "--addr", "127.0.0.1",
            "--port", str(node.client),
            "--http_port", str(node.monitor),
            "--cluster_name", "warriorcoder-test",
            "--cluster", f"nats://127.0.0.1:{node.route}",
            "--routes", routes,
        ]  # fmt: skip
        with open(node.log, "ab") as out:
            node.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not port_open(node.client):
            assert node.alive(), f"{name} exited: see {node.log}"
            assert time.monotonic() < deadline, f"{name} did not open its port"
            time.sleep(0.05)

    def kill(self, name: str) -> None:
        node = self.nodes[name]
        if node.proc is not None and node.alive():
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.proc is not None and node.alive():
                node.proc.terminate()
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()

    def meta_leader(self) -> str | None:
        """The JetStream meta leader as a live node sees it (None during an election)."""
        for node in self.nodes.values():
            if not node.alive():
                continue
            with contextlib.suppress(OSError, ValueError):
                url = f"http://127.0.0.1:{node.monitor}/jsz"
                with urllib.request.urlopen(url, timeout=1) as r:
                    leader = json.load(r).get("meta_cluster", {}).get("leader")
                if leader:
                    return str(leader)
        return None

    def wait_for_meta_leader(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while (leader := self.meta_leader()) is None:
            assert time.monotonic() < deadline, "no JetStream meta leader"
            time.sleep(0.1)
        return leader


@pytest.fixture
def cluster(tmp_path: Path):
    c = JetStreamCluster.start(tmp_path / "cluster")
    try:
        c.wait_for_meta_leader()
        yield c
    finally:
        c.stop()


def _settings(cluster: JetStreamCluster) -> NatsSettings:
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
        leader = info.cluster.leader if info.cluster else None
        assert leader in cluster.nodes, info.cluster
        await asyncio.to_thread(cluster.kill, leader)
        # A service starting during the election: its start-up is retried, not fatal.
        late_cfg = _settings(cluster)
        late = Bus(await connect(late_cfg, name="late"), late_cfg, stage="judge")
        await late.ensure_topology()
        await late.kv(subjects.KV_RATINGS)
        await asyncio.sleep(2)
        await asyncio.to_thread(cluster.restart, leader)
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
    assert new_leader is not None and new_leader.leader in cluster.nodes
    assert await producer.stored(subjects.STREAM_CHALLENGES) == 0
    for entry_id in (sent[0].id, sent[-1].id):
        assert (await kv.get(f"seen.{entry_id}")).value == b"1"
    for b in (producer, consumer, late):
        await b.nc.close()
