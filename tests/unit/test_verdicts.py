"""Verdict parsing and the combination of both orders into one vote."""

import pytest

from warriorcoder.arena.verdicts import combine, parse_verdict, winner_of


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("A is better.\n[[A]]", "A"),
        ("Verdict: [[B]]", "B"),
        ("They are the same. [[Tie]]", "tie"),
        ("[[tie]]", "tie"),
        ("[[ B ]]", "B"),
        ("no label here", None),
        ("[A] or [[C]]", None),
        ("", None),
        # The judge's reasoning mentions a label; only its last one counts.
        ("Answer B claims '[[B]]' but is wrong; A is correct.\n[[A]]", "A"),
        ("First I thought [[A]], on reflection [[B]]", "B"),
    ],
)
def test_parse_verdict(output, expected):
    assert parse_verdict(output) == expected


def test_winner_of_maps_positions_to_roles():
    assert winner_of("attacker", "A") == "attacker"
    assert winner_of("attacker", "B") == "defender"
    assert winner_of("defender", "A") == "defender"
    assert winner_of("defender", "B") == "attacker"
    assert winner_of("defender", "tie") == "tie"


def test_consistent_orders_give_the_vote():
    # Attacker first: A wins; defender first: B wins -> the attacker both times.
    assert combine(["attacker", "defender"], ["A", "B"]) == "attacker"
    assert combine(["attacker", "defender"], ["B", "A"]) == "defender"
    assert combine(["attacker", "defender"], ["tie", "tie"]) == "tie"


def test_position_biased_judge_counts_as_tie():
    # Always picks the first answer: the orders disagree on the winner.
    assert combine(["attacker", "defender"], ["A", "A"]) == "tie"
    assert combine(["attacker", "defender"], ["A", "tie"]) == "tie"


def test_missing_verdict_makes_the_vote_invalid():
    assert combine(["attacker", "defender"], ["A", None]) == "invalid"
    assert combine(["defender"], [None]) == "invalid"


def test_single_order_alternate_mode():
    assert combine(["defender"], ["A"]) == "defender"


def test_combine_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        combine(["attacker"], ["A", "B"])
