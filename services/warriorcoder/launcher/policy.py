"""The supervisor's decisions, as pure functions of what it observed: restarts and the budget.

Usage::

    restarts = RestartPolicy(max_restarts=5, window_s=60)
    delay = restarts.next_delay(now=time.monotonic())   # 0 s, then 0.5, 1, 2, 4 s, then 10..60 s
    looping = restarts.crash_looping(now=time.monotonic())  # True from the 6th in a minute
    budget = budget_for(target=40, samples=12, pending=3)            # 25 challenges still to mine
    more = top_up(target=40, samples=38, budget=0, pending=0)        # 2: the pipeline went idle
    done = settled(disk=40, streamed=40, pending=0)                  # True: disk and stream agree

No I/O here: the supervisor (``warriorcoder.launcher.arena``) applies these.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["RestartPolicy", "budget_for", "settled", "top_up"]


@dataclass
class RestartPolicy:
    """Restart at once after a first crash, then back off exponentially (``base_s``, doubling, at
    most ``cap_s``). More than ``max_restarts`` within ``window_s`` seconds is a crash loop: the
    child is still restarted (one service that keeps dying must not end the run), but the back-off
    keeps doubling up to ``loop_cap_s``, and the loop is reported until the child has stayed up for
    a whole window."""

    max_restarts: int = 5
    window_s: float = 60.0
    base_s: float = 0.5
    cap_s: float = 10.0
    loop_cap_s: float = 60.0
    restarts: int = field(default=0, init=False)
    _recent: deque[float] = field(default_factory=deque, init=False, repr=False)
    _looping: bool = field(default=False, init=False, repr=False)
    _delay: float = field(default=0.0, init=False, repr=False)
    _started: float = field(default=float("-inf"), init=False, repr=False)

    def crash_looping(self, now: float) -> bool:
        """In a crash loop: the restart limit was passed and the child has not stayed up since."""
        return self._looping and now - self._started < self.window_s

    def recent(self) -> int:
        """Restarts within the window as of the last one."""
        return len(self._recent)

    def next_delay(self, now: float) -> float:
        """Seconds to wait before the next restart (the child exited at ``now``)."""
        if not self.crash_looping(now):
            self._looping = False
        while self._recent and now - self._recent[0] >= self.window_s:
            self._recent.popleft()
        self._recent.append(now)
        self.restarts += 1
        crashes = len(self._recent)
        if crashes > self.max_restarts:
            self._looping = True
        if self._looping:
            # Sticky until the child survives a window: a slow loop must not fall back to quick
            # restarts just because its long back-offs spread the crashes out.
            delay = min(max(self._delay * 2, self.cap_s), self.loop_cap_s)
        else:
            delay = 0.0 if crashes == 1 else min(self.base_s * 2 ** (crashes - 2), self.cap_s)
        self._delay, self._started = delay, now + delay
        return delay


def budget_for(target: int, samples: int, pending: int) -> int:
    """Challenges still to mine: the target less the samples on disk and the battles already in
    the pipeline (each becomes one sample), never below zero."""
    return max(target - samples - pending, 0)


def top_up(target: int, samples: int, budget: int | None, pending: int) -> int:
    """Challenges to add to the budget now: work lost on the way (a battle without a valid vote,
    a dead letter) leaves the run short once the pipeline is idle; then mine what is missing."""
    missing = target - samples
    if missing > 0 and budget == 0 and pending == 0:
        return missing
    return 0


def settled(disk: int, streamed: int, pending: int) -> bool:
    """A finished run may be reported done: nothing is in flight and the samples stream holds
    exactly the samples on disk (an aggregator killed between its shard write and its publish
    leaves its judgement unacked: redelivered, it publishes the missing sample)."""
    return pending == 0 and streamed == disk
