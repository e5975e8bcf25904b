"""The supervisor's decisions, as pure functions of what it observed: restarts and the budget.

Usage::

    restarts = RestartPolicy(max_restarts=5, window_s=60)
    delay = restarts.next_delay(now=time.monotonic())   # raises CrashLoop on the 6th in a minute
    budget = budget_for(target=40, samples=12, pending=3)            # 25 challenges still to mine
    more = top_up(target=40, samples=38, budget=0, pending=0)        # 2: the pipeline went idle

No I/O here: the supervisor (``warriorcoder.launcher.arena``) applies these.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from warriorcoder.errors import ArenaError

__all__ = ["CrashLoop", "RestartPolicy", "budget_for", "top_up"]


class CrashLoop(ArenaError, RuntimeError):
    """A child keeps crashing: restarting it again would not help."""

    reason = "crash_loop"


@dataclass
class RestartPolicy:
    """Restart at once after a first crash, then back off exponentially (``base_s``, doubling, at
    most ``cap_s``); ``max_restarts`` within ``window_s`` seconds is a crash loop."""

    max_restarts: int = 5
    window_s: float = 60.0
    base_s: float = 0.5
    cap_s: float = 10.0
    _recent: deque[float] = field(default_factory=deque, init=False, repr=False)

    def next_delay(self, now: float) -> float:
        """Seconds to wait before the next restart; raises CrashLoop when the limit is reached."""
        while self._recent and now - self._recent[0] >= self.window_s:
            self._recent.popleft()
        if len(self._recent) >= self.max_restarts:
            raise CrashLoop(f"{self.max_restarts} restarts in {self.window_s:g}s")
        self._recent.append(now)
        crashes = len(self._recent)
        return 0.0 if crashes == 1 else min(self.base_s * 2 ** (crashes - 2), self.cap_s)


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
