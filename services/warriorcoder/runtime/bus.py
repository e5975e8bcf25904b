"""NATS JetStream bus: topology, idempotent publishing and the per-message error boundary.

Usage::

    nc = await connect(settings.nats)
    bus = Bus(nc, settings.nats, stage="responder")
    await bus.ensure_topology()                     # the streams of warriorcoder.proto.topology
    await bus.publish(subjects.BATTLES, battle, msg_id=battle.id)
    await bus.consume(
        subjects.STREAM_CHALLENGES, subjects.CONSUMER_RESPONDER, Challenge, handle,
        stop=stop, max_in_flight=32, drain_timeout_s=20,
    )
    ratings = await bus.kv(subjects.KV_RATINGS)     # a declared bucket, created on first use
    waiting = await bus.backlog(subjects.STREAM_CHALLENGES)   # not yet delivered to the responders
    held = await bus.stored(subjects.STREAM_CHALLENGES)       # waiting + delivered, unacked

Delivery is at least once with explicit acks. A handler's outcome maps to JetStream: return → ack;
a retryable ``ArenaError`` (or any unforeseen exception) → nak with back-off, until ``max_deliver``
deliveries, then dead letter (with the error's ``reason``, or ``handler_error`` for an unforeseen
one); a permanent ``ArenaError`` (``PoisonError``, a permanent inference error) or an undecodable
message → dead letter at once, with its reason. While a handler runs, the message gets
``in_progress()`` heartbeats so a long LLM call is not redelivered. Every task the bus starts
(handlers, heartbeats, the stop waiter, the lag watcher) is cancelled and awaited before
``consume`` returns.

The boundary always settles a message: a dead letter keeps at most ``dead_letter_payload_bytes``
of the payload (with the original's size and SHA-256) and always fits the server's
``max_payload``; if it cannot be published even so, the message is terminated anyway, counted
(``warriorcoder_dead_letter_failures_total``) and logged with its size and hash.

JetStream being briefly unavailable (a leader election in a cluster, a restarting server: 503,
no responders, timeouts) is never fatal: publishing, fetching, acking, stream and consumer info,
KV calls and the start-up topology are retried with back-off for ``unavailable_retry_s``, then
raise ``NatsUnavailableError`` (retryable: the boundary naks the message); the fetch loop itself
waits out any outage.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    InvalidKeyError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue, _is_key_valid

from warriorcoder.errors import ArenaError, PoisonError, RetryableError
from warriorcoder.proto import subjects, topology
from warriorcoder.proto.messages import DeadLetter, encode
from warriorcoder.proto.topology import Stream
from warriorcoder.runtime import metrics
from warriorcoder.runtime.settings import NatsSettings

__all__ = [
    "Bus",
    "NatsUnavailableError",
    "RetryingKeyValue",
    "connect",
    "direct_gets",
    "ensure_stream",
    "js_publish",
    "retrying",
    "stream_config",
    "stream_configs",
    "unavailable",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# JetStream API errors that pass once the cluster has settled: 10005 no suitable peers (a node
# of a replicated stream is down), 10008 the cluster is unavailable, 10009 not the leader (yet),
# 10118 the stream is offline (being moved or recovered).
_TRANSIENT_ERR_CODES = frozenset({10005, 10008, 10009, 10118})
# Room for the dead letter's headers and protocol line within the server's max_payload.
_HEADER_ROOM = 4096
# The consumer that takes each work stream's messages: its not-yet-delivered count is the backlog.
_CONSUMER_OF = {c.stream: c.durable for c in topology.CONSUMERS}
# Keys per batched direct get (nats-server answers at most ``batch`` messages per request).
_MULTI_GET_BATCH = 256
_MULTI_GET_ENCODER = msgspec.json.Encoder()


class NatsUnavailableError(RetryableError):
    """JetStream stayed unavailable for longer than ``nats.unavailable_retry_s``."""

    reason = "nats_unavailable"


def unavailable(exc: BaseException) -> bool:
    """JetStream cannot answer now but may soon: a leader election, a restarting server."""
    if isinstance(
        exc,
        (
            TimeoutError,  # nats.errors.TimeoutError and fetch timeouts are TimeoutErrors too
            ServiceUnavailableError,
            NoStreamResponseError,
            nats.errors.NoRespondersError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.StaleConnectionError,
            nats.errors.OutboundBufferLimitError,
        ),
    ):
        return True
    # getattr: some subclasses (KeyNotFoundError, ...) never set the API fields.
    return isinstance(exc, APIError) and (
        getattr(exc, "code", None) == 503 or getattr(exc, "err_code", None) in _TRANSIENT_ERR_CODES
    )


async def retrying(op: str, call: Callable[[], Awaitable[T]], *, budget_s: float) -> T:
    """``await call()``, again with back-off (0.1 s doubling to 2 s) while JetStream is
    ``unavailable``, for up to ``budget_s``; then ``NatsUnavailableError``. Other errors pass.

    Only for idempotent calls: a retried publish carries its ``Nats-Msg-Id``, and a KV write
    whose first try landed but whose reply was lost fails its retry with a wrong-last-sequence
    error, which compare-and-set answers by reading the key again.
    """
    deadline = time.monotonic() + budget_s
    delay = 0.1
    while True:
        try:
            return await call()
        except Exception as exc:
            _raise_if_cancelled(exc)
            if not unavailable(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise NatsUnavailableError(f"{op}: JetStream unavailable: {exc!r}") from exc
            metrics.NATS_RETRIES.labels(op=op).inc()
            log.warning("jetstream unavailable, retrying", extra={"op": op, "error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def connect(
    cfg: NatsSettings, *, name: str = "warriorcoder", persistent: bool = True
) -> NATS:
    """Connect with the configured credentials.

    A service (``persistent``) waits for NATS and reconnects forever; a command-line tool tries
    briefly and raises, so it never hangs on a wrong URL.
    """
    opts: dict[str, Any] = {
        "servers": [u.strip() for u in cfg.url.split(",")],
        "name": name,
        "connect_timeout": cfg.connect_timeout_s,
        "max_reconnect_attempts": -1 if persistent else 1,
        "allow_reconnect": persistent,
        "reconnect_time_wait": 1 if persistent else 0.2,
    }
    if cfg.user is not None:
        opts["user"] = cfg.user
    if cfg.password is not None:
        opts["password"] = cfg.password.reveal()
    if cfg.token is not None:
        opts["token"] = cfg.token.reveal()
    if cfg.creds_file is not None:
        opts["user_credentials"] = cfg.creds_file
    if cfg.tls_ca_file or cfg.tls_cert_file:
        ctx = ssl.create_default_context(cafile=cfg.tls_ca_file)
        if cfg.tls_cert_file:
            ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
        opts["tls"] = ctx

    async def _on_error(exc: Exception) -> None:
        if persistent:
            log.warning("nats error: %s", exc)

    client: list[NATS] = []

    async def _on_disconnect() -> None:
        if client and (client[0].is_draining or client[0].is_closed):
            return  # our own shutdown
        log.warning("nats disconnected")

    async def _on_reconnect() -> None:
        log.info("nats reconnected")

    opts.update(error_cb=_on_error, disconnected_cb=_on_disconnect, reconnected_cb=_on_reconnect)
    nc = await nats.connect(**opts)
    client.append(nc)
    return nc


_RETENTION = {
    "workqueue": js_api.RetentionPolicy.WORK_QUEUE,
    "limits": js_api.RetentionPolicy.LIMITS,
}


def stream_config(
    stream: Stream,
    *,
    replicas: int,
    duplicate_window_s: float | None = None,
    max_age_s: float | None = None,
) -> js_api.StreamConfig:
    """The JetStream configuration of a declared stream; the window and age apply only where the
    declaration asks for them (``dedup_window``, ``max_age``; 0 or None: the server's default)."""
    return js_api.StreamConfig(
        name=stream.name,
        subjects=list(stream.subjects),
        retention=_RETENTION[stream.retention],
        storage=js_api.StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=(duplicate_window_s or 0) if stream.dedup_window else 0,
        max_age=(max_age_s or None) if stream.max_age else None,
        discard=js_api.DiscardPolicy.OLD,
    )


def stream_configs(cfg: NatsSettings) -> list[js_api.StreamConfig]:
    """Every stream ``ensure_topology`` creates: each declared stream except the optional ones."""
    return [
        stream_config(
            s,
            replicas=cfg.stream_replicas,
            duplicate_window_s=cfg.duplicate_window_s,
            max_age_s=cfg.samples_max_age_s,
        )
        for s in topology.STREAMS
        if not s.optional
    ]


async def ensure_stream(js: JetStreamContext, sc: js_api.StreamConfig) -> None:
    """Create a stream or bring it up to date; safe to run from many replicas at once."""
    try:
        await js.add_stream(sc)
    except BadRequestError:
        # Exists with another config (e.g. older version): bring it up to date.
        await js.update_stream(sc)


class _PubAck(msgspec.Struct):
    """JetStream's publish acknowledgement (or its error), the fields used here."""

    seq: int = 0
    error: dict[str, Any] | None = None


_PUB_ACK = msgspec.json.Decoder(_PubAck)
_EXPECTED_LAST_SUBJECT_SEQ = js_api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value


async def js_publish(
    nc: NATS,
    subject: str,
    payload: bytes,
    *,
    headers: dict[str, str] | None = None,
    wait_s: float,
) -> int:
    """Publish to JetStream and wait for the acknowledgement; its stream sequence. nats.py 2.16's
    ``JetStreamContext.publish`` (js/client.py: a request, an error reply raised as
    ``APIError.from_error``, no responders as ``NoStreamResponseError``), with the reply decoded
    by msgspec instead of ``json.loads`` and ``PubAck.from_response`` (dataclass reflection per
    call: a tenth of a service's CPU per message)."""
    try:
        msg = await nc.request(subject, payload, timeout=wait_s, headers=headers)
    except nats.errors.NoRespondersError as exc:
        raise NoStreamResponseError from exc
    ack = _PUB_ACK.decode(msg.data)
    if ack.error is not None:
        APIError.from_error(ack.error)  # raises the error's class (503, 400, ...)
        raise APIError(**ack.error)
    return ack.seq


def direct_gets(bucket: topology.Bucket, replicas: int) -> bool:
    """Whether ``bucket`` is created with ``allow_direct``: gets answered by any replica with the
    message itself (cheaper than the JSON API get, but on a cluster possibly a follower's stale
    copy), so only where its readers tolerate that or there is a single copy."""
    return bucket.stale_reads_ok or replicas <= 1


class Bus:
    """JetStream access for one service: publish, dead-letter, consume, KV."""

    def __init__(self, nc: NATS, cfg: NatsSettings, *, stage: str) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.cfg = cfg
        self.stage = stage
        self._metrics = _StageMetrics(stage)

    # -- topology -------------------------------------------------------------------------------

    async def ensure_topology(self) -> None:
        """Create or update every stream of the topology (but the optional ones, which the
        feature that uses them creates); safe to run from many replicas at once, and retried
        while JetStream is unavailable (a service starting during a leader election)."""
        for sc in stream_configs(self.cfg):
            await self._retrying("ensure_stream", functools.partial(ensure_stream, self.js, sc))

    async def _retrying(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        return await retrying(op, call, budget_s=self.cfg.unavailable_retry_s)

    async def ensure_consumer(
        self, stream: str, durable: str, *, max_ack_pending: int | None = None
    ) -> None:
        """A durable pull consumer with explicit acks, shared by all replicas of a stage.
        ``max_ack_pending``: messages delivered and not yet settled, across all replicas (1: an
        ordered writer, each message delivered once every earlier one is settled)."""
        cc = js_api.ConsumerConfig(
            durable_name=durable,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=self.cfg.ack_wait_s,
            # Unlimited here: the error boundary dead-letters at max_deliver itself, so no message
            # is ever left undelivered and unrecorded in the work stream.
            max_deliver=-1,
            max_ack_pending=10_000 if max_ack_pending is None else max_ack_pending,
        )
        # Creating an existing durable with changed editable fields (ack_wait, ...) updates it.
        await self.js.add_consumer(stream, cc)

    async def kv(self, bucket: str, *, history: int | None = None) -> RetryingKeyValue:
        """Open a declared KV bucket, creating it as declared if missing (idempotent across
        replicas; KeyError for a bucket the topology does not declare). ``history`` overrides
        the declared history of a bucket created here. Its calls are retried while JetStream
        is unavailable."""
        declared = topology.bucket(bucket)
        return RetryingKeyValue(
            await self._retrying("kv_open", lambda: self._open_kv(declared, history)),
            budget_s=self.cfg.unavailable_retry_s,
        )

    async def _open_kv(self, declared: topology.Bucket, history: int | None) -> KeyValue:
        # nats.py's KeyValue reads with direct gets when the bucket's stream allows them (as
        # created here, see ``direct_gets``); a bucket created by an earlier version keeps the
        # JSON API gets until an operator enables allow_direct on it (docs in benchmarks/README).
        bucket = declared.name
        try:
            return await self.js.key_value(bucket)
        except (BucketNotFoundError, NotFoundError):
            pass
        try:
            return await self.js.create_key_value(
                js_api.KeyValueConfig(
                    bucket=bucket,
                    history=declared.history if history is None else history,
                    storage=js_api.StorageType.FILE,
                    replicas=self.cfg.stream_replicas,
                    direct=direct_gets(declared, self.cfg.stream_replicas),
                )
            )
        except BadRequestError:
            return await self.js.key_value(bucket)  # another replica created it first

    async def backlog(self, stream: str) -> int:
        """Work waiting for a stage: the messages of a work stream not yet delivered to its
        consumer. Messages delivered and not yet acked are left out: those in flight, and those
        a killed replica held until ``ack_wait`` gives them back, so a dead consumer does not
        stall whoever paces itself on the backlog (the challenger). A stream whose consumer does
        not exist yet, or that has none (the dead letters), counts every message (``stored``)."""
        durable = _CONSUMER_OF.get(stream)
        if durable is not None:
            try:
                info = await self._retrying(
                    "consumer_info", lambda: self.js.consumer_info(stream, durable)
                )
            except NotFoundError:
                pass  # no consumer yet (or no stream: stored raises it)
            else:
                return int(info.num_pending or 0)
        return await self.stored(stream)

    async def stored(self, stream: str) -> int:
        """Messages a stream holds; in a work stream (deleted on ack) the work not yet done:
        waiting, in flight and held by a dead consumer."""
        info = await self._retrying("stream_info", lambda: self.js.stream_info(stream))
        return int(info.state.messages)

    # -- publishing -----------------------------------------------------------------------------

    async def publish(self, subject: str, msg: msgspec.Struct, *, msg_id: str) -> None:
        """Publish with ``Nats-Msg-Id`` so a retried publish is stored once (it is retried while
        JetStream is unavailable, then ``NatsUnavailableError``)."""
        data, headers = encode(msg), {"Nats-Msg-Id": msg_id}
        wait_s = self.js._timeout
        await self._retrying(
            "publish", lambda: js_publish(self.nc, subject, data, headers=headers, wait_s=wait_s)
        )
        metrics.PUBLISHED.labels(subject=subject).inc()

    async def dead_letter(self, msg: Msg, reason: str, error: str) -> None:
        """Publish ``msg``'s dead letter: at most ``dead_letter_payload_bytes`` of its payload
        (less when needed to fit the server's ``max_payload``), with its size and SHA-256."""
        data = msg.data or b""
        limit = max(self.nc.max_payload - _HEADER_ROOM, 1024)
        keep = min(len(data), self.cfg.dead_letter_payload_bytes)
        while True:
            letter = DeadLetter(
                stage=self.stage,
                reason=reason,
                error=error[:4000],
                subject=msg.subject,
                deliveries=_deliveries(msg),
                payload=data[:keep].decode("utf-8", errors="replace"),
                message_id=(msg.headers or {}).get("Nats-Msg-Id"),
                failed_at=time.time(),
                payload_bytes=len(data),
                payload_sha256=hashlib.sha256(data).hexdigest(),
                payload_truncated=keep < len(data),
            )
            body = encode(letter)
            if len(body) <= limit or keep == 0:
                break
            # JSON escapes and replacement characters can grow a byte up to six: shrink the prefix.
            keep //= 2
        meta_seq = _stream_seq(msg)
        dedup = f"{self.stage}-{meta_seq}" if meta_seq is not None else None
        headers = {"Nats-Msg-Id": dedup} if dedup else None
        await self._retrying(
            "dead_letter",
            lambda: self.js.publish(subjects.dlq(self.stage), body, headers=headers),
        )
        metrics.DEAD_LETTERS.labels(stage=self.stage, reason=reason).inc()
        log.error(
            "dead-lettered message",
            extra={"stage": self.stage, "reason": reason, "error": error[:500]},
        )

    async def _dead_letter_and_term(self, msg: Msg, reason: str, error: str) -> None:
        """Settle ``msg`` for good: dead-letter it, and terminate it even when that fails (a
        message redelivered forever would wedge the stage), counting and logging the loss."""
        try:
            await self.dead_letter(msg, reason, error)
        except Exception as exc:
            data = msg.data or b""
            metrics.DEAD_LETTER_FAILURES.labels(stage=self.stage).inc()
            log.error(
                "dead letter failed: terminating the message anyway",
                extra={
                    "stage": self.stage,
                    "reason": reason,
                    "error": error[:500],
                    "dead_letter_error": repr(exc),
                    "subject": msg.subject,
                    "stream_seq": _stream_seq(msg),
                    "payload_bytes": len(data),
                    "payload_sha256": hashlib.sha256(data).hexdigest(),
                },
            )
        await msg.term()
        metrics.MESSAGES.labels(stage=self.stage, outcome="dead_letter").inc()

    # -- consuming ------------------------------------------------------------------------------

    async def consume(
        self,
        stream: str,
        durable: str,
        type_: type[T],
        handler: Callable[[T], Awaitable[None]],
        *,
        stop: asyncio.Event,
        max_in_flight: int,
        drain_timeout_s: float,
        max_ack_pending: int | None = None,
    ) -> None:
        """Fetch and handle messages until ``stop`` is set, then finish in-flight work.

        Handlers run concurrently, at most ``max_in_flight`` at once (and at most
        ``max_ack_pending``, the consumer's limit across all replicas, when given). On stop,
        fetching ends at once; handlers still running after ``drain_timeout_s`` are cancelled and
        their messages nak'ed so another replica takes them over without waiting for ``ack_wait``.
        """
        if max_ack_pending is not None:
            max_in_flight = min(max_in_flight, max_ack_pending)
        await self._retrying(
            "ensure_consumer",
            lambda: self.ensure_consumer(stream, durable, max_ack_pending=max_ack_pending),
        )
        sub = await self.js.pull_subscribe_bind(durable, stream)
        decoder = msgspec.json.Decoder(type_)
        tasks: set[asyncio.Task[None]] = set()
        stopping = asyncio.create_task(stop.wait())
        lag = asyncio.create_task(self._watch_lag(sub, stream))
        failing_since: float | None = None  # when the current run of fetch failures began
        failures = 0
        try:
            while not stop.is_set():
                if len(tasks) >= max_in_flight:
                    await asyncio.wait({*tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(max_in_flight - len(tasks), timeout=1.0)
                except TimeoutError:
                    continue  # nothing to fetch (or NATS reconnecting): ask again
                except nats.errors.ConnectionClosedError:
                    break
                except Exception as exc:
                    # JetStream unavailable (a leader election, a restart) is waited out however
                    # long it lasts; any other failure (the consumer lost) for unavailable_retry_s
                    # of failures in a row, re-creating the consumer between tries.
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if not unavailable(exc) and now - failing_since > self.cfg.unavailable_retry_s:
                        raise
                    failures += 1
                    metrics.NATS_RETRIES.labels(op="fetch").inc()
                    log.warning(
                        "fetch failed: retrying", extra={"stage": self.stage, "error": repr(exc)}
                    )
                    await asyncio.wait({stopping}, timeout=min(0.1 * 2**failures, 2.0))
                    if not unavailable(exc):
                        try:
                            await self.ensure_consumer(
                                stream, durable, max_ack_pending=max_ack_pending
                            )
                        except Exception as again:  # the next fetch tells whether it is back
                            log.debug("re-creating the consumer failed: %r", again)
                    continue
                failing_since, failures = None, 0
                for msg in msgs:
                    task = asyncio.create_task(self._handle(msg, decoder, handler))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    task.add_done_callback(self._log_failure)
        finally:
            await _cancel_and_wait(stopping, lag)
            if tasks:
                _, pending = await asyncio.wait(set(tasks), timeout=drain_timeout_s)
                await _cancel_and_wait(*pending)
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection closed first: nothing left to unsubscribe
                log.debug("unsubscribe failed: %s", exc, extra={"stage": self.stage})

    def _log_failure(self, task: asyncio.Task[None]) -> None:
        # The error boundary handles the handler's errors; what escapes it is a failed ack, nak
        # or dead letter (NATS gone): the message is redelivered after ack_wait.
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("settling a message failed: %r", exc, extra={"stage": self.stage})

    async def _watch_lag(self, sub: Any, stream: str, every_s: float = 5.0) -> None:
        """Export the consumer's lag (not yet delivered + delivered, unacked) as the stream's
        backlog: in a work-queue stream, exactly the messages waiting for this stage."""
        while True:
            try:
                info = await sub.consumer_info()
            except Exception as exc:  # NATS reconnecting: try again next time
                _raise_if_cancelled(exc)
                log.debug("consumer lag unavailable: %s", exc, extra={"stream": stream})
            else:
                metrics.BACKLOG.labels(stream=stream).set(
                    int(info.num_pending or 0) + int(info.num_ack_pending or 0)
                )
            _raise_if_cancelled()
            await asyncio.sleep(every_s)

    async def _handle(
        self,
        msg: Msg,
        decoder: msgspec.json.Decoder[Any],
        handler: Callable[[Any], Awaitable[None]],
    ) -> None:
        stage = self.stage
        m = self._metrics
        m.in_flight.inc()
        start = time.monotonic()
        heartbeat = _Heartbeat(msg, max(self.cfg.ack_wait_s / 3, 0.5), stage)
        try:
            try:
                value = decoder.decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise PoisonError("undecodable", str(exc)) from exc
            await handler(value)
        except ArenaError as exc:
            if exc.retryable:
                await self._retry_or_dead_letter(msg, exc)
                return
            await self._dead_letter_and_term(msg, exc.reason, str(exc))
        except asyncio.CancelledError:
            # Shutdown: give the message back now instead of after ack_wait.
            try:
                await msg.nak()
            except Exception as exc:  # redelivered after ack_wait instead
                log.warning("could not release a message: %s", exc, extra={"stage": stage})
            metrics.MESSAGES.labels(stage=stage, outcome="released").inc()
            raise
        except Exception as exc:
            await self._retry_or_dead_letter(msg, exc)
        else:
            await self._retrying("ack", msg.ack_sync)
            m.acked.inc()
        finally:
            await heartbeat.stop()
            m.in_flight.dec()
            m.seconds.observe(time.monotonic() - start)

    async def _retry_or_dead_letter(self, msg: Msg, exc: Exception) -> None:
        deliveries = _deliveries(msg)
        retryable = isinstance(exc, ArenaError) and exc.retryable
        reason = exc.reason if isinstance(exc, ArenaError) and retryable else "handler_error"
        if not retryable:
            log.exception("handler failed", exc_info=exc, extra={"stage": self.stage})
        if deliveries >= self.cfg.max_deliver:
            await self._dead_letter_and_term(msg, reason, f"{type(exc).__name__}: {exc}")
            return
        delay = min(self.cfg.retry_delay_s * 2 ** (deliveries - 1), 300.0)
        log.warning(
            "retrying message",
            extra={
                "stage": self.stage,
                "deliveries": deliveries,
                "delay_s": delay,
                "error": str(exc)[:500],
            },
        )
        await msg.nak(delay=delay)
        metrics.MESSAGES.labels(stage=self.stage, outcome="retry").inc()


class _StageMetrics:
    """The stage's metric children, looked up once (``labels()`` costs a lock and a dict lookup
    per call, several per message otherwise)."""

    def __init__(self, stage: str) -> None:
        self.in_flight = metrics.IN_FLIGHT.labels(stage=stage)
        self.seconds = metrics.STAGE_SECONDS.labels(stage=stage)
        self.acked = metrics.MESSAGES.labels(stage=stage, outcome="ack")


class _Heartbeat:
    """``in_progress()`` every ``interval`` while a handler runs, so a long LLM call is not
    redelivered. A timer until a beat is due (most handlers end first: no task is created for
    them); each beat is a task owned here, cancelled and awaited by ``stop``."""

    def __init__(self, msg: Msg, interval: float, stage: str) -> None:
        self.msg, self.interval, self.stage = msg, interval, stage
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(interval, self._due)
        self._beat: asyncio.Task[None] | None = None

    def _due(self) -> None:
        self._timer = None
        self._beat = self._loop.create_task(self._send())

    async def _send(self) -> None:
        try:
            await self.msg.in_progress()
        except Exception as exc:  # NATS reconnecting: the next beat may get through
            _raise_if_cancelled(exc)
            log.debug("heartbeat failed: %s", exc, extra={"stage": self.stage})
        self._timer = self._loop.call_later(self.interval, self._due)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._beat is not None:
            await _cancel_and_wait(self._beat)
        if self._timer is not None:  # the beat finished and re-armed before it was cancelled
            self._timer.cancel()
            self._timer = None


def _raise_if_cancelled(exc: Exception | None = None) -> None:
    """nats.py can swallow a cancellation that lands inside a request (turning it into a
    TimeoutError, or into nothing): when this task is being cancelled, end it instead of taking
    the error for an outage and going on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


async def _cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel the tasks and wait until they have finished (their own errors are logged)."""
    for task in tasks:
        task.cancel()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception):
            log.warning("background task failed: %r", result)


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


def _stream_seq(msg: Msg) -> int | None:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:
        return None


class RetryingKeyValue:
    """A KV bucket (nats.py's ``KeyValue``) whose calls are retried while JetStream is
    unavailable; a ``KeyValueStore``. Anything else is the bucket's own (``watch``, ...)."""

    def __init__(self, kv: KeyValue, *, budget_s: float) -> None:
        self.inner = kv
        self.budget_s = budget_s
        self._many: _MultiLastGets | None = None
        # Writes go through ``js_publish`` where the bucket is nats.py's own KeyValue.
        self._fast = getattr(kv, "_js", None) is not None and hasattr(kv, "_pre")

    async def get(self, key: str, revision: int | None = None) -> KeyValue.Entry:
        return await retrying(
            "kv_get", lambda: self.inner.get(key, revision), budget_s=self.budget_s
        )

    async def get_many(self, keys: Sequence[str]) -> dict[str, KeyValue.Entry]:
        """The latest entries of ``keys`` (absent and deleted keys left out), as of one moment
        of the bucket: one batched direct get (nats-server >= 2.11, ``multi_last``) on a bucket
        that allows direct gets, else concurrent gets. Every write acknowledged before the call
        is seen where a get would see it (a direct bucket is a single copy unless its
        declaration tolerates stale reads: ``topology.Bucket.stale_reads_ok``)."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        if not getattr(self.inner, "_direct", False):
            found = await asyncio.gather(*(self._get_or_none(k) for k in keys))
            return {k: e for k, e in zip(keys, found, strict=True) if e is not None}
        out: dict[str, KeyValue.Entry] = {}
        for i in range(0, len(keys), _MULTI_GET_BATCH):
            chunk = keys[i : i + _MULTI_GET_BATCH]
            call = functools.partial(self._direct_many, chunk)
            out.update(await retrying("kv_get_many", call, budget_s=self.budget_s))
        return out

    async def _get_or_none(self, key: str) -> KeyValue.Entry | None:
        try:
            return await self.get(key)
        except KeyNotFoundError:
            return None

    async def _direct_many(self, keys: list[str]) -> dict[str, KeyValue.Entry]:
        if self._many is None:
            self._many = _MultiLastGets(self.inner)
        return await self._many.get(keys)

    async def put(self, key: str, value: bytes) -> int:
        if not self._fast:
            return await retrying(
                "kv_put", lambda: self.inner.put(key, value), budget_s=self.budget_s
            )
        return await self._write("kv_put", key, value, None)

    async def create(self, key: str, value: bytes) -> int:
        if not self._fast:
            return await retrying(
                "kv_create", lambda: self.inner.create(key, value), budget_s=self.budget_s
            )
        # nats.py 2.16's KeyValue.create: only if the key never existed, else (a delete
        # marker) on the marker's revision.
        try:
            return await self._write("kv_create", key, value, 0)
        except KeyWrongLastSequenceError:
            try:
                await retrying("kv_get", lambda: self.inner._get(key), budget_s=self.budget_s)
            except KeyDeletedError as deleted:
                return await self._write("kv_create", key, value, deleted.entry.revision)
            raise

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        if not self._fast:
            return await retrying(
                "kv_update", lambda: self.inner.update(key, value, last), budget_s=self.budget_s
            )
        return await self._write("kv_update", key, value, last or 0)

    async def _write(self, op: str, key: str, value: bytes, last: int | None) -> int:
        """nats.py 2.16's ``KeyValue._update`` (``last`` None: a plain put) on ``js_publish``."""
        if not _is_key_valid(key):
            raise InvalidKeyError(key)
        js = self.inner._js
        headers = None if last is None else {_EXPECTED_LAST_SUBJECT_SEQ: str(last)}
        subject = self.inner._pre + key

        def call() -> Awaitable[int]:
            return js_publish(js._nc, subject, value, headers=headers, wait_s=js._timeout)

        try:
            return await retrying(op, call, budget_s=self.budget_s)
        except APIError as err:
            # 10071: JSStreamWrongLastSequenceErrF, 10164: JSStreamWrongLastSequenceConstantErr
            if getattr(err, "err_code", None) in (10071, 10164):
                raise KeyWrongLastSequenceError(description=err.description) from err
            raise

    async def delete(self, key: str, last: int | None = None) -> bool:
        return await retrying(
            "kv_delete", lambda: self.inner.delete(key, last), budget_s=self.budget_s
        )

    async def status(self) -> KeyValue.BucketStatus:
        return await retrying("kv_status", self.inner.status, budget_s=self.budget_s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _MultiLastGets:
    """Batched direct gets of one bucket (nats.py 2.16 has none): the request of nats-server's
    stream.go (``JSApiMsgGetRequest``: ``multi_last``, ``batch``; server >= 2.11) sent on
    nats.py's connection and prefixes. The replies are one message per key found (a delete
    marker carries ``KV-Operation``), then a 204 EOB status (404 when nothing matched). They come
    to one wildcard inbox subscription (like nats.py's own request inbox), so a call costs one
    publish and no subscription or task of its own."""

    def __init__(self, kv: KeyValue) -> None:
        # nats.py's KeyValue keeps its stream, key prefix and JetStream context privately.
        self.kv, self.js = kv, kv._js
        self.nc = self.js._nc
        self.pre: str = kv._pre
        self.subject = f"{self.js._prefix}.DIRECT.GET.{kv._stream}"
        self.inbox = self.nc.new_inbox()
        self._sub: Any = None
        self._lock = asyncio.Lock()
        self._waiting: dict[str, tuple[asyncio.Future[None], dict[str, KeyValue.Entry]]] = {}
        self._next = 0

    async def get(self, keys: list[str]) -> dict[str, KeyValue.Entry]:
        if self._sub is None:
            async with self._lock:
                if self._sub is None:
                    self._sub = await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_reply)
        self._next += 1
        token = str(self._next)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        out: dict[str, KeyValue.Entry] = {}
        self._waiting[token] = (done, out)
        subjects = [self.pre + k for k in keys]
        request = _MULTI_GET_ENCODER.encode({"multi_last": subjects, "batch": len(subjects)})
        try:
            await self.nc.publish(self.subject, request, reply=f"{self.inbox}.{token}")
            async with asyncio.timeout(self.js._timeout):
                await done
        finally:
            self._waiting.pop(token, None)
        return out

    async def _on_reply(self, msg: Msg) -> None:
        waiting = self._waiting.get(msg.subject[len(self.inbox) + 1 :])
        if waiting is None or waiting[0].done():
            return  # the caller gave up (timed out, cancelled)
        done, out = waiting
        headers = msg.headers or {}
        status = headers.get("Status")
        if status in ("204", "404"):
            done.set_result(None)
        elif status:
            done.set_exception(APIError.from_msg(msg))
        elif headers.get("KV-Operation") not in ("DEL", "PURGE"):
            key = headers["Nats-Subject"][len(self.pre) :]
            out[key] = KeyValue.Entry(
                bucket=self.kv._name,
                key=key,
                value=msg.data,
                revision=int(headers["Nats-Sequence"]),
                delta=None,
                created=None,
                operation=None,
            )
