"""Adaptive concurrency against a real Triton serving a continuous-batching test model
(``warriorcoder.testing.continuous_batching``): the limit climbs to about the backend's capacity,
and backs off when another client fills the backend and its latency rises, within seconds even
when the flood is so heavy that almost none of our requests finish (requests still running cut
the limit)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator

import pytest
import yaml

from warriorcoder.launcher.processes import ManagedProcess, start_local_triton
from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime.settings import ChatTemplateSettings, ModelSettings
from warriorcoder.runtime.triton import TritonPool

pytestmark = pytest.mark.integration

MODULE = "warriorcoder.testing.continuous_batching"
CAPACITY = 8
STEP_S = 0.04  # per decoding step, flat up to capacity: beyond it requests queue
TOKENS = 5  # per request: 0.2 s in a batch that is not full
TOLERANCE = 1.5  # so the limit should settle near 1.5 x capacity (latency 1.5 x its floor)
MODEL = {
    "name": "gpu",
    "strength": 9,
    "capacity": CAPACITY,
    "base_step_s": STEP_S,
    "per_seq_step_s": 0.0,
    "lengths": "max_tokens",
}


@pytest.fixture(scope="module")
def gpu_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("adaptive")
    models_file = tmp / "models.yaml"
    models_file.write_text(yaml.safe_dump({"models": [MODEL]}))
    proc: ManagedProcess = start_local_triton(
        MODULE, models_file, ["gpu"], log_path=tmp / "triton.log"
    )
    try:
        yield f"127.0.0.1:{proc.ports['grpc']}"
    finally:
        proc.stop()


def _cfg(url: str, **changes: object) -> ModelSettings:
    return ModelSettings(
        triton_url=url,
        triton_model="gpu",
        chat_template=ChatTemplateSettings(preset="chatml"),
        **changes,  # type: ignore[arg-type]
    )


async def _drive(pool: TritonPool, stop: asyncio.Event, callers: int, tokens: int) -> int:
    """``callers`` loops calling the model until ``stop``; the requests done."""
    sp = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=tokens)
    done = 0

    async def loop() -> None:
        nonlocal done
        while not stop.is_set():
            await pool.generate("gpu", "Reverse a list.", sp, role="response")
            done += 1

    await asyncio.gather(*(loop() for _ in range(callers)))
    return done


async def _watch(pool: TritonPool, seconds: float) -> list[int]:
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(pool.limits()[("gpu", pool._backends["gpu"].endpoint)])
        await asyncio.sleep(0.05)
    return seen


async def _watch_timed(pool: TritonPool, seconds: float) -> list[tuple[float, int]]:
    """(seconds since the start, limit) every 50 ms."""
    seen = []
    start = time.monotonic()
    while (t := time.monotonic() - start) < seconds:
        seen.append((t, pool.limits()[("gpu", pool._backends["gpu"].endpoint)]))
        await asyncio.sleep(0.05)
    return seen


async def test_the_limit_finds_the_capacity_and_backs_off_when_latency_rises(gpu_url):
    cfg = _cfg(
        gpu_url,
        max_concurrency=64,
        initial_concurrency=2,
        latency_tolerance=TOLERANCE,
    )
    flood_cfg = _cfg(gpu_url, max_concurrency=4 * CAPACITY, adaptive_concurrency=False)
    async with TritonPool({"gpu": cfg}) as pool, TritonPool({"gpu": flood_cfg}) as flood:
        stop, stop_flood = asyncio.Event(), asyncio.Event()
        # far more callers than the backend takes: only the limit keeps them out of its queue
        load = asyncio.create_task(_drive(pool, stop, 64, TOKENS))
        try:
            started = time.monotonic()
            climb = await _watch(pool, 8.0)
            # another client keeps twice a full batch of the same requests in flight: ours now
            # queue behind them, their latency at least doubles whatever our limit
            other = asyncio.create_task(_drive(flood, stop_flood, 2 * CAPACITY, TOKENS))
            try:
                crowded = await _watch(pool, 8.0)
            finally:
                stop_flood.set()
                await other
            recovered = await _watch(pool, 6.0)
        finally:
            stop.set()
            served = await load
    elapsed = time.monotonic() - started
    settled = climb[len(climb) // 2 :]
    level = statistics.median(settled)
    # it reached the capacity (a full batch) from 2, and settles near tolerance x capacity
    # rather than at the 64 callers or the cap
    assert max(climb) >= CAPACITY, climb
    assert CAPACITY <= level <= 2.5 * CAPACITY, settled
    # the flood at least doubles the latency: the limit falls well below its level
    assert min(crowded) <= level / 2, crowded
    assert statistics.median(crowded[len(crowded) // 2 :]) < level, crowded
    # once the flood ends it climbs back to the capacity
    assert max(recovered[len(recovered) // 2 :]) >= CAPACITY, recovered
    # about capacity-bound throughput overall (40 requests/s at capacity; less while crowded)
    assert served / elapsed > 0.3 * CAPACITY / (STEP_S * TOKENS), (served, elapsed)
    print(f"limits: climb {climb[::10]}, crowded {crowded[::10]}, recovered {recovered[::10]}")
    print(f"served {served / elapsed:.1f} requests/s")


FLOOD_CALLERS = 32  # another client's requests in flight: four full batches
FLOOD_TOKENS = 50  # 2 s each in a batch: ours queue behind them for about 7 s


async def test_a_heavy_flood_cuts_the_limit_while_our_requests_are_stuck(gpu_url):
    cfg = _cfg(gpu_url, max_concurrency=64, initial_concurrency=2, latency_tolerance=TOLERANCE)
    flood_cfg = _cfg(gpu_url, max_concurrency=FLOOD_CALLERS, adaptive_concurrency=False)
    async with TritonPool({"gpu": cfg}) as pool, TritonPool({"gpu": flood_cfg}) as flood:
        stop, stop_flood = asyncio.Event(), asyncio.Event()
        load = asyncio.create_task(_drive(pool, stop, 64, TOKENS))
        try:
            climb = await _watch(pool, 6.0)
            other = asyncio.create_task(_drive(flood, stop_flood, FLOOD_CALLERS, FLOOD_TOKENS))
            try:
                crowded = await _watch_timed(pool, 8.0)
            finally:
                stop_flood.set()
                await other
            recovered = await _watch(pool, 12.0)
        finally:
            stop.set()
            await load
    level = statistics.median(climb[len(climb) // 2 :])
    at = {round(t, 1): limit for t, limit in crowded[::5]}
    print(f"level {level}; since the flood began (s: limit): {at}; recovered {recovered[::20]}")
    assert level >= CAPACITY, climb
    # the limit as the flood began (windows of requests that finished before it may still close
    # in the first half second)
    top = max(limit for t, limit in crowded if t <= 0.5)
    # our requests now take about 7 s and hardly any finish: the windows of finished requests
    # alone cut 19 -> 13 and hold it there for the 8 s. The running ones' timeouts cut it as
    # soon as the first is overdue (RTO and budget both about 3 x an unloaded request: well
    # within a second), then after 2 and 4 times that (TCP's backoff; the RTO also grows as
    # stuck requests finish): a quarter off within 1.5 s, half by the end
    assert min(limit for t, limit in crowded if t <= 1.5) <= 0.8 * top, crowded
    assert crowded[-1][1] <= top / 2, crowded
    assert statistics.median(limit for _, limit in crowded[len(crowded) // 2 :]) <= 0.6 * top
    # once the flood has drained it climbs back to the capacity
    assert max(recovered) >= CAPACITY, recovered
