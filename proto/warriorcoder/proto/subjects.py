"""Subject, stream, consumer and KV bucket names of the bus (version 1).

Usage::

    from warriorcoder.proto import subjects
    await js.publish(subjects.CHALLENGES, data)

Work moves through one work-queue stream per stage; each stage's replicas share one durable pull
consumer. Samples and dead letters are kept (limits retention) for export and inspection. The names
are written here once; ``warriorcoder.proto.topology`` declares what each one is (a stream's
subjects, retention and limits, a consumer's stage, a bucket's keys and their documents).
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "warriorcoder.v1"

CHALLENGES: Final = f"{PREFIX}.challenges"
ANSWERED: Final = f"{PREFIX}.answered"  # battles to verify (verifier on): responder -> verifier
BATTLES: Final = f"{PREFIX}.battles"
JUDGEMENTS: Final = f"{PREFIX}.judgements"
SAMPLES: Final = f"{PREFIX}.samples"
DLQ_PREFIX: Final = f"{PREFIX}.dlq"
EMBEDDINGS: Final = f"{PREFIX}.embeddings"  # admitted instructions' embeddings (diversity gate)


def dlq(stage: str) -> str:
    """Dead-letter subject of a stage, e.g. ``warriorcoder.v1.dlq.judge``."""
    return f"{DLQ_PREFIX}.{stage}"


STREAM_CHALLENGES: Final = "WARRIORCODER_V1_CHALLENGES"
STREAM_ANSWERED: Final = "WARRIORCODER_V1_ANSWERED"
STREAM_BATTLES: Final = "WARRIORCODER_V1_BATTLES"
STREAM_JUDGEMENTS: Final = "WARRIORCODER_V1_JUDGEMENTS"
STREAM_SAMPLES: Final = "WARRIORCODER_V1_SAMPLES"
STREAM_DLQ: Final = "WARRIORCODER_V1_DLQ"
STREAM_EMBEDDINGS: Final = "WARRIORCODER_V1_EMBEDDINGS"

# Durable consumers: the stage that consumes each work stream.
CONSUMER_RESPONDER: Final = "responder"
CONSUMER_VERIFIER: Final = "verifier"
CONSUMER_JUDGE: Final = "judge"
CONSUMER_AGGREGATOR: Final = "aggregator"

KV_RATINGS: Final = "warriorcoder_v1_ratings"
KV_DEDUP: Final = "warriorcoder_v1_dedup"
KV_SCHEDULE: Final = "warriorcoder_v1_schedule"

RATINGS_KEY: Final = "elo"
SCHEDULE_KEY: Final = "cursor"
BUDGET_KEY: Final = "budget"  # challenges still to publish, arena-wide; absent: no limit
KV_STATS: Final = "warriorcoder_v1_stats"
STATS_REJECTIONS_KEY: Final = "rejections"
