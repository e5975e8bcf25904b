"""What every chaos run must leave behind, read from the arena's own store and checked.

Usage::

    state = await read_state(nats_url, samples_dir)
    problems = check(state, Expect(samples=150, scoring=settings.scoring))
    assert not problems, problems

    outcome = inspect_store(data_dir, Expect(samples=150, scoring=scoring))  # arena stopped

The invariants (issue 10, "Done when"): exactly N samples on disk and N in the samples stream, the
same ids in both, no duplicate id, no torn line; the work streams drained; the ratings document in
KV equal, float for float, to a replay of the samples' votes (``votes_from_samples``, ordered by
``rating_seq``, through ``online_elo`` with the arena's own Elo parameters and initial rating), and
every sample's ``ratings_before``/``ratings_after`` equal to the replay at its place; every dead
letter explained: one with a ``chaos-`` message id was injected (its reason must be one the
injection expects, and every injected message that can never succeed must be there exactly once),
any other needs a reason the scenario allows (none, unless a scenario says otherwise).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
from nats.js import api as js_api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from warriorcoder.data.bradley_terry import online_elo
from warriorcoder.data.votes import votes_from_samples
from warriorcoder.launcher.processes import start_nats
from warriorcoder.launcher.status import count_samples
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import DeadLetter, Sample
from warriorcoder.proto.state import Ratings, decode_state
from warriorcoder.runtime.settings import ScoringSettings
from warriorcoder.runtime.shards import read_samples

__all__ = [
    "WORK_STREAMS",
    "Expect",
    "Outcome",
    "StoreState",
    "check",
    "inspect_store",
    "read_state",
    "stream_payloads",
    "wait_drained",
]

WORK_STREAMS = (subjects.STREAM_CHALLENGES, subjects.STREAM_BATTLES, subjects.STREAM_JUDGEMENTS)
_MISSING = (BucketNotFoundError, NotFoundError, KeyNotFoundError)


@dataclass
class StoreState:
    """An arena's outputs as they are: disk, streams, the ratings document, the dead letters."""

    disk: list[Sample]
    disk_lines: int
    stream: list[Sample]
    stream_messages: int
    backlog: dict[str, int]
    ratings: Ratings | None
    dead_letters: list[DeadLetter]


@dataclass(frozen=True)
class Expect:
    """What a scenario must end with.

    ``injected``: message id -> the dead-letter reasons its injection expects (it must be dead-
    lettered exactly once, with one of them); ``absorbable``: injected ids that may also be taken
    without a dead letter (a faithful copy of an applied battle); ``organic``: the reasons allowed
    for dead letters of the arena's own work (empty: none may fail).
    """

    samples: int
    scoring: ScoringSettings
    injected: Mapping[str, frozenset[str]] = field(default_factory=dict)
    absorbable: frozenset[str] = frozenset()
    organic: frozenset[str] = frozenset()


@dataclass
class Outcome:
    """The figures of a checked run and every broken invariant (empty: it held)."""

    samples: int
    stream_samples: int
    battles_rated: int
    dead_letters: Counter[str]
    injected_dead_lettered: int
    problems: list[str]


async def stream_payloads(js: object, stream: str) -> list[bytes]:
    """Every message of a stream, oldest first (an ephemeral consumer without acks)."""
    from nats.js import JetStreamContext

    assert isinstance(js, JetStreamContext)
    try:
        total = (await js.stream_info(stream)).state.messages
    except NotFoundError:
        return []
    if total == 0:
        return []
    config = js_api.ConsumerConfig(
        ack_policy=js_api.AckPolicy.NONE,
        deliver_policy=js_api.DeliverPolicy.ALL,
        inactive_threshold=60,
    )
    sub = await js.pull_subscribe("", stream=stream, config=config)
    out: list[bytes] = []
    try:
        while len(out) < total:
            try:
                out += [m.data for m in await sub.fetch(512, timeout=5)]
            except TimeoutError:
                break  # fewer than the stream said: the caller compares counts
    finally:
        await sub.unsubscribe()
    return out


async def read_state(nats_url: str, samples_dir: Path) -> StoreState:
    """Read everything the invariants need (the arena may be running or only its store)."""
    nc = await nats.connect(nats_url.split(","), connect_timeout=10, max_reconnect_attempts=3)
    try:
        js = nc.jetstream(timeout=30)
        backlog = {}
        for stream in WORK_STREAMS:
            try:
                backlog[stream] = (await js.stream_info(stream)).state.messages
            except NotFoundError:
                backlog[stream] = 0
        try:
            stream_messages = (await js.stream_info(subjects.STREAM_SAMPLES)).state.messages
        except NotFoundError:
            stream_messages = 0
        published = [
            msgspec.json.decode(p, type=Sample)
            for p in await stream_payloads(js, subjects.STREAM_SAMPLES)
        ]
        letters = [
            msgspec.json.decode(p, type=DeadLetter)
            for p in await stream_payloads(js, subjects.STREAM_DLQ)
        ]
        try:
            kv = await js.key_value(subjects.KV_RATINGS)
            ratings: Ratings | None = decode_state(
                (await kv.get(subjects.RATINGS_KEY)).value, Ratings
            )
        except _MISSING:
            ratings = None
    finally:
        await nc.close()
    disk = await asyncio.to_thread(read_samples, samples_dir)
    lines = await asyncio.to_thread(count_samples, samples_dir)
    return StoreState(disk, lines, published, stream_messages, backlog, ratings, letters)


