"""In-process fakes of the stage interfaces (``warriorcoder.runtime.ports``) for unit tests.

Usage::

    inference = FakeInference(load_models(SCRIPTED_MODELS), guided=["alpha"])
    publisher = FakePublisher()
    kv = FakeKV("warriorcoder_v1_ratings")
    handle = make_handler(settings, roster, inference, publisher)
    await handle(challenge)
    [battle] = publisher.messages(subjects.BATTLES)

Each follows the upstream behaviour of the real implementation, so a handler meets the same
semantics as in the real-server tests:

- ``FakeInference`` serves the scripted models exactly as the scripted Triton server does: the
  request goes through the vLLM contract of the backend ``release`` (``warriorcoder.runtime.vllm``:
  sampling parameters built, encoded, read back and validated as that release reads them), then
  ``ScriptedModel.generate``, ``sample`` and, for a guided choice, ``pick_choice``; the finish
  reason and token count come back where the release reports them. A request the backend would
  reject raises the ``InferenceError`` the Triton client raises for the in-band error; an unknown
  model raises the client's "not configured" ``InferenceError``. Latency is not simulated.
  ``set_available(model, False)`` takes a model down as an open circuit does: its calls wait
  (without a limit) until ``set_available(model, True)``; ``available``/``wait_available`` say so.
- ``FakePublisher`` records what is published (decoded back from its wire encoding) and, like
  JetStream's duplicate window, stores a message once per (subject, ``Nats-Msg-Id``).
- ``FakeKV`` is one bucket (history 1) with nats.py 2.16 ``KeyValue`` semantics: revisions are
  the bucket's stream sequence (growing across keys); ``get`` of a missing or deleted key raises
  ``KeyNotFoundError``; ``create`` raises ``KeyWrongLastSequenceError`` when the key exists (a
  deleted key may be created again); ``update`` writes only when ``last`` is the key's revision
  (``None`` counts as 0); ``delete`` leaves a tombstone and, with ``last``, checks it as JetStream
  does (``BadRequestError`` with error code 10071); an invalid key raises ``InvalidKeyError``.
  Each call yields to the event loop once, so concurrent callers interleave between operations.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.js.errors import (
    BadRequestError,
    InvalidKeyError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from warriorcoder.proto.messages import SamplingParams, decode, encode
from warriorcoder.runtime.triton import Generation, InferenceError, classify_in_band
from warriorcoder.runtime.vllm import (
    DEFAULT_RELEASE,
    BackendRelease,
    generation_inputs,
    parse_request,
)
from warriorcoder.testing.scripted import ScriptedModel, pick_choice, sample

__all__ = ["FakeBuckets", "FakeInference", "FakeKV", "FakePublisher", "Published", "Request"]


@dataclass(frozen=True, slots=True)
class Request:
    """One generate call as the backend saw it."""

    model: str
    prompt: str
    params: dict[str, Any]  # validated sampling parameters, guided choice taken out
    choices: tuple[str, ...] | None
    role: str


class FakeInference:
    """The scripted models behind the ``Inference`` interface; records every request."""

    def __init__(
        self,
        models: Iterable[ScriptedModel],
        *,
        guided: Iterable[str] = (),
        release: str = DEFAULT_RELEASE,
    ) -> None:
        self.models = {m.name: m for m in models}
        self._guided = frozenset(guided)
        self.release = BackendRelease.parse(release)
        self.requests: list[Request] = []
        self._back: dict[str, asyncio.Event] = {}  # the models down, set when they are back

    def guided(self, model: str) -> bool:
        return model in self._guided

    def set_available(self, model: str, up: bool) -> None:
        """Take ``model`` down (its calls wait, as behind an open circuit) or bring it back."""
        if up:
            back = self._back.pop(model, None)
            if back is not None:
                back.set()
        elif model not in self._back:
            self._back[model] = asyncio.Event()

    def available(self, model: str) -> bool:
        return model not in self._back

    async def wait_available(self, model: str) -> None:
        back = self._back.get(model)
        if back is not None:
            await back.wait()

    async def generate(
        self,
        model: str,
        prompt: str,
        params: SamplingParams,
        *,
        stop: list[str] | None = None,
        choices: list[str] | None = None,
        role: str,
    ) -> Generation:
        start = time.monotonic()
        await asyncio.sleep(0)  # a real call yields; concurrent calls interleave
        await self.wait_available(model)
        scripted = self.models.get(model)
        if scripted is None:
            raise InferenceError(model, "model is not configured in this service")
        try:
            inputs = generation_inputs(
                prompt, params, stop=stop or (), choices=choices, release=self.release
            )
            req = parse_request(inputs, model=model, release=self.release)
            self.requests.append(Request(model, req.prompt, req.params, req.choices, role))
            done = sample(scripted.generate(req.prompt, req.params), req.params)
        except ValueError as exc:  # the backend's in-band error
            raise classify_in_band(model, str(exc)) from exc
        text, reason, tokens = done.text, done.finish_reason, done.tokens
        if req.choices:
            text = pick_choice(text, list(req.choices))
            reason, tokens = "stop", len(text.split())
        return Generation(
            text,
            time.monotonic() - start,
            reason if req.returns.finish_reason else None,
            tokens if req.returns.num_output_tokens else None,
        )

    def calls(self, *, role: str | None = None, model: str | None = None) -> list[Request]:
        """The requests made, optionally of one role and/or model."""
        return [
            r
            for r in self.requests
            if (role is None or r.role == role) and (model is None or r.model == model)
        ]


@dataclass(frozen=True, slots=True)
class Published:
    subject: str
    msg: Any  # the message decoded from its wire encoding
    msg_id: str


class FakePublisher:
    """Records published messages; a repeated (subject, msg_id) is stored once."""

    def __init__(self) -> None:
        self.published: list[Published] = []
        self.duplicates = 0
        self._ids: set[tuple[str, str]] = set()

    async def publish(self, subject: str, msg: msgspec.Struct, *, msg_id: str) -> None:
        await asyncio.sleep(0)
        copy = decode(encode(msg), type(msg))  # what a consumer would read
        if (subject, msg_id) in self._ids:
            self.duplicates += 1
            return
        self._ids.add((subject, msg_id))
        self.published.append(Published(subject, copy, msg_id))

    def messages(self, subject: str) -> list[Any]:
        """The messages stored on ``subject``, in publishing order."""
        return [p.msg for p in self.published if p.subject == subject]


# nats.py's key rule (nats.js.kv): no leading or trailing dot, only these characters.
_VALID_KEY = re.compile(r"^[-/_=\.a-zA-Z0-9]+$")
_WRONG_LAST_SEQUENCE = 10071  # JetStream's JSStreamWrongLastSequenceErrF


@dataclass(slots=True)
class _Slot:
    value: bytes
    revision: int
    deleted: bool = False


class FakeKV:
    """One in-memory KV bucket (see the module docstring for the semantics it follows)."""

    def __init__(self, bucket: str = "fake") -> None:
        self.bucket = bucket
        self._seq = 0
        self._slots: dict[str, _Slot] = {}

    async def get(self, key: str, revision: int | None = None) -> KeyValue.Entry:
        await self._enter(key)
        slot = self._slots.get(key)
        if slot is None or slot.deleted or (revision and revision != slot.revision):
            raise KeyNotFoundError
        return KeyValue.Entry(
            bucket=self.bucket,
            key=key,
            value=slot.value,
            revision=slot.revision,
            delta=None,
            created=None,
            operation=None,
        )

    async def put(self, key: str, value: bytes) -> int:
        await self._enter(key)
        return self._write(key, value)

    async def create(self, key: str, value: bytes) -> int:
        await self._enter(key)
        slot = self._slots.get(key)
        if slot is not None and not slot.deleted:
            raise KeyWrongLastSequenceError(description=f"wrong last sequence: {slot.revision}")
        return self._write(key, value)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        await self._enter(key)
        current = self._revision(key)
        if current != (last or 0):
            raise KeyWrongLastSequenceError(description=f"wrong last sequence: {current}")
        return self._write(key, value)

    async def delete(self, key: str, last: int | None = None) -> bool:
        await self._enter(key)
        current = self._revision(key)
        if last and last > 0 and current != last:
            raise BadRequestError(
                code=400,
                err_code=_WRONG_LAST_SEQUENCE,
                description=f"wrong last sequence: {current}",
            )
        self._write(key, b"", deleted=True)
        return True

    def held_keys(self) -> list[str]:
        """The keys that hold a value (not deleted), for assertions."""
        return [k for k, slot in self._slots.items() if not slot.deleted]

    async def _enter(self, key: str) -> None:
        await asyncio.sleep(0)
        if not key or key[0] == "." or key[-1] == "." or not _VALID_KEY.match(key):
            raise InvalidKeyError(key)

    def _revision(self, key: str) -> int:
        slot = self._slots.get(key)
        return 0 if slot is None else slot.revision

    def _write(self, key: str, value: bytes, *, deleted: bool = False) -> int:
        self._seq += 1
        self._slots[key] = _Slot(value, self._seq, deleted)
        return self._seq


class FakeBuckets:
    """Opens ``FakeKV`` buckets by name; the same name gives the same bucket."""

    def __init__(self) -> None:
        self.buckets: dict[str, FakeKV] = {}

    async def kv(self, bucket: str, *, history: int = 1) -> FakeKV:
        if bucket not in self.buckets:
            self.buckets[bucket] = FakeKV(bucket)
        return self.buckets[bucket]
