"""The Triton pool's adaptive concurrency, with the gRPC stream scripted (no server): what each
request reports to its endpoint's limit, and the limit metric."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.helpers import arena_settings
from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime import metrics
from warriorcoder.runtime.limiter import FixedLimit, GradientLimit, Sample
from warriorcoder.runtime.settings import ModelSettings
from warriorcoder.runtime.triton import (
    InferenceError,
    RetryableInferenceError,
    TritonPool,
    _Received,
    concurrency_limit,
)

SP = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=16)
URL = "127.0.0.1:1"


class Recording(FixedLimit):
    """A fixed limit that keeps the samples it is fed."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.samples: list[Sample] = []
        self.restarts = 0

    def add(self, sample: Sample) -> int:
        self.samples.append(sample)
        return super().add(sample)

    def restart(self) -> None:
        self.restarts += 1


def model(**changes: object) -> ModelSettings:
    base = arena_settings(URL).models["alpha"]
    fields = {f: getattr(base, f) for f in base.__struct_fields__}
    return ModelSettings(**{**fields, "probe_interval_s": 0.02, **changes})


async def scripted(
    cfg: ModelSettings, stream: Callable[[], object], limit: int = 1
) -> tuple[TritonPool, Recording]:
    pool = TritonPool({"alpha": cfg})
    await pool.__aenter__()
    backend = pool._backends["alpha"]
    rec = Recording(limit)
    backend.gate.algorithm = rec

    async def stream_once(*args: object) -> _Received:
        return await stream()  # type: ignore[misc]

    pool._stream_once = stream_once  # type: ignore[method-assign]
    return pool, rec


async def test_waiting_for_a_slot_is_not_backend_latency():
    async def stream() -> _Received:
        await asyncio.sleep(0.1)
        return _Received(["ok"], "stop", 5)

    pool, rec = await scripted(model(), stream, limit=1)
    try:
        gens = await asyncio.gather(
            *(pool.generate("alpha", "p", SP, role="response") for _ in range(3))
        )
    finally:
        await pool.__aexit__(None, None, None)
    # one at a time: the third waited 0.2 s for its slot, yet every sample is one call's 0.1 s
    assert [s.tokens for s in rec.samples] == [5, 5, 5]
    assert all(0.09 < s.latency_s < 0.18 for s in rec.samples), rec.samples
    assert all(g.latency_s < 0.18 for g in gens)
    assert [s.in_flight for s in rec.samples] == [1, 1, 1]
    assert not any(s.dropped for s in rec.samples)


async def test_overload_counts_as_a_drop_and_a_bad_request_as_nothing():
    errors = [
        RetryableInferenceError("alpha", "gRPC RESOURCE_EXHAUSTED: queue full"),
        InferenceError("alpha", "invalid sampling parameter"),
    ]

    async def stream() -> _Received:
        raise errors.pop(0)

    pool, rec = await scripted(model(), stream, limit=4)
    pool._backends["alpha"].probe = _ready  # type: ignore[method-assign]
    try:
        with pytest.raises(RetryableInferenceError):
            await pool.generate("alpha", "p", SP, role="response")
        with pytest.raises(InferenceError):
            await pool.generate("alpha", "p", SP, role="response")
    finally:
        await pool.__aexit__(None, None, None)
    assert len(rec.samples) == 1 and rec.samples[0].dropped
    assert rec.restarts == 0  # the model was ready: overload, not an outage


async def test_an_outage_restarts_the_limit_once():
    up = False
    calls = 0

    async def stream() -> _Received:
        nonlocal calls
        calls += 1
        if not up:
            raise RetryableInferenceError("alpha", "gRPC UNAVAILABLE: connection refused")
        return _Received(["ok"], "stop", 3)

    async def probe() -> bool:
        return up

    pool, rec = await scripted(model(), stream, limit=4)
    backend = pool._backends["alpha"]
    backend.probe = probe  # type: ignore[method-assign]
    backend.circuit._probe = probe
    try:
        task = asyncio.gather(*(pool.generate("alpha", "p", SP, role="r") for _ in range(3)))
        await asyncio.sleep(0.1)
        assert backend.circuit.is_open
        up = True
        await asyncio.wait_for(task, 2)
    finally:
        await pool.__aexit__(None, None, None)
    assert rec.restarts == 1  # one outage, however many calls met it
    assert sum(not s.dropped for s in rec.samples) == 3


async def test_the_limit_is_exported_per_model_and_endpoint():
    gauge = metrics.INFERENCE_CONCURRENCY_LIMIT.labels(model="alpha", endpoint=URL)
    busy = metrics.INFERENCE_IN_FLIGHT.labels(model="alpha", endpoint=URL)
    release = asyncio.Event()

    async def stream() -> _Received:
        await release.wait()
        return _Received(["ok"], "stop", 1)

    pool = TritonPool({"alpha": model(max_concurrency=64, initial_concurrency=3)})
    await pool.__aenter__()
    pool._stream_once = lambda *a: stream()  # type: ignore[method-assign,assignment]
    try:
        assert pool.limits() == {("alpha", URL): 3}
        assert gauge._value.get() == 3
        calls = [asyncio.create_task(pool.generate("alpha", "p", SP, role="r")) for _ in range(5)]
        await asyncio.sleep(0.02)
        assert busy._value.get() == 3  # two wait in the gate, not at the backend
        release.set()
        await asyncio.gather(*calls)
        assert busy._value.get() == 0
    finally:
        await pool.__aexit__(None, None, None)


def test_the_settings_choose_the_algorithm():
    fixed = concurrency_limit(model(adaptive_concurrency=False, max_concurrency=32))
    assert isinstance(fixed, FixedLimit) and fixed.limit == 32
    adaptive = concurrency_limit(
        model(max_concurrency=512, min_concurrency=2, latency_tolerance=1.5)
    )
    assert isinstance(adaptive, GradientLimit)
    assert (adaptive.limit, adaptive.min_limit, adaptive.max_limit) == (8, 2, 512)
    assert adaptive.tolerance == 1.5


async def _ready() -> bool:
    return True
