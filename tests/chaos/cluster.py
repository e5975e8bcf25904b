"""A 3-node JetStream cluster on loopback, whose nodes can be killed and restarted in place.

Usage::

    with NatsCluster(tmp_path / "cluster") as cluster:
        url = cluster.url                        # "nats://127.0.0.1:a,nats://127.0.0.1:b,..."
        leader = cluster.meta_leader()           # index of the JetStream meta leader
        cluster.kill(leader)                     # SIGKILL
        cluster.start(leader)                    # same ports, same store: it rejoins

Each node keeps its client, cluster and monitoring ports and its store across restarts, so the
clients' server list and the routes stay valid. Readiness: every node answers ``/healthz`` with
JetStream (``js-enabled-only``) and a meta leader is known.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from warriorcoder.launcher.processes import (
    ManagedProcess,
    free_port,
    http_ok,
    nats_server_binary,
    spawn_process,
    wait_ready,
)

__all__ = ["NatsCluster"]


class NatsCluster:
    def __init__(self, root: Path, size: int = 3, name: str = "chaos") -> None:
        self.root = root
        self.size = size
        self.name = name
        self.client = [free_port() for _ in range(size)]
        self.routes = [free_port() for _ in range(size)]
        self.http = [free_port() for _ in range(size)]
        self.procs: list[ManagedProcess | None] = [None] * size

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.client)

    def __enter__(self) -> NatsCluster:
        try:
            for i in range(self.size):
                self.start(i, wait=False)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def argv(self, i: int) -> list[str]:
        routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(self.routes) if j != i)
        return [
            nats_server_binary(), "--jetstream", "--store_dir", str(self.root / f"n{i}"),
            "--addr", "127.0.0.1", "--port", str(self.client[i]), "--http_port", str(self.http[i]),
            "--server_name", f"n{i}", "--cluster_name", self.name,
            "--cluster", f"nats://127.0.0.1:{self.routes[i]}", "--routes", routes,
        ]  # fmt: skip

    def start(self, i: int, *, wait: bool = True) -> None:
        (self.root / f"n{i}").mkdir(parents=True, exist_ok=True)
        self.procs[i] = spawn_process(f"nats-n{i}", self.argv(i), self.root / f"n{i}.log")
        if wait:
            self.wait_ready()

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[i]
        if proc is not None and proc.alive():
            proc.proc.send_signal(sig)
            proc.proc.wait(30)
        self.procs[i] = None

    def stop(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None:
                proc.stop()
                self.procs[i] = None

    def _jsz(self, i: int) -> dict[str, object]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http[i]}/jsz", timeout=2) as r:
            return dict(json.load(r))

    def meta_leader(self) -> int:
        """The index of the node that leads the JetStream meta group now."""
        for i, proc in enumerate(self.procs):
            if proc is None or not proc.alive():
                continue
            try:
                meta = self._jsz(i).get("meta_cluster") or {}
            except OSError:
                continue
            leader = str(meta.get("leader", "")) if isinstance(meta, dict) else ""
            if leader.startswith("n"):
                return int(leader[1:])
        raise RuntimeError("no JetStream meta leader")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for i, proc in enumerate(self.procs):
            if proc is None:
                continue
            url = f"http://127.0.0.1:{self.http[i]}/healthz?js-enabled-only=true"
            wait_ready(lambda u=url: http_ok(u), proc, f"cluster node n{i}", timeout)  # type: ignore[misc]
        while True:
            try:
                self.meta_leader()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
