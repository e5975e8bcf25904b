"""The topology declaration: unique names, every name of subjects.py declared, and the stream
configurations the bus builds from it."""

from __future__ import annotations

import msgspec
import pytest

from warriorcoder.proto import schema_gen, state, subjects, topology
from warriorcoder.runtime.bus import stream_config, stream_configs
from warriorcoder.runtime.settings import NatsSettings


def _constants(prefix: str) -> set[str]:
    return {v for k, v in vars(subjects).items() if k.startswith(prefix)}


def test_names_are_unique():
    streams = [s.name for s in topology.STREAMS]
    buckets = [b.name for b in topology.BUCKETS]
    stages = [c.stage for c in topology.CONSUMERS]
    assert len(set(streams)) == len(streams)
    assert len(set(buckets)) == len(buckets)
    assert len(set(stages)) == len(stages)
    for b in topology.BUCKETS:
        keys = [k.pattern for k in b.keys]
        assert len(set(keys)) == len(keys), b.name


def test_every_name_of_subjects_is_declared_and_only_those():
    assert {s.name for s in topology.STREAMS} == _constants("STREAM_")
    assert {b.name for b in topology.BUCKETS} == _constants("KV_")
    assert {c.durable for c in topology.CONSUMERS} == _constants("CONSUMER_")
    declared_keys = {k.pattern for b in topology.BUCKETS for k in b.keys}
    assert {
        subjects.RATINGS_KEY,
        subjects.SCHEDULE_KEY,
        subjects.BUDGET_KEY,
        subjects.STATS_REJECTIONS_KEY,
    } <= declared_keys


def test_streams_do_not_share_subjects_and_cover_every_published_subject():
    owned = [subj for s in topology.STREAMS for subj in s.subjects]
    assert len(set(owned)) == len(owned)
    published = {
        subjects.CHALLENGES,
        subjects.BATTLES,
        subjects.JUDGEMENTS,
        subjects.SAMPLES,
        subjects.EMBEDDINGS,
    }
    assert published <= set(owned)
    assert f"{subjects.DLQ_PREFIX}.>" in owned  # every stage's dlq(stage)


def test_each_consumer_reads_a_work_queue_stream():
    for c in topology.CONSUMERS:
        assert topology.stream(c.stream).retention == "workqueue", c
        assert c.durable == c.stage
    assert topology.consumer("judge").stream == subjects.STREAM_BATTLES


def test_documents_of_the_buckets_are_the_state_structs():
    documents = [k.document for b in topology.BUCKETS for k in b.keys if k.document]
    assert set(documents) == {state.Ratings, state.Cursor, state.ChallengeBudget,
                              state.RejectionCounts, state.BandMembers}  # fmt: skip
    for doc in documents:
        assert doc.__struct_config__.tag.startswith("warriorcoder.v1."), doc
        assert not doc.__struct_config__.forbid_unknown_fields, doc


def test_lookups_refuse_undeclared_names():
    for lookup in (topology.stream, topology.bucket, topology.consumer):
        with pytest.raises(KeyError):
            lookup("nope")


def test_stream_configs_follow_the_declaration():
    cfg = NatsSettings(stream_replicas=3, duplicate_window_s=600.0, samples_max_age_s=86400.0)
    configs = {sc.name: sc for sc in stream_configs(cfg)}
    assert set(configs) == {s.name for s in topology.STREAMS if not s.optional}
    assert subjects.STREAM_EMBEDDINGS not in configs  # the diversity gate creates it
    for s in topology.STREAMS:
        if s.optional:
            continue
        sc = configs[s.name]
        assert sc.subjects == list(s.subjects)
        assert sc.retention == s.retention
        assert sc.num_replicas == 3
        assert sc.duplicate_window == (600.0 if s.dedup_window else 0)
        assert sc.max_age == (86400.0 if s.max_age else None)
    assert configs[subjects.STREAM_SAMPLES].max_age == 86400.0
    assert configs[subjects.STREAM_CHALLENGES].duplicate_window == 600.0
    # samples_max_age_s = 0 keeps samples forever
    forever = {sc.name: sc for sc in stream_configs(NatsSettings())}
    assert forever[subjects.STREAM_SAMPLES].max_age is None
    emb = stream_config(topology.stream(subjects.STREAM_EMBEDDINGS), replicas=1)
    assert (emb.retention, emb.subjects) == ("limits", [subjects.EMBEDDINGS])


def test_the_generated_asyncapi_lists_the_topology():
    doc = schema_gen.asyncapi()
    assert [s["name"] for s in doc["x-streams"]] == [s.name for s in topology.STREAMS]
    assert [b["name"] for b in doc["x-kv-buckets"]] == [b.name for b in topology.BUCKETS]
    schemas = doc["components"]["schemas"]
    for name in ("Ratings", "Cursor", "ChallengeBudget", "RejectionCounts"):
        assert name in schemas
    json_schema = schema_gen.json_schema()
    assert {"$ref": "#/$defs/Cursor"} in json_schema["oneOf"]
    assert msgspec.json.schema(state.Cursor)["$defs"]["Cursor"] == json_schema["$defs"]["Cursor"]
