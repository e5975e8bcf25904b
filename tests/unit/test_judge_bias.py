"""Judge family bias (warriorcoder.data.judge_bias): the score intervals against published
values, and each judge's same-family and other-family rates on battles counted by hand."""

from __future__ import annotations

import csv
import io

import pytest

from tests.helpers import arena_vote, battle
from warriorcoder.arena.decide import decide
from warriorcoder.data.judge_bias import (
    BIAS_CSV_FIELDS,
    Rate,
    bias_to_csv_rows,
    bias_to_json,
    format_bias_table,
    judge_bias,
    newcombe_interval,
    wilson_interval,
)
from warriorcoder.proto.messages import Judgement, Sample
from warriorcoder.runtime.settings import ScoringSettings

FAMILIES: dict[str, str | None] = {"a": "q", "b": "l", "c": "d", "jq": "q", "n1": None}


def sample(attacker: str, defender: str, n: int, **votes: str) -> Sample:
    """A decided battle ``attacker`` vs ``defender`` (instruction ``n``) with ``votes``
    (judge -> winner)."""
    b = battle(attacker=attacker, defender=defender, text=f"Write task number {n} in Python.")
    j = Judgement(
        id=b.id,
        battle=b,
        votes=[arena_vote(judge, w) for judge, w in votes.items()],
        position_mode="both",
        judged_at=3.0,
    )
    s = decide(j, 1000.0, 1000.0, ScoringSettings())
    assert s is not None
    return s


# jq is of family q (fighter a's); n1 has no family; n2 is not in FAMILIES at all (none either).
BATTLES = [
    # own fighter a, the neutral panel (n1, n2) picks b: jq sides with a -> same-family hit
    sample("a", "b", 1, n1="defender", n2="defender", jq="attacker"),
    # ... jq agrees with the panel -> a same-family trial, no hit
    sample("a", "b", 2, n1="defender", n2="defender", jq="defender"),
    # a defends; the panel's 1.5 to 0.5 (a tie is half each) picks b -> hit
    sample("b", "a", 3, n1="attacker", n2="tie", jq="defender"),
    # the panel picks a itself: a battle of its family, no trial
    sample("a", "c", 4, n1="attacker", n2="attacker", jq="attacker"),
    # no fighter of family q: jq against the panel's b -> other-family hit
    sample("b", "c", 5, n1="attacker", n2="attacker", jq="defender"),
    # the panel ties (n1 b, n2 c): no majority, no trial
    sample("b", "c", 6, n1="attacker", n2="defender", jq="defender"),
    # with the panel -> other-family trial, no hit
    sample("c", "b", 7, n1="attacker", n2="attacker", jq="attacker"),
    # a tie by jq is not a vote for the fighter the panel did not pick
    sample("c", "b", 8, n1="attacker", n2="tie", jq="tie"),
    # an invalid vote counts nowhere
    sample("b", "c", 9, n1="attacker", n2="attacker", jq="invalid"),
]


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Stat. Med. 17:857, table I: 81/263 -> 0.2553 to 0.3662; 8/10 and 1/3 are
    # the usual textbook checks.
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=5e-5)
    assert wilson_interval(1, 3) == pytest.approx((0.0615, 0.7923), abs=5e-5)
    low, high = wilson_interval(0, 6)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.3903, abs=5e-5)
    assert wilson_interval(12, 12)[1] == 1.0
    with pytest.raises(ValueError, match="hits <= trials"):
        wilson_interval(4, 3)
    with pytest.raises(ValueError, match="trials >= 1"):
        wilson_interval(0, 0)


def test_newcombe_interval_matches_the_papers_example():
    # Newcombe (1998), Stat. Med. 17:873, example (a): 56/70 - 48/80, method 10: 0.0524, 0.3339.
    a = Rate(56, 70, 56 / 70, *wilson_interval(56, 70))
    b = Rate(48, 80, 48 / 80, *wilson_interval(48, 80))
    assert newcombe_interval(a, b) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    with pytest.raises(ValueError, match="trials"):
        newcombe_interval(a, Rate(0, 0, None, None, None))


