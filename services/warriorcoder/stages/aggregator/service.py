"""Aggregator service: combine judge votes and Elo into a winner; write ratings and samples.

Usage::

    warriorcoder serve aggregator --config arena.yaml

Per judgement: the ratings change once (compare-and-set in KV, recognising redeliveries), then
the sample goes to the data directory's JSONL shards and to the samples stream (``Nats-Msg-Id`` =
battle id). Each step is idempotent, so a crash anywhere is repaired by redelivery.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from warriorcoder.arena.decide import decide
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Judgement
from warriorcoder.runtime import metrics
from warriorcoder.runtime.ports import Publisher
from warriorcoder.runtime.settings import ScoringSettings
from warriorcoder.runtime.shards import ShardWriter
from warriorcoder.runtime.stage import Consumes, Deps, Handler, Stage, no_models
from warriorcoder.stages.aggregator.ratings import RatingsStore

__all__ = ["STAGE", "make_handler"]

log = logging.getLogger(__name__)


def make_handler(
    scoring: ScoringSettings, store: RatingsStore, writer: ShardWriter, publisher: Publisher
) -> Handler[Judgement]:
    """Apply each judgement to the ratings once, then write and publish its sample."""

    async def handle(j: Judgement) -> None:
        ch = j.battle.challenge

        def step(ra: float, rd: float) -> tuple[float, float] | None:
            sample = decide(j, ra, rd, scoring)
            if sample is None:
                return None
            return sample.ratings_after[ch.attacker], sample.ratings_after[ch.defender]

        applied = await store.apply(j.id, ch.attacker, ch.defender, step)
        if applied.duplicate:
            metrics.DUPLICATES.inc()
        # Pure in (judgement, pre-battle ratings): the same sample as the one applied, even when
        # this is a redelivery of a battle applied before a crash.
        sample = decide(j, applied.r_attacker, applied.r_defender, scoring, rating_seq=applied.seq)
        for model, rating in applied.ratings.items():
            metrics.ELO.labels(model=model).set(rating)
        if sample is None:
            metrics.BATTLES_UNDECIDED.inc()
            log.warning("battle has no valid vote: no sample", extra={"id": j.id})
            return
        if await writer.write(sample):
            metrics.SAMPLES.labels(winner=sample.winner).inc()
        await publisher.publish(subjects.SAMPLES, sample, msg_id=sample.id)
        log.info(
            "battle decided",
            extra={"id": j.id, "winner": sample.winner, "duplicate": applied.duplicate},
        )

    return handle


@asynccontextmanager
async def setup(deps: Deps) -> AsyncIterator[Handler[Judgement]]:
    s = deps.settings
    store = RatingsStore(await deps.buckets.kv(subjects.KV_RATINGS), s.scoring)
    doc, _ = await store.read()
    for model, rating in doc.ratings.items():
        metrics.ELO.labels(model=model).set(rating)
    writer = ShardWriter(Path(s.data_dir), max_per_shard=s.shard_max_samples)
    await writer.open()
    try:
        yield make_handler(s.scoring, store, writer, deps.publisher)
    finally:
        await writer.close()


STAGE = Stage(
    name="aggregator",
    consumes=Consumes(subjects.STREAM_JUDGEMENTS, subjects.CONSUMER_AGGREGATOR, Judgement),
    models=no_models,  # the aggregator calls no model
    setup=setup,
)
