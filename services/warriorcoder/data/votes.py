"""Pairwise votes in the Chatbot Arena battle format, read from files or taken from samples.

Usage::

    votes = read_votes(Path("battles.jsonl"))     # one {"model_a", "model_b", "winner"} per line
    votes = votes_from_samples(read_samples(Path("data")))

A line is one JSON object with ``model_a``, ``model_b`` and ``winner`` (``"model_a"``,
``"model_b"``, ``"tie"`` or ``"tie (bothbad)"``, the last read as a tie); ``judge``,
``battle_id`` and ``weight`` (the vote's weight in the arena's Elo, a number in [0, 1], default 1:
below 1 for a judge of a fighter's family under ``judge.family_policy: weight``) are read when
present, every other field is ignored. A file whose first character is
``[`` is read as one JSON array of such objects (LMSYS publishes its battles that way).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from warriorcoder.proto.messages import Sample

__all__ = [
    "ArenaVote",
    "VoteFormatError",
    "Winner",
    "encode_vote",
    "parse_vote",
    "read_votes",
    "votes_from_samples",
]

Winner = Literal["model_a", "model_b", "tie"]

_WINNERS: dict[str, Winner] = {
    "model_a": "model_a",
    "model_b": "model_b",
    "tie": "tie",
    "tie (bothbad)": "tie",
}
_FROM_SAMPLE: dict[str, Winner] = {"attacker": "model_a", "defender": "model_b", "tie": "tie"}


class ArenaVote(msgspec.Struct, frozen=True, kw_only=True):
    """One pairwise vote: ``winner`` names the side that won, or ``"tie"``."""

    model_a: str
    model_b: str
    winner: Winner
    judge: str | None = None
    battle_id: str | None = None
    weight: float = 1.0  # the vote's weight in the arena's Elo (``Vote.weight``)


class VoteFormatError(ValueError):
    """A votes file that cannot be read; the message names the file, line and field."""


_encoder = msgspec.json.Encoder()


def encode_vote(vote: ArenaVote) -> bytes:
    """One JSON line (without the newline) in the Chatbot Arena format."""
    return _encoder.encode(vote)


def parse_vote(obj: Any, where: str) -> ArenaVote:
    """Validate one decoded JSON value; ``where`` prefixes error messages (e.g. ``f.jsonl:3``)."""
    if not isinstance(obj, Mapping):
        raise VoteFormatError(f"{where}: expected a JSON object, got {_kind(obj)}")
    names: list[str] = []
    for field in ("model_a", "model_b"):
        value = obj.get(field)
        if value is None:
            raise VoteFormatError(f"{where}: missing field '{field}'")
        if not isinstance(value, str) or not value.strip():
            raise VoteFormatError(
                f"{where}: field '{field}' must be a non-empty string, got {_show(value)}"
            )
        names.append(value)
    if names[0] == names[1]:
        raise VoteFormatError(f"{where}: fields 'model_a' and 'model_b' are both {names[0]!r}")
    raw = obj.get("winner")
    if raw is None:
        raise VoteFormatError(f"{where}: missing field 'winner'")
    winner = _WINNERS.get(raw) if isinstance(raw, str) else None
    if winner is None:
        raise VoteFormatError(
            f"{where}: field 'winner' must be one of {', '.join(map(repr, _WINNERS))}, "
            f"got {_show(raw)}"
        )
    extras: dict[str, str | None] = {}
    for field in ("judge", "battle_id"):
        value = obj.get(field)
        if value is not None and not isinstance(value, str):
            raise VoteFormatError(f"{where}: field '{field}' must be a string, got {_show(value)}")
        extras[field] = value
    weight = obj.get("weight")
    weight = 1.0 if weight is None else weight  # null, like an absent field
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not 0.0 <= float(weight) <= 1.0
    ):
        raise VoteFormatError(
            f"{where}: field 'weight' must be a number in [0, 1], got {_show(weight)}"
        )
    return ArenaVote(
        model_a=names[0],
        model_b=names[1],
        winner=winner,
        judge=extras["judge"],
        battle_id=extras["battle_id"],
        weight=float(weight),
    )


def read_votes(path: Path | str) -> list[ArenaVote]:
    """Every vote of a JSONL (or JSON array) file, in file order.

    Raises ``VoteFormatError`` naming the line (or array entry) and field of the first bad vote,
    and ``OSError`` when the file cannot be read. Blank lines are skipped.
    """
    path = Path(path)
    data = path.read_bytes()
    if data.lstrip()[:1] == b"[":
        try:
            items = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise VoteFormatError(f"{path}: not a valid JSON array: {exc}") from None
        return [parse_vote(obj, f"{path}: entry {i}") for i, obj in enumerate(items, 1)]
    votes: list[ArenaVote] = []
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            raise VoteFormatError(f"{where}: not valid JSON: {exc}") from None
        votes.append(parse_vote(obj, where))
    return votes


def votes_from_samples(samples: Iterable[Sample]) -> list[ArenaVote]:
    """Every valid judge vote of every sample: model_a is the attacker, model_b the defender.

    A vote for the attacker makes ``winner="model_a"``, for the defender ``"model_b"``; ties stay
    ties and invalid votes are skipped. ``judge``, ``battle_id`` (the sample id) and ``weight``
    (the vote's weight in the live Elo) are filled.
    Samples are taken in the order their ratings were applied (``rating_seq``; samples without
    one keep their place, after those with one), each sample's votes in the order the judges
    gave them, so replaying the votes with ``online_elo`` gives the arena's live ratings exactly.
    """
    ordered = sorted(
        samples, key=lambda s: (s.rating_seq is None, s.rating_seq if s.rating_seq else 0)
    )
    out: list[ArenaVote] = []
    for s in ordered:
        for v in s.votes:
            winner = _FROM_SAMPLE.get(v.winner)
            if winner is None:
                continue
            out.append(
                ArenaVote(
                    model_a=s.attacker,
                    model_b=s.defender,
                    winner=winner,
                    judge=v.judge,
                    battle_id=s.id,
                    weight=v.weight,
                )
            )
    return out


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
