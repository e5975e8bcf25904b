"""A vote's weight in the Chatbot Arena files: written by the export, read back, checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from warriorcoder.data.votes import ArenaVote, VoteFormatError, encode_vote, parse_vote, read_votes


def test_weight_defaults_to_one_and_is_read_when_present():
    assert parse_vote({"model_a": "x", "model_b": "y", "winner": "tie"}, "f:1").weight == 1.0
    vote = parse_vote({"model_a": "x", "model_b": "y", "winner": "model_a", "weight": 0.25}, "f:1")
    assert vote.weight == 0.25
    assert (
        parse_vote({"model_a": "x", "model_b": "y", "winner": "tie", "weight": 0}, "f").weight == 0
    )


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True, None, [1]])
def test_a_weight_outside_zero_and_one_names_the_line_and_field(bad: object):
    obj = {"model_a": "x", "model_b": "y", "winner": "model_b", "weight": bad}
    if bad is None:  # JSON null: the field is absent, weight 1
        assert parse_vote(obj, "f.jsonl:3").weight == 1.0
        return
    with pytest.raises(VoteFormatError, match=r"f\.jsonl:3: field 'weight' must be a number in"):
        parse_vote(obj, "f.jsonl:3")


def test_encoded_votes_round_trip_with_their_weight(tmp_path: Path):
    votes = [
        ArenaVote(model_a="x", model_b="y", winner="model_a", judge="j", battle_id="b", weight=0.5),
        ArenaVote(model_a="y", model_b="x", winner="tie"),
    ]
    path = tmp_path / "votes.jsonl"
    path.write_bytes(b"\n".join(encode_vote(v) for v in votes) + b"\n")
    assert b'"weight":0.5' in path.read_bytes()
    assert read_votes(path) == votes
