"""Outages pause instead of failing: the circuit, the Triton pool's use of it (backend calls and
readiness scripted, no server), and the challenger's workers waiting for a model to be back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tests.conftest import SCRIPTED_MODELS
from tests.helpers import arena_settings
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime.circuit import Circuit
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.settings import ModelSettings
from warriorcoder.runtime.stage import Deps
from warriorcoder.runtime.triton import (
    BackendDown,
    Generation,
    InferenceError,
    InferenceTimeout,
    RetryableInferenceError,
    TritonPool,
    classify_in_band,
)
from warriorcoder.stages.challenger.service import STAGE, run
from warriorcoder.testing.fakes import FakeBuckets, FakeInference, FakePublisher
from warriorcoder.testing.scripted import load_models

SP = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=16)
PROBE_S = 0.05


class Backend:
    """A scripted model behind the pool: ``up`` decides readiness probes and calls alike."""

    def __init__(self, error: Callable[[], InferenceError] | None = None) -> None:
        self.up = True
        self.calls = 0
        self.probes = 0
        self.error = error or (lambda: RetryableInferenceError("alpha", "gRPC UNAVAILABLE"))

    async def probe(self) -> bool:
        self.probes += 1
        return self.up

    async def generate(self, *args: object) -> Generation:
        self.calls += 1
        await asyncio.sleep(0)
        if not self.up:
            raise self.error()
        return Generation("ok", 0.01)


async def scripted_pool(backend: Backend, **changes: object) -> TritonPool:
    base = arena_settings().models["alpha"]
    fields = {f: getattr(base, f) for f in base.__struct_fields__}
    cfg = ModelSettings(**{**fields, "probe_interval_s": PROBE_S, **changes})
    pool = TritonPool({"alpha": cfg})
    await pool.__aenter__()
    b = pool._backends["alpha"]
    b.probe = backend.probe  # type: ignore[method-assign]
    b.circuit._probe = backend.probe
    pool._generate_once = backend.generate  # type: ignore[method-assign]
    return pool


# -- the circuit ----------------------------------------------------------------------------------


async def test_the_prober_closes_the_circuit_once_the_backend_is_ready():
    up = False
    probes = 0

    async def probe() -> bool:
        nonlocal probes
        probes += 1
        return up

    circuit = Circuit("m", probe, probe_interval_s=PROBE_S)
    circuit.trip("down")
    circuit.trip("still down")  # one outage, one prober
    assert circuit.is_open and circuit.outages == 1 and circuit.reason == "still down"
    waiter = asyncio.create_task(circuit.wait_closed())
    await asyncio.sleep(PROBE_S * 4)
    assert not waiter.done() and probes >= 2
    up = True
    back = time.monotonic()
    assert await asyncio.wait_for(waiter, 1) is True
    assert time.monotonic() - back < PROBE_S * 3  # within about one probe interval
    assert not circuit.is_open and circuit.down_s() == 0
    seen = probes
    await asyncio.sleep(PROBE_S * 3)
    assert probes == seen  # closed: nothing probes any more
    await circuit.aclose()


async def test_waiting_ends_at_the_deadline_while_still_down():
    async def probe() -> bool:
        raise OSError("connection refused")  # a probe that fails counts as not ready

    circuit = Circuit("m", probe, probe_interval_s=PROBE_S)
    assert await circuit.wait_closed(time.monotonic() - 1) is True  # closed: at once
    circuit.trip("down")
    start = time.monotonic()
    assert await circuit.wait_closed(circuit.outage_deadline(0.2)) is False
    assert 0.15 < time.monotonic() - start < 1
    assert circuit.is_open and circuit.down_s() >= 0.15
    assert await circuit.wait_closed(circuit.outage_deadline(0.2)) is False  # past: at once
    await circuit.aclose()


async def test_aclose_leaves_no_prober_behind():
    circuit = Circuit("m", _never_ready, probe_interval_s=PROBE_S)
    circuit.trip("down")
    before = len(asyncio.all_tasks())
    await circuit.aclose()
    assert len(asyncio.all_tasks()) == before - 1
    await circuit.aclose()  # twice is fine


async def _never_ready() -> bool:
    return False


# -- the pool -------------------------------------------------------------------------------------


def test_triton_answers_a_model_being_unloaded_with_a_retryable_error():
    """What the real Triton says while it stops or reloads a model, vs. for a model it lacks."""
    unloading = "Request for unknown model: 'alpha' has no available versions"
    assert classify_in_band("alpha", unloading).retryable
    assert not classify_in_band("alpha", "Request for unknown model: 'x' is not found").retryable


async def test_a_call_waits_out_an_outage_and_resumes_when_the_model_is_ready():
    backend = Backend()
    pool = await scripted_pool(backend)
    backend.up = False
    call = asyncio.create_task(pool.generate("alpha", "hi", SP, role="response"))
    await asyncio.sleep(PROBE_S * 6)
    assert not call.done()
    assert backend.calls == 1  # waiting, not retrying: only the prober asks
    assert not pool.available("alpha")
    # a call arriving meanwhile waits without touching the backend
    second = asyncio.create_task(pool.generate("alpha", "hi", SP, role="response"))
    await asyncio.sleep(PROBE_S * 2)
    assert backend.calls == 1
    backend.up = True
    back = time.monotonic()
    gens = await asyncio.wait_for(asyncio.gather(call, second), 1)
    assert [g.text for g in gens] == ["ok", "ok"]
    assert time.monotonic() - back < PROBE_S * 4
    assert pool.available("alpha") and backend.calls == 3
    await pool.__aexit__(None, None, None)


async def test_a_failure_while_the_model_is_ready_is_raised_at_once():
    backend = Backend(error=lambda: InferenceTimeout("alpha", "no final response"))
    pool = await scripted_pool(backend)
    backend.up = False
    pool._backends["alpha"].probe = _always_ready  # type: ignore[method-assign]
    with pytest.raises(InferenceTimeout):
        await pool.generate("alpha", "hi", SP, role="response")
    assert pool.available("alpha")
    await pool.__aexit__(None, None, None)


async def _always_ready() -> bool:
    return True


async def test_a_wrong_request_is_permanent_whatever_the_backend_state():
    backend = Backend(error=lambda: InferenceError("alpha", "temperature must be >= 0"))
    pool = await scripted_pool(backend)
    backend.up = False
    with pytest.raises(InferenceError) as info:
        await pool.generate("alpha", "hi", SP, role="response")
    assert not info.value.retryable and backend.probes == 0 and pool.available("alpha")
    await pool.__aexit__(None, None, None)


async def test_unknown_model_is_an_outage_only_for_a_model_that_served_before():
    def unknown() -> InferenceError:
        return classify_in_band("alpha", "Request for unknown model: 'alpha' is not found")

    backend = Backend(error=unknown)
    pool = await scripted_pool(backend)
    backend.up = False
    with pytest.raises(InferenceError) as info:  # never served: a configuration error
        await pool.generate("alpha", "hi", SP, role="response")
    assert not info.value.retryable
    backend.up = True
    await pool.generate("alpha", "hi", SP, role="response")
    pool._backends["alpha"].served = True  # what a real answer sets (_generate_once is scripted)
    backend.up = False  # the server restarted and has not loaded it yet
    call = asyncio.create_task(pool.generate("alpha", "hi", SP, role="response"))
    await asyncio.sleep(PROBE_S * 4)
    assert not call.done()
    backend.up = True
    assert (await asyncio.wait_for(call, 1)).text == "ok"
    await pool.__aexit__(None, None, None)


async def test_an_outage_longer_than_max_outage_s_raises_backend_down():
    backend = Backend()
    pool = await scripted_pool(backend, max_outage_s=0.3)
    backend.up = False
    start = time.monotonic()
    with pytest.raises(BackendDown) as info:
        await pool.generate("alpha", "hi", SP, role="response")
    assert 0.25 < time.monotonic() - start < 2
    assert info.value.retryable and info.value.reason == "backend_down"
    assert "UNAVAILABLE" in str(info.value)
    # the outage is older than the bound: a new call fails at once, the prober keeps watching
    start = time.monotonic()
    with pytest.raises(BackendDown):
        await pool.generate("alpha", "hi", SP, role="response")
    assert time.monotonic() - start < 0.1
    backend.up = True
    await asyncio.wait_for(pool.wait_available("alpha"), 1)
    assert (await pool.generate("alpha", "hi", SP, role="response")).text == "ok"
    await pool.__aexit__(None, None, None)


async def test_max_outage_s_0_raises_the_failure_as_before():
    backend = Backend()
    pool = await scripted_pool(backend, max_outage_s=0)
    backend.up = False
    with pytest.raises(RetryableInferenceError, match="UNAVAILABLE") as info:
        await pool.generate("alpha", "hi", SP, role="response")
    assert not isinstance(info.value, BackendDown)
    assert backend.probes == 0 and pool.available("alpha")
    await pool.__aexit__(None, None, None)


# -- the challenger -------------------------------------------------------------------------------


class DownInference(FakeInference):
    """Scripted models whose calls fail with ``BackendDown`` while the model is down (an
    outage longer than ``max_outage_s``), as the pool's do."""

    async def generate(self, model: str, *args: object, **kw: object) -> Generation:  # type: ignore[override]
        self.attempts = getattr(self, "attempts", 0) + 1
        if not self.available(model):
            raise BackendDown(model, "not ready for 900s")
        return await super().generate(model, *args, **kw)  # type: ignore[arg-type]


