"""Samples by provenance: the flat ``key=value`` view of a sample's provenance and the
``export --where`` filter over it.

Usage::

    flat = provenance_fields(sample)   # {"config_hash": "66bc…", "models.alpha.triton_model": …}
    where = parse_where(["config_hash=66bce4057e765db2", "models.alpha.version=2"])
    kept = select(samples, where)

Keys are the provenance's field paths joined by dots (``config_hash``, ``judge_mode``,
``models.<model>.triton_model``, ``models.<model>.version``, ``models.<model>.chat_template``,
``sampling.<call>.temperature``, ``stages.<stage>.config_hash``, ...); values compare as text
(``null`` for a missing version, ``true``/``false``, numbers as JSON writes them). A key given
several times matches any of its values; different keys must all match. A sample without
provenance (written by an earlier version) matches no filter. A key that no sample has and that
is not one of the top-level fields is an error naming the closest known keys.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from warriorcoder.data.export import ExportError
from warriorcoder.proto.messages import Provenance, Sample

__all__ = ["TOP_LEVEL_KEYS", "parse_where", "provenance_fields", "select"]

# Keys every provenance has (always accepted, even when no sample carries provenance yet).
TOP_LEVEL_KEYS: tuple[str, ...] = ("config_hash", "project_version", "prompt_set", "judge_mode")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()  # null, true, 0.7, 512


def _flatten(node: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = _text(node)


def provenance_fields(sample: Sample | Provenance) -> dict[str, str]:
    """The provenance of ``sample`` as dotted key -> text ({} without provenance)."""
    p = sample if isinstance(sample, Provenance) else sample.provenance
    if p is None:
        return {}
    out: dict[str, str] = {}
    _flatten(msgspec.to_builtins(p), "", out)
    return out


def parse_where(items: Iterable[str]) -> dict[str, frozenset[str]]:
    """``KEY=VALUE`` filters, by key (a key given twice: either value); ``ExportError`` for a
    malformed one."""
    where: dict[str, set[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ExportError(
                f"--where {item!r}: expected KEY=VALUE, e.g. config_hash=66bce4057e765db2"
            )
        where.setdefault(key, set()).add(value)
    return {k: frozenset(v) for k, v in where.items()}


def _unknown(key: str, known: Sequence[str]) -> ExportError:
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    return ExportError(f"unknown --where key {key!r}{hint} (the samples' provenance keys: {shown})")


def select(samples: Iterable[Sample], where: Mapping[str, frozenset[str]]) -> list[Sample]:
    """The samples whose provenance matches every key of ``where``, in order; ``ExportError``
    for a key no sample has (a typo would otherwise silently select nothing)."""
    items = list(samples)
    if not where:
        return items
    flats = [provenance_fields(s) for s in items]
    known = set(TOP_LEVEL_KEYS).union(*flats)
    for key in where:
        if key not in known:
            raise _unknown(key, [*TOP_LEVEL_KEYS, *sorted(known - set(TOP_LEVEL_KEYS))])
    return [
        s
        for s, flat in zip(items, flats, strict=True)
        if flat and all(flat.get(key) in values for key, values in where.items())
    ]
