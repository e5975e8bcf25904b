"""Compare-and-set on one NATS KV key: read, compute, write with the revision read, retry on a
conflict.

Usage::

    old, new = await compare_and_set(kv, "k", lambda v: (v or b"") + b"x")
    before, after = await update_state(kv, "cursor", Cursor, lambda c: Cursor(next=c.next + 1))
    read, written = await update_versioned(
        kv, "cursor", Cursor, lambda c: Cursor(next=c.next + 1), guess=Versioned(Cursor(), 0)
    )
    written.revision if written else read.revision      # the key's revision now, for a next guess
    entries = await get_many(kv, ["a", "b"])            # {key: entry} of those present

``change`` gets the current value and returns the new one, or None to leave the key as it is. A
missing key is created, so the first writer of several wins and the others retry against its
value. ``compare_and_set`` works on bytes (None: the key is absent); ``update_state`` on the typed
documents of ``warriorcoder.proto.state`` (an absent key reads as the empty document, a value of
the previous untagged format is still read, and the write is always the Struct). ``on_conflict``
is called each time a write loses the race to another writer (e.g. to count conflicts).

``guess`` (the value and revision the caller believes current; revision 0: absent) saves the
read: the first write is computed from it and conditioned on its revision, so a right guess costs
one round trip instead of two, and a wrong one fails the condition and falls back to reading (the
guarantee is the same: every write is conditioned on the revision its input was read at). A guess
only ever leads to a write: when ``change`` declines on it, the key is read before deciding. A
deleted key (a tombstone) is written with ``update(last=<tombstone revision>)`` straight from the
failed read (nats.py's ``create`` would try ``last=0`` and read again first).

``get_many`` reads several keys at once: one batched direct get where the store offers it
(``runtime.bus.RetryingKeyValue.get_many``), else concurrent gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from warriorcoder.errors import RetryableError
from warriorcoder.proto.state import State, decode_state, encode
from warriorcoder.runtime.ports import KeyValueEntry, KeyValueStore

__all__ = [
    "CasConflictError",
    "Versioned",
    "compare_and_set",
    "get_many",
    "update_state",
    "update_versioned",
]

S = TypeVar("S", bound=State)


class CasConflictError(RetryableError):
    """Every attempt lost the race to another writer."""


@dataclass(frozen=True, slots=True)
class Versioned(Generic[S]):
    """A document and the key's revision it was read or written at (0: the key is absent)."""

    doc: S
    revision: int


@dataclass(slots=True)
class _Outcome:
    old: bytes | None = None
    old_rev: int = 0
    new: bytes | None = None
    new_rev: int = 0


async def _cas(
    kv: KeyValueStore,
    key: str,
    change: Callable[[bytes | None], bytes | None],
    *,
    attempts: int | None,
    on_conflict: Callable[[], None] | None,
    guess: tuple[bytes | None, int] | None,
) -> _Outcome:
    tried = 0
    while attempts is None or tried < attempts:
        tried += 1
        tombstone = 0
        if guess is not None:
            (old, revision), guessed, guess = guess, True, None
        else:
            guessed = False
            try:
                entry = await kv.get(key)
                old, revision = entry.value or b"", entry.revision or 0
            except KeyNotFoundError as exc:
                old, revision = None, 0
                # nats.py names the delete marker of a deleted key (its revision is the one
                # a re-creation must be conditioned on); an absent key has none.
                tombstone = getattr(getattr(exc, "entry", None), "revision", None) or 0
        new = change(old)
        if new is None:
            if guessed:
                tried -= 1  # a guess decides nothing: read the key, then decide
                continue
            return _Outcome(old, revision)
        try:
            if revision:
                written = await kv.update(key, new, last=revision)
            elif guessed:
                written = await kv.update(key, new, last=0)  # only if it never existed
            elif tombstone:
                written = await kv.update(key, new, last=tombstone)
            else:
                written = await kv.create(key, new)
        except KeyWrongLastSequenceError:
            if guessed:
                tried -= 1  # a stale guess is not a lost race: read and try again
            elif on_conflict is not None:
                on_conflict()
            continue
        return _Outcome(old, revision, new, written)
    raise CasConflictError(f"{key}: {tried} compare-and-set attempts lost to other writers")


async def compare_and_set(
    kv: KeyValueStore,
    key: str,
    change: Callable[[bytes | None], bytes | None],
    *,
    attempts: int | None = None,
    on_conflict: Callable[[], None] | None = None,
    guess: tuple[bytes | None, int] | None = None,
) -> tuple[bytes | None, bytes | None]:
    """(value read, value written or None when ``change`` declined to write)."""
    out = await _cas(kv, key, change, attempts=attempts, on_conflict=on_conflict, guess=guess)
    return out.old, out.new


async def update_versioned(
    kv: KeyValueStore,
    key: str,
    type_: type[S],
    change: Callable[[S], S | None],
    *,
    attempts: int | None = None,
    on_conflict: Callable[[], None] | None = None,
    guess: Versioned[S] | None = None,
) -> tuple[Versioned[S], Versioned[S] | None]:
    """(document read, document written or None when ``change`` declined), with revisions."""
    last: list[tuple[S, S | None]] = []  # the latest attempt's (read, written)

    def _change(value: bytes | None) -> bytes | None:
        doc = decode_state(value, type_)
        new = change(doc)
        last.append((doc, new))
        return None if new is None else encode(new)

    raw = None if guess is None else (encode(guess.doc) if guess.revision else None, guess.revision)
    out = await _cas(kv, key, _change, attempts=attempts, on_conflict=on_conflict, guess=raw)
    doc, new = last[-1]
    return Versioned(doc, out.old_rev), None if new is None else Versioned(new, out.new_rev)


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
    read, written = await update_versioned(
        kv, key, type_, change, attempts=attempts, on_conflict=on_conflict
    )
    return read.doc, None if written is None else written.doc


async def get_many(kv: KeyValueStore, keys: Sequence[str]) -> dict[str, KeyValueEntry]:
    """The latest entries of ``keys``, absent and deleted ones left out: the store's own batched
    read when it has one (``get_many``), else concurrent gets."""
    many = getattr(kv, "get_many", None)
    if many is not None:
        return dict(await many(keys))
    keys = list(dict.fromkeys(keys))

    async def one(key: str) -> KeyValueEntry | None:
        try:
            return await kv.get(key)
        except KeyNotFoundError:
            return None

    found = await asyncio.gather(*(one(k) for k in keys))
    return {k: e for k, e in zip(keys, found, strict=True) if e is not None}
