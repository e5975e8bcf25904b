"""The aggregator's handler through the in-process fakes: ratings change once per battle under
redelivery, the sample is written and published once, and a battle without a valid vote leaves
no trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import arena_settings, judgement
from warriorcoder.proto import subjects
from warriorcoder.runtime.shards import ShardWriter, read_samples
from warriorcoder.stages.aggregator.ratings import RatingsStore
from warriorcoder.stages.aggregator.service import make_handler
from warriorcoder.testing.fakes import FakeKV, FakePublisher


@pytest.fixture
async def parts(tmp_path: Path):
    s = arena_settings()
    store = RatingsStore(FakeKV(subjects.KV_RATINGS), s.scoring)
    writer = ShardWriter(tmp_path, max_per_shard=100)
    await writer.open()
    publisher = FakePublisher()
    yield make_handler(s.scoring, store, writer, publisher), store, publisher
    await writer.close()


async def test_a_redelivered_judgement_counts_once(parts, tmp_path):
    handle, store, publisher = parts
    j = judgement(["attacker", "attacker", "tie"])
    for _ in range(3):  # delivered three times, e.g. the ack was lost
        await handle(j)
    doc, _ = await store.read()
    [sample] = read_samples(tmp_path)
    # the one update of the sample, once: the attacker won two votes and tied one
    assert doc.ratings == sample.ratings_after
    assert doc.ratings["alpha"] > 1000.0 > doc.ratings["beta"]
    assert doc.battles == 1
    assert sample.id == j.id
    assert sample.winner == "alpha" and sample.winner_role == "attacker"
    assert sample.messages[1].content == sample.chosen == j.battle.attacker_answer.text
    assert sample.rejected == j.battle.defender_answer.text
    assert sample.ratings_before == {"alpha": 1000.0, "beta": 1000.0}
    assert sample.score.local_attacker == pytest.approx(2.5 / 3)
    assert publisher.messages(subjects.SAMPLES) == [sample]


async def test_the_sample_is_rebuilt_from_the_ratings_it_was_applied_with(parts, tmp_path):
    handle, store, publisher = parts
    j = judgement(["defender"])
    # the ratings were applied, then the process died before writing the sample
    await store.apply(j.id, "alpha", "beta", lambda ra, rd: (ra - 20, rd + 20))
    await handle(j)
    [sample] = read_samples(tmp_path)
    assert sample.ratings_before == {"alpha": 1000.0, "beta": 1000.0}
    doc, _ = await store.read()
    assert doc.ratings == {"alpha": 980.0, "beta": 1020.0}  # not applied a second time
    assert len(publisher.messages(subjects.SAMPLES)) == 1


async def test_no_valid_vote_gives_no_sample_and_no_rating_change(parts, tmp_path):
    handle, store, publisher = parts
    await handle(judgement(["invalid", "invalid"]))
    assert read_samples(tmp_path) == []
    assert publisher.published == []
    doc, _ = await store.read()
    assert doc.ratings == {} and doc.battles == 0
