"""Adaptive concurrency: the gradient limit on hand-computed sequences, the asyncio gate around it,
and the settings that configure it."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import arena_tree
from warriorcoder.runtime.limiter import (
    ConcurrencyGate,
    FixedLimit,
    GradientLimit,
    Running,
    Sample,
)
from warriorcoder.runtime.settings import ConfigError, ModelSettings, parse_settings


def limiter(**changes: float) -> GradientLimit:
    """Small windows (4 samples below a limit of 8) so sequences stay short to compute."""
    args: dict = dict(
        initial=4,
        min_limit=1,
        max_limit=32,
        tolerance=2.0,
        smoothing=0.2,
        backoff=0.75,
        min_window=4,
        rebase_windows=5,
    )
    args.update(changes)
    return GradientLimit(**args)


def window(
    lim: GradientLimit,
    latency_s: float = 1.0,
    tokens: int | None = 8,
    in_flight: int | None = None,
    drops: int = 0,
) -> int:
    """One full window of samples (``drops`` of them dropped); the limit after it."""
    n = lim.window
    busy = lim.limit if in_flight is None else in_flight
    before = lim.windows
    for i in range(n):
        lim.add(Sample(latency_s, tokens, busy, dropped=i < drops))
    assert lim.windows == before + 1  # exactly one decision per window
    return lim.limit


# -- the algorithm --------------------------------------------------------------------------------


def test_the_limit_doubles_under_flat_latency_and_never_passes_the_cap():
    lim = limiter()
    # window 1: 1.0 s / 8 tokens = 0.125 s per token, the baseline; slow start doubles 4 -> 8
    assert [window(lim) for _ in range(4)] == [8, 16, 32, 32]  # 32 + sqrt(32) capped at 32
    assert lim.baseline == 0.125
    assert lim.window == 16  # half the limit: about half a round trip of completions
    for _ in range(5):
        assert window(lim) == 32


def test_no_decision_before_the_window_is_full():
    lim = limiter()
    for _ in range(3):
        assert lim.add(Sample(1.0, 8, 4)) == 4
    assert lim.windows == 0
    assert lim.add(Sample(1.0, 8, 4)) == 8


def test_rising_latency_shrinks_the_limit_then_growth_is_additive():
    lim = limiter(initial=16, max_limit=64)
    assert window(lim) == 32  # 0.125 s/token: baseline; slow start 16 -> 32
    # 4.0 s / 8 tokens = 0.5 s/token, four times the baseline: gradient max(0.5, 0.25/0.5) = 0.5
    # 32 * (1 - 0.2) + 32 * 0.5 * 0.2 = 28.8
    assert window(lim, latency_s=4.0) == 28
    assert lim.window == 14
    # flat again: no more slow start after congestion, 28.8 + sqrt(28.8) = 34.17
    assert window(lim) == 34
    # 0.3 s/token: gradient 0.25 / 0.3; 34.17 * 0.8 + 34.17 * 0.8333 * 0.2 = 33.03
    assert window(lim, latency_s=2.4) == 33


def test_the_gradient_is_floored_at_one_half_per_window():
    lim = limiter(initial=32)
    window(lim)  # baseline 0.125
    # 100 times slower: gradient still 0.5, so one window cuts at most 10 %
    assert window(lim, latency_s=100.0) == 28  # 32 * 0.9 = 28.8


def test_an_overloaded_backend_cuts_the_limit_multiplicatively():
    lim = limiter(initial=32)
    assert window(lim, drops=1) == 24  # one drop in the window: 32 * 0.75
    assert window(lim, drops=12) == 18  # 24 * 0.75; all dropped: no latency needed
    assert lim.baseline is None  # dropped requests tell no latency
    # flat again: a fresh baseline, and growth is additive (congestion ended slow start)
    assert window(lim) == 22  # 18 + sqrt(18) = 22.24


def test_the_limit_never_drops_below_the_minimum():
    lim = limiter(min_limit=2)
    assert [window(lim, drops=1) for _ in range(4)] == [3, 2, 2, 2]  # 4*.75=3, 2.25, 1.69->2
    lim = limiter(min_limit=2, initial=2)
    window(lim)  # baseline
    for _ in range(10):
        assert window(lim, latency_s=50.0) >= 2


def test_no_growth_while_the_caller_leaves_the_limit_unused():
    lim = limiter(initial=8)
    # at most 3 of 8 in flight (3 * 2 < 8): latency is flat, but the backend never proved it
    # takes more than it got
    assert [window(lim, in_flight=3) for _ in range(3)] == [8, 8, 8]
    assert window(lim, in_flight=4) == 16  # half used: slow start resumes


def test_latency_is_normalised_by_the_tokens_generated():
    lim = limiter()
    window(lim)  # baseline 0.125 s/token
    # short and long answers at the same speed per token: 0.5 s / 4 and 4.0 s / 32
    n = lim.window
    for i in range(n):
        lim.add(Sample(0.5 if i % 2 else 4.0, 4 if i % 2 else 32, lim.limit))
    assert lim.limit == 16  # flat: doubled, although a 32-token request took 32x the baseline
    # sum(latency) / sum(tokens): a window of long answers 2.5x slower per token shrinks it
    assert window(lim, latency_s=10.0, tokens=32) == 15  # 0.3125 s/token: 16 * (0.8 + 0.8*.2)


def test_without_token_counts_each_request_counts_as_one():
    lim = limiter()
    assert window(lim, latency_s=2.0, tokens=None) == 8  # baseline 2.0 s per request
    assert lim.baseline == 2.0
    assert window(lim, latency_s=4.0, tokens=None) == 16  # 2x: within the tolerance
    assert window(lim, latency_s=5.0, tokens=0) == 15  # 0 tokens: one; 16 * (0.8 + 0.8 * 0.2)


def test_recovery_after_an_outage_slow_starts_back_to_the_old_limit():
    lim = limiter()
    assert [window(lim) for _ in range(3)] == [8, 16, 32]
    lim.restart()
    assert lim.limit == 1 and lim.baseline is None
    # the restarted backend is slower (0.25 s/token): a new baseline, not congestion
    assert [window(lim, latency_s=2.0) for _ in range(6)] == [2, 4, 8, 16, 32, 32]
    assert lim.baseline == 0.25


def test_a_backend_that_stays_slower_gets_a_new_baseline_at_the_floor():
    lim = limiter()
    assert window(lim) == 8  # baseline 0.125
    # now 1.0 s/token for good: each window 8 * 0.9^k; int() reaches 1 at k = 14 (1.83)
    limits = [window(lim, latency_s=8.0) for _ in range(14)]
    assert limits == sorted(limits, reverse=True) and limits[-1] == 1 and limits[-2] == 2
    # at the floor (and still 8x the baseline) for five windows: 14 .. 18
    for _ in range(3):
        window(lim, latency_s=8.0, in_flight=1)
        assert lim.baseline == 0.125
    window(lim, latency_s=8.0, in_flight=1)
    assert lim.baseline == 1.0  # re-measured: the backend at minimum concurrency
    # flat at the new baseline: additive from the estimate 8 * 0.9^18 = 1.20
    assert window(lim, latency_s=8.0) == 2  # 1.20 + sqrt(1.20) = 2.30
    assert window(lim, latency_s=8.0) == 3  # 2.30 + sqrt(2.30) = 3.81


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="min_limit <= initial <= max_limit"):
        GradientLimit(initial=9, min_limit=1, max_limit=8)
    with pytest.raises(ValueError, match="tolerance"):
        GradientLimit(initial=1, max_limit=8, tolerance=0.5)
    with pytest.raises(ValueError, match="limit"):
        FixedLimit(0)


def test_a_fixed_limit_ignores_samples():
    lim = FixedLimit(8)
    for s in (Sample(100.0, 1, 8, dropped=True), Sample(0.01, 100, 8)):
        assert lim.add(s) == 8
    lim.restart()
    assert lim.limit == 8


# -- requests still running (TCP's retransmission timeout) ----------------------------------------


def test_the_deadline_is_the_rto_or_the_token_budget_at_the_tolerated_latency():
    lim = limiter()
    assert lim.deadline(8) is None  # no request finished yet: nothing to time against
    window(lim)  # four samples of 1.0 s for 8 tokens
    # RFC 6298: SRTT 1.0; RTTVAR 0.5, then 3/4 of it per identical sample: 0.2109375
    assert lim.srtt == 1.0 and lim.rttvar == 0.2109375
    rto = 1.0 + 4 * 0.2109375  # 1.84375
    assert lim.deadline(None) == rto  # no budget: the RTO alone
    assert lim.deadline(4) == rto  # 2.0 x 0.125 x 4 = 1.0 is shorter
    assert lim.deadline(8) == 2.0  # 2.0 x 0.125 x 8
    assert lim.deadline(32) == 8.0


def test_an_overdue_request_cuts_the_limit_and_the_timer_doubles():
    lim = limiter()
    assert window(lim) == 8  # baseline 0.125 s/token
    running = [Running(0.0, 8), Running(0.5, 32)]  # deadlines 2.0 and 8.0
    assert lim.check(1.0, running) == 2.0 and lim.limit == 8  # due at 0 + 2.0: not yet
    # at 2.0 the first is overdue: a loss, 8 x 0.75; the timer restarts for both from now,
    # doubled: 2.0 + 2 x 2.0 = 6.0 (the second: 2.0 + 2 x 8.0 = 18.0)
    assert lim.check(2.0, running) == 6.0 and lim.limit == 6
    assert lim.check(3.0, running) == 6.0 and lim.limit == 6  # one cut per timeout
    assert lim.check(6.0, running) == 14.0 and lim.limit == 4  # 4.5; next 6 + 4 x 2.0
    assert lim.check(14.0, running) == 30.0 and lim.limit == 3  # 3.375; next 14 + 8 x 2.0
    assert lim.timeouts == 3
    # the requests end; a window within the tolerance ends the timer's backoff, and growth is
    # additive (a timeout is congestion: no slow start): 3.375 + sqrt(3.375) = 5.21
    assert window(lim) == 5
    assert lim.timeouts == 0 and lim.deadline(8) == 2.0
    assert lim.check(40.0, []) is None and lim.limit == 5  # nothing running


def test_the_timer_backs_off_to_sixty_four_times_at_most():
    lim = limiter(initial=32)
    assert window(lim) == 32  # at the cap; deadline(8) = 2.0
    running = [Running(0.0, 8)]
    due = lim.check(0.0, running)
    dues = []
    for _ in range(13):
        assert due is not None
        due = lim.check(due, running)  # each check at its due time cuts once
        dues.append(due)
    # the timer restarts at each cut with 2.0 x 2^k, k capped at 6 (128 s)
    assert dues == [6.0, 14.0, 30.0, 62.0, 126.0, 254.0] + [254.0 + 128 * i for i in range(1, 8)]
    assert lim.timeouts == 6
    assert lim.limit == 1  # 32 x 0.75^13 = 0.76: the floor


def test_short_answers_that_are_mostly_prefill_are_not_overdue():
    lim = limiter()
    # long answers (4.0 s for 32 tokens) and one-token ones that still take 0.5 s (the prompt)
    for i in range(lim.window):
        lim.add(Sample(4.0 if i % 2 == 0 else 0.5, 32 if i % 2 == 0 else 1, lim.limit))
    assert lim.baseline == 9.0 / 66  # per token: a one-token budget would allow 0.27 s
    # RFC 6298 over 4.0, 0.5, 4.0, 0.5: SRTT 3.2275390625, RTTVAR 2.197265625
    assert lim.deadline(1) == pytest.approx(3.2275390625 + 4 * 2.197265625)
    assert lim.check(0.5, [Running(0.0, 1)]) == pytest.approx(12.0166015625)
    assert lim.limit == 8  # a 0.5 s one-token answer cuts nothing


def test_without_token_counts_the_budget_is_not_used():
    lim = limiter()
    window(lim, latency_s=2.0, tokens=None)  # the baseline is per request: 2.0 s
    # 2 x 2.0 x 512 would be 2048 s; the RTO is 2.0 + 4 x 0.421875
    assert lim.deadline(512) == 3.6875


def test_an_outage_forgets_the_timer():
    lim = limiter()
    window(lim)
    lim.check(2.0, [Running(0.0, 8)])
    assert lim.timeouts == 1
    lim.restart()
    assert lim.deadline(8) is None and lim.timeouts == 0
    assert lim.check(100.0, [Running(0.0, 8)]) is None and lim.limit == 1


def test_a_fixed_limit_has_no_timer():
    assert FixedLimit(4).check(100.0, [Running(0.0, 1)]) is None


# -- the gate -------------------------------------------------------------------------------------


async def test_the_gate_admits_up_to_the_limit_first_come_first_served():
    seen: list[tuple[int, int]] = []
    gate = ConcurrencyGate(FixedLimit(2), on_change=lambda lim, busy: seen.append((lim, busy)))
    order: list[int] = []
    release = asyncio.Event()

    async def call(i: int) -> None:
        async with gate.slot() as slot:
            order.append(i)
            assert slot.in_flight <= 2
            await release.wait()

    tasks = [asyncio.create_task(call(i)) for i in range(5)]
    await asyncio.sleep(0.01)
    assert order == [0, 1] and gate.in_flight == 2 and gate.waiting == 3
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert gate.in_flight == 0 and gate.waiting == 0
    assert max(busy for _, busy in seen) == 2 and seen[-1] == (2, 0)


async def test_a_growing_limit_wakes_waiters_and_a_shrinking_one_holds_them():
    lim = limiter(initial=1, min_window=1)
    gate = ConcurrencyGate(lim)
    got = asyncio.Event()

    async def waiter() -> None:
        async with gate.slot():
            got.set()

    async with gate.slot() as slot:
        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.01)
        assert gate.waiting == 1
        slot.done(1.0, 8)  # closes a one-sample window: slow start 1 -> 2
    await asyncio.wait_for(got.wait(), 1)
    await task
    assert gate.limit == 2
    gate.restart()
    assert gate.limit == 1


async def test_a_cancelled_waiter_leaves_no_slot_behind():
    gate = ConcurrencyGate(FixedLimit(1))
    async with gate.slot():
        task = asyncio.create_task(_enter(gate))
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert gate.waiting == 0
    assert gate.in_flight == 0
    await asyncio.wait_for(_enter(gate), 1)  # the slot is free again


async def test_a_waiter_cancelled_just_after_its_turn_hands_the_slot_on():
    gate = ConcurrencyGate(FixedLimit(1))
    entered: list[str] = []

    async def named(name: str) -> None:
        async with gate.slot():
            entered.append(name)

    async with gate.slot():
        first = asyncio.create_task(named("first"))
        second = asyncio.create_task(named("second"))
        await asyncio.sleep(0.01)
    first.cancel()  # its future is already granted by the release above
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1)
    assert entered == ["second"] and gate.in_flight == 0


async def test_a_stuck_request_cuts_the_limit_before_it_finishes():
    seen: list[int] = []
    down_to_two = asyncio.Event()

    def changed(limit: int, busy: int) -> None:
        seen.append(limit)
        if limit == 2:
            down_to_two.set()

    lim = limiter(initial=2, min_window=1)  # one-sample windows at a limit of 2
    gate = ConcurrencyGate(lim, on_change=changed)
    async with gate.slot(tokens=1) as slot:
        slot.done(0.2, 1)  # baseline 0.2 s/token; slow start 2 -> 4
    assert gate.limit == 4 and lim.deadline(1) == pytest.approx(0.6)  # RTO 0.2 + 4 x 0.1
    down_to_two.clear()  # set by the initial limit
    async with gate.slot(tokens=1) as slot:
        await asyncio.sleep(0.05)  # well within its deadline: nothing happens
        assert gate.limit == 4
        # then stuck: overdue at 0.6 s (4 -> 3), again 1.2 s later (2.25 -> 2), while running
        await asyncio.wait_for(down_to_two.wait(), 5.0)
        assert gate.limit == 2 and gate.in_flight == 1 and slot.sample is None
        assert seen[-2:] == [3, 2]  # each cut reported to the metrics as it happens
    cuts = len(seen)
    await asyncio.sleep(0.8)  # nothing runs: the timer is gone, no more cuts
    assert gate.limit == 2 and len(seen) == cuts


async def test_a_request_due_sooner_than_those_running_gets_its_own_timer():
    cut = asyncio.Event()
    lim = limiter(initial=2, min_window=1)
    gate = ConcurrencyGate(lim, on_change=lambda limit, busy: cut.set() if limit == 3 else None)
    async with gate.slot(tokens=1) as slot:
        slot.done(0.2, 1)  # baseline 0.2 s/token, RTO 0.6 s; limit 2 -> 4
    assert lim.deadline(1000) == 400.0 and lim.deadline(1) == pytest.approx(0.6)
    release = asyncio.Event()

    async def long_answer() -> None:
        async with gate.slot(tokens=1000):  # may run 2 x 0.2 x 1000 = 400 s
            await release.wait()

    task = asyncio.create_task(long_answer())
    await asyncio.sleep(0.01)
    async with gate.slot(tokens=1):  # due after 0.6 s, long before the first
        await asyncio.wait_for(cut.wait(), 3.0)
        assert gate.limit == 3 and gate.in_flight == 2
    release.set()
    await task


async def _enter(gate: ConcurrencyGate) -> None:
    async with gate.slot():
        pass


# -- settings -------------------------------------------------------------------------------------


def _tree(**model: object) -> dict:
    tree = arena_tree()
    tree["models"]["alpha"].update(model)
    return tree


def test_defaults_start_at_the_cap_up_to_eight():
    assert ModelSettings(triton_model="m", triton_url="h:1").start_concurrency == 8
    small = ModelSettings(triton_model="m", triton_url="h:1", max_concurrency=4)
    assert small.start_concurrency == 4 and small.adaptive_concurrency
    big = ModelSettings(triton_model="m", triton_url="h:1", max_concurrency=1024)
    assert big.start_concurrency == 8
    assert parse_settings(_tree(max_concurrency=1024)).models["alpha"].max_concurrency == 1024


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ({"min_concurrency": 16, "max_concurrency": 8}, "$.models.alpha.min_concurrency"),
        ({"initial_concurrency": 64, "max_concurrency": 32}, "$.models.alpha.initial_concurrency"),
        ({"initial_concurrency": 2, "min_concurrency": 4}, "$.models.alpha.initial_concurrency"),
        ({"min_concurrency": 0}, "$.models.alpha.min_concurrency"),
        ({"latency_tolerance": 0.5}, "$.models.alpha.latency_tolerance"),
        ({"adaptive_concurrency": "sometimes"}, "$.models.alpha.adaptive_concurrency"),
    ],
)
def test_a_bad_concurrency_setting_names_its_key(model: dict, key: str):
    with pytest.raises(ConfigError, match=key.replace("$", r"\$").replace(".", r"\.")):
        parse_settings(_tree(**model))
