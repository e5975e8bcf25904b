"""The continuous-batching test backend's engine: step timing, capacity queueing, token counts."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from warriorcoder.testing.continuous_batching import (
    BatchedModel,
    BatchingParams,
    ContinuousBatcher,
    OutputLengths,
)

PARAMS = BatchingParams(capacity=4, base_step_s=0.01, per_seq_step_s=0.002)


class FakeSleep:
    """Records each step's duration instead of waiting; ``after`` runs after step k (1-based)."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.after: dict[int, Callable[[], None]] = {}

    async def __call__(self, seconds: float) -> None:
        self.steps.append(round(seconds, 6))
        await asyncio.sleep(0)  # let callers queue requests, as they would while a step runs
        hook = self.after.get(len(self.steps))
        if hook is not None:
            hook()
            await asyncio.sleep(0)  # a request the hook started is queued before the step ends


def test_step_time_grows_with_active_sequences_up_to_capacity() -> None:
    assert PARAMS.step_s(1) == pytest.approx(0.012)
    assert PARAMS.step_s(3) == pytest.approx(0.016)
    assert PARAMS.step_s(10) == pytest.approx(0.018)  # capped at capacity 4
    assert PARAMS.peak_tokens_per_s() == pytest.approx(4 / 0.018)


async def test_one_sequence_takes_one_step_per_token() -> None:
    sleep = FakeSleep()
    batcher = ContinuousBatcher(PARAMS, sleep=sleep)
    try:
        assert await batcher.generate(3) == 3
    finally:
        await batcher.aclose()
    assert sleep.steps == [0.012, 0.012, 0.012]
    stats = batcher.stats()
    assert (stats.steps, stats.tokens, stats.finished) == (3, 3, 1)
    assert stats.busy_s == pytest.approx(0.036)


async def test_sequences_share_steps_and_leave_when_done() -> None:
    sleep = FakeSleep()
    batcher = ContinuousBatcher(PARAMS, sleep=sleep)
    try:
        got = await asyncio.gather(batcher.generate(2), batcher.generate(4))
    finally:
        await batcher.aclose()
    assert got == [2, 4]
    # two running for two steps, then the longer one alone: 4 steps, not the 6 of one at a time
    assert sleep.steps == [0.014, 0.014, 0.012, 0.012]
    assert batcher.stats().tokens == 6
    assert batcher.stats().peak_active == 2


async def test_requests_beyond_capacity_wait_in_fcfs_order() -> None:
    sleep = FakeSleep()
    batcher = ContinuousBatcher(
        BatchingParams(capacity=2, base_step_s=0.01, per_seq_step_s=0.002), sleep=sleep
    )
    finished: list[str] = []

    async def run(name: str, tokens: int) -> None:
        await batcher.generate(tokens)
        finished.append(name)

    try:
        await asyncio.gather(run("a", 2), run("b", 3), run("c", 2))
    finally:
        await batcher.aclose()
    # a and b run; a leaves after step 2 and c takes its slot for steps 3-4
    assert sleep.steps == [0.014, 0.014, 0.014, 0.012]
    assert finished == ["a", "b", "c"]
    stats = batcher.stats()
    assert (stats.peak_active, stats.tokens, stats.steps) == (2, 7, 4)


async def test_a_request_joins_the_running_batch_at_the_next_step() -> None:
    sleep = FakeSleep()
    batcher = ContinuousBatcher(PARAMS, sleep=sleep)
    late: list[asyncio.Task[int]] = []
    sleep.after[1] = lambda: late.append(asyncio.create_task(batcher.generate(1)))
    try:
        assert await batcher.generate(3) == 3
        assert await late[0] == 1
    finally:
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        await batcher.aclose()
    assert sleep.steps == [0.012, 0.014, 0.012]


async def test_an_aborted_request_frees_its_slot_and_is_not_counted() -> None:
    sleep = FakeSleep()
    batcher = ContinuousBatcher(
        BatchingParams(capacity=1, base_step_s=0.01, per_seq_step_s=0.0), sleep=sleep
    )
    first = asyncio.create_task(batcher.generate(2))
    queued = asyncio.create_task(batcher.generate(5))
    await asyncio.sleep(0)
    queued.cancel()
    try:
        assert await first == 2
        with pytest.raises(asyncio.CancelledError):
            await queued
    finally:
        await batcher.aclose()
    stats = batcher.stats()
    assert (stats.steps, stats.tokens, stats.finished) == (2, 2, 1)
    assert stats.waiting == stats.active == 0


async def test_generate_refuses_a_length_below_one() -> None:
    batcher = ContinuousBatcher(PARAMS)
    with pytest.raises(ValueError, match="tokens: expected an integer >= 1"):
        await batcher.generate(0)


def test_output_lengths() -> None:
    rng = random.Random(1)
    assert OutputLengths.parse("text").draw(256, 37, rng) == 37
    assert OutputLengths.parse("max_tokens").draw(256, 37, rng) == 256
    assert OutputLengths.parse("text").draw(256, 0, rng) == 1  # vLLM emits at least one token
    uniform = OutputLengths.parse("uniform:10:20")
    drawn = [uniform.draw(256, 0, rng) for _ in range(200)]
    assert min(drawn) >= 10 and max(drawn) <= 20 and len(set(drawn)) > 5
    assert {uniform.draw(12, 0, rng) for _ in range(50)} <= set(range(10, 13))  # capped


@pytest.mark.parametrize("text", ["uniform:0:5", "uniform:9:3", "normal:1:2", "uniform:a:b", ""])
def test_output_lengths_refuse_bad_specs(text: str) -> None:
    with pytest.raises(ValueError, match="expected 'text', 'max_tokens' or 'uniform:LO:HI'"):
        OutputLengths.parse(text)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"capacity": 0}, "capacity: expected an integer >= 1"),
        ({"base_step_s": -1}, "base_step_s: expected a number >= 0"),
        ({"lengths": "gauss"}, "lengths: expected"),
        ({"strength": 11}, "strength: must be in 1..10"),
        ({"name": "a b"}, "name: invalid model name"),
    ],
)
def test_models_file_entries_are_checked(changes: dict[str, object], error: str) -> None:
    entry: dict[str, object] = {"name": "alpha", "strength": 5, **changes}
    with pytest.raises(ValueError, match=error):
        BatchedModel(**entry)  # type: ignore[arg-type]
