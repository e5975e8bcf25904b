"""The chart's NATS permissions against a real nats-server: enough for the services, no more.

The server is configured from charts/warriorcoder/files/nats-permissions.yaml (the source of
deploy/nats/values.yaml too) and the five real services (the verifier on) run against it, each
with the user and environment its chart Deployment gives it (conftest.secured_arena). The allowed
path is the whole arena producing samples; the denied paths are a service's user trying another's
subjects.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable

import nats
import pytest
from nats.aio.client import Client as NATS

from tests.deploy.helpers import SecuredArena, render
from warriorcoder.proto import subjects


async def _connect(arena: SecuredArena, user: str, errors: list[Exception]) -> NATS:
    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    return await nats.connect(
        arena.nats_url,
        user=user,
        password=arena.passwords[user],
        error_cb=on_error,
        allow_reconnect=False,
    )


async def _violation(errors: list[Exception], within_s: float = 3.0) -> str:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for e in errors:
            if "permissions violation" in str(e).lower():
                return str(e)
        await asyncio.sleep(0.05)
    return ""


def test_services_run_with_only_their_own_permissions(secured_arena: SecuredArena) -> None:
    """The allowed path: all five services start (create the streams, their consumers and KV
    buckets), consume, publish and write samples with their own users, and neither the server
    nor any service logged a permissions violation."""
    assert not secured_arena.dead()
    assert secured_arena.violations == []
    # Each service connected as its own chart user (the env its Deployment gives it).
    monitor = secured_arena.procs["nats-server"].ports["monitor"]
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/connz?auth=true", timeout=5) as r:
        connz = json.load(r)
    users = {c.get("name"): c.get("authorized_user") for c in connz["connections"]}
    _, perms = render.load_permissions()
    for service in render.SERVICES:
        assert users.get(f"warriorcoder-{service}") == perms[service].user, users
    for service in render.SERVICES:
        log = secured_arena.procs[service].log_path
        assert log is not None
        text = log.read_text().lower()
        assert "violation" not in text and "authorization" not in text, service


async def test_durable_consumers_and_buckets_were_created_by_the_services(
    secured_arena: SecuredArena,
) -> None:
    errors: list[Exception] = []
    nc = await _connect(secured_arena, "admin", errors)
    try:
        js = nc.jetstream()
        for stream, consumer in (
            (subjects.STREAM_CHALLENGES, subjects.CONSUMER_RESPONDER),
            (subjects.STREAM_ANSWERED, subjects.CONSUMER_VERIFIER),
            (subjects.STREAM_BATTLES, subjects.CONSUMER_JUDGE),
            (subjects.STREAM_JUDGEMENTS, subjects.CONSUMER_AGGREGATOR),
        ):
            info = await js.consumer_info(stream, consumer)
            assert info.delivered.stream_seq > 0, (stream, consumer)
        samples = await js.stream_info(subjects.STREAM_SAMPLES)
        assert samples.state.messages > 0
        ratings = await js.key_value(subjects.KV_RATINGS)
        assert (await ratings.get(subjects.RATINGS_KEY)).value
    finally:
        await nc.close()


async def test_a_stage_dead_letters_on_its_own_dlq_subject(secured_arena: SecuredArena) -> None:
    """An undecodable battle (published by an operator) goes to warriorcoder.v1.dlq.judge,
    published by the judge's user."""
    errors: list[Exception] = []
    nc = await _connect(secured_arena, "admin", errors)
    try:
        js = nc.jetstream()
        await js.publish(subjects.BATTLES, b"not a battle", headers={"Nats-Msg-Id": "poison-1"})
        deadline = time.monotonic() + 60
        while True:
            info = await js.stream_info(subjects.STREAM_DLQ, subjects_filter=subjects.dlq("judge"))
            if info.state.subjects and info.state.subjects.get(subjects.dlq("judge")):
                break
            assert time.monotonic() < deadline, "no dead letter from the judge"
            await asyncio.sleep(0.25)
    finally:
        await nc.close()


def _publish(subject: str) -> Callable[[NATS], Awaitable[None]]:
    async def act(nc: NATS) -> None:
        await nc.publish(subject, b"{}")
        await nc.flush()

    return act


def _subscribe(subject: str) -> Callable[[NATS], Awaitable[None]]:
    async def act(nc: NATS) -> None:
        await nc.subscribe(subject)
        await nc.flush()

    return act


