"""Challenger service: schedule (attacker, defender) pairs, mine, clean, de-duplicate, publish.

Usage::

    warriorcoder serve challenger --config arena.yaml

The attacker gets only its chat-template prefix (system prompt + an opened user turn) and writes
the user's question (Magpie), sampled over a temperature x top-p grid. Filters, cheapest first:
cleaning (cut at the end of the user turn; empty, short, long, template debris), benchmark
decontamination, exact and MinHash-LSH near-duplicates (an index in NATS KV shared by every
replica), then an LLM quality score (never by the attacker). Every rejection is counted by reason.
Mining runs while the challenge backlog is below the high water mark and pauses until it falls
to the low water mark, so a continuous arena never floods the bus. While a model is down its
calls wait (the inference circuit); a worker whose call still failed because its model is down
waits for that model to be back, not for a blind back-off, and resumes the moment it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from nats.errors import Error as NatsError

from warriorcoder.arena.decontam import NgramIndex
from warriorcoder.arena.instructions import clean, normalise
from warriorcoder.arena.near_dup import LshBands
from warriorcoder.arena.prompts import PROMPT_SET_VERSION, challenge_system_prompt
from warriorcoder.arena.schedule import round_robin
from warriorcoder.errors import ArenaError
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Challenge, SamplingParams, battle_id
from warriorcoder.runtime import metrics
from warriorcoder.runtime.ports import Inference, KeyValueStore, Publisher
from warriorcoder.runtime.provenance import Stamper
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.settings import ArenaSettings
from warriorcoder.runtime.stage import Deps, Stage
from warriorcoder.runtime.stores import Budget, RejectionStats, ScheduleCursor
from warriorcoder.runtime.triton import InferenceError
from warriorcoder.stages.challenger.diversity import DiversityGate
from warriorcoder.stages.challenger.filters import DedupIndex
from warriorcoder.stages.challenger.quality import QualityGate

__all__ = ["BUCKETS", "STAGE", "Miner", "run"]

# The KV buckets a miner keeps its state in: de-dup index, schedule (cursor, budget), statistics.
BUCKETS = (subjects.KV_DEDUP, subjects.KV_SCHEDULE, subjects.KV_STATS)

log = logging.getLogger(__name__)


class _Gate:
    """Open while backlog + mining calls in flight is below the high water mark; once closed,
    reopens when it falls to the low water mark. Publishes count at once, between observations
    of the stream, so concurrent workers cannot overshoot the high mark."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self.backlog = 0
        self.in_flight = 0
        self.open = asyncio.Event()
        self.open.set()

    def _update(self) -> None:
        level = self.backlog + self.in_flight
        if level >= self.high:
            self.open.clear()
        elif level <= self.low:
            self.open.set()

    def observe(self, backlog: int) -> None:
        self.backlog = backlog
        self._update()

    def enter(self) -> None:
        self.in_flight += 1
        self._update()

    def leave(self, published: bool) -> None:
        self.in_flight -= 1
        self.backlog += published
        self._update()


