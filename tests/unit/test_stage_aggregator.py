"""The aggregator's handler through the in-process fakes: ratings change once per battle under
redelivery and re-publication, the sample is written and published once, a battle without a valid
vote leaves no trace, and documents of the previous version (a window of recent ids) still work."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from msgspec.structs import replace

from tests.helpers import arena_judgement, arena_settings, arena_vote, battle, judgement
from warriorcoder.arena.instructions import normalise
from warriorcoder.errors import PoisonError
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Judgement, battle_id
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


# --- the arena's invariants: a judgement that breaks them changes nothing -------------------

ARENA = arena_settings(judges=["garbler", "slow"])  # three uninvolved judges a battle


@pytest.fixture
async def checked(tmp_path: Path):
    store = RatingsStore(FakeKV(subjects.KV_RATINGS), ARENA.scoring)
    writer = ShardWriter(tmp_path, max_per_shard=100)
    await writer.open()
    publisher = FakePublisher()
    yield make_handler(ARENA.scoring, store, writer, publisher, arena=ARENA), store, publisher
    await writer.close()


def _mallory_fights() -> Judgement:
    """The issue's case: mallory, no competitor, in a battle judged by real judges."""
    b = battle(attacker="alpha", defender="beta")
    ch = replace(b.challenge, defender="mallory")
    ch = replace(ch, id=battle_id("alpha", "mallory", normalise(ch.instruction)))
    b = replace(
        b, id=ch.id, challenge=ch, defender_answer=replace(b.defender_answer, model="mallory")
    )
    votes = [arena_vote(judge, "defender") for judge in ("beta", "gamma", "garbler", "slow")]
    return Judgement(id=b.id, battle=b, votes=votes, position_mode="both", judged_at=3.0)


def _broken_judgements() -> list[tuple[str, Judgement]]:
    j = arena_judgement(battle(attacker="alpha", defender="beta"), ARENA)  # gamma, garbler, slow
    gamma, garbler, slow = j.votes
    return [
        ("unknown_model", _mallory_fights()),
        ("judge_not_in_pool", replace(j, votes=[gamma, garbler, arena_vote("mallory", "tie")])),
        ("judge_is_fighter", replace(j, votes=[*j.votes, arena_vote("beta", "defender")])),
        ("duplicate_judge", replace(j, votes=[gamma, gamma, garbler, slow])),
        ("votes_mismatch", replace(j, votes=[gamma])),
        ("winner_mismatch", replace(j, votes=[gamma, garbler, replace(slow, winner="defender")])),
        ("orders_mismatch", replace(j, votes=[gamma, garbler, replace(slow, orders=["attacker"])])),
        ("id_mismatch", replace(j, id="0" * 32)),
    ]  # fmt: skip


@pytest.mark.parametrize(("reason", "j"), _broken_judgements())
async def test_a_judgement_breaking_the_arenas_invariants_changes_nothing(
    checked, tmp_path, reason, j
):
    handle, store, publisher = checked
    with pytest.raises(PoisonError) as info:
        await handle(j)
    assert info.value.reason == reason
    doc, _ = await store.read()
    assert doc.ratings == {} and doc.battles == 0
    assert read_samples(tmp_path) == [] and publisher.published == []


async def test_a_valid_judgement_still_counts_and_mallory_never_gets_a_rating(checked, tmp_path):
    handle, store, publisher = checked
    with pytest.raises(PoisonError, match="unknown_model"):
        await handle(_mallory_fights())
    j = arena_judgement(
        battle(attacker="gamma", defender="alpha"), ARENA, ["attacker", "tie", "attacker"]
    )
    await handle(j)
    doc, _ = await store.read()
    [sample] = read_samples(tmp_path)
    assert set(doc.ratings) == {"gamma", "alpha"} and doc.battles == 1
    assert sample.winner == "gamma" and publisher.messages(subjects.SAMPLES) == [sample]


async def test_only_the_last_battle_is_kept_however_many_are_applied(parts, tmp_path):
    handle, store, _ = parts
    battles = [
        judgement(["attacker"], text=f"Write a Python function number {i} to sort.")
        for i in range(40)
    ]
    for j in battles:
        await handle(j)
    doc, _ = await store.read()
    # no window of remembered ids: the document does not grow with the battles applied
    assert doc.battles == 40 and doc.recent == [] and doc.recent_seq == []
    assert doc.last is not None and doc.last.id == battles[-1].id and doc.last.seq == 40
    [last] = [s for s in read_samples(tmp_path) if s.id == battles[-1].id]
    assert (doc.last.r_attacker, doc.last.r_defender) == (
        last.ratings_before["alpha"],
        last.ratings_before["beta"],
    )