def test_a_judge_that_sides_with_its_family_against_the_panel():
    rows = {r.judge: r for r in judge_bias(BATTLES, FAMILIES)}
    assert sorted(rows) == ["jq", "n1", "n2"]
    jq = rows["jq"]
    assert (jq.family, jq.votes, jq.own_family_battles) == ("q", 8, 4)
    assert (jq.same_family.hits, jq.same_family.trials) == (2, 3)  # battles 1, 2, 3
    assert (jq.other_family.hits, jq.other_family.trials) == (1, 3)  # battles 5, 7, 8
    assert jq.same_family.rate == pytest.approx(2 / 3)
    assert (jq.same_family.lower, jq.same_family.upper) == pytest.approx((0.2077, 0.9385), abs=5e-5)
    assert (jq.other_family.lower, jq.other_family.upper) == pytest.approx(
        (0.0615, 0.7923), abs=5e-5
    )
    assert jq.bias == pytest.approx(1 / 3)
    # by hand: 1/3 - sqrt((2/3 - 0.2077)^2 + (0.7923 - 1/3)^2) = -0.3158;
    #          1/3 + sqrt((0.9385 - 2/3)^2 + (1/3 - 0.0615)^2) = 0.7178
    assert (jq.bias_lower, jq.bias_upper) == pytest.approx((-0.3158, 0.7178), abs=5e-5)


def test_a_judge_without_a_family_has_only_the_baseline():
    n1 = {r.judge: r for r in judge_bias(BATTLES, FAMILIES)}["n1"]
    assert (n1.family, n1.votes, n1.own_family_battles) == (None, 9, 0)
    # Its panel leaves out jq where a q fighter fights (1-4), not elsewhere (5-9):
    # 1, 2: n2 picks b, n1 with it; 3: n2 ties, no majority; 4: n2 picks a, n1 with it;
    # 5: n2 b vs jq c tie; 6: n2 and jq pick c, n1 b (a hit); 7: with n2 and jq;
    # 8: n2 and jq tie; 9: n2 picks b (jq invalid), n1 with it.
    assert (n1.other_family.hits, n1.other_family.trials) == (1, 6)
    assert n1.same_family == Rate(0, 0, None, None, None)
    assert n1.bias is None and n1.bias_lower is None and n1.bias_upper is None


def test_battles_of_two_fighters_of_the_judges_family_are_left_out():
    families = {**FAMILIES, "b": "q"}  # a and b both of jq's family
    jq = {r.judge: r for r in judge_bias(BATTLES[:2], families)}["jq"]
    assert jq.votes == 2 and jq.own_family_battles == 0
    assert jq.same_family.trials == 0 and jq.other_family.trials == 0


def test_a_judge_that_never_judges_its_family_has_no_bias_to_measure():
    """What exclude gives: no same-family trials, so no bias (not a bias of 0)."""
    jq = {r.judge: r for r in judge_bias(BATTLES[4:], FAMILIES)}["jq"]
    assert jq.own_family_battles == 0 and jq.same_family.rate is None and jq.bias is None
    assert jq.other_family.trials == 3


def test_exports_json_csv_and_a_table():
    rows = judge_bias(BATTLES, FAMILIES)
    data = bias_to_json(rows)
    assert data["jq"]["same_family"] == {
        "hits": 2,
        "trials": 3,
        "rate": pytest.approx(2 / 3),
        "lower": pytest.approx(0.2077, abs=5e-5),
        "upper": pytest.approx(0.9385, abs=5e-5),
    }
    assert data["n1"]["bias"] is None and data["n1"]["family"] is None
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=BIAS_CSV_FIELDS)
    writer.writeheader()
    writer.writerows(bias_to_csv_rows(rows))
    read = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [r["judge"] for r in read] == ["jq", "n1", "n2"]
    assert (read[0]["same_hits"], read[0]["same_trials"], read[0]["other_trials"]) == (
        "2",
        "3",
        "3",
    )
    assert read[1]["bias"] == "" and read[1]["family"] == ""
    table = format_bias_table(rows).splitlines()
    assert table[0].split() == ["judge", "family", "same-family", "other-family", "bias"]
    assert table[1].startswith("jq ") and "0.67 [0.21, 0.94] (2/3)" in table[1]
    assert "+0.33 [-0.32, +0.72]" in table[1]
    assert "- (0)" in table[2]


def test_no_samples_no_rows():
    assert judge_bias([], FAMILIES) == []
    assert format_bias_table([]).split() == [
        "judge",
        "family",
        "same-family",
        "other-family",
        "bias",
    ]
