"""Map inference failures onto the bus's retry semantics.

Usage::

    async with inference_errors():
        await triton.generate(...)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.runtime.bus import PoisonError, RetryableError
from services.runtime.triton import InferenceError

__all__ = ["inference_errors"]


@asynccontextmanager
async def inference_errors() -> AsyncIterator[None]:
    """A retryable backend failure naks the message; a permanent one dead-letters it."""
    try:
        yield
    except InferenceError as exc:
        if exc.retryable:
            raise RetryableError(str(exc)) from exc
        raise PoisonError("inference_failed", str(exc)) from exc
