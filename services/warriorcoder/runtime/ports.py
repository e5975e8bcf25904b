"""The narrow interfaces stage handlers depend on: inference, publishing, key-value state.

Usage::

    def make_handler(inference: Inference, publisher: Publisher) -> Handler[Challenge]:
        async def handle(ch: Challenge) -> None:
            gen = await inference.generate(ch.attacker, prompt, params, role="response")
            await publisher.publish(subjects.BATTLES, battle, msg_id=ch.id)
        return handle

The production implementations satisfy these structurally (no registration, no base class):
``TritonPool`` is an ``Inference``, ``Bus`` a ``Publisher`` and a ``Buckets``, and nats.py's
``KeyValue`` a ``KeyValueStore``. The in-process fakes of ``warriorcoder.testing.fakes`` implement
each one for millisecond unit tests.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from warriorcoder.proto.messages import SamplingParams

__all__ = [
    "Buckets",
    "Generation",
    "Inference",
    "KeyValueEntry",
    "KeyValueStore",
    "Publisher",
]


class Generation(Protocol):
    """One completion: the generated text (prompt excluded), how long it took and, when the
    backend reports them, vLLM's finish reason (``length``: cut at max_tokens) and token count."""

    @property
    def text(self) -> str: ...
    @property
    def latency_s(self) -> float: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def output_tokens(self) -> int | None: ...


class Inference(Protocol):
    """Text generation by named models (``warriorcoder.runtime.triton.TritonPool``).

    ``generate`` raises ``InferenceError`` (an ``ArenaError``) or its retryable kind; with
    ``choices`` the backend returns exactly one of them (guided decoding). ``role`` labels metrics.
    While a model is down (its circuit open) its calls wait instead of failing, up to the model's
    ``max_outage_s``; ``available(model)`` is False meanwhile and ``wait_available(model)``
    returns once it is back, so a producer can hold off instead of backing off blindly.
    """

    def guided(self, model: str) -> bool: ...

    def available(self, model: str) -> bool: ...

    async def wait_available(self, model: str) -> None: ...

    async def generate(
        self,
        model: str,
        prompt: str,
        params: SamplingParams,
        *,
        stop: list[str] | None = None,
        choices: list[str] | None = None,
        role: str,
    ) -> Generation: ...


class Publisher(Protocol):
    """Idempotent publishing (``warriorcoder.runtime.bus.Bus``): a message published twice with
    the same ``msg_id`` within the stream's duplicate window is stored once."""

    async def publish(self, subject: str, msg: msgspec.Struct, *, msg_id: str) -> None: ...


class KeyValueEntry(Protocol):
    """A key's current value and its revision (nats.py's ``KeyValue.Entry``)."""

    @property
    def value(self) -> bytes | None: ...
    @property
    def revision(self) -> int | None: ...


class KeyValueStore(Protocol):
    """One key-value bucket with nats.py 2.16 ``KeyValue`` semantics.

    ``get`` raises ``nats.js.errors.KeyNotFoundError`` for a missing or deleted key; ``create``
    raises ``KeyWrongLastSequenceError`` when the key exists; ``update`` writes only when the
    key's revision is ``last`` (else ``KeyWrongLastSequenceError``). Revisions are the bucket's
    stream sequence numbers, so they grow across all keys.
    """

    async def get(self, key: str, revision: int | None = None) -> KeyValueEntry: ...
    async def put(self, key: str, value: bytes) -> int: ...
    async def create(self, key: str, value: bytes) -> int: ...
    async def update(self, key: str, value: bytes, last: int | None = None) -> int: ...
    async def delete(self, key: str, last: int | None = None) -> bool: ...


class Buckets(Protocol):
    """Opens key-value buckets by name, creating them when missing (``Bus.kv``)."""

    async def kv(self, bucket: str, *, history: int = 1) -> KeyValueStore: ...
