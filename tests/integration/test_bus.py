"""The bus against a real nats-server: topology, de-duplication, acks, retries, dead letters."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from tests.helpers import challenge
from warriorcoder.errors import PoisonError, RetryableError
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Challenge, DeadLetter, decode, encode
from warriorcoder.runtime.bus import Bus, connect
from warriorcoder.runtime.settings import NatsSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus(nats_url):
    cfg = NatsSettings(url=nats_url, max_deliver=3, retry_delay_s=0.05, ack_wait_s=5)
    nc = await connect(cfg)
    b = Bus(nc, cfg, stage="responder")
    await b.ensure_topology()
    yield b
    await nc.drain()


async def consume_until(bus, handler, *, done, limit_s=15.0):
    stop = asyncio.Event()

    async def watch():
        while True:
            result = done()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                break
            await asyncio.sleep(0.02)
        stop.set()

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(
            bus.consume(
                subjects.STREAM_CHALLENGES,
                subjects.CONSUMER_RESPONDER,
                Challenge,
                handler,
                stop=stop,
                max_in_flight=4,
                drain_timeout_s=2,
            ),
            limit_s,
        )
    finally:
        watcher.cancel()


async def dead_letters(bus) -> list[DeadLetter]:
    sub = await bus.js.subscribe(f"{subjects.DLQ_PREFIX}.>", ordered_consumer=True)
    out = []
    try:
        while True:
            msg = await sub.next_msg(timeout=0.5)
            out.append(decode(msg.data, DeadLetter))
    except Exception:
        pass
    await sub.unsubscribe()
    return out


async def test_topology_is_idempotent(bus):
    await bus.ensure_topology()
    await bus.ensure_topology()
    info = await bus.js.stream_info(subjects.STREAM_CHALLENGES)
    assert info.config.retention == "workqueue"
    assert info.config.subjects == [subjects.CHALLENGES]
    samples = await bus.js.stream_info(subjects.STREAM_SAMPLES)
    assert samples.config.retention == "limits"


async def test_publish_is_deduplicated_by_message_id(bus):
    ch = challenge()
    await bus.publish(subjects.CHALLENGES, ch, msg_id=ch.id)
    await bus.publish(subjects.CHALLENGES, ch, msg_id=ch.id)
    assert await bus.backlog(subjects.STREAM_CHALLENGES) == 1


async def test_handled_messages_are_acked_and_leave_the_work_queue(bus):
    sent = [challenge(text=f"Write function number {i} for sorting lists.") for i in range(5)]
    for ch in sent:
        await bus.publish(subjects.CHALLENGES, ch, msg_id=ch.id)
    seen: list[Challenge] = []

    async def handler(ch: Challenge) -> None:
        seen.append(ch)

    await consume_until(bus, handler, done=lambda: len(seen) == 5)
    assert sorted(c.id for c in seen) == sorted(c.id for c in sent)
    await asyncio.sleep(0.2)
    assert await bus.backlog(subjects.STREAM_CHALLENGES) == 0


async def test_undecodable_message_goes_to_dead_letters_at_once(bus):
    await bus.js.publish(subjects.CHALLENGES, b'{"type": "warriorcoder.v1.challenge", "id": 3}')
    calls = 0

    async def handler(ch: Challenge) -> None:
        nonlocal calls
        calls += 1

    await consume_until(bus, handler, done=lambda: dlq_count(bus))
    letters = await dead_letters(bus)
    assert calls == 0
    assert len(letters) == 1
    assert letters[0].reason == "undecodable"
    assert letters[0].stage == "responder"
    assert "$.id" in letters[0].error
    assert letters[0].payload.startswith('{"type"')
    assert await bus.backlog(subjects.STREAM_CHALLENGES) == 0


async def _both(count, flag) -> bool:
    return (await count) >= 1 and flag


async def dlq_count(bus) -> int:
    return int((await bus.js.stream_info(subjects.STREAM_DLQ)).state.messages)


async def test_poison_error_dead_letters_with_its_reason(bus):
    ch = challenge()
    await bus.publish(subjects.CHALLENGES, ch, msg_id=ch.id)

    async def handler(c: Challenge) -> None:
        raise PoisonError("unknown_model", "'zeta' is not a competitor")

    await consume_until(bus, handler, done=lambda: dlq_count(bus))
    [letter] = await dead_letters(bus)
    assert letter.reason == "unknown_model"
    assert "zeta" in letter.error
    assert letter.message_id == ch.id
    assert decode(letter.payload, Challenge) == ch  # nothing lost: the payload is intact


async def test_retryable_errors_are_redelivered_then_dead_lettered(bus):
    ch = challenge()
    await bus.publish(subjects.CHALLENGES, ch, msg_id=ch.id)
    attempts = 0

    async def handler(c: Challenge) -> None:
        nonlocal attempts
        attempts += 1
        raise RetryableError("backend unavailable")

    await consume_until(bus, handler, done=lambda: dlq_count(bus))
    [letter] = await dead_letters(bus)
    assert attempts == 3  # max_deliver
    assert letter.deliveries == 3
    assert letter.reason == "retries_exhausted"
    assert "backend unavailable" in letter.error


async def test_a_transient_failure_is_retried_and_then_succeeds(bus):
    ch = challenge()
    await bus.publish(subjects.CHALLENGES, ch, msg_id=ch.id)
    attempts = 0
    done = asyncio.Event()

    async def handler(c: Challenge) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RetryableError("busy")
        done.set()

    await consume_until(bus, handler, done=done.is_set)
    assert attempts == 2
    assert await dead_letters(bus) == []


async def test_unexpected_handler_exception_never_crashes_the_consumer(bus):
    first, second = (
        challenge(text="Write the first program, please."),
        challenge(text="Write the second program, please."),
    )
    for ch in (first, second):
        await bus.publish(subjects.CHALLENGES, ch, msg_id=ch.id)
    ok: list[str] = []

    async def handler(c: Challenge) -> None:
        if c.id == first.id:
            raise KeyError("bug")
        ok.append(c.id)

    await consume_until(bus, handler, done=lambda: _both(dlq_count(bus), bool(ok)))
    assert ok == [second.id]
    [letter] = await dead_letters(bus)
    assert letter.reason == "handler_error"
    assert "KeyError" in letter.error


async def test_stop_releases_in_flight_work(bus):
    ch = challenge()
    await bus.publish(subjects.CHALLENGES, ch, msg_id=ch.id)
    started = asyncio.Event()
    stop = asyncio.Event()

    async def handler(c: Challenge) -> None:
        started.set()
        await asyncio.sleep(60)

    task = asyncio.create_task(
        bus.consume(
            subjects.STREAM_CHALLENGES,
            subjects.CONSUMER_RESPONDER,
            Challenge,
            handler,
            stop=stop,
            max_in_flight=1,
            drain_timeout_s=0.2,
        )
    )
    await asyncio.wait_for(started.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 5)
    # The message was nak'ed, not lost: a new consumer run gets it at once.
    got = asyncio.Event()

    async def second(c: Challenge) -> None:
        got.set()

    await consume_until(bus, second, done=got.is_set, limit_s=5)
    assert got.is_set()


async def test_kv_bucket_creation_is_idempotent(bus, nats_url):
    cfg = NatsSettings(url=nats_url)
    nc2 = await connect(cfg)
    other = Bus(nc2, cfg, stage="judge")
    bucket = subjects.KV_DEDUP  # any declared bucket
    kv1, kv2 = await asyncio.gather(bus.kv(bucket), other.kv(bucket))
    await kv1.put("k", b"v")
    assert (await kv2.get("k")).value == b"v"
    await nc2.drain()


def test_dead_letter_struct_round_trips():
    d = DeadLetter(
        stage="judge", reason="x", error="e", subject="s", deliveries=1, payload="p", failed_at=1.0
    )
    assert decode(encode(d), DeadLetter) == d
    assert msgspec.json.decode(encode(d))["type"] == "warriorcoder.v1.dead_letter"


async def test_consumer_lag_is_exported_as_the_stream_backlog(bus):
    from prometheus_client import REGISTRY

    from warriorcoder.runtime import metrics

    for i in range(3):
        ch = challenge(text=f"Write a Python function number {i} to sort.")
        await bus.publish(subjects.CHALLENGES, ch, msg_id=ch.id)
    release = asyncio.Event()
    stop = asyncio.Event()

    async def handler(c: Challenge) -> None:
        await release.wait()

    task = asyncio.create_task(
        bus.consume(subjects.STREAM_CHALLENGES, subjects.CONSUMER_RESPONDER, Challenge, handler,
                    stop=stop, max_in_flight=1, drain_timeout_s=5)
    )  # fmt: skip

    def backlog() -> float | None:
        return REGISTRY.get_sample_value(
            "warriorcoder_backlog_messages", {"stream": subjects.STREAM_CHALLENGES}
        )

    metrics.BACKLOG.labels(stream=subjects.STREAM_CHALLENGES).set(-1)
    for _ in range(100):
        await asyncio.sleep(0.05)
        if backlog() == 3:  # not yet delivered + delivered and unacked
            break
    assert backlog() == 3
    release.set()
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_compare_and_set_creates_updates_and_declines(bus):
    from warriorcoder.runtime.kv import compare_and_set

    kv = await bus.kv(subjects.KV_STATS)  # any declared bucket
    assert await compare_and_set(kv, "k", lambda v: b"1") == (None, b"1")  # created
    assert await compare_and_set(kv, "k", lambda v: (v or b"") + b"2") == (b"1", b"12")
    assert await compare_and_set(kv, "k", lambda v: None) == (b"12", None)  # left alone
    assert (await kv.get("k")).value == b"12"


async def test_ensure_topology_creates_exactly_the_declared_streams(bus):
    from warriorcoder.proto import topology

    infos = await bus.js.streams_info()
    declared = {s.name: s for s in topology.STREAMS if not s.optional}
    assert {i.config.name for i in infos} == set(declared)
    for info in infos:
        s = declared[info.config.name]
        assert info.config.subjects == list(s.subjects)
        assert info.config.retention == s.retention
        if s.dedup_window:
            assert info.config.duplicate_window == bus.cfg.duplicate_window_s


async def test_kv_creates_declared_buckets_only(bus):
    from warriorcoder.proto import topology

    for declared in topology.BUCKETS:
        kv = await bus.kv(declared.name)
        status = await kv.status()
        assert status.bucket == declared.name
        assert status.history == declared.history
    with pytest.raises(KeyError):
        await bus.kv("warriorcoder_v1_undeclared")


async def test_update_state_migrates_today_s_values_on_a_real_bucket(bus):
    from warriorcoder.proto.state import Cursor, RejectionCounts, decode_state
    from warriorcoder.runtime.kv import update_state
    from warriorcoder.runtime.stores import Budget, RejectionStats, ScheduleCursor

    schedule = await bus.kv(subjects.KV_SCHEDULE)
    await schedule.put(subjects.SCHEDULE_KEY, b"9")  # as the previous version stored them
    await schedule.put(subjects.BUDGET_KEY, b"unlimited")
    stats = await bus.kv(subjects.KV_STATS)
    await stats.put(subjects.STATS_REJECTIONS_KEY, b'{"duplicate": 4}')

    assert await asyncio.gather(*(ScheduleCursor(schedule).next() for _ in range(3))) in (
        [9, 10, 11],
        [9, 11, 10],
        [10, 9, 11],
        [10, 11, 9],
        [11, 9, 10],
        [11, 10, 9],
    )
    assert decode_state((await schedule.get(subjects.SCHEDULE_KEY)).value, Cursor) == Cursor(
        next=12
    )
    assert await Budget(schedule).remaining() is None
    await RejectionStats(stats).add("duplicate")
    assert await RejectionStats.read(stats) == {"duplicate": 5}
    before, after = await update_state(stats, subjects.STATS_REJECTIONS_KEY, RejectionCounts,
                                       lambda doc: None)  # fmt: skip
    assert before == RejectionCounts(counts={"duplicate": 5}) and after is None


async def test_consume_leaves_no_task_behind(bus):
    """The stop waiter, the lag watcher, handlers and their heartbeats are all finished when
    ``consume`` returns, not merely cancelled."""
    for i in range(3):
        ch = challenge(text=f"Write a Python function number {i} to sort.")
        await bus.publish(subjects.CHALLENGES, ch, msg_id=ch.id)
    started = asyncio.Event()
    stop = asyncio.Event()
    seen: list[set[asyncio.Task[object]]] = []

    async def handler(c: Challenge) -> None:
        started.set()
        await asyncio.Event().wait()  # never done: cancelled at the drain timeout

    async def stop_when_started() -> None:
        await started.wait()
        seen.append(asyncio.all_tasks())
        stop.set()

    stopper = asyncio.create_task(stop_when_started())
    before = asyncio.all_tasks()
    await bus.consume(subjects.STREAM_CHALLENGES, subjects.CONSUMER_RESPONDER, Challenge, handler,
                      stop=stop, max_in_flight=2, drain_timeout_s=0.2)  # fmt: skip
    # Checked right away: no turn of the event loop has run since consume returned.
    assert asyncio.all_tasks() - before == set()
    assert len(seen[0] - before) >= 4  # stop waiter, lag watcher, handlers, heartbeats
    assert stopper.done()
