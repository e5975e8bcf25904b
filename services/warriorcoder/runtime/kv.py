"""Compare-and-set on one NATS KV key: read, compute, write with the revision read, retry on a
conflict.

Usage::

    old, new = await compare_and_set(kv, "k", lambda v: (v or b"") + b"x")
    before, after = await update_state(kv, "cursor", Cursor, lambda c: Cursor(next=c.next + 1))

``change`` gets the current value and returns the new one, or None to leave the key as it is. A
missing key is created, so the first writer of several wins and the others retry against its
value. ``compare_and_set`` works on bytes (None: the key is absent); ``update_state`` on the typed
documents of ``warriorcoder.proto.state`` (an absent key reads as the empty document, a value of
the previous untagged format is still read, and the write is always the Struct). ``on_conflict``
is called each time a write loses the race to another writer (e.g. to count conflicts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from warriorcoder.errors import RetryableError
from warriorcoder.proto.state import State, decode_state, encode
from warriorcoder.runtime.ports import KeyValueStore

__all__ = ["CasConflictError", "compare_and_set", "update_state"]

S = TypeVar("S", bound=State)


class CasConflictError(RetryableError):
    """Every attempt lost the race to another writer."""


async def compare_and_set(
    kv: KeyValueStore,
    key: str,
    change: Callable[[bytes | None], bytes | None],
    *,
    attempts: int | None = None,
    on_conflict: Callable[[], None] | None = None,
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
            if on_conflict is not None:
                on_conflict()
            continue
        return old, new
    raise CasConflictError(f"{key}: {tried} compare-and-set attempts lost to other writers")


async def update_state(
    kv: KeyValueStore,
    key: str,
    type_: type[S],
    change: Callable[[S], S | None],
    *,
    attempts: int | None = None,
    on_conflict: Callable[[], None] | None = None,
) -> tuple[S, S | None]:
    """(document read, document written or None when ``change`` declined to write)."""
    last: list[tuple[S, S | None]] = []  # the latest attempt's (read, written)

    def _change(value: bytes | None) -> bytes | None:
        doc = decode_state(value, type_)
        new = change(doc)
        last.append((doc, new))
        return None if new is None else encode(new)

    await compare_and_set(kv, key, _change, attempts=attempts, on_conflict=on_conflict)
    return last[-1]
