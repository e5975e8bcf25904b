"""Adaptive concurrency: how many requests one model endpoint gets at once, learnt from latency.

Usage::

    limit = GradientLimit(initial=8, min_limit=1, max_limit=256)
    gate = ConcurrencyGate(limit)
    async with gate.slot(tokens=512) as slot:  # the request's token budget (max_tokens)
        start = time.monotonic()  # after the slot: waiting here is not backend latency
        gen = await call_backend()
        slot.done(time.monotonic() - start, tokens=gen.output_tokens)  # or slot.drop()

``GradientLimit`` is the algorithm, pure and clock-free: it is fed one ``Sample`` per finished
request and answers the new limit, and ``check(now, running)`` (time passed in) looks at the
requests still running. ``ConcurrencyGate`` is the small asyncio part around it: a FIFO
semaphore whose size follows the algorithm, and a timer that calls ``check`` when the next
running request falls due. ``FixedLimit`` keeps a constant limit (``adaptive_concurrency:
false``).

The algorithm is the gradient controller of Envoy's adaptive concurrency filter (envoyproxy.io,
configuration/http/http_filters/adaptive_concurrency_filter: ``gradient = (minRTT + buffer) /
sampleRTT``, ``limit = gradient * limit + headroom`` with ``headroom = sqrt(limit)``) with the
smoothing of Netflix concurrency-limits' ``Gradient2Limit`` (``gradient`` clamped to [0.5, 1],
``limit = limit * (1 - smoothing) + limit * gradient * smoothing``), the drop rule of its
``AIMDLimit`` (a rejected or timed-out request cuts the limit multiplicatively) and TCP's slow
start (double per window until the first congestion signal), so one config finds its level on
one GPU or a hundred within a few windows instead of growing by ``sqrt(limit)`` from the start.

Choices made for LLM backends, and why:

- **Latency per generated token.** A request's latency grows with its output length, which the
  limiter does not control; dividing by the tokens the backend reports (``num_output_tokens``)
  leaves what concurrency changes: the time of one decoding step of a continuous-batching
  server. A window's latency is ``sum(latency) / sum(tokens)``, so long generations (whose time
  is mostly decoding) weigh more than short ones (mostly prefill). A request with no count (an
  older backend, an empty output) counts as one token: without counts the measure is the mean
  latency per request, consistent as long as the role mix is steady.
- **A min-latency baseline** (Envoy's minRTT, Netflix's Vegas), not Gradient2's long-term
  average: under sustained load an average drifts up with the queue it should detect, so the
  limit would creep up. The baseline is the lowest window latency seen. Envoy re-measures
  minRTT by forcing low concurrency periodically; here it is re-measured only when the limit has
  sat at its floor for ``rebase_windows`` windows (Envoy's own second trigger): the backend at
  minimum concurrency is as fast as it now gets. An outage (``restart``) forgets it too.
- **Windows of about half a round trip** (``max(min_window, limit / 2)`` samples): one decision
  per window, as TCP moves its window once per round trip, on enough samples to average out
  the output-length mix; by sample count so the algorithm needs no clock.
- **Tolerance instead of Envoy's 25 % buffer.** A decoding step gets slower as the batch grows
  even below capacity; the arena wants throughput, not the lowest latency, so the limit keeps
  growing while the latency per token stays within ``tolerance`` times the baseline (default
  2.0: a step may take twice its unloaded time).
- **Smoothing 0.5**, not Gradient2's 0.2: Gradient2 moves on every sample, this once per window
  of many samples, so a cut may be larger (at most 25 % per window with the gradient's floor of
  0.5) and the limit backs off within a few windows when a backend fills up.
- **No growth when the caller does not use the limit** (Netflix: ``inflight < limit / 2``), so
  an idle period does not leave a limit the backend never proved it could take.
- **Requests still running count too** (TCP's retransmission timeout, RFC 6298 and RFC 5681
  section 3.1). Samples come only from finished requests, so when another client floods the
  backend and requests take 30 times longer, almost none finish and the windows above cannot
  close. A running request is *overdue* once it has run longer than ``tolerance * baseline *
  its token budget`` (what it may take at the worst latency the limit accepts) and than RFC
  6298's ``RTO = SRTT + 4 * RTTVAR`` of finished requests' latencies (so a request mix whose
  short answers are mostly prefill, slower per token than the baseline, does not trip it). An
  overdue request is a loss, as a TCP timeout is: the limit is cut as for a dropped request
  (``backoff``) and congestion ends slow start. As TCP does, the timer then restarts for every
  running request and doubles after each timeout (RFC 6298 5.5-5.6), until a window shows
  latency within the tolerance again: the limit keeps falling while requests stay stuck
  (about d, 3d, 7d after the flood began, d the deadline), but a single deadline set too short
  costs a few cuts, not the floor. A request without a budget gets the RTO alone.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

# RFC 6298 2.5 allows a ceiling on the backed-off RTO: 64 times the deadline at most
MAX_TIMER_BACKOFFS = 6

__all__ = [
    "ConcurrencyGate",
    "FixedLimit",
    "GradientLimit",
    "LimitAlgorithm",
    "Running",
    "Sample",
    "Slot",
]


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished request: its backend latency (waiting for a slot excluded), the tokens it
    generated when the backend said, how many requests were in flight when it started (itself
    included), and whether the backend dropped it (overloaded, rejected, timed out)."""

    latency_s: float
    tokens: int | None = None
    in_flight: int = 1
    dropped: bool = False