async def test_a_judgement_republished_after_the_dedup_window_changes_nothing(parts, tmp_path):
    handle, store, publisher = parts
    old = judgement(["attacker"], text="Write a Python function that merges two lists.")
    await handle(old)
    await handle(judgement(["defender"], text="Write a Python function that splits a list."))
    before, _ = await store.read()
    # a judge re-publishes ``old`` (a new message, past the stream's de-dup window), with other
    # votes: it is no longer the last battle applied, but its sample is in the dataset
    await handle(judgement(["defender", "defender"], text=old.battle.challenge.instruction))
    after, _ = await store.read()
    assert after.ratings == before.ratings and after.battles == before.battles == 2
    assert [s.id for s in read_samples(tmp_path)].count(old.id) == 1
    assert len(publisher.messages(subjects.SAMPLES)) == 2


def legacy_document(entries: list[tuple[str, float, float]], seqs: list[int]) -> bytes:
    """A ratings document as the previous version wrote it: a window, ``recent``, no ``last``."""
    return msgspec.json.encode(
        {
            "type": "warriorcoder.v1.ratings",
            "ratings": {"alpha": 1020.0, "beta": 980.0},
            "battles": 2,
            "recent": [list(e) for e in entries],
            "recent_seq": seqs,
            "updated_at": 5.0,
        }
    )


async def test_a_document_of_the_previous_version_is_still_read(parts, tmp_path):
    handle, store, publisher = parts
    pending = judgement(["defender"])  # applied by the previous version, not yet acked
    other = judgement(["attacker"], text="Write a Python function that merges two lists.")
    entries = [("0" * 32, 1000.0, 1000.0), (pending.id, 1010.0, 990.0)]
    await store.kv.put(subjects.RATINGS_KEY, legacy_document(entries, [1, 2]))

    await handle(pending)  # its redelivery after the upgrade: recognised, not applied again
    doc, _ = await store.read()
    assert doc.ratings == {"alpha": 1020.0, "beta": 980.0} and doc.battles == 2
    [sample] = read_samples(tmp_path)
    assert sample.ratings_before == {"alpha": 1010.0, "beta": 990.0} and sample.rating_seq == 2

    await handle(other)  # a new battle: applied and recorded as last; the window is not grown
    doc, _ = await store.read()
    assert doc.battles == 3 and doc.last is not None and doc.last.id == other.id
    assert [e[0] for e in doc.recent] == [e[0] for e in entries] and doc.recent_seq == [1, 2]
    await handle(pending)  # still recognised through the old window
    assert (await store.read())[0].battles == 3
    assert len(publisher.messages(subjects.SAMPLES)) == 2

    assert await store.forget_legacy()
    doc, _ = await store.read()
    assert doc.recent == [] and doc.recent_seq == [] and doc.battles == 3
    assert doc.last is not None and doc.last.id == other.id
    assert not await store.forget_legacy()  # nothing left to drop: no write


async def test_a_judgement_republished_after_a_restart_changes_nothing(tmp_path):
    """The dataset's ids come from the writer's on-disk index, not a set of this process: a
    re-published judgement for a battle written before the aggregator restarted is still
    recognised, whichever battle was applied last."""
    s = arena_settings()
    store = RatingsStore(FakeKV(subjects.KV_RATINGS), s.scoring)
    publisher = FakePublisher()
    old = judgement(["attacker"], text="Write a Python function that merges two lists.")
    writer = ShardWriter(tmp_path, max_per_shard=100, flush_every=1000, flush_s=3600)
    await writer.open()
    await make_handler(s.scoring, store, writer, publisher)(old)
    await writer.close()

    writer = ShardWriter(tmp_path, max_per_shard=100)
    await writer.open()
    assert writer.caught_up == 0  # flushed at close: nothing rescanned
    handle = make_handler(s.scoring, store, writer, publisher)
    await handle(judgement(["defender"], text="Write a Python function that splits a list."))
    before, _ = await store.read()
    await handle(judgement(["defender", "defender"], text=old.battle.challenge.instruction))
    await writer.close()
    after, _ = await store.read()
    assert after.ratings == before.ratings and after.battles == before.battles == 2
    assert [x.id for x in read_samples(tmp_path)].count(old.id) == 1


async def test_a_replica_starting_from_a_stale_document_still_applies_each_battle_once():
    """Each store starts its compare-and-set from the document it last saw; after another replica
    wrote, that guess is stale: the write must fail over to the current document, never lose the
    other replica's battle, and still recognise a redelivery."""
    s = arena_settings()
    kv = FakeKV(subjects.KV_RATINGS)
    one, two = RatingsStore(kv, s.scoring), RatingsStore(kv, s.scoring)

    def plus(n: float):
        return lambda ra, rd: (ra + n, rd - n)

    await one.apply("b1", "alpha", "beta", plus(10))  # one's guess: after b1
    await two.apply("b2", "alpha", "beta", plus(5))  # two writes: one's guess is now stale
    third = await one.apply("b3", "alpha", "beta", plus(1))
    assert third is not None and not third.duplicate
    assert (third.r_attacker, third.r_defender) == (1015.0, 985.0)  # saw b1 and b2
    again = await two.apply("b3", "alpha", "beta", plus(1))  # a redelivery, on the other one
    assert again is not None and again.duplicate and again.seq == 3
    doc, _ = await one.read()
    assert doc.ratings == {"alpha": 1016.0, "beta": 984.0} and doc.battles == 3
