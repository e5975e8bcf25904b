"""Generate the JSON Schema and the AsyncAPI document of the bus from the msgspec Structs.

Usage::

    warriorcoder schema            # rewrite proto/schema/*
    warriorcoder schema --check    # exit 1 when the files are stale (CI)

The files are generated, never edited: a test fails when they differ from the Structs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import orjson
import yaml

from warriorcoder.proto import subjects
from warriorcoder.proto.messages import (
    AdmittedEmbedding,
    Battle,
    Challenge,
    DeadLetter,
    Judgement,
    Ratings,
    Sample,
)

__all__ = ["SCHEMA_DIR", "generate", "stale", "write"]

SCHEMA_DIR = Path(__file__).parent / "schema"
JSON_SCHEMA = "messages.schema.json"
ASYNCAPI = "asyncapi.yaml"

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
    types = (Challenge, Battle, Judgement, Sample, DeadLetter, Ratings, AdmittedEmbedding)
    (refs, components) = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    return dict(zip((t.__name__ for t in types), refs, strict=True)), components


def json_schema() -> dict[str, Any]:
    types = (Challenge, Battle, Judgement, Sample, DeadLetter, Ratings, AdmittedEmbedding)
    (refs, defs) = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://warriorcoder.dev/schema/v1/messages.schema.json",
        "title": "WarriorCoder Arena bus messages (v1)",
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
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "WarriorCoder Arena bus",
            "version": "1.0.0",
            "description": "NATS JetStream subjects between the challenger, responder, judge and "
            "aggregator. Generated from proto/messages.py; do not edit.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {"host": "localhost:4222", "protocol": "nats", "description": "JetStream"}
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": components},
    }


def generate() -> dict[str, str]:
    """File name -> content, deterministic."""
    return {
        JSON_SCHEMA: orjson.dumps(
            json_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
        ).decode()
        + "\n",
        ASYNCAPI: "# Generated by `warriorcoder schema` from proto/messages.py. Do not edit.\n"
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
