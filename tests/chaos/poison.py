"""Poison for every subject a stage consumes: what a broken or hostile publisher could send.

Usage::

    batch = make_poison(300, seed=7, settings=settings, applied=read_samples(samples_dir))
    await inject(nats_url, batch, per_second=100)
    expect = Expect(samples=60, scoring=settings.scoring, injected=expected_reasons(batch),
                    absorbable=absorbable(batch))

Categories, dealt round-robin over the challenges, battles and judgements subjects (every
category on every subject; the 900 KB ones are one message in 50):

- ``random_bytes``: 0-4 KB of random bytes;
- ``wrong_shape``: JSON that is not the subject's message (another message type, arrays, nulls,
  wrong field types, truncated JSON);
- ``oversized``: ~900 KB payloads (junk, or a well-formed message with a 900 KB field naming a
  model outside the arena), under NATS's 1 MB limit, over it once the error is added;
- ``unknown_model``: well-formed messages, ids consistent, naming ``mallory``;
- ``broken_invariant``: well-formed messages between real competitors with one invariant broken
  (a fighter judging, a judge outside the pool, a missing or repeated judge, votes that do not
  combine to their winner, answers from the wrong model, a language the arena does not mine,
  a model fighting itself, an id that does not hash the content);
- ``duplicate_id``: a faithful copy of a battle the arena already applied (it must be taken
  without changing anything: ``absorbable``), or its id on other content (``id_mismatch``).

Each message carries a unique ``Nats-Msg-Id`` (``chaos-<category>-<n>``), which its dead letter
keeps, so each can be accounted for.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec
import nats

from warriorcoder.arena.instructions import normalise
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import (
    Answer,
    Battle,
    Challenge,
    Judgement,
    Sample,
    SamplingParams,
    Vote,
    battle_id,
    encode,
)
from warriorcoder.runtime.settings import ArenaSettings

Role = Literal["attacker", "defender"]
Verdict = Literal["A", "B", "tie", "invalid"]

__all__ = [
    "CATEGORIES",
    "INVARIANT_REASONS",
    "Poison",
    "absorbable",
    "expected_reasons",
    "inject",
    "make_poison",
]

CATEGORIES = (
    "random_bytes",
    "wrong_shape",
    "oversized",
    "unknown_model",
    "broken_invariant",
    "duplicate_id",
)
SUBJECTS = (subjects.CHALLENGES, subjects.BATTLES, subjects.JUDGEMENTS)
# The reasons a stage gives a well-formed message that breaks the arena's invariants
# (warriorcoder.arena.invariants.REASONS, spelled out so this suite states the contract).
INVARIANT_REASONS = frozenset(
    {
        "unknown_model",
        "same_fighter",
        "unknown_language",
        "id_mismatch",
        "answer_mismatch",
        "judge_not_in_pool",
        "judge_is_fighter",
        "duplicate_judge",
        "votes_mismatch",
        "orders_mismatch",
        "winner_mismatch",
        "tests_by_fighter",
        "weight_mismatch",
    }
)
UNDECODABLE = frozenset({"undecodable"})
OVERSIZE = 900 * 1024
OVERSIZED_EVERY = 50  # 900 KB messages are 1 in 50 (10,000 of them would be 9 GB)
_DEAL = [c for c in CATEGORIES if c != "oversized"]
SP = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=128)


@dataclass(frozen=True)
class Poison:
    subject: str
    data: bytes
    msg_id: str
    category: str
    reasons: frozenset[str]  # the dead-letter reasons that explain it
    absorbable: bool = False  # a faithful duplicate: may be taken without a dead letter


def expected_reasons(batch: Sequence[Poison]) -> dict[str, frozenset[str]]:
    return {p.msg_id: p.reasons for p in batch}


def absorbable(batch: Sequence[Poison]) -> frozenset[str]:
    return frozenset(p.msg_id for p in batch if p.absorbable)


# -- well-formed messages ------------------------------------------------------------------------


def _challenge(attacker: str, defender: str, text: str, *, language: str = "Python") -> Challenge:
    return Challenge(
        id=battle_id(attacker, defender, normalise(text)),
        attacker=attacker,
        defender=defender,
        language=language,
        instruction=text,
        sampling=SP,
        created_at=1.0,
    )


def _battle(ch: Challenge) -> Battle:
    def answer(model: str, role: str, q: int) -> Answer:
        return Answer(model=model, role=role, text=f"def f():\n    pass\nquality={q}",  # type: ignore[arg-type]
                      latency_s=0.1, sampling=SP)  # fmt: skip

    return Battle(
        id=ch.id,
        challenge=ch,
        attacker_answer=answer(ch.attacker, "attacker", 9),
        defender_answer=answer(ch.defender, "defender", 2),
        answered_at=2.0,
    )


def _judgement(b: Battle, judges: list[str], mode: str) -> Judgement:
    if mode == "both":
        votes = [Vote(judge=j, orders=["attacker", "defender"], verdicts=["A", "B"],
                      winner="attacker", asked=2) for j in judges]  # fmt: skip
    else:
        first: Role = "attacker" if int(b.id, 16) % 2 == 0 else "defender"
        verdict: Verdict = "A" if first == "attacker" else "B"
        votes = [Vote(judge=j, orders=[first], verdicts=[verdict], winner="attacker", asked=1)
                 for j in judges]  # fmt: skip
    return Judgement(id=b.id, battle=b, votes=votes, position_mode=mode, judged_at=3.0)  # type: ignore[arg-type]


def _from_sample(s: Sample, mode: str) -> Judgement:
    """The judgement a sample was built from (the same content, id and votes)."""
    ch = Challenge(
        id=s.id, attacker=s.attacker, defender=s.defender, language=s.language,
        instruction=s.prompt, sampling=SP, created_at=1.0,
    )  # fmt: skip
    texts = {s.winner_role: s.chosen}
    texts["defender" if s.winner_role == "attacker" else "attacker"] = s.rejected
    b = Battle(
        id=s.id,
        challenge=ch,
        attacker_answer=Answer(
            model=s.attacker, role="attacker", text=texts["attacker"], latency_s=0.1, sampling=SP
        ),
        defender_answer=Answer(
            model=s.defender, role="defender", text=texts["defender"], latency_s=0.1, sampling=SP
        ),
        answered_at=2.0,
    )
    return Judgement(id=s.id, battle=b, votes=list(s.votes), position_mode=mode,  # type: ignore[arg-type]
                     judged_at=s.created_at)  # fmt: skip


def _at(subject: str, j: Judgement) -> bytes:
    """The part of a judgement that travels on ``subject``."""
    if subject == subjects.CHALLENGES:
        return encode(j.battle.challenge)
    if subject == subjects.BATTLES:
        return encode(j.battle)
    return encode(j)


# -- the categories ------------------------------------------------------------------------------


class _Maker:
    def __init__(self, rng: random.Random, settings: ArenaSettings, applied: Sequence[Sample]):
        self.rng = rng
        self.settings = settings
        self.applied = list(applied)
        self.mode = settings.judge.position_mode
        self.n = 0

    def text(self) -> str:
        self.n += 1
        return f"Write a Python function returning chaos number {self.n} ({self.rng.random()})."

    def fighters(self) -> tuple[str, str]:
        a, d = self.rng.sample(self.settings.competitors, 2)
        return a, d

    def valid(self) -> Judgement:
        """A well-formed battle between two competitors, judged by exactly its judges."""
        a, d = self.fighters()
        b = _battle(_challenge(a, d, self.text()))
        return _judgement(b, self.settings.judges_for(a, d), self.mode)

    def random_bytes(self, subject: str) -> tuple[bytes, frozenset[str]]:
        return self.rng.randbytes(self.rng.randint(0, 4096)), UNDECODABLE

    def wrong_shape(self, subject: str) -> tuple[bytes, frozenset[str]]:
        j = self.valid()
        other = {
            subjects.CHALLENGES: encode(j.battle),
            subjects.BATTLES: encode(j),
            subjects.JUDGEMENTS: encode(j.battle.challenge),
        }[subject]
        good = _at(subject, j)
        shapes = [
            other,  # another message type
            b"[]",
            b"{}",
            b"null",
            b'"a string"',
            b"42",
            good[: len(good) // 2],  # truncated
            good.replace(b'"attacker":"', b'"attacker":7,"x":"', 1),  # a field of the wrong type
            msgspec.json.encode({"type": "warriorcoder.v1.sample", "id": j.id}),
        ]
        return self.rng.choice(shapes), UNDECODABLE

    def oversized(self, subject: str) -> tuple[bytes, frozenset[str]]:
        if self.rng.random() < 0.5:
            junk = bytes(self.rng.choice(b'abcdefghij {}[]":,\x00\xff') for _ in range(64))
            return (junk * (OVERSIZE // len(junk)))[:OVERSIZE], UNDECODABLE
        a = self.fighters()[0]
        ch = _challenge("mallory", a, "Write a Python function. " + "x" * OVERSIZE)
        b = _battle(ch)
        return _at(subject, _judgement(b, self.settings.judges_for("mallory", a), self.mode)), (
            frozenset({"unknown_model"})
        )

    def unknown_model(self, subject: str) -> tuple[bytes, frozenset[str]]:
        a = self.fighters()[0]
        pair = ("mallory", a) if self.rng.random() < 0.5 else (a, "mallory")
        b = _battle(_challenge(*pair, self.text()))
        j = _judgement(b, [m for m in self.settings.judge_pool if m not in pair], self.mode)
        return _at(subject, j), frozenset({"unknown_model"})

    def broken_invariant(self, subject: str) -> tuple[bytes, frozenset[str]]:
        j = self.valid()
        b, ch = j.battle, j.battle.challenge
        rep = msgspec.structs.replace
        broken: list[tuple[Judgement, str]] = [
            (
                _judgement(
                    _battle(_challenge(ch.attacker, ch.attacker, self.text())),
                    self.settings.judges_for(ch.attacker, ch.attacker),
                    self.mode,
                ),
                "same_fighter",
            ),
            (
                _judgement(
                    _battle(_challenge(ch.attacker, ch.defender, self.text(), language="Cobol")),
                    self.settings.judges_for(ch.attacker, ch.defender),
                    self.mode,
                ),
                "unknown_language",
            ),
            (
                rep(j, battle=rep(b, challenge=rep(ch, id=f"{self.rng.getrandbits(128):032x}"))),
                "id_mismatch",
            ),
        ]
        if subject != subjects.CHALLENGES:
            wrong = rep(b.attacker_answer, model=ch.defender)
            broken.append((rep(j, battle=rep(b, attacker_answer=wrong)), "answer_mismatch"))
        if subject == subjects.JUDGEMENTS:
            v = j.votes[0]
            broken += [
                (rep(j, votes=[*j.votes, rep(v, judge=ch.attacker)]), "judge_is_fighter"),
                (rep(j, votes=[*j.votes, rep(v, judge="mallory")]), "judge_not_in_pool"),
                (rep(j, votes=[*j.votes, v]), "duplicate_judge"),
                (rep(j, votes=j.votes[:-1]), "votes_mismatch"),
                (rep(j, votes=[rep(v, winner="defender"), *j.votes[1:]]), "winner_mismatch"),
                (
                    rep(j, votes=[rep(v, orders=[*v.orders, *v.orders]), *j.votes[1:]]),
                    "orders_mismatch",
                ),
            ]
        msg, _reason = self.rng.choice(broken)
        # Checks stop at the first broken invariant, which may come before the one broken on
        # purpose (a same-fighter battle also has judges of its own); any invariant reason does.
        return _at(subject, msg), INVARIANT_REASONS

    def duplicate_id(self, subject: str) -> tuple[bytes, frozenset[str], bool]:
        if not self.applied:
            return (*self.broken_invariant(subject), False)
        s = self.rng.choice(self.applied)
        j = _from_sample(s, self.mode)
        if self.rng.random() < 0.5:  # faithful: nothing may change
            return _at(subject, j), frozenset({"duplicate"}), True
        ch = msgspec.structs.replace(j.battle.challenge, instruction=self.text())
        forged = msgspec.structs.replace(j, battle=msgspec.structs.replace(j.battle, challenge=ch))
        return _at(subject, forged), frozenset({"id_mismatch"}), False


def make_poison(
    n: int, *, seed: int, settings: ArenaSettings, applied: Sequence[Sample] = ()
) -> list[Poison]:
    """``n`` poison messages, categories and subjects dealt round-robin, reproducible by seed;
    ``applied``: samples of the arena (their battles are copied for ``duplicate_id``)."""
    maker = _Maker(random.Random(seed), settings, applied)
    out = []
    for i in range(n):
        category = "oversized" if i % OVERSIZED_EVERY == 7 else _DEAL[i % len(_DEAL)]
        subject = SUBJECTS[i % len(SUBJECTS)]  # 5 and 3 are coprime: every pair comes round
        made = getattr(maker, category)(subject)
        data, reasons = made[0], made[1]
        absorb = bool(made[2]) if len(made) > 2 else False
        out.append(Poison(subject, data, f"chaos-{category}-{seed}-{i}", category, reasons, absorb))
    return out


async def inject(nats_url: str, batch: Sequence[Poison], *, per_second: float = 0) -> None:
    """Publish the batch to JetStream, each with its ``Nats-Msg-Id``; ``per_second`` spreads it
    over time (0: as fast as the server takes it)."""
    nc = await nats.connect(nats_url.split(","), max_reconnect_attempts=-1)
    try:
        js = nc.jetstream(timeout=30)
        for i, p in enumerate(batch):
            await js.publish(p.subject, p.data, headers={"Nats-Msg-Id": p.msg_id})
            if per_second and i % 10 == 9:
                await asyncio.sleep(10 / per_second)
    finally:
        await nc.close()
