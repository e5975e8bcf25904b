"""The arena's state documents: the values kept in NATS KV buckets and the lines of the JSONL
shards, as frozen msgspec Structs beside the messages.

Usage::

    from warriorcoder.proto.state import Cursor, decode_state, encode
    cursor = decode_state(entry.value, Cursor)     # an absent key reads as Cursor()
    data = encode(Cursor(next=cursor.next + 1))    # b'{"type":"warriorcoder.v1.cursor","next":1}'

Like the messages, documents evolve openly (unknown fields ignored, new fields with defaults) and
carry a namespaced, versioned ``type`` tag. Every field has a default, so an absent key reads as
the empty document.

Upgrading from the untagged values written before these Structs existed: ``decode_state`` still
reads them (the cursor as a bare integer, the budget as ``unlimited`` or an integer, the rejection
counts as a plain JSON object) and the next compare-and-set writes the key back as its Struct, so
each key migrates in place on its first write. A challenger of the previous version cannot read
a migrated key: replace every challenger of an arena by the new version (a rolling update does)
rather than run both versions side by side for long.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeAlias, TypeVar

import msgspec
from msgspec import Meta

from warriorcoder.proto.messages import Sample, decode, encode

__all__ = [
    "AppliedBattle",
    "BandMembers",
    "ChallengeBudget",
    "Cursor",
    "Ratings",
    "RejectionCounts",
    "ShardLine",
    "ShardLineId",
    "State",
    "decode_state",
    "encode",
]

Timestamp = Annotated[float, Meta(ge=0)]  # seconds since the Unix epoch


class _Document(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=False
):
    """Base of every KV document: frozen, keyword-only, tagged by ``type``."""


class AppliedBattle(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """The battle the aggregator applied last: its id, the attacker's and defender's ratings
    before it, and its rating sequence (0: no valid vote, the ratings did not change)."""

    id: str
    r_attacker: float
    r_defender: float
    seq: Annotated[int, Meta(ge=0)] = 0


class Ratings(_Document, tag="warriorcoder.v1.ratings", frozen=True, kw_only=True):
    """The global Elo ratings, stored in a KV bucket and replaced by compare-and-set.

    One ordered writer changes it (the aggregators' consumer delivers one judgement at a time), so
    at most one battle is ever applied but not yet acknowledged: ``last``, kept with the ratings
    it was applied to, so its redelivery is recognised and its sample rebuilt exactly. ``battles``
    counts the battles that changed the ratings; the one that made it ``n`` has rating sequence
    ``n``, so the order in which votes were applied can be replayed exactly.

    ``recent`` and ``recent_seq`` are what the previous version wrote instead of ``last`` (the
    last battles applied, with their pre-battle ratings and sequences, aligned at the end): still
    read, so a judgement pending when the aggregators were upgraded is recognised, never grown,
    and dropped once no judgement is pending.
    """

    ratings: dict[str, float] = {}
    battles: Annotated[int, Meta(ge=0)] = 0
    last: AppliedBattle | None = None
    recent: list[tuple[str, float, float]] = []
    recent_seq: list[int] = []
    updated_at: Timestamp = 0.0


class Cursor(_Document, tag="warriorcoder.v1.cursor", frozen=True, kw_only=True):
    """The shared round-robin schedule: ``next`` is the slot the next challenger takes."""

    next: Annotated[int, Meta(ge=0)] = 0


class ChallengeBudget(_Document, tag="warriorcoder.v1.challenge_budget", frozen=True, kw_only=True):
    """Challenges still to publish, arena-wide; ``remaining=None`` means no limit."""

    remaining: int | None = None


class RejectionCounts(_Document, tag="warriorcoder.v1.rejection_counts", frozen=True, kw_only=True):
    """Instructions rejected by the challengers' filters, by reason, summed over every replica."""

    counts: dict[str, int] = {}


class BandMembers(_Document, tag="warriorcoder.v1.band_members", frozen=True, kw_only=True):
    """The challenge ids of one MinHash-LSH band of the de-dup index, in the order they joined
    (``lsh.<band key>``; changed by compare-and-set, deleted when its last member leaves)."""

    ids: list[str] = []


State: TypeAlias = Ratings | Cursor | ChallengeBudget | RejectionCounts | BandMembers

# A JSONL shard line is one Sample exactly as on the bus, ``type`` tag included: the shards, the
# samples stream and the ``battles`` export share one format, so a shard line is read with
# ``decode(line, ShardLine)`` and written with ``encode(sample) + b"\n"``.
ShardLine: TypeAlias = Sample


class ShardLineId(msgspec.Struct, frozen=True, kw_only=True):
    """The id of a shard line alone: what a shard writer scans at start (the rest is skipped)."""

    id: str


S = TypeVar("S", bound=State)


def _legacy_cursor(raw: bytes) -> Cursor:
    return Cursor(next=int(raw))


def _legacy_budget(raw: bytes) -> ChallengeBudget:
    return ChallengeBudget(remaining=None if raw.strip() == b"unlimited" else int(raw))


def _legacy_rejections(raw: bytes) -> RejectionCounts:
    return RejectionCounts(counts=msgspec.json.decode(raw, type=dict[str, int]))


# The untagged values written before the Structs (see the module docstring).
_LEGACY: dict[type[Any], Callable[[bytes], Any]] = {
    Cursor: _legacy_cursor,
    ChallengeBudget: _legacy_budget,
    RejectionCounts: _legacy_rejections,
}


class _TypeOnly(msgspec.Struct):
    type: str | None = None


_peek = msgspec.json.Decoder(_TypeOnly)


def _tagged(data: bytes) -> bool:
    """Whether ``data`` is a JSON object with a ``type`` tag (a document, not a legacy value)."""
    try:
        return _peek.decode(data).type is not None
    except msgspec.DecodeError:  # not an object (a bare integer, ``unlimited``) or malformed
        return False


def decode_state(data: bytes | None, type_: type[S]) -> S:
    """Decode a KV value as ``type_``: an absent or empty value is the empty document, an untagged
    value of the previous format is still read. Raises ``msgspec.DecodeError`` (its subclass
    ``msgspec.ValidationError`` for well-formed JSON that is not a ``type_``)."""
    if not data:
        return type_()
    legacy = _LEGACY.get(type_)
    if legacy is not None and not _tagged(data):
        try:
            return legacy(bytes(data))
        except (ValueError, msgspec.DecodeError) as exc:
            raise msgspec.ValidationError(f"not a {type_.__name__}: {exc}") from exc
    return decode(data, type_)