class Miner:
    """Mines, filters and publishes one instruction per ``mine_one`` call.

    ``kvs``: the challenger's buckets by name (``BUCKETS``: de-dup index, schedule, statistics);
    ``roster``: the competitors and the quality scorers.
    """

    def __init__(
        self,
        settings: ArenaSettings,
        roster: Roster,
        inference: Inference,
        publisher: Publisher,
        kvs: Mapping[str, KeyValueStore],
        *,
        diversity: DiversityGate | None = None,
    ) -> None:
        s = settings
        c = s.challenger
        self.s = s
        # provenance: the stamp of each challenge; the served model versions it records
        self.stamper = Stamper("challenger", s, roster, prompt_set=PROMPT_SET_VERSION)
        self.roster = roster
        inference = self.stamper.watch(inference)
        self.inference = inference
        self.publisher = publisher
        self.schedule = kvs[subjects.KV_SCHEDULE]
        self.stats = RejectionStats(kvs[subjects.KV_STATS])
        bands = (
            LshBands(num_perm=c.near_dup.num_perm, threshold=c.near_dup.threshold)
            if c.near_dup.enabled
            else None
        )
        self.dedup = DedupIndex(kvs[subjects.KV_DEDUP], bands)
        self.decontam = (
            NgramIndex.from_benchmarks(
                c.decontamination.benchmarks,
                files=c.decontamination.files,
                n=c.decontamination.ngram,
            )
            if c.decontamination.enabled
            else None
        )
        self.quality = QualityGate(s, roster, inference) if c.quality.enabled else None
        self.diversity = diversity
        self.cycle = round_robin(s.competitors, c.pair_weights)
        # Each round gives every pair the same (language, temperature, top-p); successive rounds
        # walk through all combinations, so every pair is mined with every setting.
        self.settings_cycle = [
            (lang, t, p) for lang in s.languages for (t, p) in s.sampling.challenge.grid()
        ]
        templates = {m: roster[m].template for m in s.competitors}
        self.prefixes = {
            (m, lang): templates[m].magpie_prefix(challenge_system_prompt(lang))
            for m in s.competitors
            for lang in s.languages
        }
        # The instruction ends where the user turn closes; a model may also just emit one of its
        # end tokens (Llama-3 instruct: <|eot_id|>, or the base model's <|end_of_text|>).
        self.stops = {
            m: list(
                dict.fromkeys(
                    x for x in (templates[m].user_turn_end(), *templates[m].stop_tokens()) if x
                )
            )
            for m in s.competitors
        }
        self.budget = Budget(self.schedule)
        self.cursor = ScheduleCursor(self.schedule)
        self.rng = random.Random()

    async def reject(self, reason: str, attacker: str) -> None:
        metrics.CHALLENGES_REJECTED.labels(reason=reason).inc()
        log.info("challenge rejected", extra={"reason": reason, "attacker": attacker})
        await self.stats.add(reason)

    async def mine_one(self) -> bool:
        """Mine one instruction; True when it was published."""
        cursor = await self.cursor.next()
        attacker, defender = self.cycle[cursor % len(self.cycle)]
        rounds = cursor // len(self.cycle)
        language, temperature, top_p = self.settings_cycle[rounds % len(self.settings_cycle)]
        params = SamplingParams(
            temperature=temperature,
            top_p=top_p,
            max_tokens=self.s.sampling.challenge.max_tokens,
            seed=self.rng.randrange(2**31),
        )
        gen = await self.inference.generate(
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
            await self.reject(reason, attacker)
            return False
        if self.decontam is not None and (hit := self.decontam.match(text)) is not None:
            log.info("contaminated instruction", extra={"benchmark_problem": hit})
            await self.reject("contaminated", attacker)
            return False
        cid = battle_id(attacker, defender, normalise(text))
        claim, dup_reason = await self.dedup.claim(text, cid)
        if claim is None:
            await self.reject(dup_reason, attacker)
            return False
        vector = None
        if self.diversity is not None:
            try:
                vector, nearest = await self.diversity.check(text)
            except BaseException:
                await claim.release()
                raise
            if self.diversity.too_close(nearest):
                await claim.release()
                await self.reject("too_similar", attacker)
                return False
        score = scorer = None
        if self.quality is not None:
            try:
                score, scorer = await self.quality.rate(text, language, attacker)
            except BaseException:
                await claim.release()
                raise
            if score is None or score < self.s.challenger.quality.threshold:
                await claim.release()
                metrics.QUALITY_SCORES.observe(score or 0)
                await self.reject(
                    "quality_unparseable" if score is None else "low_quality", attacker
                )
                return False
            metrics.QUALITY_SCORES.observe(score)
        if not await self.budget.take():  # spent while this one was mining
            await claim.release()
            return False
        challenge = Challenge(
            id=cid,
            attacker=attacker,
            defender=defender,
            language=language,
            instruction=text,
            sampling=params,
            created_at=time.time(),
            quality=score,
            quality_scorer=scorer,
            stamp=self.stamper.stamp(
                [attacker] if scorer is None else [attacker, scorer],
                sampling={}
                if scorer is None
                else {"quality": self.roster[scorer].sampling["quality"]},
            ),
        )
        try:
            await self.publisher.publish(subjects.CHALLENGES, challenge, msg_id=cid)
        except Exception:  # not stored: give its de-dup keys (best effort) and budget back
            await claim.release()
            await self.budget.give_back()
            raise
        metrics.CHALLENGES_PUBLISHED.labels(attacker=attacker).inc()
        if self.diversity is not None and vector is not None:
            await self.diversity.admit(cid, vector)
        log.info(
            "challenge published",
            extra={"id": cid, "attacker": attacker, "defender": defender, "quality": score},
        )
        return True


async def run(deps: Deps, stop: asyncio.Event) -> None:
    """Mine until ``stop``: workers while the backlog gate is open, one backlog watcher."""
    s = deps.settings
    c = s.challenger
    diversity = (
        DiversityGate(
            deps.bus.js, max_similarity=c.diversity.max_similarity, replicas=s.nats.stream_replicas
        )
        if c.diversity.enabled
        else None
    )
    kvs = {b: await deps.buckets.kv(b) for b in BUCKETS}
    miner = Miner(s, deps.roster, deps.inference, deps.publisher, kvs, diversity=diversity)
    if miner.diversity is not None:
        await miner.diversity.start()
        log.info("diversity gate ready", extra={"admitted": miner.diversity.admitted})
    gate = _Gate(s.challenger.low_water, s.challenger.high_water)

    async def watch_backlog() -> None:
        while not stop.is_set():
            try:
                backlog = await deps.bus.backlog(subjects.STREAM_CHALLENGES)
            except Exception as exc:  # NATS reconnecting: keep the last decision
                log.warning("backlog check failed: %s", exc)
            else:
                metrics.BACKLOG.labels(stream=subjects.STREAM_CHALLENGES).set(backlog)
                gate.observe(backlog)
            await _sleep_or_stop(stop, s.challenger.poll_interval_s)

    async def worker() -> None:
        failures = 0
        while not stop.is_set():
            await _wait_or_stop(stop, gate.open.wait())
            if stop.is_set():
                return
            if not gate.open.is_set():
                continue  # another worker took the last slot
            try:
                spent = await miner.budget.remaining() == 0
            except (NatsError, TimeoutError):
                spent = False
            if spent:  # idle, and healthy, until the budget is raised
                await _sleep_or_stop(stop, s.challenger.poll_interval_s)
                continue
            gate.enter()
            published = False
            error: BaseException | None = None
            try:
                published = await miner.mine_one()
                failures = 0
            except (ArenaError, NatsError, TimeoutError) as exc:
                error = exc
            finally:
                gate.leave(published)
            if error is None:
                continue
            down = _down_model(deps.inference, error)
            if down is not None:  # resume the moment it is back: no blind back-off
                log.warning(
                    "mining waits for a model that is down",
                    extra={"model": down, "error": str(error)},
                )
                await _wait_or_stop(stop, deps.inference.wait_available(down))
                continue
            failures += 1
            delay = min(2.0 ** min(failures, 6), 60.0)
            log.warning("mining failed, backing off", extra={"error": str(error), "delay_s": delay})
            await _sleep_or_stop(stop, delay)

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(watch_backlog())
            for _ in range(s.challenger.concurrency):
                tg.create_task(worker())
    finally:
        if miner.diversity is not None:
            await miner.diversity.stop()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _down_model(inference: Inference, exc: BaseException) -> str | None:
    """The model whose outage ``exc`` reports, while it is still down; else None."""
    if isinstance(exc, InferenceError) and not inference.available(exc.model):
        return exc.model
    return None


async def _wait_or_stop(stop: asyncio.Event, waiting: Coroutine[Any, Any, Any]) -> None:
    """Await ``waiting`` until it returns or ``stop`` is set; no task outlives the call."""
    if stop.is_set():
        waiting.close()  # never started: nothing to wait for
        return
    tasks = {asyncio.create_task(waiting), asyncio.create_task(stop.wait())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _models(s: ArenaSettings) -> list[str]:
    """The attackers, and the quality scorers (the scorer pool may hold judge-only models)."""
    scorers = s.scorer_pool if s.challenger.quality.enabled else []
    return list(dict.fromkeys([*s.competitors, *scorers]))


STAGE: Stage[None] = Stage(name="challenger", models=_models, run=run)  # produces, consumes none
