"""Ratings from pairwise votes: reading Chatbot Arena votes, online Elo, Bradley–Terry MLE with
known answers, bootstrap intervals, the leaderboard and the ``ratings`` command."""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import pytest

from warriorcoder.data.bradley_terry import (
    bootstrap,
    bradley_terry,
    format_table,
    leaderboard,
    online_elo,
    rows_to_json,
)
from warriorcoder.data.commands import register
from warriorcoder.data.votes import ArenaVote, VoteFormatError, read_votes


def vote(a: str, b: str, winner: str) -> ArenaVote:
    return ArenaVote(model_a=a, model_b=b, winner=winner)  # type: ignore[arg-type]


def games(a: str, b: str, a_wins: int, b_wins: int, ties: int = 0) -> list[ArenaVote]:
    return (
        [vote(a, b, "model_a")] * a_wins
        + [vote(a, b, "model_b")] * b_wins
        + [vote(a, b, "tie")] * ties
    )


def simulate(strengths: dict[str, float], n: int, seed: int, tie_band: float = 0.05):
    rnd = random.Random(seed)
    models = sorted(strengths)
    out = []
    for _ in range(n):
        a, b = rnd.sample(models, 2)
        p = 1 / (1 + 10 ** (-(strengths[a] - strengths[b]) / 400))
        r = rnd.random()
        winner = "tie" if abs(r - p) < tie_band else ("model_a" if r < p else "model_b")
        out.append(vote(a, b, winner))
    return out


# -- reading votes ------------------------------------------------------------------------------


def test_read_votes_accepts_the_chatbot_arena_format(tmp_path: Path):
    path = tmp_path / "votes.jsonl"
    lines = [
        {"model_a": "a", "model_b": "b", "winner": "model_a", "turn": 1, "language": "English"},
        {"model_a": "b", "model_b": "c", "winner": "tie (bothbad)", "judge": "arena_user_1"},
        {"model_a": "c", "model_b": "a", "winner": "tie", "battle_id": "x1"},
        {"model_a": "a", "model_b": "c", "winner": "model_b", "judge": None},
    ]
    path.write_text(
        "\n".join(json.dumps(x) for x in lines[:2])
        + "\n\n"
        + "\n".join(json.dumps(x) for x in lines[2:])
        + "\n"
    )
    votes = read_votes(path)
    assert [(v.model_a, v.model_b, v.winner) for v in votes] == [
        ("a", "b", "model_a"),
        ("b", "c", "tie"),
        ("c", "a", "tie"),
        ("a", "c", "model_b"),
    ]
    assert votes[1].judge == "arena_user_1" and votes[2].battle_id == "x1"
    assert votes[0].judge is None and votes[3].judge is None


def test_read_votes_reads_a_json_array_too(tmp_path: Path):
    path = tmp_path / "battles.json"
    path.write_text(json.dumps([{"model_a": "a", "model_b": "b", "winner": "model_b"}]))
    assert read_votes(path) == [vote("a", "b", "model_b")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"model_a": "a", "model_b": "b", "winner": "model_c"}', r":3: field 'winner' must be"),
        ('{"model_b": "b", "winner": "tie"}', r":3: missing field 'model_a'"),
        ('{"model_a": "a", "model_b": 7, "winner": "tie"}', r":3: field 'model_b' must be a non"),
        ('{"model_a": "a", "model_b": "a", "winner": "tie"}', r":3: fields 'model_a' and 'mod"),
        ('{"model_a": "a", "model_b": "b"}', r":3: missing field 'winner'"),
        ('{"model_a": "a", "model_b": "b", "winner": "tie", "judge": 3}', r":3: field 'judge'"),
        ('["a", "b", "tie"]', r":3: expected a JSON object, got an array"),
        ('{"model_a": "a", "model_b": "b", "winner": ', r":3: not valid JSON"),
    ],
)
def test_read_votes_names_the_bad_line_and_field(tmp_path: Path, line: str, message: str):
    path = tmp_path / "votes.jsonl"
    good = '{"model_a": "a", "model_b": "b", "winner": "model_a"}'
    path.write_text(f"{good}\n{good}\n{line}\n{good}\n")
    with pytest.raises(VoteFormatError, match=message) as info:
        read_votes(path)
    assert str(info.value).startswith(f"{path}:3: ")


