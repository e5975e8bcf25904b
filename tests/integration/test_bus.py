"""The bus against a real nats-server: topology, de-duplication, acks, retries, dead letters."""

from __future__ import annotations

import asyncio

import msgspec
import nats
import pytest

from tests.helpers import battle, challenge, judgement
from warriorcoder.errors import PoisonError, RetryableError
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Battle, Challenge, DeadLetter, Judgement, decode, encode
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


# -- the boundary always settles a message (issue 10, item 1) -----------------------------------

WORK = (  # (subject, stream, consumer = stage, message type, a valid message)
    (subjects.CHALLENGES, subjects.STREAM_CHALLENGES, subjects.CONSUMER_RESPONDER, Challenge),
    (subjects.BATTLES, subjects.STREAM_BATTLES, subjects.CONSUMER_JUDGE, Battle),
    (subjects.JUDGEMENTS, subjects.STREAM_JUDGEMENTS, subjects.CONSUMER_AGGREGATOR, Judgement),
)


def _valid(type_: type, i: int) -> Challenge | Battle | Judgement:
    text = f"Write a Python function number {i} that sorts a list of integers."
    if type_ is Challenge:
        return challenge(text=text)
    if type_ is Battle:
        return battle(text=text)
    return judgement(["attacker"], text=text)


async def _stage_buses(nats_url: str, **overrides: object) -> list[Bus]:
    cfg = NatsSettings(url=nats_url, max_deliver=3, retry_delay_s=0.05, ack_wait_s=5, **overrides)
    buses = []
    for _, _, stage, _ in WORK:
        b = Bus(await connect(cfg), cfg, stage=stage)
        await b.ensure_topology()
        buses.append(b)
    return buses


async def _consume_all(buses: list[Bus], handlers: list, stop: asyncio.Event) -> None:
    await asyncio.gather(
        *(
            b.consume(stream, stage, type_, h, stop=stop, max_in_flight=4, drain_timeout_s=2)
            for b, h, (_, stream, stage, type_) in zip(buses, handlers, WORK, strict=True)
        )
    )


