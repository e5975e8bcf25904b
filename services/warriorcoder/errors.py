"""The arena's one error hierarchy: every error raised on purpose says whether retrying can help.

Usage::

    raise PoisonError("unknown_model", "'mallory' is not a competitor")   # dead-letter now
    raise RetryableError("backend overloaded")                            # nak, redeliver later

    try:
        ...
    except ArenaError as exc:
        action = "retry" if exc.retryable else f"dead-letter ({exc.reason})"

The bus's error boundary maps an ``ArenaError`` by ``retryable``: a retryable one is nak'ed with
back-off until ``nats.max_deliver`` deliveries, a permanent one is dead-lettered at once with its
``reason``. Any other exception is a bug or an unforeseen failure: it is retried like a retryable
error and dead-lettered as ``handler_error`` once the deliveries are spent. This module imports
nothing, so every layer (pure logic included) may raise these.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["ArenaError", "PoisonError", "RetryableError"]


class ArenaError(Exception):
    """Base of every error the arena raises on purpose.

    ``retryable``: the same input may succeed later (a backend down, a lost race). ``reason``: a
    short machine-readable label (dead-letter reason, metric label).
    """

    retryable: ClassVar[bool] = False
    reason: str = "error"


class RetryableError(ArenaError):
    """May succeed later: the message is nak'ed and redelivered."""

    retryable = True
    reason = "retries_exhausted"


class PoisonError(ArenaError):
    """Can never succeed: the message is dead-lettered now, with ``reason``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