# -- online Elo ---------------------------------------------------------------------------------


def test_online_elo_by_hand_for_two_votes():
    votes = [vote("a", "b", "model_a"), vote("b", "a", "model_a")]
    r = online_elo(votes)
    # vote 1: equal ratings, E = 0.5: a += 40 * 0.5 -> 1020, b -> 980
    # vote 2: b (980) beats a (1020): E_b = 1 / (1 + 10^(40/400)), b += 40 * (1 - E_b)
    e_b = 1 / (1 + 10 ** (40 / 400))
    assert e_b == pytest.approx(0.4426884, abs=1e-7)
    assert r["b"] == pytest.approx(980 + 40 * (1 - e_b))
    assert r["a"] == pytest.approx(1020 - 40 * (1 - e_b))
    assert r["b"] == pytest.approx(1002.29246, abs=1e-5)
    assert r["a"] + r["b"] == pytest.approx(2000)


def test_online_elo_tie_and_parameters():
    r = online_elo([vote("a", "b", "tie")], k=32, initial=1500)
    assert r == {"a": 1500, "b": 1500}
    r = online_elo([vote("a", "b", "model_b")], k=10, initial=0)
    assert r == {"a": -5, "b": 5}


# -- Bradley–Terry ------------------------------------------------------------------------------


def test_bt_two_models_three_wins_of_four_is_400_log10_3():
    bt = bradley_terry(games("a", "b", 3, 1))
    assert bt["a"] - bt["b"] == pytest.approx(400 * math.log10(3), abs=1e-3)  # 190.849
    assert (bt["a"] + bt["b"]) / 2 == pytest.approx(1000)
    assert bt["a"] == pytest.approx(1095.424, abs=1e-3)


def test_bt_three_models_with_consistent_odds_is_exact():
    # odds a:b = 2, b:c = 2, a:c = 4 are consistent, so the MLE reproduces them exactly
    votes = games("a", "b", 20, 10) + games("b", "c", 20, 10) + games("c", "a", 10, 40)
    bt = bradley_terry(votes)
    step = 400 * math.log10(2)  # 120.41
    assert bt["a"] == pytest.approx(1000 + step, abs=1e-3)
    assert bt["b"] == pytest.approx(1000, abs=1e-3)
    assert bt["c"] == pytest.approx(1000 - step, abs=1e-3)
    p_ac = 1 / (1 + 10 ** (-(bt["a"] - bt["c"]) / 400))
    assert p_ac == pytest.approx(0.8, abs=1e-6)


def test_bt_scale_base_and_initial():
    bt = bradley_terry(games("a", "b", 3, 1), scale=1.0, base=math.e, initial=0.0)
    assert bt["a"] - bt["b"] == pytest.approx(math.log(3), abs=1e-6)
    assert bt["a"] + bt["b"] == pytest.approx(0, abs=1e-9)


def test_bt_is_symmetric_in_sides_and_names():
    votes = games("a", "b", 5, 2, 1) + games("b", "c", 3, 3, 2) + games("a", "c", 4, 1)
    swapped = [
        vote(
            v.model_b, v.model_a, {"model_a": "model_b", "model_b": "model_a"}.get(v.winner, "tie")
        )
        for v in votes
    ]
    renamed = [vote(v.model_a.upper(), v.model_b.upper(), v.winner) for v in reversed(votes)]
    bt = bradley_terry(votes)
    assert bradley_terry(swapped) == pytest.approx(bt)
    assert {m.lower(): r for m, r in bradley_terry(renamed).items()} == pytest.approx(bt)
    reversed_outcomes = [
        vote(
            v.model_a, v.model_b, {"model_a": "model_b", "model_b": "model_a"}.get(v.winner, "tie")
        )
        for v in votes
    ]
    mirror = bradley_terry(reversed_outcomes)
    assert {m: 2000 - r for m, r in mirror.items()} == pytest.approx(bt)


def test_bt_ties_count_as_half_a_win_each():
    assert bradley_terry(games("a", "b", 0, 0, 6)) == pytest.approx({"a": 1000, "b": 1000})
    # 1 win and 2 ties -> 2 : 1 effective wins
    bt = bradley_terry(games("a", "b", 1, 0, 2))
    assert bt["a"] - bt["b"] == pytest.approx(400 * math.log10(2), abs=1e-3)


