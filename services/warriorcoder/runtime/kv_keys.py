"""List the live keys of a NATS KV bucket that match subject patterns, with their revisions, in
one server-filtered pass.

Usage::

    keys = bucket_keys(kv)        # kv: nats.py KeyValue, or a store that lists keys itself
    revisions = await keys.revisions(["lsh.00.3f2a.*", "lsh.01.9bc0.*"])
    revisions                     # {"lsh.00.3f2a.c1": 17, ...}: live keys and their revisions

Why not ``KeyValue.keys(filters=...)``: in nats.py 2.16 it watches the WHOLE bucket (``>``) and
keeps the keys that contain one of the filters as a plain substring (no ``*``/``>`` wildcards),
raising ``NoKeysError`` when none is left. Listing 25 LSH bands that way streams every key of the
bucket (27 per admitted instruction) on each admission. Here the server does the filtering: one
ephemeral pull consumer with all the patterns as ``filter_subjects`` (nats-server 2.10+),
``deliver_policy`` last-per-subject and headers only, so it delivers exactly one small message
per live or deleted matching key; delete markers are dropped. Round trips: create the consumer,
fetch, delete it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from nats.js import api
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE, KeyValue

__all__ = ["JetStreamKeys", "KeyLister", "bucket_keys"]

_FETCH_BATCH = 1024
_FETCH_TIMEOUT_S = 5.0
# Cleans up a consumer whose delete was lost (the client died mid-listing).
_INACTIVE_THRESHOLD_S = 30.0


@runtime_checkable
class KeyLister(Protocol):
    """Lists the live keys matching NATS subject patterns (``*`` one token, ``>`` the rest)."""

    async def revisions(self, patterns: Sequence[str]) -> dict[str, int]: ...


class JetStreamKeys:
    """``KeyLister`` of a nats.py ``KeyValue`` bucket (see the module docstring)."""

    def __init__(self, kv: KeyValue) -> None:
        # nats.py keeps the bucket's stream and subject prefix private; they are stable since 2.0.
        self._js = kv._js
        self._stream: str = kv._stream
        self._pre: str = kv._pre

    async def revisions(self, patterns: Sequence[str]) -> dict[str, int]:
        filters = list(dict.fromkeys(self._pre + p for p in patterns))
        if not filters:
            return {}
        info = await self._js.add_consumer(
            self._stream,
            api.ConsumerConfig(
                filter_subjects=filters,
                deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=api.AckPolicy.NONE,
                headers_only=True,
                inactive_threshold=_INACTIVE_THRESHOLD_S,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        try:
            return await self._drain(info.name, info.num_pending or 0)
        finally:
            await self._js.delete_consumer(self._stream, info.name)

    async def _drain(self, consumer: str, pending: int) -> dict[str, int]:
        out: dict[str, int] = {}
        if pending == 0:
            return out
        sub = await self._js.pull_subscribe_bind(consumer, self._stream)
        try:
            while pending > 0:
                for msg in await sub.fetch(min(pending, _FETCH_BATCH), timeout=_FETCH_TIMEOUT_S):
                    meta = msg.metadata
                    pending = meta.num_pending
                    headers = msg.headers or {}
                    if headers.get(KV_OP) in (KV_DEL, KV_PURGE) or KV_MARKER_REASON in headers:
                        continue
                    out[msg.subject[len(self._pre) :]] = meta.sequence.stream
        finally:
            await sub.unsubscribe()
        return out


def bucket_keys(kv: object) -> KeyLister:
    """The store itself when it lists keys (``FakeKV``), else its ``JetStreamKeys``."""
    if isinstance(kv, KeyLister):
        return kv
    if not isinstance(kv, KeyValue):
        raise TypeError(f"cannot list the keys of {type(kv).__name__}")
    return JetStreamKeys(kv)
