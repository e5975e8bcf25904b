"""Generate the JSON Schema and the AsyncAPI document of the bus from the msgspec Structs.

Usage::

    warriorcoder schema            # rewrite proto/schema/*
    warriorcoder schema --check    # exit 1 when the files are stale (CI)

The files are generated, never edited: a test fails when they differ from the Structs. Both
describe the messages and the KV documents (``proto/state.py``); the AsyncAPI document also lists
the streams and KV buckets of ``proto/topology.py`` (``x-streams``, ``x-kv-buckets``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import orjson
import yaml

from warriorcoder.proto import subjects, topology
from warriorcoder.proto.messages import (
    AdmittedEmbedding,
    Battle,
    Challenge,
    DeadLetter,
    Judgement,
    Sample,
)

__all__ = ["SCHEMA_DIR", "generate", "stale", "write"]

SCHEMA_DIR = Path(__file__).parent / "schema"
JSON_SCHEMA = "messages.schema.json"
ASYNCAPI = "asyncapi.yaml"

_MESSAGES: tuple[type[msgspec.Struct], ...] = (
    Challenge,
    Battle,
    Judgement,
    Sample,
    DeadLetter,
    AdmittedEmbedding,
)
# The KV documents, in the order the buckets declare them.
_DOCUMENTS: tuple[type[msgspec.Struct], ...] = tuple(
    k.document for b in topology.BUCKETS for k in b.keys if k.document is not None
)
_TYPES = _MESSAGES + _DOCUMENTS

# subject -> (message struct, channel description, producer, consumer)
_CHANNELS: list[tuple[str, str, type[msgspec.Struct], str, str, str]] = [
    ("challenges", subjects.CHALLENGES, Challenge, "Mined challenges", "challenger", "responder"),
    ("battles", subjects.BATTLES, Battle, "Challenges with both answers", "responder", "judge"),
    (
        "judgements",
        subjects.JUDGEMENTS,
        Judgement,
        "Battles with every vote",
        "judge",
        "aggregator",
    ),
    ("samples", subjects.SAMPLES, Sample, "Training samples", "aggregator", "export"),
    (
        "embeddings",
        subjects.EMBEDDINGS,
        AdmittedEmbedding,
        "Embeddings of admitted instructions (diversity gate)",
        "challenger",
        "challenger",
    ),
    (
        "deadLetters",
        f"{subjects.DLQ_PREFIX}.{{stage}}",
        DeadLetter,
        "Messages a stage could not process",
        "any stage",
        "operators",
    ),
]


def _components() -> tuple[dict[str, Any], dict[str, Any]]:
    (refs, components) = msgspec.json.schema_components(
        _TYPES, ref_template="#/components/schemas/{name}"
    )
    return dict(zip((t.__name__ for t in _TYPES), refs, strict=True)), components


def json_schema() -> dict[str, Any]:
    (refs, defs) = msgspec.json.schema_components(_TYPES, ref_template="#/$defs/{name}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://warriorcoder.dev/schema/v1/messages.schema.json",
        "title": "WarriorCoder Arena bus messages and KV documents (v1)",
        "oneOf": refs,
        "$defs": defs,
    }


def asyncapi() -> dict[str, Any]:
    refs, components = _components()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for key, address, struct, desc, producer, consumer in _CHANNELS:
        name = struct.__name__
        messages[name] = {
            "name": name,
            "contentType": "application/json",
            "payload": refs[name],
            "headers": {
                "type": "object",
                "properties": {
                    "Nats-Msg-Id": {
                        "type": "string",
                        "description": "The message's deterministic id (JetStream de-duplication)",
                    }
                },
            },
        }
        channel: dict[str, Any] = {
            "address": address,
            "description": f"{desc}. Produced by {producer}, consumed by {consumer}.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        if "{stage}" in address:
            channel["parameters"] = {"stage": {"description": "The stage that gave up"}}
        channels[key] = channel
        operations[f"publish{key[0].upper()}{key[1:]}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": f"{producer} publishes",
        }
        operations[f"consume{key[0].upper()}{key[1:]}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{key}"},
            "summary": f"{consumer} consumes",
        }
    streams = [
        {
            "name": st.name,
            "subjects": list(st.subjects),
            "retention": st.retention,
            "description": st.description,
            "durableConsumers": [c.durable for c in topology.CONSUMERS if c.stream == st.name],
        }
        for st in topology.STREAMS
    ]
    buckets = [
        {
            "name": b.name,
            "history": b.history,
            "description": b.description,
            "keys": [
                {"key": k.pattern, "description": k.description}
                | ({"document": refs[k.document.__name__]} if k.document is not None else {})
                for k in b.keys
            ],
        }
        for b in topology.BUCKETS
    ]
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "WarriorCoder Arena bus",
            "version": "1.0.0",
            "description": "NATS JetStream subjects between the challenger, responder, judge and "
            "aggregator, and the documents of their KV buckets. Generated from proto/messages.py, "
            "proto/state.py and proto/topology.py; do not edit.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {"host": "localhost:4222", "protocol": "nats", "description": "JetStream"}
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": components},
        "x-streams": streams,
        "x-kv-buckets": buckets,
    }


def generate() -> dict[str, str]:
    """File name -> content, deterministic."""
    return {
        JSON_SCHEMA: orjson.dumps(
            json_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
        ).decode()
        + "\n",
        ASYNCAPI: "# Generated by `warriorcoder schema` from proto/. Do not edit.\n"
        + yaml.safe_dump(asyncapi(), sort_keys=False, allow_unicode=True, width=100),
    }


def stale(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of generated files that are missing or differ from the Structs."""
    out = []
    for name, content in generate().items():
        path = directory / name
        if not path.exists() or path.read_text() != content:
            out.append(name)
    return out


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in generate().items():
        path = directory / name
        path.write_text(content)
        paths.append(path)
    return paths
