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

Delivery is at least once with explicit acks. A handler's outcome maps to JetStream: return → ack;
a retryable ``ArenaError`` (or any unforeseen exception) → nak with back-off, until ``max_deliver``
deliveries, then dead letter (with the error's ``reason``, or ``handler_error`` for an unforeseen
one); a permanent ``ArenaError`` (``PoisonError``, a permanent inference error) or an undecodable
message → dead letter at once, with its reason. While a handler runs, the message gets
``in_progress()`` heartbeats so a long LLM call is not redelivered. Every task the bus starts
(handlers, heartbeats, the stop waiter, the lag watcher) is cancelled and awaited before
``consume`` returns.
"""

from __future__ import annotations

import asyncio
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
from warriorcoder.proto import subjects, topology
from warriorcoder.proto.messages import DeadLetter, encode
from warriorcoder.proto.topology import Stream
from warriorcoder.runtime import metrics
from warriorcoder.runtime.settings import NatsSettings

__all__ = [
    "Bus",
    "connect",
    "ensure_stream",
    "stream_config",
    "stream_configs",
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


class Bus:
    """JetStream access for one service: publish, dead-letter, consume, KV."""

    def __init__(self, nc: NATS, cfg: NatsSettings, *, stage: str) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.cfg = cfg
        self.stage = stage

    # -- topology -------------------------------------------------------------------------------

    async def ensure_topology(self) -> None:
        """Create or update every stream of the topology (but the optional ones, which the
        feature that uses them creates); safe to run from many replicas at once."""
        for sc in stream_configs(self.cfg):
            await ensure_stream(self.js, sc)

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

    async def kv(self, bucket: str, *, history: int | None = None) -> KeyValue:
        """Open a declared KV bucket, creating it as declared if missing (idempotent across
        replicas; KeyError for a bucket the topology does not declare). ``history`` overrides
        the declared history of a bucket created here."""
        declared = topology.bucket(bucket)
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
                log.debug("consumer lag unavailable: %s", exc, extra={"stream": stream})
            else:
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
            try:
                await msg.nak()
            except Exception as exc:  # redelivered after ack_wait instead
                log.warning("could not release a message: %s", exc, extra={"stage": stage})
            metrics.MESSAGES.labels(stage=stage, outcome="released").inc()
            raise
        except Exception as exc:
            await self._retry_or_dead_letter(msg, exc)
        else:
            await msg.ack_sync()
            metrics.MESSAGES.labels(stage=stage, outcome="ack").inc()
        finally:
            await _cancel_and_wait(heartbeat)
            metrics.IN_FLIGHT.labels(stage=stage).dec()
            metrics.STAGE_SECONDS.labels(stage=stage).observe(time.monotonic() - start)

    async def _retry_or_dead_letter(self, msg: Msg, exc: Exception) -> None:
        deliveries = _deliveries(msg)
        retryable = isinstance(exc, ArenaError) and exc.retryable
        reason = exc.reason if isinstance(exc, ArenaError) and retryable else "handler_error"
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
            try:
                await msg.in_progress()
            except Exception as exc:  # NATS reconnecting: the next beat may get through
                log.debug("heartbeat failed: %s", exc, extra={"stage": self.stage})


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