def test_bt_reports_an_undefeated_model_as_unbounded_not_as_a_penalty_artefact():
    # a beat b 4-0 and never met c; b and c split 2-2. No finite MLE: a drifts up, {b, c} down.
    votes = games("a", "b", 4, 0) + games("b", "c", 2, 2)
    bt = bradley_terry(votes)
    assert bt["a"] == math.inf
    assert bt["b"] == bt["c"] == -math.inf
    # Whatever the regulariser, nothing finite is reported for them.
    assert bradley_terry(votes, l2=1e-3) == bt
    rows = leaderboard(votes, bootstrap_n=50, seed=0)
    assert (rows[0].model, rows[0].bt_status) == ("a", "above")
    assert {r.bt_status for r in rows[1:]} == {"below"}
    data = rows_to_json(rows)
    assert data["a"]["bt"] is None and data["a"]["bt_status"] == "above"
    assert format_table(rows).splitlines()[1].split()[2] == "+inf"


def test_bt_single_pair_five_nil_is_unbounded_with_infinite_intervals():
    votes = games("a", "b", 5, 0)
    assert bradley_terry(votes) == {"a": math.inf, "b": -math.inf}
    ci = bootstrap(votes, n=100, seed=0)
    # Every resample is 5-0 too: the intervals are the infinities themselves.
    assert ci == {"a": (math.inf, math.inf), "b": (-math.inf, -math.inf)}


def test_bt_ties_only_is_finite_and_exact():
    votes = games("a", "b", 0, 0, 5)
    rows = leaderboard(votes, bootstrap_n=100, seed=0)
    assert [r.bt_status for r in rows] == ["finite", "finite"]
    for r in rows:
        assert r.bt == pytest.approx(1000, abs=1e-9)
        assert (r.bt_lower, r.bt_upper) == (pytest.approx(1000), pytest.approx(1000))


def test_bt_middle_of_a_chain_is_undetermined():
    # a > b > c, each 3-0: the order is known, no rating is.
    bt = bradley_terry(games("a", "b", 3, 0) + games("b", "c", 3, 0))
    assert bt["a"] == math.inf and bt["c"] == -math.inf and math.isnan(bt["b"])


def test_bt_separation_shows_in_the_intervals_of_a_close_call():
    # a beat b 36-4: 0.9^40 = 1.5% of resamples are 40-0 (unbounded), fewer than 2.5%, so the
    # interval stays finite; at 19-1, 0.95^20 = 36% of resamples are 20-0: it reaches infinity.
    close = bootstrap(games("a", "b", 36, 4), n=2000, seed=1)
    assert all(math.isfinite(x) for pair in close.values() for x in pair)
    lopsided = bootstrap(games("a", "b", 19, 1), n=2000, seed=1)
    assert lopsided["a"][1] == math.inf and lopsided["b"][0] == -math.inf
    assert math.isfinite(lopsided["a"][0])


def test_bt_of_no_votes_is_empty():
    assert bradley_terry([]) == {}
    assert bootstrap([], n=10) == {}
    assert leaderboard([], bootstrap_n=10) == []


# -- bootstrap ----------------------------------------------------------------------------------


def test_bootstrap_intervals_contain_the_estimate_and_separate_best_from_worst():
    votes = simulate({"best": 400, "mid1": 200, "mid2": 180, "worst": 0}, n=3000, seed=1)
    bt = bradley_terry(votes)
    ci = bootstrap(votes, n=300, seed=0)
    assert set(ci) == set(bt)
    for model, (lo, hi) in ci.items():
        assert lo <= bt[model] <= hi, model
        assert lo < hi
    assert ci["best"][0] > max(ci[m][1] for m in ("mid1", "mid2", "worst"))
    assert ci["worst"][1] < min(ci[m][0] for m in ("mid1", "mid2", "best"))
    # the estimates recover the simulated gaps roughly
    assert bt["best"] - bt["worst"] == pytest.approx(400, abs=60)


def test_bootstrap_is_reproducible_by_seed():
    votes = simulate({"a": 100, "b": 0, "c": 50}, n=300, seed=2)
    assert bootstrap(votes, n=50, seed=7) == bootstrap(votes, n=50, seed=7)
    assert bootstrap(votes, n=50, seed=7) != bootstrap(votes, n=50, seed=8)