async def _until(cond, limit_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not await cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_900kb_junk_on_every_work_subject_is_dead_lettered_once(nats_url):
    """900 KB of random bytes (and 900 KB of control characters, six bytes each once
    JSON-escaped) on each work subject while valid work flows: every junk message is
    dead-lettered exactly once, within max_payload, matchable by size and hash; all valid work
    is done and nothing is redelivered."""
    import hashlib
    import os

    buses = await _stage_buses(nats_url, dead_letter_payload_bytes=4_000_000)  # > max_payload
    bus = buses[0]
    junk = {}
    for subject, *_ in WORK:
        control = b"\x01" * 899_900 + subject.encode().ljust(100)  # distinct per subject
        for kind, data in (("random", os.urandom(900_000)), ("control", control)):
            junk[(subject, kind)] = data
    seen: list[list[str]] = [[] for _ in WORK]
    sent: list[list[str]] = [[] for _ in WORK]
    handlers = [lambda m, out=out: _record(out, m.id) for out in seen]
    stop = asyncio.Event()
    consuming = asyncio.create_task(_consume_all(buses, handlers, stop))
    try:
        for i in range(6):
            for k, (subject, _, _, type_) in enumerate(WORK):
                msg = _valid(type_, i)
                await bus.publish(subject, msg, msg_id=msg.id)
                sent[k].append(msg.id)
            if i in (1, 3):  # junk in the middle of the flow
                for (subject, kind), data in junk.items():
                    if (kind == "random") == (i == 1):
                        await bus.js.publish(
                            subject, data, headers={"Nats-Msg-Id": f"junk-{subject}-{kind}"}
                        )

        async def settled() -> bool:
            return all(sorted(s) == sorted(t) for s, t in zip(seen, sent, strict=True)) and (
                await dlq_count(bus) >= len(junk)
            )

        await _until(settled, 30)
        await asyncio.sleep(1.5)  # a redelivered junk message would be dead-lettered again
    finally:
        stop.set()
        await asyncio.wait_for(consuming, 15)
    letters = await dead_letters(bus)
    assert len(letters) == len(junk)
    by_hash = {hashlib.sha256(d).hexdigest(): key for key, d in junk.items()}
    assert {by_hash[letter.payload_sha256] for letter in letters} == set(junk)
    for letter in letters:
        subject, kind = by_hash[letter.payload_sha256]
        assert letter.subject == subject and letter.reason == "undecodable"
        assert letter.deliveries == 1
        assert letter.payload_bytes == 900_000 and letter.payload_truncated
        assert 0 < len(encode(letter)) < bus.nc.max_payload
        if kind == "control":
            assert set(letter.payload) == {"\x01"}  # a prefix of the original
    assert all(sorted(s) == sorted(t) for s, t in zip(seen, sent, strict=True))
    for _, stream, _, _ in WORK:
        assert await bus.stored(stream) == 0  # everything settled: nothing left to redeliver
    for b in buses:
        await b.nc.drain()


async def _record(out: list[str], msg_id: str) -> None:
    out.append(msg_id)


async def test_a_small_payload_stays_whole_and_carries_its_size_and_hash(bus):
    import hashlib

    ch = challenge()
    await bus.publish(subjects.CHALLENGES, ch, msg_id=ch.id)

    async def handler(c: Challenge) -> None:
        raise PoisonError("unknown_model", "no")

    await consume_until(bus, handler, done=lambda: dlq_count(bus))
    [letter] = await dead_letters(bus)
    assert not letter.payload_truncated
    assert letter.payload.encode() == encode(ch)
    assert letter.payload_bytes == len(encode(ch))
    assert letter.payload_sha256 == hashlib.sha256(encode(ch)).hexdigest()


async def test_a_message_is_terminated_even_when_its_dead_letter_fails(bus, monkeypatch):
    """The dead-letter publish fails: the message is still settled (terminated, not
    redelivered), the loss counted and logged."""
    from prometheus_client import REGISTRY

    def failures() -> float:
        return (
            REGISTRY.get_sample_value(
                "warriorcoder_dead_letter_failures_total", {"stage": "responder"}
            )
            or 0.0
        )

    before = failures()
    real_publish = bus.js.publish

    async def publish(subject, payload=b"", **kw):
        if subject.startswith(subjects.DLQ_PREFIX):
            raise nats.errors.MaxPayloadError
        return await real_publish(subject, payload, **kw)

    monkeypatch.setattr(bus.js, "publish", publish)
    await bus.js.publish(subjects.CHALLENGES, b"\x00 junk", headers={"Nats-Msg-Id": "junk"})
    good = challenge()
    await bus.publish(subjects.CHALLENGES, good, msg_id=good.id)
    seen: list[str] = []

    async def handler(c: Challenge) -> None:
        seen.append(c.id)

    await consume_until(bus, handler, done=lambda: failures() == before + 1 and bool(seen))
    assert seen == [good.id]
    await asyncio.sleep(0.3)
    assert await bus.stored(subjects.STREAM_CHALLENGES) == 0  # terminated: gone for good
    info = await bus.js.consumer_info(subjects.STREAM_CHALLENGES, subjects.CONSUMER_RESPONDER)
    assert info.num_ack_pending == 0 and info.num_redelivered == 0
    assert await dlq_count(bus) == 0


# -- the stall of a killed replica (issue 10, item 4) -------------------------------------------


async def test_backlog_leaves_out_the_messages_a_dead_consumer_holds(bus, nats_url):
    """A replica takes three of five messages and dies without acking: until ack_wait gives
    them back, the backlog (what the challenger paces itself on) counts only the two still
    waiting; ``stored`` counts all five."""
    for i in range(5):
        ch = challenge(text=f"Write a Python function number {i} to sort.")
        await bus.publish(subjects.CHALLENGES, ch, msg_id=ch.id)
    assert await bus.backlog(subjects.STREAM_CHALLENGES) == 5  # no consumer yet: every message
    replica_nc = await connect(bus.cfg)
    replica = Bus(replica_nc, bus.cfg, stage="responder")
    await replica.ensure_consumer(subjects.STREAM_CHALLENGES, subjects.CONSUMER_RESPONDER)
    sub = await replica.js.pull_subscribe_bind(
        subjects.CONSUMER_RESPONDER, subjects.STREAM_CHALLENGES
    )
    assert len(await sub.fetch(3, timeout=5)) == 3
    await replica_nc.close()  # killed: no ack, no nak
    assert await bus.backlog(subjects.STREAM_CHALLENGES) == 2
    assert await bus.stored(subjects.STREAM_CHALLENGES) == 5


async def test_heartbeats_extend_ack_wait_while_a_handler_runs(nats_url):
    """A handler running for several ack_waits is not redelivered: its in_progress heartbeats
    (every ack_wait / 3) keep the message its own."""
    cfg = NatsSettings(url=nats_url, ack_wait_s=1.0, max_deliver=3)
    b = Bus(await connect(cfg), cfg, stage="responder")
    await b.ensure_topology()
    ch = challenge()
    await b.publish(subjects.CHALLENGES, ch, msg_id=ch.id)
    calls = 0

    async def handler(c: Challenge) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3.5)

    await consume_until(b, handler, done=lambda: _settled(b), limit_s=20)
    assert calls == 1
    await b.nc.drain()


async def _settled(b: Bus) -> bool:
    return await b.stored(subjects.STREAM_CHALLENGES) == 0


# -- JetStream unavailable is retried (issue 10, item 6) ----------------------------------------


async def test_retrying_waits_out_unavailability_and_passes_other_errors():
    from nats.js.errors import NotFoundError, ServiceUnavailableError

    from warriorcoder.runtime.bus import NatsUnavailableError, retrying

    errors = [
        ServiceUnavailableError(),
        nats.errors.NoRespondersError(),
        nats.errors.TimeoutError(),
    ]

    async def flaky() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    assert await retrying("op", flaky, budget_s=10) == "ok"

    async def missing() -> None:
        raise NotFoundError()

    with pytest.raises(NotFoundError):
        await retrying("op", missing, budget_s=10)

    async def down() -> None:
        raise ServiceUnavailableError()

    with pytest.raises(NatsUnavailableError) as err:
        await retrying("op", down, budget_s=0.5)
    assert err.value.retryable and err.value.reason == "nats_unavailable"


async def test_consume_survives_fetches_failing_with_service_unavailable(bus, monkeypatch):
    """A fetch answered 503 (an election) is retried, not raised out of consume."""
    from nats.js.client import JetStreamContext
    from nats.js.errors import ServiceUnavailableError

    real_fetch = JetStreamContext.PullSubscription.fetch
    failures = [ServiceUnavailableError(), ServiceUnavailableError()]

    async def fetch(self, *args, **kw):
        if failures:
            raise failures.pop(0)
        return await real_fetch(self, *args, **kw)

    monkeypatch.setattr(JetStreamContext.PullSubscription, "fetch", fetch)
    ch = challenge()
    await bus.publish(subjects.CHALLENGES, ch, msg_id=ch.id)
    seen: list[str] = []

    async def handler(c: Challenge) -> None:
        seen.append(c.id)

    await consume_until(bus, handler, done=lambda: bool(seen))
    assert seen == [ch.id] and failures == []