@dataclass(frozen=True, slots=True)
class Running:
    """One request still running: when it got its slot (the caller's clock, seconds) and its token
    budget (``max_tokens``; None when unknown)."""

    started: float
    tokens: int | None = None


class LimitAlgorithm(Protocol):
    """What ``ConcurrencyGate`` needs of an algorithm."""

    @property
    def limit(self) -> int: ...

    def add(self, sample: Sample) -> int:
        """Take one sample; return the limit after it."""
        ...

    def restart(self) -> None:
        """The backend was down: start over from the floor."""
        ...

    def deadline(self, tokens: int | None = None) -> float | None:
        """How long a request just started with a budget of ``tokens`` may run before it is
        overdue (None: never)."""
        ...

    def check(self, now: float, running: Iterable[Running]) -> float | None:
        """Look at the requests still running at ``now``; answer when the next check is due
        (None: no running request can fall due)."""
        ...


class FixedLimit:
    """A constant limit (``adaptive_concurrency: false``): samples change nothing."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit: expected >= 1, got {limit}")
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    def add(self, sample: Sample) -> int:
        return self._limit

    def restart(self) -> None:
        pass

    def deadline(self, tokens: int | None = None) -> float | None:
        return None

    def check(self, now: float, running: Iterable[Running]) -> float | None:
        return None


class GradientLimit:
    """The concurrency limit of one backend endpoint, moved once per window of samples (see the
    module docstring). Never above ``max_limit`` nor below ``min_limit``."""

    def __init__(
        self,
        *,
        initial: int,
        min_limit: int = 1,
        max_limit: int,
        tolerance: float = 2.0,
        smoothing: float = 0.5,
        backoff: float = 0.75,
        min_window: int = 8,
        rebase_windows: int = 5,
    ) -> None:
        if not 1 <= min_limit <= initial <= max_limit:
            raise ValueError(
                f"expected 1 <= min_limit <= initial <= max_limit, got {min_limit}, {initial}, "
                f"{max_limit}"
            )
        if tolerance < 1:
            raise ValueError(f"tolerance: expected >= 1, got {tolerance}")
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing: expected in (0, 1], got {smoothing}")
        if not 0 < backoff < 1:
            raise ValueError(f"backoff: expected in (0, 1), got {backoff}")
        if min_window < 1 or rebase_windows < 1:
            raise ValueError("min_window and rebase_windows: expected >= 1")
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.tolerance = tolerance
        self.smoothing = smoothing
        self.backoff = backoff
        self.min_window = min_window
        self.rebase_windows = rebase_windows
        self.baseline: float | None = None  # lowest window latency (s per token) seen
        self.windows = 0  # windows closed so far
        self._estimate = float(initial)
        # Slow start while the limit is below this (TCP's ssthresh): until the first congestion
        # signal, and after an outage up to the limit that held before it.
        self._ssthresh = float(max_limit)
        self._at_floor = 0  # consecutive windows that ended at min_limit with latency too high
        # RFC 6298's smoothed request latency and its mean deviation (None: no sample yet), whether
        # the backend reports token counts, and the timeouts since latency was last within the
        # tolerance (the timer's backoff exponent) and when the last one was
        self.srtt: float | None = None
        self.rttvar = 0.0
        self._counted = False
        self.timeouts = 0
        self._last_timeout: float | None = None
        # the current window: samples, drops, latency and tokens summed, most in flight
        self._n = 0
        self._dropped = 0
        self._latency = 0.0
        self._units = 0
        self._max_in_flight = 0

    @property
    def limit(self) -> int:
        return max(self.min_limit, min(self.max_limit, int(self._estimate)))

    @property
    def window(self) -> int:
        """Samples in the current window: about half a round trip at the current limit."""
        return max(self.min_window, math.ceil(self.limit / 2))

    def add(self, sample: Sample) -> int:
        self._n += 1
        self._max_in_flight = max(self._max_in_flight, sample.in_flight)
        if sample.dropped:
            self._dropped += 1
        else:
            self._latency += sample.latency_s
            self._units += max(1, sample.tokens or 0)
            self._counted = sample.tokens is not None
            self._smooth(sample.latency_s)
        if self._n >= self.window:
            self._close_window()
        return self.limit

    def restart(self) -> None:
        """After an outage: the floor, a new baseline, slow start back up to the old limit."""
        self._ssthresh = max(float(self.min_limit), self._estimate)
        self._estimate = float(self.min_limit)
        self.baseline = None
        self._at_floor = 0
        self.srtt = None
        self.rttvar = 0.0
        self.timeouts = 0
        self._last_timeout = None
        self._clear_window()

    def deadline(self, tokens: int | None = None) -> float | None:
        """How long a request with a budget of ``tokens`` may run before it is overdue: the
        longer of ``tolerance * baseline * tokens`` and the RTO, doubled per timeout since latency
        was last within the tolerance. None before any request finished."""
        parts = self._deadline_parts()
        if parts is None:
            return None
        rto, per_token = parts
        return rto if tokens is None else max(rto, per_token * max(1, tokens))

    def check(self, now: float, running: Iterable[Running]) -> float | None:
        """Cut the limit once if a running request is overdue at ``now`` (its time counted from
        when it started or from the last timeout, whichever is later: the timer restarts);
        answer when the next one falls due, None when none can."""
        jobs = list(running)
        due = self._due(jobs)
        if due is not None and due <= now:
            self._timeout(now)
            due = self._due(jobs)
        return due

    def _deadline_parts(self) -> tuple[float, float] | None:
        """The backed-off RTO and deadline per budgeted token (0: budgets not used)."""
        if self.srtt is None:
            return None
        scale = 2**self.timeouts
        per_token = 0.0
        # per token only when the backend counts tokens: otherwise the baseline is per request
        if self.baseline is not None and self._counted:
            per_token = self.tolerance * self.baseline * scale
        return (self.srtt + 4 * self.rttvar) * scale, per_token

    def _due(self, jobs: list[Running]) -> float | None:
        parts = self._deadline_parts()
        if parts is None or not jobs:
            return None
        rto, per_token = parts
        since = self._last_timeout if self._last_timeout is not None else -math.inf
        # inlined deadline(): this runs over every running request when the timer fires
        return min(
            max(job.started, since)
            + (rto if job.tokens is None else max(rto, per_token * max(1, job.tokens)))
            for job in jobs
        )

    def _timeout(self, now: float) -> None:
        """A running request is overdue: a loss, as TCP's timeout (RFC 5681 3.1), so the drop
        rule's cut, congestion (no more slow start), and the timer backs off (RFC 6298 5.5)."""
        self._estimate = max(float(self.min_limit), self._estimate * self.backoff)
        self._ssthresh = self._estimate
        self.timeouts = min(self.timeouts + 1, MAX_TIMER_BACKOFFS)
        self._last_timeout = now

    def _smooth(self, latency_s: float) -> None:
        """RFC 6298 2.2-2.3: the first sample R sets ``SRTT = R``, ``RTTVAR = R / 2``; later ones
        ``RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|``, then ``SRTT = 7/8 SRTT + 1/8 R``."""
        if self.srtt is None:
            self.srtt, self.rttvar = latency_s, latency_s / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - latency_s)
            self.srtt = 0.875 * self.srtt + 0.125 * latency_s

    def _clear_window(self) -> None:
        self._n = 0
        self._dropped = 0
        self._latency = 0.0
        self._units = 0
        self._max_in_flight = 0

    def _close_window(self) -> None:
        dropped, latency, units = self._dropped, self._latency, self._units
        used = self._max_in_flight * 2 >= self.limit
        self._clear_window()
        self.windows += 1
        limit = self._estimate
        congested = False
        rtt: float | None = None
        if dropped:
            limit *= self.backoff
            congested = True
        elif units:
            rtt = latency / units
            if self.baseline is None or rtt < self.baseline:
                self.baseline = rtt
            bound = self.tolerance * self.baseline
            if rtt > bound:
                gradient = max(0.5, bound / rtt)
                limit = limit * (1 - self.smoothing) + limit * gradient * self.smoothing
                congested = True
            elif not used:
                pass  # the caller does not fill the limit: no proof the backend takes more
            elif limit < self._ssthresh:
                limit = min(2 * limit, self._ssthresh)
            else:
                limit += math.sqrt(limit)
        if congested:
            self._ssthresh = max(float(self.min_limit), limit)
        elif rtt is not None:
            self.timeouts = 0  # latency within the tolerance again: the timer's backoff ends
        self._estimate = max(float(self.min_limit), min(float(self.max_limit), limit))
        self._rebase(congested and not dropped, rtt)

    def _rebase(self, slow: bool, rtt: float | None) -> None:
        """Envoy's re-measure trigger: at the floor and still too slow for ``rebase_windows``
        windows means the backend itself got slower; its latency now is the new baseline."""
        if slow and rtt is not None and self.limit <= self.min_limit:
            self._at_floor += 1
            if self._at_floor >= self.rebase_windows:
                self.baseline = rtt
                self._at_floor = 0
        else:
            self._at_floor = 0


