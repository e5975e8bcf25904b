"""Compare-and-set on one NATS KV key: read, compute, write with the revision read, retry on a
conflict.

Usage::

    old, new = await compare_and_set(kv, "cursor", lambda v: str(int(v or b"0") + 1).encode())

``change`` gets the current value (None when the key is absent) and returns the new one, or None
to leave the key as it is. A missing key is created, so the first writer of several wins and the
others retry against its value.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from warriorcoder.errors import RetryableError

__all__ = ["CasConflictError", "compare_and_set"]


class CasConflictError(RetryableError):
    """Every attempt lost the race to another writer."""


async def compare_and_set(
    kv: KeyValue,
    key: str,
    change: Callable[[bytes | None], bytes | None],
    *,
    attempts: int | None = None,
) -> tuple[bytes | None, bytes | None]:
    """(value read, value written or None when ``change`` declined to write)."""
    tried = 0
    while attempts is None or tried < attempts:
        tried += 1
        try:
            entry = await kv.get(key)
            old, revision = entry.value or b"", entry.revision
        except KeyNotFoundError:
            old, revision = None, None
        new = change(old)
        if new is None:
            return old, None
        try:
            if revision is None:
                await kv.create(key, new)
            else:
                await kv.update(key, new, last=revision)
        except KeyWrongLastSequenceError:
            continue
        return old, new
    raise CasConflictError(f"{key}: {tried} compare-and-set attempts lost to other writers")
