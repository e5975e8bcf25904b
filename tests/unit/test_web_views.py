"""The web page's views of samples: answers by role, the search filter, the win-rate matrix, the
ratings over time and a battle in full (hand-checked numbers)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from warriorcoder.launcher.battle_views import (
    BattleQuery,
    answers,
    battle_detail,
    battle_summary,
    disagreement,
    rating_history,
    win_matrix,
)
from warriorcoder.proto.messages import Sample, SamplingParams, ScoreCard, Turn, Vote

SP = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=64)


def vote(judge: str, winner: str, orders: list[str], verdicts: list[str], **kw: Any) -> Vote:
    """A real Vote, validated as the wire decoder would."""
    fields = {"judge": judge, "orders": orders, "verdicts": verdicts, "winner": winner}
    return msgspec.convert({**fields, "asked": len(orders), **kw}, Vote)


def make_sample(
    n: int,
    attacker: str = "alpha",
    defender: str = "beta",
    *,
    winner_role: str = "attacker",
    votes: list[Vote] | None = None,
    prompt: str = "",
    attacker_answer: str = "",
    defender_answer: str = "",
    rating_seq: int | None = None,
    ratings_after: dict[str, float] | None = None,
    test_backed: bool = False,
) -> Sample:
    """A real Sample as the aggregator writes it (winner's answer as ``chosen``)."""
    a_text = (
        attacker_answer or f"answer {n} by {attacker}\n```python\ndef f():\n    return {n}\n```"
    )
    d_text = defender_answer or f"answer {n} by {defender}"
    won = winner_role == "attacker"
    chosen, rejected = (a_text, d_text) if won else (d_text, a_text)
    instruction = prompt or f"Write function number {n}."
    return Sample(
        id=f"{n:032x}",
        messages=[Turn(role="user", content=instruction), Turn(role="assistant", content=chosen)],
        prompt=instruction,
        chosen=chosen,
        rejected=rejected,
        language="python",
        winner=attacker if won else defender,
        loser=defender if won else attacker,
        winner_role="attacker" if won else "defender",
        attacker=attacker,
        defender=defender,
        votes=votes
        if votes is not None
        else [
            vote("gamma", winner_role, ["attacker", "defender"], ["A", "B"] if won else ["B", "A"])
        ],
        score=ScoreCard(
            attacker_votes=1.0 if won else 0.0,
            defender_votes=0.0 if won else 1.0,
            local_attacker=1.0 if won else 0.0,
            elo_expected_attacker=0.5,
            final_attacker=0.75 if won else 0.25,
            final_defender=0.25 if won else 0.75,
            alpha=0.5,
        ),
        ratings_before={attacker: 1000.0, defender: 1000.0},
        ratings_after=ratings_after or {attacker: 1010.0, defender: 990.0},
        created_at=1_700_000_000.0 + n,
        rating_seq=rating_seq,
        test_backed=test_backed,
    )


def test_answers_follow_the_winner_role():
    s = make_sample(1, winner_role="defender", attacker_answer="A says", defender_answer="D says")
    assert s.chosen == "D says"
    assert answers(s) == ("A says", "D says")
    row = battle_summary(7, s)
    assert (row["attacker_answer"], row["defender_answer"], row["winner"]) == (
        "A says",
        "D says",
        "beta",
    )


def test_disagreement_ignores_invalid_votes():
    ab = ["attacker", "defender"]
    unanimous = make_sample(
        1, votes=[vote("j1", "attacker", ab, ["A", "B"]), vote("j2", "invalid", ab, ["invalid"])]
    )
    split = make_sample(
        2, votes=[vote("j1", "attacker", ab, ["A", "B"]), vote("j2", "tie", ab, ["A", "A"])]
    )
    assert not disagreement(unanimous)
    assert disagreement(split)


def test_query_filters_each_field():
    ab = ["attacker", "defender"]
    split = [vote("j1", "attacker", ab, ["A", "B"]), vote("j2", "defender", ab, ["B", "A"])]
    s1 = make_sample(1, "alpha", "beta", prompt="Sort a list", test_backed=True)
    s2 = make_sample(2, "beta", "gamma", winner_role="defender", votes=split, prompt="Parse JSON")
    both = [s1, s2]

    def hits(**params: str) -> list[str]:
        q = BattleQuery.parse(params)
        return [s.id[-1] for s in both if q.matches(s)]

    assert hits() == ["1", "2"]
    assert hits(model="beta") == ["1", "2"]
    assert hits(model="gamma") == ["2"]
    assert hits(winner="alpha") == ["1"]
    assert hits(winner="gamma") == ["2"]
    assert hits(disagree="1") == ["2"]
    assert hits(disagree="0") == ["1"]
    assert hits(tested="yes") == ["1"]
    assert hits(tested="no") == ["2"]
    assert hits(q="json") == ["2"]
    assert hits(model="alpha", tested="0") == []
    with pytest.raises(ValueError, match="`tested`"):
        BattleQuery.parse({"tested": "maybe"})


def test_win_matrix_counts_wins_per_pair():
    samples = [
        make_sample(1, "alpha", "beta"),  # alpha beats beta
        make_sample(2, "beta", "alpha", winner_role="defender"),  # alpha beats beta
        make_sample(3, "beta", "alpha"),  # beta beats alpha
        make_sample(4, "gamma", "alpha", winner_role="defender"),  # alpha beats gamma
    ]
    m = win_matrix(samples)
    assert m["models"] == ["alpha", "beta", "gamma"]
    assert m["rate"][0] == [None, pytest.approx(2 / 3), 1.0]
    assert m["rate"][1] == [pytest.approx(1 / 3), None, None]
    assert m["rate"][2] == [0.0, None, None]
    assert m["games"][0] == [0, 3, 1] and m["games"][1][2] == 0


def test_rating_history_follows_rating_seq_and_thins():
    samples = [
        make_sample(1, rating_seq=2, ratings_after={"alpha": 1020.0, "beta": 980.0}),
        make_sample(2, rating_seq=1, ratings_after={"alpha": 1010.0, "beta": 990.0}),
        make_sample(3, "beta", "gamma", rating_seq=3, ratings_after={"beta": 995.04, "gamma": 985}),
    ]
    h = rating_history(samples)
    assert h == {
        "alpha": [(1, 1010.0), (2, 1020.0)],
        "beta": [(1, 990.0), (2, 980.0), (3, 995.0)],
        "gamma": [(3, 985.0)],
    }
    many = [make_sample(i, rating_seq=i, ratings_after={"alpha": float(i)}) for i in range(1, 11)]
    thin = rating_history(many, points=4)["alpha"]
    assert [x for x, _ in thin] == [1, 4, 7, 10]  # every 3rd, and the last


def test_detail_aligns_verdicts_reasons_and_roles():
    v = vote(
        "gamma",
        "tie",
        ["defender", "attacker"],
        ["A", "A"],
        reasons=["<b>first</b> reply", "second reply"],
    )
    old = vote("delta", "attacker", ["attacker", "defender"], ["A", "B"])  # no reasons
    d = battle_detail(5, make_sample(5, votes=[v, old]))
    first, second = d["judges"][0]["orders"]
    assert (first["first"], first["verdict"], first["picked"]) == ("defender", "A", "defender")
    assert (second["picked"], second["reason"]) == ("attacker", "second reply")
    assert first["reason"] == "<b>first</b> reply"  # raw: the page renders it as text
    assert [o["reason"] for o in d["judges"][1]["orders"]] == ["", ""]
    assert d["score"]["e_attacker"] == 0.75 and d["execution"] is None
    assert d["ratings_after"] == {"alpha": 1010.0, "beta": 990.0}