@dataclass(slots=True)
class Slot:
    """One admitted request; report how it ended with ``done`` or ``drop`` (neither: the
    request tells nothing about the backend, e.g. a bad request or a cancellation)."""

    in_flight: int  # requests in flight when it was admitted, itself included
    sample: Sample | None = None

    def done(self, latency_s: float, tokens: int | None = None) -> None:
        self.sample = Sample(latency_s, tokens, self.in_flight)

    def drop(self, latency_s: float = 0.0) -> None:
        self.sample = Sample(latency_s, None, self.in_flight, dropped=True)


class ConcurrencyGate:
    """A FIFO semaphore whose size is the algorithm's limit; ``on_change(limit, in_flight)`` is
    called whenever either moves (for the metrics). It keeps the running requests' start times
    (``clock``, monotonic seconds) and budgets, and a loop timer that calls the algorithm's
    ``check`` when the next one falls due (armed on admission when the new request is due
    first, re-armed by each check, cancelled once none runs: no task to own)."""

    def __init__(
        self,
        algorithm: LimitAlgorithm,
        *,
        on_change: Callable[[int, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.algorithm = algorithm
        self._on_change = on_change
        self._clock = clock
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._running: dict[int, Running] = {}
        self._keys = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0  # when the armed timer fires (clock)
        self._changed()

    @property
    def limit(self) -> int:
        return self.algorithm.limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    @asynccontextmanager
    async def slot(self, tokens: int | None = None) -> AsyncIterator[Slot]:
        """Wait for a free slot (first come, first served), hold it for the block. ``tokens``:
        the request's token budget (``max_tokens``), which sets when it counts as overdue."""
        await self._acquire()
        key = next(self._keys)
        started = self._clock()
        self._running[key] = Running(started, tokens)
        slot = Slot(self._in_flight)
        try:
            self._arm_for(started, tokens)
            yield slot
        finally:
            del self._running[key]
            if not self._running:
                self._cancel_timer()
            self._release(slot.sample)

    def restart(self) -> None:
        """The backend was down: the algorithm starts over (``LimitAlgorithm.restart``)."""
        self.algorithm.restart()
        self._check()
        self._changed()

    async def _acquire(self) -> None:
        if not self._waiters and self._in_flight < self.limit:
            self._in_flight += 1
            self._changed()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted, then cancelled: hand it on
                self._release(None)
            else:
                self._waiters.remove(fut)
            raise

    def _release(self, sample: Sample | None) -> None:
        self._in_flight -= 1
        if sample is not None:
            self.algorithm.add(sample)
        self._wake()
        self._changed()

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                self._in_flight += 1  # counted now so no one overtakes the woken waiter

    def _arm_for(self, started: float, tokens: int | None) -> None:
        """A request just started: arm the timer for its due unless one fires earlier (O(1) per
        request; the full look at every running request happens when the timer fires)."""
        d = self.algorithm.deadline(tokens)
        if d is not None and (self._timer is None or started + d < self._timer_due):
            self._arm(started, started + d)

    def _check(self) -> None:
        """Let the algorithm look at the running requests; re-arm the timer for the next due."""
        self._cancel_timer()
        if not self._running:
            return
        before = self.limit
        now = self._clock()
        due = self.algorithm.check(now, self._running.values())
        if self.limit != before:
            self._changed()
        if due is not None:
            self._arm(now, due)

    def _arm(self, now: float, due: float) -> None:
        self._cancel_timer()
        self._timer_due = due
        self._timer = asyncio.get_running_loop().call_later(max(0.0, due - now), self._check)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.limit, self._in_flight)