class NoBacklog:
    async def backlog(self, stream: str) -> int:
        return 0


async def test_mining_waits_for_a_model_that_is_down_and_resumes_at_once():
    s = arena_settings(
        challenger={"concurrency": 2, "poll_interval_s": 0.05, "high_water": 1000},
        competitors=["alpha", "beta"],
        judges=["gamma"],
    )
    models = STAGE.models(s)
    inference = DownInference(load_models(SCRIPTED_MODELS))
    for m in models:
        inference.set_available(m, False)
    publisher = FakePublisher()
    deps = Deps(
        settings=s,
        roster=Roster.from_settings(s, models),
        inference=inference,
        publisher=publisher,
        buckets=FakeBuckets(),
        bus=NoBacklog(),  # type: ignore[arg-type]
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run(deps, stop))
    await asyncio.sleep(0.5)
    assert inference.attempts == 2  # one failed call per worker, then waiting: no spinning
    assert publisher.messages(subjects.CHALLENGES) == []
    for m in models:
        inference.set_available(m, True)
    back = time.monotonic()
    while not publisher.messages(subjects.CHALLENGES):
        assert time.monotonic() - back < 1.0, "mining did not resume at once"
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_the_fake_holds_calls_to_a_model_that_is_down():
    inference = FakeInference(load_models(SCRIPTED_MODELS))
    inference.set_available("alpha", False)
    call = asyncio.create_task(inference.generate("alpha", "hi", SP, role="response"))
    await asyncio.sleep(0.05)
    assert not call.done() and not inference.available("alpha") and inference.available("beta")
    inference.set_available("alpha", True)
    assert (await asyncio.wait_for(call, 1)).text
    await asyncio.wait_for(inference.wait_available("alpha"), 1)
