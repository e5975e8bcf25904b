"""NATS JetStream bus: topology, idempotent publishing and the per-message error boundary.

Usage::

    nc = await connect(settings.nats)
    bus = Bus(nc, settings.nats)
    await bus.ensure_topology()
    await bus.publish(subjects.BATTLES, battle)        # Nats-Msg-Id = battle.id
    await bus.consume(STREAM_CHALLENGES, "responder", Challenge, handle, stop=stop, stage=...)

Delivery is at least once with explicit acks. A handler's outcome maps to JetStream: return → ack;
a retryable ``ArenaError`` (or any unforeseen exception) → nak with back-off, until ``max_deliver``
deliveries, then dead letter; a permanent ``ArenaError`` (``PoisonError``, a permanent inference
error) or an undecodable message → dead letter at once, with its reason. While a handler runs, the
message gets ``in_progress()`` heartbeats so a long LLM call is not redelivered. """

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from warriorcoder.errors import ArenaError, PoisonError
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import DeadLetter, encode
from warriorcoder.runtime import metrics
from warriorcoder.runtime.settings import NatsSettings

__all__ = [
    "Bus",
    "connect",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


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


def _work_stream(name: str, subject: str, cfg: NatsSettings) -> js_api.StreamConfig:
    return js_api.StreamConfig(
        name=name,
        subjects=[subject],
        retention=js_api.RetentionPolicy.WORK_QUEUE,
        storage=js_api.StorageType.FILE,
        num_replicas=cfg.stream_replicas,
        duplicate_window=cfg.duplicate_window_s,
        discard=js_api.DiscardPolicy.OLD,
    )


def topology(cfg: NatsSettings) -> list[js_api.StreamConfig]:
    """Every stream of the arena."""
    return [
        _work_stream(subjects.STREAM_CHALLENGES, subjects.CHALLENGES, cfg),
        _work_stream(subjects.STREAM_BATTLES, subjects.BATTLES, cfg),
        _work_stream(subjects.STREAM_JUDGEMENTS, subjects.JUDGEMENTS, cfg),
        js_api.StreamConfig(
            name=subjects.STREAM_SAMPLES,
            subjects=[subjects.SAMPLES],
            retention=js_api.RetentionPolicy.LIMITS,
            storage=js_api.StorageType.FILE,
            num_replicas=cfg.stream_replicas,
            duplicate_window=cfg.duplicate_window_s,
            max_age=cfg.samples_max_age_s or None,
        ),
        js_api.StreamConfig(
            name=subjects.STREAM_DLQ,
            subjects=[f"{subjects.DLQ_PREFIX}.>"],
            retention=js_api.RetentionPolicy.LIMITS,
            storage=js_api.StorageType.FILE,
            num_replicas=cfg.stream_replicas,
        ),
    ]


class Bus:
    """JetStream access for one service: publish, dead-letter, consume, KV."""

    def __init__(self, nc: NATS, cfg: NatsSettings, *, stage: str) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.cfg = cfg
        self.stage = stage

    # -- topology -------------------------------------------------------------------------------

    async def ensure_topology(self) -> None:
        """Create or update every stream; safe to run from many replicas at once."""
        for sc in topology(self.cfg):
            try:
                await self.js.add_stream(sc)
            except BadRequestError:
                # Exists with another config (e.g. older version): bring it up to date.
                await self.js.update_stream(sc)

    async def ensure_consumer(self, stream: str, durable: str) -> None:
        """A durable pull consumer with explicit acks, shared by all replicas of a stage."""
        cc = js_api.ConsumerConfig(
            durable_name=durable,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=self.cfg.ack_wait_s,
            # Unlimited here: the error boundary dead-letters at max_deliver itself, so no message
            # is ever left undelivered and unrecorded in the work stream.
            max_deliver=-1,
            max_ack_pending=10_000,
        )
        # Creating an existing durable with changed editable fields (ack_wait, ...) updates it.
        await self.js.add_consumer(stream, cc)

    async def kv(self, bucket: str, *, history: int = 1) -> KeyValue:
        """Open a KV bucket, creating it if missing (idempotent across replicas)."""
        try:
            return await self.js.key_value(bucket)
        except (BucketNotFoundError, NotFoundError):
            pass
        try:
            return await self.js.create_key_value(
                js_api.KeyValueConfig(
                    bucket=bucket,
                    history=history,
                    storage=js_api.StorageType.FILE,
                    replicas=self.cfg.stream_replicas,
                )
            )
        except BadRequestError:
            return await self.js.key_value(bucket)  # another replica created it first

    async def backlog(self, stream: str) -> int:
        """Messages waiting in a work stream (work-queue streams delete on ack)."""
        info = await self.js.stream_info(stream)
        return int(info.state.messages)

    # -- publishing -----------------------------------------------------------------------------

    async def publish(self, subject: str, msg: msgspec.Struct, *, msg_id: str) -> None:
        """Publish with ``Nats-Msg-Id`` so a retried publish is stored once."""
        await self.js.publish(subject, encode(msg), headers={"Nats-Msg-Id": msg_id})
        metrics.PUBLISHED.labels(subject=subject).inc()

    async def dead_letter(self, msg: Msg, reason: str, error: str) -> None:
        deliveries = _deliveries(msg)
        letter = DeadLetter(
            stage=self.stage,
            reason=reason,
            error=error[:4000],
            subject=msg.subject,
            deliveries=deliveries,
            payload=msg.data.decode("utf-8", errors="replace"),
            message_id=(msg.headers or {}).get("Nats-Msg-Id"),
            failed_at=time.time(),
        )
        meta_seq = _stream_seq(msg)
        dedup = f"{self.stage}-{meta_seq}" if meta_seq is not None else None
        headers = {"Nats-Msg-Id": dedup} if dedup else None
        await self.js.publish(subjects.dlq(self.stage), encode(letter), headers=headers)
        metrics.DEAD_LETTERS.labels(stage=self.stage, reason=reason).inc()
        log.error(
            "dead-lettered message",
            extra={"stage": self.stage, "reason": reason, "error": error[:500]},
        )

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
    ) -> None:
        """Fetch and handle messages until ``stop`` is set, then finish in-flight work.

        Handlers run concurrently, at most ``max_in_flight`` at once. On stop, fetching ends at
        once; handlers still running after ``drain_timeout_s`` are cancelled and their messages
        nak'ed so another replica takes them over without waiting for ``ack_wait``.
        """
        await self.ensure_consumer(stream, durable)
        sub = await self.js.pull_subscribe_bind(durable, stream)
        decoder = msgspec.json.Decoder(type_)
        tasks: set[asyncio.Task[None]] = set()
        stopping = asyncio.create_task(stop.wait())
        lag = asyncio.create_task(self._watch_lag(sub, stream))
        try:
            while not stop.is_set():
                if len(tasks) >= max_in_flight:
                    await asyncio.wait({*tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(max_in_flight - len(tasks), timeout=1.0)
                except TimeoutError:
                    continue
                except nats.errors.ConnectionClosedError:
                    break
                for msg in msgs:
                    task = asyncio.create_task(self._handle(msg, decoder, handler))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            stopping.cancel()
            lag.cancel()
            if tasks:
                _, pending = await asyncio.wait(set(tasks), timeout=drain_timeout_s)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _watch_lag(self, sub: Any, stream: str, every_s: float = 5.0) -> None:
        """Export the consumer's lag (not yet delivered + delivered, unacked) as the stream's
        backlog: in a work-queue stream, exactly the messages waiting for this stage."""
        while True:
            with contextlib.suppress(Exception):  # NATS reconnecting: try again next time
                info = await sub.consumer_info()
                metrics.BACKLOG.labels(stream=stream).set(
                    int(info.num_pending or 0) + int(info.num_ack_pending or 0)
                )
            await asyncio.sleep(every_s)

    async def _handle(
        self,
        msg: Msg,
        decoder: msgspec.json.Decoder[Any],
        handler: Callable[[Any], Awaitable[None]],
    ) -> None:
        stage = self.stage
        metrics.IN_FLIGHT.labels(stage=stage).inc()
        start = time.monotonic()
        heartbeat = asyncio.create_task(self._heartbeat(msg))
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
            await self.dead_letter(msg, exc.reason, str(exc))
            await msg.term()
            metrics.MESSAGES.labels(stage=stage, outcome="dead_letter").inc()
        except asyncio.CancelledError:
            # Shutdown: give the message back now instead of after ack_wait.
            with contextlib.suppress(Exception):
                await msg.nak()
            metrics.MESSAGES.labels(stage=stage, outcome="released").inc()
            raise
        except Exception as exc:
            await self._retry_or_dead_letter(msg, exc)
        else:
            await msg.ack_sync()
            metrics.MESSAGES.labels(stage=stage, outcome="ack").inc()
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            metrics.IN_FLIGHT.labels(stage=stage).dec()
            metrics.STAGE_SECONDS.labels(stage=stage).observe(time.monotonic() - start)

    async def _retry_or_dead_letter(self, msg: Msg, exc: Exception) -> None:
        deliveries = _deliveries(msg)
        retryable = isinstance(exc, ArenaError) and exc.retryable
        reason = "retries_exhausted" if retryable else "handler_error"
        if not retryable:
            log.exception("handler failed", exc_info=exc, extra={"stage": self.stage})
        if deliveries >= self.cfg.max_deliver:
            await self.dead_letter(msg, reason, f"{type(exc).__name__}: {exc}")
            await msg.term()
            metrics.MESSAGES.labels(stage=self.stage, outcome="dead_letter").inc()
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

    async def _heartbeat(self, msg: Msg) -> None:
        interval = max(self.cfg.ack_wait_s / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()


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
