"""The models file of a local Triton server, ``{models: [{name, ...}, ...]}``, read strictly.

Usage::

    specs = load_models_file("hf-models.yaml", HFModelSpec)
    models = parse_models_file({"models": [{"name": "alpha", "strength": 9}]}, ScriptedModel)

Each entry becomes ``make(**entry)``, ``make`` being a dataclass whose ``__post_init__`` checks its
fields (``check_model_name`` for the name) and raises ``ValueError("<key>: ...")``. The keys an
entry may have are the dataclass's init fields, those without a default are required, and names
are unique. Every error names its place: ``$.models[1].strength: must be in 1..10, got 11``.
Both local servers read their ``--models`` file with it (the HF server's specs, the scripted
models).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["check_model_name", "load_models_file", "parse_models_file"]

T = TypeVar("T")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a Triton model name


def check_model_name(name: Any) -> None:
    """``ValueError`` unless ``name`` can name a Triton model."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"name: invalid model name {name!r}")


def parse_models_file(doc: Any, make: type[T]) -> list[T]:
    """The entries of a parsed models file, each built by ``make``; ``ValueError`` names the key."""
    fields = [f for f in dataclasses.fields(make) if f.init]  # type: ignore[arg-type]
    keys = {f.name for f in fields}
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if not isinstance(doc, Mapping) or set(doc) != {"models"}:
        raise ValueError("$: expected a mapping with the single key 'models'")
    entries = doc["models"]
    if not isinstance(entries, list) or not entries:
        raise ValueError("$.models: expected a non-empty list")
    out: list[T] = []
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"$.models[{i}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected a mapping")
        unknown = sorted(set(entry) - keys)
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown key")
        for key in required:
            if key not in entry:
                raise ValueError(f"{where}.{key}: missing")
        try:
            item = make(**entry)
        except ValueError as exc:
            raise ValueError(f"{where}.{exc}") from None
        name = getattr(item, "name", None)
        if name in names:
            raise ValueError(f"{where}.name: duplicate model name {name!r}")
        names.add(name)  # type: ignore[arg-type]
        out.append(item)
    return out


def load_models_file(path: str | Path, make: type[T]) -> list[T]:
    """The entries of the models file at ``path`` (see ``parse_models_file``)."""
    return parse_models_file(yaml.safe_load(Path(path).read_text(encoding="utf-8")), make)
