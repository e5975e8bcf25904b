"""Structured concurrency helpers.

Usage::

    a, b = await gather(answer(x), answer(y))

Like ``asyncio.gather`` but every task has an owner: when one fails, the others are cancelled and
awaited, and the first error is raised as itself (not wrapped in an ExceptionGroup).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["gather"]

T = TypeVar("T")


async def gather(*coros: Coroutine[Any, Any, T]) -> list[T]:
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(c) for c in coros]
    except BaseExceptionGroup as group:
        raise _first(group) from None
    return [t.result() for t in tasks]


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