DENIED = {
    # another stage's output
    "judge publishes samples": ("judge", _publish(subjects.SAMPLES)),
    "responder publishes judgements": ("responder", _publish(subjects.JUDGEMENTS)),
    "aggregator publishes challenges": ("aggregator", _publish(subjects.CHALLENGES)),
    "challenger publishes battles": ("challenger", _publish(subjects.BATTLES)),
    # another stage's dead letters and consumer
    "judge dead-letters as the aggregator": ("judge", _publish(subjects.dlq("aggregator"))),
    "aggregator pulls the responder's challenges": (
        "aggregator",
        _publish(f"$JS.API.CONSUMER.MSG.NEXT.{subjects.STREAM_CHALLENGES}.responder"),
    ),
    "responder acks the judge's messages": (
        "responder",
        _publish(f"$JS.ACK.{subjects.STREAM_BATTLES}.judge.1.1.1.1.1"),
    ),
    "judge creates a consumer of its own": (
        "judge",
        _publish(f"$JS.API.CONSUMER.DURABLE.CREATE.{subjects.STREAM_SAMPLES}.export"),
    ),
    # destructive stream operations and other buckets
    "judge deletes the samples stream": (
        "judge",
        _publish(f"$JS.API.STREAM.DELETE.{subjects.STREAM_SAMPLES}"),
    ),
    "aggregator purges the challenges": (
        "aggregator",
        _publish(f"$JS.API.STREAM.PURGE.{subjects.STREAM_CHALLENGES}"),
    ),
    "challenger creates another stream": ("challenger", _publish("$JS.API.STREAM.CREATE.OTHER")),
    "responder writes the ratings": ("responder", _publish(f"$KV.{subjects.KV_RATINGS}.elo")),
    "aggregator writes the dedup index": ("aggregator", _publish(f"$KV.{subjects.KV_DEDUP}.x")),
    # the verifier runs untrusted code: its user may do nothing but pass battles on
    "verifier publishes samples": ("verifier", _publish(subjects.SAMPLES)),
    "verifier publishes judgements": ("verifier", _publish(subjects.JUDGEMENTS)),
    "verifier publishes answered battles": ("verifier", _publish(subjects.ANSWERED)),
    "verifier writes the ratings": ("verifier", _publish(f"$KV.{subjects.KV_RATINGS}.elo")),
    "verifier reads the ratings": (
        "verifier",
        _publish(f"$JS.API.DIRECT.GET.KV_{subjects.KV_RATINGS}"),
    ),
    "verifier pulls the judge's battles": (
        "verifier",
        _publish(f"$JS.API.CONSUMER.MSG.NEXT.{subjects.STREAM_BATTLES}.judge"),
    ),
    "verifier subscribes to the bus": ("verifier", _subscribe(f"{subjects.PREFIX}.>")),
    "judge pulls the verifier's answered battles": (
        "judge",
        _publish(f"$JS.API.CONSUMER.MSG.NEXT.{subjects.STREAM_ANSWERED}.verifier"),
    ),
    "judge publishes answered battles": ("judge", _publish(subjects.ANSWERED)),
    # reading the bus directly, bypassing the durable consumers
    "challenger subscribes to the bus": ("challenger", _subscribe(f"{subjects.PREFIX}.>")),
    "judge subscribes to everything": ("judge", _subscribe(">")),
}


@pytest.mark.parametrize("case", list(DENIED))
async def test_a_service_user_is_refused_what_its_service_does_not_do(
    secured_arena: SecuredArena, case: str
) -> None:
    user, act = DENIED[case]
    errors: list[Exception] = []
    nc = await _connect(secured_arena, user, errors)
    try:
        await act(nc)
        violation = await _violation(errors)
        assert violation, f"{case}: no permissions violation (errors: {errors})"
    finally:
        await nc.close()


async def test_judge_cannot_publish_samples_through_jetstream_either(
    secured_arena: SecuredArena,
) -> None:
    """A JetStream publish of the wrong subject is dropped: no ack, nothing stored."""
    errors: list[Exception] = []
    admin = await _connect(secured_arena, "admin", [])
    judge = await _connect(secured_arena, "judge", errors)
    try:
        before = (await admin.jetstream().stream_info(subjects.STREAM_SAMPLES)).state.last_seq
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError)):
            await judge.jetstream().publish(subjects.SAMPLES, b"{}", timeout=1)
        assert await _violation(errors)
        after = await admin.jetstream().stream_info(subjects.STREAM_SAMPLES)
        # Only the aggregator's own samples may have landed since (never the judge's "{}").
        if after.state.last_seq > before:
            last = await admin.jetstream().get_last_msg(subjects.STREAM_SAMPLES, subjects.SAMPLES)
            assert last.data != b"{}"
    finally:
        await judge.close()
        await admin.close()
