"""The diversity gate with the real bundled embedding model and a real nats-server."""

from __future__ import annotations

import asyncio

import pytest

from warriorcoder.proto import subjects
from warriorcoder.runtime.bus import connect
from warriorcoder.runtime.settings import NatsSettings
from warriorcoder.stages.challenger.diversity import DiversityGate

pytestmark = pytest.mark.integration

FIRST = "Write a Python function that merges overlapping intervals and returns them sorted."
PARAPHRASE = "Implement interval merging in Python: combine overlapping ranges, sorted by start."
OTHER = "Build a small REST API in Go that stores a todo list in SQLite."


async def test_paraphrases_are_too_close_across_replicas_and_restarts(nats_url):
    cfg = NatsSettings(url=nats_url)
    ncs = [await connect(cfg) for _ in range(3)]
    a, b = (DiversityGate(nc.jetstream(), max_similarity=0.8) for nc in ncs[:2])
    await asyncio.gather(a.start(), b.start())

    vector, nearest = await a.check(FIRST)
    assert nearest == 0.0 and not a.too_close(nearest)
    assert vector.shape == (384,)
    await a.admit("a" * 32, vector)

    # Replica b learns of the admission through the stream.
    for _ in range(100):
        if b.admitted == 1:
            break
        await asyncio.sleep(0.05)
    _, near = await b.check(PARAPHRASE)
    _, far = await b.check(OTHER)
    assert near > 0.8 and b.too_close(near)
    assert far < 0.3 and not b.too_close(far)

    # A replica started later replays every admitted embedding first.
    c = DiversityGate(ncs[2].jetstream(), max_similarity=0.8)
    await c.start()
    for _ in range(100):
        if c.admitted == 1:
            break
        await asyncio.sleep(0.05)
    assert c.too_close((await c.check(PARAPHRASE))[1])
    info = await ncs[0].jetstream().stream_info(subjects.STREAM_EMBEDDINGS)
    assert info.state.messages == 1
    for gate in (a, b, c):
        await gate.stop()
    for nc in ncs:
        await nc.drain()
