"""The wire contract: tags, round trips, open evolution, generated schemas."""

import msgspec
import pytest

from warriorcoder.proto import schema_gen
from warriorcoder.proto.messages import (
    Answer,
    Battle,
    Challenge,
    Judgement,
    SamplingParams,
    Vote,
    battle_id,
    decode,
    encode,
)

SP = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=64)


def challenge(**kw):
    fields = dict(
        id=battle_id("a", "b", "write a parser"),
        attacker="a",
        defender="b",
        language="Python",
        instruction="Write a parser",
        sampling=SP,
        created_at=1.0,
    )
    fields.update(kw)
    return Challenge(**fields)


def test_battle_id_is_deterministic_and_separates_fields():
    assert battle_id("a", "b", "x") == battle_id("a", "b", "x")
    assert len(battle_id("a", "b", "x")) == 32
    assert battle_id("a", "b", "x") != battle_id("b", "a", "x")
    assert battle_id("ab", "c", "x") != battle_id("a", "bc", "x")


def test_messages_carry_namespaced_versioned_tags():
    data = msgspec.json.decode(encode(challenge()))
    assert data["type"] == "warriorcoder.v1.challenge"


def test_round_trip_nested_battle():
    ch = challenge()
    ans = Answer(model="a", role="attacker", text="x", latency_s=0.1, sampling=SP)
    b = Battle(
        id=ch.id,
        challenge=ch,
        attacker_answer=ans,
        defender_answer=msgspec.structs.replace(ans, model="b", role="defender"),
        answered_at=2.0,
    )
    j = Judgement(
        id=b.id,
        battle=b,
        position_mode="both",
        judged_at=3.0,
        votes=[
            Vote(
                judge="c",
                orders=["attacker", "defender"],
                verdicts=["A", "B"],
                winner="attacker",
                asked=2,
            )
        ],
    )
    assert decode(encode(j), Judgement) == j


def test_unknown_fields_are_ignored_for_evolution():
    data = msgspec.json.decode(encode(challenge()))
    data["added_in_v1_1"] = {"x": 1}
    assert decode(msgspec.json.encode(data), Challenge) == challenge()


def test_wrong_tag_and_bad_values_are_rejected():
    data = msgspec.json.decode(encode(challenge()))
    with pytest.raises(msgspec.ValidationError):
        decode(msgspec.json.encode(data), Battle)
    data["id"] = "not-hex"
    with pytest.raises(msgspec.ValidationError, match=r"\$\.id"):
        decode(msgspec.json.encode(data), Challenge)


def test_messages_are_frozen():
    with pytest.raises(AttributeError):
        challenge().attacker = "z"  # type: ignore[misc]


def test_generated_schemas_are_up_to_date():
    assert schema_gen.stale() == [], (
        "run `warriorcoder schema` and commit proto/warriorcoder/proto/schema"
    )


def test_stale_detects_a_changed_file(tmp_path):
    schema_gen.write(tmp_path)
    assert schema_gen.stale(tmp_path) == []
    (tmp_path / schema_gen.JSON_SCHEMA).write_text("{}\n")
    assert schema_gen.stale(tmp_path) == [schema_gen.JSON_SCHEMA]


def test_asyncapi_lists_every_subject():
    doc = schema_gen.asyncapi()
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {
        "warriorcoder.v1.challenges",
        "warriorcoder.v1.battles",
        "warriorcoder.v1.judgements",
        "warriorcoder.v1.samples",
        "warriorcoder.v1.embeddings",
        "warriorcoder.v1.dlq.{stage}",
    } == addresses
