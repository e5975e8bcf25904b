"""Outages pause instead of dead-lettering: a real Triton stopped and restarted on the same ports
under the four services, each run by the real runner (bus error boundary, heartbeats, readiness,
the inference circuit), in this process against a real nats-server.

The CI run stops Triton gracefully (SIGTERM: it first answers "unknown model ... has no
available versions" while it unloads, then refuses connections) and keeps it down 20 s; longer
runs, or a kill -9, by hand::

    WARRIORCODER_OUTAGE_S=60 pytest -q tests/integration/test_outage.py -p no:cacheprovider -s
    WARRIORCODER_OUTAGE_S=60 WARRIORCODER_OUTAGE_KILL=1 pytest -q tests/integration/test_outage.py

It prints its figures (dead letters, redeliveries, samples, seconds from ready to first sample).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import SCRIPTED_MODELS
from tests.helpers import arena_settings
from warriorcoder.launcher.processes import (
    ManagedProcess,
    TritonPorts,
    free_port,
    http_ok,
    start_scripted_triton,
)
from warriorcoder.proto import subjects
from warriorcoder.runtime.bus import connect
from warriorcoder.runtime.service import run_service
from warriorcoder.stages import load

pytestmark = pytest.mark.integration

OUTAGE_S = float(os.environ.get("WARRIORCODER_OUTAGE_S", "20"))
KILL = os.environ.get("WARRIORCODER_OUTAGE_KILL", "") not in ("", "0")
SERVICES = ("challenger", "responder", "judge", "aggregator")
MODELS = ["alpha", "beta", "gamma"]


def start_triton(ports: TritonPorts, log_path: Path) -> ManagedProcess:
    """The scripted Triton on fixed ports (a restart keeps the address the services know)."""
    return start_scripted_triton(SCRIPTED_MODELS, MODELS, log_path=log_path, ports=ports)


async def wait_until(check, within_s: float, what: str, poll_s: float = 0.1):
    deadline = time.monotonic() + within_s
    while not (value := await check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {within_s:g}s")
        await asyncio.sleep(poll_s)
    return value


async def test_a_triton_outage_pauses_the_arena_and_loses_nothing(nats_url, tmp_path):
    ports = TritonPorts.free()
    triton = start_triton(ports, tmp_path / "triton.log")
    # up's redelivery settings (retry_delay_s 0.5: before, a down backend dead-lettered a message
    # after ~7.5 s) and an ack_wait well below the outage: held messages live on heartbeats.
    s = arena_settings(
        f"127.0.0.1:{ports.grpc}",
        nats_url,
        nats={"ack_wait_s": 6, "max_deliver": 5, "retry_delay_s": 0.5},
        challenger={"low_water": 2, "high_water": 6, "concurrency": 2, "poll_interval_s": 0.2},
        service={"http_host": "127.0.0.1"},
        data_dir=str(tmp_path / "data"),
    )
    http = {name: free_port() for name in SERVICES}
    nc = await connect(s.nats)
    js = nc.jetstream()

    async def count(stream: str) -> int:
        try:
            return int((await js.stream_info(stream)).state.messages)
        except Exception:  # not created yet
            return 0

    async def samples() -> int:
        return await count(subjects.STREAM_SAMPLES)

    stop = asyncio.Event()
    services = [
        asyncio.create_task(run_service(load(n), s, stop, http_port=http[n])) for n in SERVICES
    ]
    try:
        await wait_until(lambda: _at_least(samples, 3), 120, "3 samples before the outage")

        async def work_queued() -> bool:  # challenges or battles waiting or being handled
            infos = [
                await js.consumer_info(stream, c)
                for stream, c in (
                    (subjects.STREAM_CHALLENGES, subjects.CONSUMER_RESPONDER),
                    (subjects.STREAM_BATTLES, subjects.CONSUMER_JUDGE),
                )
            ]
            return any(int(i.num_pending or 0) + int(i.num_ack_pending or 0) for i in infos)

        # Take Triton down while work is queued for a model-calling stage (on a loaded machine
        # the pipeline can run dry between mined challenges): that work must be held, not failed.
        await wait_until(work_queued, 60, "work queued for the responder or the judge")

        if KILL:  # the whole session: PyTriton's tritonserver child too
            os.killpg(triton.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(triton.stop)
        down_at = time.monotonic()
        judge_ready = f"http://127.0.0.1:{http['judge']}/readyz"
        judge_status = f"http://127.0.0.1:{http['judge']}/statusz"
        await wait_until(lambda: asyncio.to_thread(_degraded, judge_status), 5, "degraded")
        # Sample the consumers through the outage (one snapshot can fall between messages on a
        # loaded machine): the most held at once, and the redeliveries at the end.
        most_held = 0
        while True:
            held = {
                c: await js.consumer_info(stream, c)
                for stream, c in (
                    (subjects.STREAM_CHALLENGES, subjects.CONSUMER_RESPONDER),
                    (subjects.STREAM_BATTLES, subjects.CONSUMER_JUDGE),
                )
            }
            most_held = max(most_held, sum(int(i.num_ack_pending or 0) for i in held.values()))
            if time.monotonic() - down_at >= OUTAGE_S - 1:
                break
            await asyncio.sleep(0.5)
        assert await asyncio.to_thread(_degraded, judge_status)  # still reported down
        # ... and still Ready: unready pods would block node drains behind the PDBs.
        assert await asyncio.to_thread(http_ok, judge_ready)
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        outage = time.monotonic() - down_at

        triton = await asyncio.to_thread(start_triton, ports, tmp_path / "triton.log")
        ready_at = time.monotonic()
        at_ready = await samples()
        await wait_until(lambda: _at_least(samples, at_ready + 1), 60, "a sample after ready")
        first_sample_s = time.monotonic() - ready_at
        await wait_until(lambda: _at_least(samples, at_ready + 3), 60, "3 samples after ready")
        await wait_until(lambda: _not(asyncio.to_thread(_degraded, judge_status)), 10, "ok")
    finally:
        stop.set()
        done, pending = await asyncio.wait(services, timeout=60)
        for task in pending:
            task.cancel()
        await asyncio.gather(*services, return_exceptions=True)
        triton.stop()
    dead_letters = await count(subjects.STREAM_DLQ)
    total = await samples()
    await nc.drain()
    for task in done:
        assert task.exception() is None, task.exception()

    in_flight = most_held
    redelivered = sum(int(i.num_redelivered or 0) for i in held.values())
    print(
        f"\noutage {outage:.1f}s: dead letters {dead_letters}, messages held {in_flight}, "
        f"redelivered {redelivered}, samples {total} ({at_ready} at ready), "
        f"first sample {first_sample_s:.2f}s after ready"
    )
    assert in_flight > 0  # work was in flight through the outage: held, not failed
    assert redelivered == 0  # no delivery spent: the messages stayed with their handlers
    assert dead_letters == 0
    assert first_sample_s <= 10


async def _at_least(count, n: int) -> bool:
    return await count() >= n


async def _not(check) -> bool:
    return not await check


def _degraded(url: str) -> bool:
    """Whether the service's /statusz reports a degraded dependency (a model down)."""
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(json.load(resp)["status"] == "degraded")
