"""The bus's topology, declared once: every stream, durable consumer and KV bucket, as data.

Usage::

    from warriorcoder.proto import topology
    names = [s.name for s in topology.STREAMS if not s.optional]  # what ensure_topology creates
    judge = topology.consumer("judge")          # judge.stream == "WARRIORCODER_V1_BATTLES"
    schedule = topology.bucket("warriorcoder_v1_schedule")   # its history and documented keys

The names themselves are the constants of ``warriorcoder.proto.subjects`` (deployed arenas, the
chart and the NATS permissions use them, so they never change). The bus builds its stream and
bucket configurations from this declaration; the deploy tests check that the NATS permissions
file grants exactly these streams, consumers and buckets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from warriorcoder.proto import subjects
from warriorcoder.proto.state import (
    BandMembers,
    ChallengeBudget,
    Cursor,
    Ratings,
    RejectionCounts,
)

__all__ = [
    "BUCKETS",
    "CONSUMERS",
    "STREAMS",
    "Bucket",
    "Consumer",
    "Key",
    "Stream",
    "bucket",
    "consumer",
    "stream",
]

Retention = Literal["workqueue", "limits"]


@dataclass(frozen=True, slots=True)
class Stream:
    """A JetStream stream and its limits."""

    name: str
    subjects: tuple[str, ...]
    retention: Retention  # workqueue: a message is deleted when acked; limits: kept
    description: str
    # Publishers set Nats-Msg-Id: keep the configured ``nats.duplicate_window_s`` (otherwise the
    # server's default window of two minutes).
    dedup_window: bool = False
    # The configured ``nats.samples_max_age_s`` limits the age of messages (0 keeps them forever).
    max_age: bool = False
    # Created by the feature that uses it (the diversity gate), not by every stage at start; the
    # other stages' NATS users may not create it.
    optional: bool = False


@dataclass(frozen=True, slots=True)
class Consumer:
    """The durable pull consumer that every replica of a stage shares on a work stream."""

    stage: str
    stream: str

    @property
    def durable(self) -> str:
        return self.stage  # the NATS permissions grant each stage the consumer named after it


@dataclass(frozen=True, slots=True)
class Key:
    """A key of a KV bucket, or a family of keys (``pattern`` with a ``<placeholder>``)."""

    pattern: str
    description: str
    document: type[msgspec.Struct] | None = None  # the Struct stored; None: raw bytes


@dataclass(frozen=True, slots=True)
class Bucket:
    """A KV bucket, created on first use by the stage that needs it."""

    name: str
    history: int
    description: str
    keys: tuple[Key, ...]
    # Its readers tolerate a stale read (every write a compare-and-set conditioned on the
    # revision read, every plain read advisory), so any replica may answer a get: the bucket is
    # created with ``allow_direct`` (a direct get: one message back, no JSON API reply) even on a
    # cluster. A bucket whose protocol needs the latest value (the de-dup index reads its bands
    # after its commit) is direct only on a single server, where every get sees every
    # acknowledged write.
    stale_reads_ok: bool = True


STREAMS: tuple[Stream, ...] = (
    Stream(
        subjects.STREAM_CHALLENGES,
        (subjects.CHALLENGES,),
        "workqueue",
        "Mined challenges, challenger -> responder",
        dedup_window=True,
    ),
    Stream(
        subjects.STREAM_ANSWERED,
        (subjects.ANSWERED,),
        "workqueue",
        "Answered challenges with their tests, responder -> verifier (when the verifier is on)",
        dedup_window=True,
    ),
    Stream(
        subjects.STREAM_BATTLES,
        (subjects.BATTLES,),
        "workqueue",
        "Challenges with both answers (and execution results), responder or verifier -> judge",
        dedup_window=True,
    ),
    Stream(
        subjects.STREAM_JUDGEMENTS,
        (subjects.JUDGEMENTS,),
        "workqueue",
        "Battles with every vote, judge -> aggregator",
        dedup_window=True,
    ),
    Stream(
        subjects.STREAM_SAMPLES,
        (subjects.SAMPLES,),
        "limits",
        "Training samples, aggregator -> export",
        dedup_window=True,
        max_age=True,
    ),
    Stream(
        subjects.STREAM_DLQ,
        (f"{subjects.DLQ_PREFIX}.>",),
        "limits",
        "Dead letters of every stage, for operators",
    ),
    Stream(
        subjects.STREAM_EMBEDDINGS,
        (subjects.EMBEDDINGS,),
        "limits",
        "Embeddings of admitted instructions, challenger -> challengers (diversity gate)",
        optional=True,
    ),
)

CONSUMERS: tuple[Consumer, ...] = (
    Consumer(subjects.CONSUMER_RESPONDER, subjects.STREAM_CHALLENGES),
    Consumer(subjects.CONSUMER_VERIFIER, subjects.STREAM_ANSWERED),
    Consumer(subjects.CONSUMER_JUDGE, subjects.STREAM_BATTLES),
    Consumer(subjects.CONSUMER_AGGREGATOR, subjects.STREAM_JUDGEMENTS),
)

BUCKETS: tuple[Bucket, ...] = (
    Bucket(
        subjects.KV_RATINGS,
        1,
        "The Elo document, compare-and-set once per battle by the aggregators",
        (Key(subjects.RATINGS_KEY, "the global Elo ratings", Ratings),),
    ),
    Bucket(
        subjects.KV_DEDUP,
        1,
        "The challengers' exact and near-duplicate index: exact keys are created atomically; a "
        "band collision rejects only if an earlier committed member's words are a near-duplicate",
        (
            Key(
                "exact.<sha256>",
                "the admitted challenge id of a normalised instruction (created atomically; "
                "released with delete(last=revision))",
            ),
            Key(
                "lsh.<band key>",
                "the ids of the challenges in this MinHash-LSH band (compare-and-set; an id is "
                "added before its words.<id> is written; deleted when the band empties)",
                BandMembers,
            ),
            Key(
                "words.<id>",
                "the instruction's distinct words as sorted uint32 hashes (written last: its "
                "revision ranks the instruction)",
            ),
        ),
        stale_reads_ok=False,
    ),
    Bucket(
        subjects.KV_SCHEDULE,
        1,
        "The challengers' shared schedule",
        (
            Key(subjects.SCHEDULE_KEY, "the round-robin cursor", Cursor),
            Key(
                subjects.BUDGET_KEY,
                "challenges still to publish (absent: no limit)",
                ChallengeBudget,
            ),
        ),
    ),
    Bucket(
        subjects.KV_STATS,
        1,
        "Statistics the challenger replicas share",
        (Key(subjects.STATS_REJECTIONS_KEY, "rejections by reason", RejectionCounts),),
    ),
)


def stream(name: str) -> Stream:
    """The declared stream called ``name`` (KeyError when none is)."""
    for s in STREAMS:
        if s.name == name:
            return s
    raise KeyError(f"no stream {name!r} in the topology")


def consumer(stage: str) -> Consumer:
    """The durable consumer of a stage (KeyError for a stage that consumes no stream)."""
    for c in CONSUMERS:
        if c.stage == stage:
            return c
    raise KeyError(f"stage {stage!r} has no consumer in the topology")


def bucket(name: str) -> Bucket:
    """The declared KV bucket called ``name`` (KeyError when none is)."""
    for b in BUCKETS:
        if b.name == name:
            return b
    raise KeyError(f"no KV bucket {name!r} in the topology")