async def wait_drained(nats_url: str, samples_dir: Path, n: int, within_s: float) -> float:
    """Wait until the work streams are empty and disk and stream both hold ``n`` samples;
    returns the seconds it took (raises TimeoutError with the last state)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    seen: tuple[object, ...] = ()
    nc = await nats.connect(nats_url.split(","), connect_timeout=10, max_reconnect_attempts=-1)
    try:
        js = nc.jetstream(timeout=10)
        while loop.time() - start < within_s:
            try:
                backlog = [(await js.stream_info(s)).state.messages for s in WORK_STREAMS]
                stream = (await js.stream_info(subjects.STREAM_SAMPLES)).state.messages
            except Exception as exc:  # a restarting server: look again
                seen = (repr(exc),)
            else:
                disk = await asyncio.to_thread(count_samples, samples_dir)
                seen = (backlog, stream, disk)
                if not any(backlog) and stream >= n and disk >= n:
                    return loop.time() - start
            await asyncio.sleep(0.5)
    finally:
        await nc.close()
    raise TimeoutError(f"not drained after {within_s:g}s: backlog, stream, disk = {seen}")


def _ratings_problems(state: StoreState, expect: Expect) -> list[str]:
    sc = expect.scoring
    problems: list[str] = []
    doc = state.ratings or Ratings()
    replay = online_elo(
        votes_from_samples(state.disk),
        k=sc.k,
        scale=sc.scale,
        base=sc.base,
        initial=sc.initial_rating,
    )
    if dict(doc.ratings) != replay:
        problems.append(
            f"ratings in KV {dict(doc.ratings)} != replay of the samples' votes {replay}"
        )
    seqs = sorted(s.rating_seq or 0 for s in state.disk)
    if doc.battles != len(state.disk) or seqs != list(range(1, len(state.disk) + 1)):
        problems.append(
            f"ratings.battles = {doc.battles} for {len(state.disk)} samples; rating_seq "
            f"{'1..N' if seqs == list(range(1, len(seqs) + 1)) else 'not 1..N (gaps or repeats)'}"
        )
    # Each sample at its place: the ratings it saw and left are the replay's, exactly.
    ratings: dict[str, float] = {}
    for s in sorted(state.disk, key=lambda s: s.rating_seq or 0):
        before = {m: ratings.get(m, sc.initial_rating) for m in (s.attacker, s.defender)}
        if before != s.ratings_before:
            problems.append(
                f"sample {s.id} (seq {s.rating_seq}) saw {s.ratings_before}, replay {before}"
            )
            break
        ratings.update(s.ratings_after)
    return problems


def _dead_letter_problems(state: StoreState, expect: Expect) -> tuple[list[str], int]:
    problems: list[str] = []
    seen: Counter[str] = Counter()
    for letter in state.dead_letters:
        mid = letter.message_id or ""
        if mid in expect.injected:
            seen[mid] += 1
            if letter.reason not in expect.injected[mid]:
                problems.append(
                    f"injected {mid} dead-lettered as {letter.reason!r}, expected one of "
                    f"{sorted(expect.injected[mid])}: {letter.error[:200]}"
                )
        elif letter.reason not in expect.organic:
            problems.append(
                f"unexplained dead letter: {letter.stage} {letter.reason!r} id={mid or None} "
                f"({letter.deliveries} deliveries): {letter.error[:200]}"
            )
    missing = [m for m in expect.injected if not seen[m] and m not in expect.absorbable]
    twice = [m for m, n in seen.items() if n > 1]
    if missing:
        problems.append(f"{len(missing)} injected messages never dead-lettered, e.g. {missing[:5]}")
    if twice:
        problems.append(f"{len(twice)} injected messages dead-lettered more than once: {twice[:5]}")
    return problems, sum(seen.values())


def check(state: StoreState, expect: Expect) -> Outcome:
    """Every invariant of a finished run; the outcome lists each one broken."""
    n = expect.samples
    problems: list[str] = []
    disk_ids = [s.id for s in state.disk]
    stream_ids = [s.id for s in state.stream]
    if len(state.disk) != n:
        problems.append(f"{len(state.disk)} samples on disk, expected exactly {n}")
    if state.disk_lines != len(state.disk):
        problems.append(
            f"{state.disk_lines} shard lines but {len(state.disk)} valid samples (torn?)"
        )
    if len(set(disk_ids)) != len(disk_ids):
        problems.append(f"{len(disk_ids) - len(set(disk_ids))} duplicate ids on disk")
    if state.stream_messages != n or len(stream_ids) != n:
        problems.append(
            f"{state.stream_messages} samples in the stream (read {len(stream_ids)}), expected {n}"
        )
    if len(set(stream_ids)) != len(stream_ids):
        problems.append(f"{len(stream_ids) - len(set(stream_ids))} duplicate ids in the stream")
    if set(disk_ids) != set(stream_ids):
        problems.append(
            f"disk and stream differ: {len(set(disk_ids) - set(stream_ids))} only on disk, "
            f"{len(set(stream_ids) - set(disk_ids))} only in the stream"
        )
    if any(state.backlog.values()):
        problems.append(f"work left in the streams: {state.backlog}")
    problems += _ratings_problems(state, expect)
    letter_problems, injected = _dead_letter_problems(state, expect)
    problems += letter_problems
    return Outcome(
        samples=len(state.disk),
        stream_samples=len(state.stream),
        battles_rated=(state.ratings or Ratings()).battles,
        dead_letters=Counter(d.reason for d in state.dead_letters),
        injected_dead_lettered=injected,
        problems=problems,
    )


def inspect_store(data_dir: Path, expect: Expect) -> Outcome:
    """Check a stopped arena: a nats-server of its own on the arena's JetStream store."""
    server = start_nats(data_dir / "nats", log_path=data_dir / "logs" / "inspect-nats.log")
    try:
        url = f"nats://127.0.0.1:{server.ports['client']}"
        return check(asyncio.run(read_state(url, data_dir / "samples")), expect)
    finally:
        server.stop()