def test_bootstrap_narrows_with_more_votes():
    few = simulate({"a": 100, "b": 0}, n=100, seed=3)
    many = simulate({"a": 100, "b": 0}, n=4000, seed=3)
    width = lambda ci: ci["a"][1] - ci["a"][0]  # noqa: E731
    assert width(bootstrap(many, n=200)) < width(bootstrap(few, n=200)) / 3


# -- leaderboard --------------------------------------------------------------------------------


def test_leaderboard_rows_and_table():
    votes = games("a", "b", 3, 1) + games("b", "c", 2, 1) + games("a", "c", 1, 0, 1)
    rows = leaderboard(votes, bootstrap_n=100, seed=0)
    assert [r.model for r in rows] == ["a", "b", "c"]
    assert [r.votes for r in rows] == [6, 7, 5]
    bt = bradley_terry(votes)
    elo = online_elo(votes)
    for r in rows:
        assert r.bt == pytest.approx(bt[r.model])
        assert r.elo == pytest.approx(elo[r.model])
        assert r.bt_lower is not None and r.bt_upper is not None
        assert r.bt_lower <= r.bt_upper
    table = format_table(rows)
    header, first, *_ = table.splitlines()
    assert header.split() == ["rank", "model", "bt", "95%", "ci", "elo", "votes"]
    assert first.split()[:3] == ["1", "a", f"{rows[0].bt:.1f}"]
    assert len(table.splitlines()) == 4
    data = rows_to_json(rows)
    assert list(data) == ["a", "b", "c"]
    assert set(data["a"]) == {"elo", "bt", "bt_lower", "bt_upper", "votes", "bt_status"}


def test_leaderboard_without_bootstrap_has_no_intervals():
    rows = leaderboard(games("a", "b", 3, 1), bootstrap_n=0)
    assert all(r.bt_lower is None and r.bt_upper is None for r in rows)
    assert "-" in format_table(rows).splitlines()[1].split()


# -- the ratings command ------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="warriorcoder")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def write_votes(path: Path, votes: list[ArenaVote]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"model_a": v.model_a, "model_b": v.model_b, "winner": v.winner}) + "\n"
            for v in votes
        )
    )
    return path


def test_ratings_command_prints_the_table(tmp_path: Path, capsys):
    path = write_votes(tmp_path / "v.jsonl", games("a", "b", 3, 1))
    assert run_cli(["ratings", "--votes", str(path), "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["rank", "model", "bt"]
    assert out[1].split()[:3] == ["1", "a", "1095.4"]
    assert out[2].split()[:3] == ["2", "b", "904.6"]


def test_ratings_command_json(tmp_path: Path, capsys):
    # 30-10 (not 3-1: a quarter of 3-1 resamples are 4-0, which would make the interval infinite)
    path = write_votes(tmp_path / "v.jsonl", games("a", "b", 30, 10) + games("b", "c", 20, 20))
    assert (
        run_cli(["ratings", "--votes", str(path), "--bootstrap", "20", "--seed", "3", "--json"])
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert list(data) == ["a", "b", "c"] or list(data) == ["a", "c", "b"]
    assert data["a"]["bt"] - data["b"]["bt"] == pytest.approx(400 * math.log10(3), abs=1e-3)
    assert data["a"]["votes"] == 40 and data["b"]["votes"] == 80
    assert data["a"]["bt_lower"] <= data["a"]["bt"] <= data["a"]["bt_upper"]
    assert data["a"]["bt_status"] == "finite"


def test_ratings_command_errors_are_one_line_with_exit_2(tmp_path: Path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"model_a": "a", "model_b": "b", "winner": "model_a"}\n{"model_a": "a"}\n')
    assert run_cli(["ratings", "--votes", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"warriorcoder: {bad}:2: missing field 'model_b'")
    assert err.count("\n") == 1
    assert run_cli(["ratings", "--votes", str(tmp_path / "missing.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("warriorcoder: cannot read ")
    with pytest.raises(SystemExit) as info:
        run_cli(["ratings", "--votes", str(bad), "--bootstrap", "-1"])
    assert info.value.code == 2


@pytest.mark.parametrize("argv", [["--help"], ["ratings", "--help"], ["export", "--help"]])
def test_help_texts_render(argv: list[str], capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(argv)
    assert info.value.code == 0
    assert "usage: warriorcoder" in capsys.readouterr().out
