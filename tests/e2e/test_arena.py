"""End to end: nats-server, Triton and the four services as separate OS processes.

N challenges become exactly N samples, each carrying the answer the judges preferred, and the
Elo ratings move the strong model up. No test here mocks NATS or Triton or kills a service.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import nats
import pytest

from proto import subjects
from proto.messages import Ratings, decode
from services.aggregator.dataset import read_samples
from services.devtools.local_arena import LocalArena

pytestmark = pytest.mark.e2e

N = 12  # two rounds of the 6 ordered pairs of three competitors
QUALITY = re.compile(r"^quality=(\d+)$", re.MULTILINE)


def quality(answer: str) -> int:
    return int(QUALITY.findall(answer)[-1])


async def stream_state(url: str) -> tuple[dict[str, int], Ratings]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    counts = {}
    for stream in (
        subjects.STREAM_CHALLENGES,
        subjects.STREAM_BATTLES,
        subjects.STREAM_JUDGEMENTS,
        subjects.STREAM_SAMPLES,
        subjects.STREAM_DLQ,
    ):
        counts[stream] = (await js.stream_info(stream)).state.messages
    kv = await js.key_value(subjects.KV_RATINGS)
    ratings = decode((await kv.get(subjects.RATINGS_KEY)).value, Ratings)
    await nc.close()
    return counts, ratings


def test_n_challenges_become_n_samples(tmp_path: Path):
    start = time.monotonic()
    overrides = {"challenger": {"max_challenges": N}}
    with LocalArena(tmp_path / "arena", config_overrides=overrides) as arena:
        assert set(arena.procs) == {
            "nats-server",
            "tritonserver",
            "aggregator",
            "judge",
            "responder",
            "challenger",
        }
        assert len({p.proc.pid for p in arena.procs.values()}) == 6
        arena.wait_for_samples(N, timeout=240)
        elapsed = time.monotonic() - start
        url = f"nats://127.0.0.1:{arena.procs['nats-server'].ports['client']}"
        # Let anything still in flight land: every work queue must drain to empty.
        deadline = time.monotonic() + 30
        while True:
            counts, ratings = asyncio.run(stream_state(url))
            drained = all(
                counts[s] == 0
                for s in (
                    subjects.STREAM_CHALLENGES,
                    subjects.STREAM_BATTLES,
                    subjects.STREAM_JUDGEMENTS,
                )
            )
            if drained or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert drained, counts
        assert arena.dead() == []
        samples = read_samples(arena.samples_dir)

    print(f"\ne2e: {N} challenges -> {len(samples)} samples in {elapsed:.1f}s (incl. start-up)")
    assert len(samples) == N
    assert len({s.id for s in samples}) == N
    assert counts[subjects.STREAM_SAMPLES] == N
    assert counts[subjects.STREAM_DLQ] == 0
    assert ratings.battles == N

    for s in samples:
        # Judges prefer the stronger answer; with consistent judges every vote agrees.
        assert quality(s.chosen) > quality(s.rejected), s.id
        assert {v.winner for v in s.votes} == {s.winner_role}
        assert all(v.judge not in (s.attacker, s.defender) for v in s.votes)
        assert s.messages[0].content == s.prompt and s.messages[1].content == s.chosen

    r = ratings.ratings
    assert r["alpha"] > 1000 > r["gamma"], r
    assert r["alpha"] > r["beta"] > r["gamma"], r
    assert sum(r.values()) == pytest.approx(3000)  # zero-sum
    assert {s.winner for s in samples} <= {"alpha", "beta"}
