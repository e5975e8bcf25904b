"""Challenger service: schedule (attacker, defender) pairs, mine, clean, de-duplicate, publish.

Usage::

    warriorcoder serve challenger --config arena.yaml

The attacker gets only its chat-template prefix (system prompt + an opened user turn) and writes
the user's question (Magpie). Mining runs while the challenge backlog is below the high water mark
and pauses until it falls to the low water mark, so a continuous arena never floods the bus.
The schedule cursor and the exact de-dup index live in NATS KV, shared by every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time

from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from proto import subjects
from proto.messages import Challenge, SamplingParams, battle_id
from services.arena.instructions import clean, normalise
from services.arena.prompts import challenge_system_prompt
from services.arena.schedule import round_robin
from services.runtime import metrics
from services.runtime.service import Deps, ServiceSpec
from services.runtime.settings import ArenaSettings
from services.runtime.templates import ChatTemplate
from services.runtime.triton import InferenceError

__all__ = ["SPEC", "run"]

log = logging.getLogger(__name__)


class _Gate:
    """Open while the backlog is below the high water mark; reopens at the low water mark."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self.open = asyncio.Event()
        self.open.set()

    def observe(self, backlog: int) -> None:
        if backlog >= self.high:
            self.open.clear()
        elif backlog <= self.low:
            self.open.set()


async def next_cursor(kv: KeyValue) -> int:
    """Take the next slot of the shared round-robin schedule (compare-and-set on a KV key)."""
    while True:
        try:
            entry = await kv.get(subjects.SCHEDULE_KEY)
        except KeyNotFoundError:
            try:
                await kv.create(subjects.SCHEDULE_KEY, b"1")
                return 0
            except KeyWrongLastSequenceError:
                continue
        value = int(entry.value or b"0")
        try:
            await kv.update(subjects.SCHEDULE_KEY, str(value + 1).encode(), last=entry.revision)
            return value
        except KeyWrongLastSequenceError:
            continue


async def admit(kv: KeyValue, instruction: str, challenge_id: str) -> bool:
    """Record the instruction in the exact de-dup index; False if it was already there."""
    key = "exact." + hashlib.sha256(normalise(instruction).encode()).hexdigest()[:40]
    try:
        await kv.create(key, challenge_id.encode())
    except KeyWrongLastSequenceError:
        return False
    return True


class _Miner:
    def __init__(self, deps: Deps, dedup: KeyValue, schedule: KeyValue) -> None:
        s = deps.settings
        self.deps = deps
        self.s = s
        self.dedup = dedup
        self.schedule = schedule
        self.cycle = round_robin(s.competitors, s.challenger.pair_weights)
        templates = {
            m: ChatTemplate.from_settings(s.models[m].chat_template) for m in s.competitors
        }
        self.prefixes = {
            (m, lang): templates[m].magpie_prefix(challenge_system_prompt(lang))
            for m in s.competitors
            for lang in s.languages
        }
        self.stops = {m: [templates[m].user_turn_end()] for m in s.competitors}
        self.published = 0
        self.rng = random.Random()

    def done(self) -> bool:
        limit = self.s.challenger.max_challenges
        return limit > 0 and self.published >= limit

    async def mine_one(self) -> None:
        cursor = await next_cursor(self.schedule)
        attacker, defender = self.cycle[cursor % len(self.cycle)]
        language = self.s.languages[(cursor // len(self.cycle)) % len(self.s.languages)]
        cfg = self.s.sampling.challenge
        params = SamplingParams(
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_tokens,
            seed=self.rng.randrange(2**31),
        )
        gen = await self.deps.triton.generate(
            attacker,
            self.prefixes[(attacker, language)],
            params,
            stop=self.stops[attacker],
            role="challenge",
        )
        metrics.CHALLENGES_MINED.labels(attacker=attacker).inc()
        text, reason = clean(
            gen.text,
            stops=self.stops[attacker],
            min_chars=self.s.challenger.min_chars,
            max_chars=self.s.challenger.max_chars,
        )
        if reason is not None:
            metrics.CHALLENGES_REJECTED.labels(reason=reason).inc()
            log.info("challenge rejected", extra={"reason": reason, "attacker": attacker})
            return
        cid = battle_id(attacker, defender, normalise(text))
        if not await admit(self.dedup, text, cid):
            metrics.CHALLENGES_REJECTED.labels(reason="duplicate").inc()
            return
        if self.done():  # another worker reached the limit while this one was mining
            return
        challenge = Challenge(
            id=cid,
            attacker=attacker,
            defender=defender,
            language=language,
            instruction=text,
            sampling=params,
            created_at=time.time(),
        )
        self.published += 1  # reserved before the await so concurrent workers respect the limit
        try:
            await self.deps.bus.publish(subjects.CHALLENGES, challenge, msg_id=cid)
        except Exception:
            self.published -= 1
            raise
        metrics.CHALLENGES_PUBLISHED.labels(attacker=attacker).inc()
        log.info(
            "challenge published", extra={"id": cid, "attacker": attacker, "defender": defender}
        )


async def run(deps: Deps, stop: asyncio.Event) -> None:
    s = deps.settings
    miner = _Miner(
        deps, await deps.bus.kv(subjects.KV_DEDUP), await deps.bus.kv(subjects.KV_SCHEDULE)
    )
    gate = _Gate(s.challenger.low_water, s.challenger.high_water)
    in_flight = 0

    async def watch_backlog() -> None:
        while not stop.is_set():
            try:
                backlog = await deps.bus.backlog(subjects.STREAM_CHALLENGES)
            except Exception as exc:  # NATS reconnecting: keep the last decision
                log.warning("backlog check failed: %s", exc)
            else:
                metrics.BACKLOG.labels(stream=subjects.STREAM_CHALLENGES).set(backlog)
                gate.observe(backlog + in_flight)
            await _sleep_or_stop(stop, s.challenger.poll_interval_s)

    async def worker() -> None:
        nonlocal in_flight
        failures = 0
        while not stop.is_set() and not miner.done():
            await _wait_either(gate.open, stop)
            if stop.is_set():
                return
            in_flight += 1
            try:
                await miner.mine_one()
                failures = 0
            except (InferenceError, NatsError, TimeoutError) as exc:
                failures += 1
                delay = min(2.0 ** min(failures, 6), 60.0)
                log.warning(
                    "mining failed, backing off", extra={"error": str(exc), "delay_s": delay}
                )
                await _sleep_or_stop(stop, delay)
            finally:
                in_flight -= 1

    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(watch_backlog())
        workers = [tg.create_task(worker()) for _ in range(s.challenger.concurrency)]
        await asyncio.gather(*workers)
        if miner.done():
            log.info("challenge limit reached", extra={"published": miner.published})
            await stop.wait()  # stay up (healthy) until told to stop
        watcher.cancel()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _wait_either(a: asyncio.Event, b: asyncio.Event) -> None:
    if a.is_set() or b.is_set():
        return
    ta = asyncio.create_task(a.wait())
    tb = asyncio.create_task(b.wait())
    try:
        await asyncio.wait({ta, tb}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ta.cancel()
        tb.cancel()


def _models(s: ArenaSettings) -> list[str]:
    return list(s.competitors)


SPEC = ServiceSpec(name="challenger", run=run, models=_models)
