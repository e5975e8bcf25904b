"""Execution evidence in the dataset: per-model pass rates and the card's statistics (hand
counted), sft/dpo records that carry the tests and both runs, ``--verified-only``, Parquet with
the evidence columns, and the leaderboard's pass% and runs columns."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest
from msgspec.structs import replace

from tests.helpers import judgement
from warriorcoder.arena.decide import decide
from warriorcoder.arena.prompts import execution_summary
from warriorcoder.data.bradley_terry import Row, format_table
from warriorcoder.data.card import render_card
from warriorcoder.data.commands import register
from warriorcoder.data.export import (
    EVIDENCE_FIELDS,
    arrow_schema,
    export,
    has_evidence,
    only_test_backed,
    read_export,
    records,
)
from warriorcoder.data.live import format_pass_rate, leaderboard_table
from warriorcoder.data.pass_rates import PassRate, execution_stats, pass_rates
from warriorcoder.proto.messages import ChallengeTests, Execution, RunResult, Sample, encode
from warriorcoder.runtime.settings import ScoringSettings

TESTS = ChallengeTests(
    writer="delta",
    language="Python",
    code="from solution import *\n\n\ndef test_one():\n    assert add(1, 2) == 3\n",
    tests=["test_one", "test_two", "test_three", "test_four"],
    usable=True,
    asked=1,
)
TIE = ["attacker", "defender"]
WON = ["attacker", "attacker", "defender"]


def run(status: str = "ran", passed: int = 0, total: int = 4) -> RunResult:
    failed = total - passed if status == "ran" else 0
    return RunResult(status=status, passed=passed, failed=failed, total=total, stderr="tail")  # type: ignore[arg-type]


def sample(n: int, votes: list[str], pair: tuple[str, str], runs: Any = None) -> Sample:
    j = judgement(votes, attacker=pair[0], defender=pair[1], text=f"Write task {n} in Python.")
    if runs is not None:
        ex = Execution(
            attacker=runs[0], defender=runs[1], sandbox="bubblewrap 0.8.0", verified_at=2
        )
        j = replace(j, battle=replace(j.battle, tests=TESTS, execution=ex))
    s = decide(j, 1000.0, 1000.0, ScoringSettings())
    assert s is not None
    return replace(s, created_at=1_700_000_000.0 + n)


def make_samples() -> list[Sample]:
    return [
        # tie broken by the tests: the defender (beta, 4/4) wins over alpha (2/4)
        sample(0, TIE, ("alpha", "beta"), (run(passed=2), run(passed=4))),
        # the votes pick beta (4/4) over gamma, which gave no code: test-backed
        sample(1, WON, ("beta", "gamma"), (run(passed=4), run("no_code", total=0))),
        # the votes pick gamma (timed out) over alpha (3/4): not test-backed
        sample(2, WON, ("gamma", "alpha"), (run("timeout"), run(passed=3))),
        # no verifier
        sample(3, TIE, ("alpha", "gamma")),
        # the sandbox failed on beta's answer: no evidence, beta's run left out
        sample(4, WON, ("beta", "alpha"), (run("sandbox_error"), run(passed=4))),
    ]


@pytest.fixture
def samples() -> list[Sample]:
    return make_samples()


def test_the_samples_are_as_designed(samples):
    assert [s.winner for s in samples] == ["beta", "beta", "gamma", "alpha", "beta"]
    assert [s.test_backed for s in samples] == [True, True, False, False, False]
    assert [s.decided_by for s in samples] == ["execution", "votes", "votes", "votes", "votes"]


def test_pass_rates_by_hand(samples):
    rates = pass_rates(samples)
    assert list(rates) == ["alpha", "beta", "gamma"]
    # alpha: 2/4, 3/4, 4/4 -> 3 runs, 1 passed all, mean fraction 0.75
    assert rates["alpha"] == PassRate(model="alpha", runs=3, passed_all=1, fraction_sum=2.25)
    assert rates["alpha"].pass_rate == pytest.approx(1 / 3)
    assert rates["alpha"].mean_pass_fraction == pytest.approx(0.75)
    # beta: 4/4 twice; its sandbox error is not a run
    assert (rates["beta"].runs, rates["beta"].passed_all, rates["beta"].pass_rate) == (2, 2, 1.0)
    # gamma: no code, timeout -> runs that pass nothing
    assert (rates["gamma"].runs, rates["gamma"].passed_all) == (2, 0)
    assert rates["gamma"].mean_pass_fraction == 0.0
    assert PassRate(model="x").pass_rate is None and format_pass_rate(None) == "-"
    assert format_pass_rate(rates["alpha"]) == "33.3%"


def test_execution_stats_by_hand(samples):
    stats = execution_stats(samples)
    assert (stats.samples, stats.with_execution, stats.with_tests) == (5, 4, 4)
    assert (stats.test_backed, stats.sandbox_errors) == (2, 1)
    assert stats.test_backed_share == 0.5
    assert stats.decided_by == {"execution": 1, "votes": 4}
    assert execution_stats([]).test_backed_share is None


def test_records_carry_the_tests_and_both_runs(samples):
    assert has_evidence(samples) and not has_evidence(samples[3:4])
    s = samples[0]  # the defender won
    [dpo, *_] = records(samples, "dpo")
    assert list(dpo) == ["id", "prompt", "chosen", "rejected", *EVIDENCE_FIELDS]
    assert dpo["chosen"] == s.chosen and dpo["test_backed"] is True
    assert dpo["decided_by"] == "execution"
    assert dpo["tests"] == {
        "writer": "delta",
        "language": "Python",
        "framework": "pytest",
        "code": TESTS.code,
        "names": TESTS.tests,
        "usable": True,
    }
    ex = dpo["execution"]
    assert ex["sandbox"] == "bubblewrap 0.8.0"
    assert (ex["chosen"]["passed"], ex["rejected"]["passed"]) == (4, 2)  # the chosen is beta's
    assert ex["chosen"]["summary"] == execution_summary(run(passed=4))
    [sft, *_] = records(samples, "sft")
    assert list(sft) == ["id", "messages", *EVIDENCE_FIELDS]
    assert sft["execution"] == ex
    no_ex = records(samples, "sft")[3]
    assert no_ex["tests"] is None and no_ex["execution"] is None and not no_ex["test_backed"]
    # without any evidence in the export, the records are the plain ones
    assert list(records(samples[3:4], "dpo")[0]) == ["id", "prompt", "chosen", "rejected"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("fmt", ["sft", "dpo"])
def test_verified_only_export_round_trips(tmp_path: Path, samples, fmt, suffix):
    out = tmp_path / f"{fmt}{suffix}"
    assert export(samples, fmt, out, verified_only=True) == 2
    kept = only_test_backed(samples)
    assert [s.id for s in kept] == [samples[0].id, samples[1].id]
    assert read_export(out) == records(kept, fmt)
    if suffix == ".parquet":
        assert pq.read_table(out).schema.equals(arrow_schema(fmt, evidence=True))
    # all samples: the ones without evidence have nulls in the same columns
    assert export(samples, fmt, out) == 5
    assert read_export(out) == records(samples, fmt)


def test_battles_keep_the_whole_evidence(samples):
    [battle, *_] = records(samples, "battles")
    back = msgspec.convert(battle, Sample)
    assert back.execution == samples[0].execution and back.tests == TESTS
    assert back.test_backed and back.decided_by == "execution"


def test_card_gives_pass_rate_statistics(samples):
    card = render_card(samples, fmt="dpo", bootstrap_n=0)
    assert "## Execution" in card
    assert "| samples with execution results | 4 |" in card
    assert "| test-backed samples (share of those run) | 2 (50.0%) |" in card
    assert "| sandbox errors (runs left out) | 1 |" in card
    assert "| decided by execution | 1 |" in card and "| decided by votes | 4 |" in card
    assert "| beta | 2 | 2 | 100.0% | 1.000 |" in card
    assert "| alpha | 3 | 1 | 33.3% | 0.750 |" in card
    assert "| gamma | 2 | 0 | 0.0% | 0.000 |" in card
    assert card.index("| beta | 2 |") < card.index("| alpha | 3 |") < card.index("| gamma | 2 |")
    assert "`test_backed`" in card  # the fields of the evidence are described
    plain = render_card(samples[3:4], fmt="dpo", bootstrap_n=0)
    assert "## Execution" not in plain and "`test_backed`" not in plain


def test_card_of_a_verified_only_export_says_so(samples):
    card = render_card(only_test_backed(samples), fmt="sft", bootstrap_n=0, verified_from=5)
    assert "Only test-backed samples: the 2 of 5 samples" in card


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_export_command_verified_only(tmp_path: Path, samples, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "samples-w-00000.jsonl").write_bytes(b"".join(encode(s) + b"\n" for s in samples))
    out = tmp_path / "release" / "dpo.jsonl"
    argv = ["export", "--format", "dpo", "--out", str(out), "--data-dir", str(data)]
    assert run_cli([*argv, "--verified-only", "--card"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote 2 dpo records from 2 test-backed of 5 samples ({data}) to {out}" in printed
    assert [r["id"] for r in read_export(out)] == [samples[0].id, samples[1].id]
    assert all(r["test_backed"] for r in read_export(out))
    assert "the 2 of 5 samples" in (out.parent / "README.md").read_text()


def test_export_command_verified_only_without_test_backed_samples(tmp_path: Path, samples, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "samples-w-00000.jsonl").write_bytes(b"".join(encode(s) + b"\n" for s in samples[2:]))
    out = tmp_path / "sft.jsonl"
    argv = ["export", "--format", "sft", "--out", str(out), "--data-dir", str(data)]
    assert run_cli([*argv, "--verified-only"]) == 2
    err = capsys.readouterr().err
    assert "none of the 3 samples" in err and "(2 have execution results)" in err
    assert err.count("\n") == 1 and not out.exists()


# -- leaderboard columns ----------------------------------------------------------------------

ROWS = [
    Row(model="beta", elo=1010.0, bt=1020.0, bt_lower=None, bt_upper=None, votes=6),
    Row(model="alpha", elo=990.0, bt=980.0, bt_lower=None, bt_upper=None, votes=4),
    Row(model="zeta", elo=1000.0, bt=1000.0, bt_lower=None, bt_upper=None, votes=2),
]


def test_leaderboard_table_adds_pass_rate_columns(samples):
    text = leaderboard_table(ROWS, pass_rates(samples))
    lines = text.splitlines()
    assert lines[0].split() == ["rank", "model", "bt", "95%", "ci", "elo", "votes", "pass%", "runs"]
    assert lines[1].split()[-2:] == ["100.0%", "2"]
    assert lines[2].split()[-2:] == ["33.3%", "3"]
    assert lines[3].split()[-2:] == ["-", "0"]  # never ran
    # the shared columns are format_table's
    assert [line.split()[:6] for line in lines] == [
        line.split()[:6] for line in format_table(ROWS).splitlines()
    ]


def test_leaderboard_table_without_execution_is_format_table():
    assert leaderboard_table(ROWS, {}) == format_table(ROWS)


def test_display_shows_pass_rate_columns_when_answers_ran(samples):
    from rich.console import Console

    from warriorcoder.launcher.display import render
    from warriorcoder.launcher.status import Snapshot

    def shown(snap: Snapshot) -> str:
        console = Console(width=160, record=True)
        console.print(render(snap))
        return console.export_text()

    snap = Snapshot(samples=5, leaderboard=ROWS, pass_rates=pass_rates(samples))
    text = shown(snap)
    assert "pass%" in text and "runs" in text
    beta = next(line for line in text.splitlines() if " beta " in line)
    assert "100.0%" in beta
    assert "pass%" not in shown(Snapshot(samples=5, leaderboard=ROWS))
    assert "no votes yet" in shown(Snapshot(pass_rates=pass_rates(samples)))
    entries = snap.to_json()["leaderboard"]
    assert entries[1]["runs"] == 3 and entries[1]["pass_rate"] == pytest.approx(1 / 3)
    assert "runs" not in entries[2]


def test_leaderboard_json_gains_the_execution_fields(samples, monkeypatch, capsys):
    from warriorcoder.data import live
    from warriorcoder.proto.state import Ratings

    state = live.LiveState(samples=samples, ratings=Ratings(), rejections={})

    async def fake_read_live(cfg: Any) -> live.LiveState:
        return state

    monkeypatch.setattr(live, "read_live", fake_read_live)
    assert run_cli(["leaderboard", "--nats", "nats://x:1", "--bootstrap", "0", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)["models"]
    assert models["alpha"]["runs"] == 3 and models["alpha"]["passed_all"] == 1
    assert models["alpha"]["mean_pass_fraction"] == pytest.approx(0.75)
    assert run_cli(["leaderboard", "--nats", "nats://x:1", "--bootstrap", "0"]) == 0
    assert "pass%" in capsys.readouterr().out
