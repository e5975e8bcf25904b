"""The issue's "mallory" messages through the real bus and the three running stages: each is
dead-lettered with its reason, while genuine work still becomes a sample; mallory never gets a
sample or a rating."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from msgspec.structs import replace

from tests.helpers import arena_judgement, arena_settings, arena_vote, battle, challenge
from warriorcoder.arena.instructions import normalise
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import (
    Battle,
    Challenge,
    DeadLetter,
    Judgement,
    Sample,
    battle_id,
    decode,
)
from warriorcoder.proto.state import Ratings
from warriorcoder.runtime.bus import Bus, connect
from warriorcoder.runtime.service import run_service
from warriorcoder.runtime.settings import ArenaSettings
from warriorcoder.runtime.shards import read_samples
from warriorcoder.stages import load

pytestmark = pytest.mark.integration


def with_mallory(ch: Challenge) -> Challenge:
    ch = replace(ch, defender="mallory")
    return replace(ch, id=battle_id(ch.attacker, "mallory", normalise(ch.instruction)))


def mallory_battle(text: str) -> Battle:
    b = battle(attacker="alpha", defender="beta", text=text)
    ch = with_mallory(b.challenge)
    answer = replace(b.defender_answer, model="mallory")
    return replace(b, id=ch.id, challenge=ch, defender_answer=answer)


async def stream_messages(bus: Bus, stream: str) -> list[bytes]:
    info = await bus.js.stream_info(stream)
    first, last = info.state.first_seq, info.state.last_seq
    out = []
    for seq in range(first, last + 1) if info.state.messages else ():
        out.append((await bus.js.get_msg(stream, seq)).data or b"")
    return out


async def wait_for(what: str, check, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_mallory_is_dead_lettered_at_every_stage_and_never_rated(
    nats_url: str, triton_url: str, tmp_path: Path
):
    data = tmp_path / "data"
    s: ArenaSettings = arena_settings(triton_url, nats_url, data_dir=str(data))
    nc = await connect(s.nats)
    bus = Bus(nc, s.nats, stage="test")
    await bus.ensure_topology()
    stops = {name: asyncio.Event() for name in ("responder", "judge", "aggregator")}
    services = [
        asyncio.create_task(run_service(load(name), s, stop, http_port=0))
        for name, stop in stops.items()
    ]
    try:
        # poison, one per consuming stage (two for the aggregator), each its own battle id
        poison = {
            "responder": with_mallory(challenge("alpha", "beta", text="Mallory's own task.")),
            "judge": mallory_battle("Write a Python function that flattens a nested list."),
        }
        mallory_fights = mallory_battle("Write a Python function that parses a CSV line.")
        votes = [arena_vote(j, "defender") for j in s.judges_for("alpha", "mallory")]
        forged_vote = arena_judgement(battle(text="Write a Python function for primes."), s)
        forged_vote = replace(forged_vote, votes=[*forged_vote.votes, arena_vote("mallory", "tie")])
        judgements = {
            "unknown_model": Judgement(
                id=mallory_fights.id,
                battle=mallory_fights,
                votes=votes,
                position_mode="both",
                judged_at=3.0,
            ),
            "judge_not_in_pool": forged_vote,
        }
        genuine = challenge("gamma", "alpha")
        await bus.publish(subjects.CHALLENGES, poison["responder"], msg_id=poison["responder"].id)
        await bus.publish(subjects.BATTLES, poison["judge"], msg_id=poison["judge"].id)
        for j in judgements.values():
            await bus.publish(subjects.JUDGEMENTS, j, msg_id=j.id)
        await bus.publish(subjects.CHALLENGES, genuine, msg_id=genuine.id)

        async def settled() -> bool:
            dead = await stream_messages(bus, subjects.STREAM_DLQ)
            samples = await stream_messages(bus, subjects.STREAM_SAMPLES)
            return len(dead) >= 4 and len(samples) >= 1

        await wait_for("4 dead letters and the genuine battle's sample", settled)
        await asyncio.sleep(1.0)  # anything else would arrive now: nothing must

        letters = [decode(d, DeadLetter) for d in await stream_messages(bus, subjects.STREAM_DLQ)]
        got = sorted((d.stage, d.reason, d.message_id) for d in letters)
        assert got == sorted(
            [
                ("responder", "unknown_model", poison["responder"].id),
                ("judge", "unknown_model", poison["judge"].id),
                *(("aggregator", reason, j.id) for reason, j in judgements.items()),
            ]
        )
        assert all(d.deliveries == 1 for d in letters)  # poison: dead-lettered at once
        assert all("mallory" in d.error for d in letters)

        [sample] = [decode(d, Sample) for d in await stream_messages(bus, subjects.STREAM_SAMPLES)]
        assert sample.id == genuine.id and {sample.winner, sample.loser} == {"gamma", "alpha"}
        assert [x.id for x in read_samples(data)] == [genuine.id]
        entry = await (await bus.kv(subjects.KV_RATINGS)).get(subjects.RATINGS_KEY)
        ratings = decode(entry.value or b"", Ratings)
        assert set(ratings.ratings) == {"gamma", "alpha"} and ratings.battles == 1
        for stream in (
            subjects.STREAM_CHALLENGES,
            subjects.STREAM_BATTLES,
            subjects.STREAM_JUDGEMENTS,
        ):
            assert (await bus.js.stream_info(stream)).state.messages == 0  # all settled
    finally:
        for stop in stops.values():
            stop.set()
        results = await asyncio.gather(*services, return_exceptions=True)
        await nc.drain()
    assert [r for r in results if r is not None] == []
