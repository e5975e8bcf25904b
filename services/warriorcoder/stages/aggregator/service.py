"""Aggregator service: combine judge votes and Elo into a winner; write ratings and samples.

Usage::

    warriorcoder serve aggregator --config arena.yaml

Per judgement: the ratings change once (compare-and-set in KV, recognising redeliveries), then
the sample goes to the data directory's JSONL shards and to the samples stream (``Nats-Msg-Id`` =
battle id). Each step is idempotent, so a crash anywhere is repaired by redelivery. The aggregators
are one ordered writer (their consumer delivers one judgement at a time, across replicas), which
is what makes the ratings change once per battle without a window of remembered ids.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from msgspec.structs import replace
from nats.js.errors import NotFoundError

from warriorcoder.arena.decide import decide
from warriorcoder.arena.invariants import check_judgement
from warriorcoder.arena.prompts import PROMPT_SET_VERSION
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Judgement
from warriorcoder.runtime import metrics
from warriorcoder.runtime.bus import retrying
from warriorcoder.runtime.ports import Publisher
from warriorcoder.runtime.provenance import Stamper, assemble
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.settings import ArenaSettings, ScoringSettings
from warriorcoder.runtime.shards import ShardWriter
from warriorcoder.runtime.stage import Consumes, Deps, Handler, Stage, no_models
from warriorcoder.stages.aggregator.ratings import RatingsStore

__all__ = ["STAGE", "make_handler"]

log = logging.getLogger(__name__)


def make_handler(
    scoring: ScoringSettings,
    store: RatingsStore,
    writer: ShardWriter,
    publisher: Publisher,
    *,
    arena: ArenaSettings | None = None,
) -> Handler[Judgement]:
    """Apply each judgement to the ratings once, then write and publish its sample.

    ``arena``: the settings each judgement's invariants are checked against before anything
    changes (a violation is poison); the service always passes them, None leaves the check out
    (unit tests of the rating logic alone). Each sample gets its provenance: the stamps of the
    stages that made it with the aggregator's own (``runtime.provenance.assemble``; without
    ``arena`` the aggregator's stamp has no config to hash and the sample none)."""
    stamper = (
        None
        if arena is None
        else Stamper("aggregator", arena, Roster([]), prompt_set=PROMPT_SET_VERSION)
    )

    async def handle(j: Judgement) -> None:
        if arena is not None:
            check_judgement(j, arena)
        ch = j.battle.challenge

        def step(ra: float, rd: float) -> tuple[float, float] | None:
            sample = decide(j, ra, rd, scoring)
            if sample is None:
                return None
            return sample.ratings_after[ch.attacker], sample.ratings_after[ch.defender]

        # A sample already in the dataset whose battle is not the last one applied: a judgement
        # re-published after the de-dup window, for a battle applied, written and acked long ago.
        # (the writer's on-disk index answers, so memory does not grow with the dataset)
        in_dataset = await writer.contains(j.id)
        applied = await store.apply(j.id, ch.attacker, ch.defender, step, in_dataset=in_dataset)
        if applied is None:
            metrics.DUPLICATES.inc()
            log.warning("battle already in the dataset: nothing changed", extra={"id": j.id})
            return
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
        if stamper is not None:
            sample = replace(sample, provenance=assemble(j, stamper.stamp([])))
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
    if s.scoring.idempotency_window is not None:
        log.warning("scoring.idempotency_window is deprecated and ignored: no window is needed")
    store = RatingsStore(await deps.buckets.kv(subjects.KV_RATINGS), s.scoring)
    doc, _ = await store.read()
    for model, rating in doc.ratings.items():
        metrics.ELO.labels(model=model).set(rating)
    if (doc.recent or doc.recent_seq) and not await _judgements_pending(deps):
        await store.forget_legacy()  # a document of the previous version, its window now useless
    writer = ShardWriter(Path(s.data_dir), max_per_shard=s.shard_max_samples)
    await writer.open()
    try:
        yield make_handler(s.scoring, store, writer, deps.publisher, arena=s)
    finally:
        await writer.close()


async def _judgements_pending(deps: Deps) -> bool:
    """Whether a judgement is delivered but not settled (the consumer missing: none is)."""
    c = STAGE.consumes
    assert c is not None
    try:
        info = await retrying(
            "consumer_info",
            lambda: deps.bus.js.consumer_info(c.stream, c.durable),
            budget_s=deps.settings.nats.unavailable_retry_s,
        )
    except NotFoundError:
        return False
    return bool(info.num_ack_pending)


STAGE = Stage(
    name="aggregator",
    # One ordered writer: JetStream delivers a judgement only when every one delivered before is
    # settled, across all replicas, so at most one battle is applied but unacknowledged: the one
    # the ratings document records (see ratings.py).
    consumes=Consumes.declared("aggregator", Judgement, max_ack_pending=1),
    models=no_models,  # the aggregator calls no model
    setup=setup,
)
