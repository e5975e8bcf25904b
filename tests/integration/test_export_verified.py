"""Execution evidence through the real shard files: samples written by the aggregator's
``ShardWriter``, exported with ``warriorcoder export --verified-only`` (JSONL and Parquet, with a
card), and the exported tests re-run with pytest on the exported answers, as a user would."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
from msgspec.structs import replace

from tests.helpers import judgement
from warriorcoder.arena.decide import decide
from warriorcoder.data.commands import register
from warriorcoder.data.export import read_export
from warriorcoder.proto.messages import ChallengeTests, Execution, RunResult, Sample
from warriorcoder.runtime.settings import ScoringSettings
from warriorcoder.runtime.shards import ShardWriter

pytestmark = pytest.mark.integration

TEST_CODE = """from solution import *


def test_small():
    assert add(1, 2) == 3


def test_negative():
    assert add(-1, -2) == -3
"""
TESTS = ChallengeTests(
    writer="gamma",
    language="Python",
    code=TEST_CODE,
    tests=["test_small", "test_negative"],
    usable=True,
    asked=1,
)
RIGHT = "Add them:\n```python\ndef add(a, b):\n    return a + b\n```"
WRONG = "Use abs:\n```python\ndef add(a, b):\n    return abs(a) + abs(b)\n```"


def make(
    n: int, votes: list[str], answers: tuple[str, str], runs: tuple[int, int] | None
) -> Sample:
    j = judgement(
        votes,
        attacker_text=answers[0],
        defender_text=answers[1],
        text=f"Write a Python function add(a, b), variant {n}.",
    )
    if runs is not None:
        ex = Execution(
            attacker=RunResult(status="ran", passed=runs[0], failed=2 - runs[0], total=2),
            defender=RunResult(status="ran", passed=runs[1], failed=2 - runs[1], total=2),
            sandbox="bubblewrap 0.8.0",
            verified_at=2.0,
        )
        j = replace(j, battle=replace(j.battle, tests=TESTS, execution=ex))
    s = decide(j, 1000.0, 1000.0, ScoringSettings())
    assert s is not None
    return replace(s, created_at=1_700_000_000.0 + n)


SAMPLES = [
    make(0, ["attacker", "defender"], (WRONG, RIGHT), (1, 2)),  # tie: the tests pick RIGHT
    make(1, ["attacker"], (WRONG, RIGHT), (1, 2)),  # the votes pick WRONG: not test-backed
    make(2, ["defender"], (WRONG, RIGHT), None),  # unverified
]


async def write_shards(data: Path) -> None:
    writer = ShardWriter(data, max_per_shard=2)  # two shards
    await writer.open()
    try:
        for s in SAMPLES:
            assert await writer.write(s)
    finally:
        await writer.close()


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def pytest_on(tmp: Path, answer: str, tests: str) -> int:
    """Save the answer's code as solution.py beside the exported tests and run pytest there."""
    [code] = re.findall(r"```python\n(.*?)```", answer, re.S)
    tmp.mkdir()
    (tmp / "solution.py").write_text(code)
    (tmp / "test_solution.py").write_text(tests)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp)],
        cwd=tmp,
        capture_output=True,
        timeout=120,
    )
    return done.returncode


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
async def test_verified_only_export_from_real_shards_reruns(tmp_path: Path, suffix, capsys):
    data = tmp_path / "data"
    await write_shards(data)
    assert len(list(data.glob("*.jsonl"))) == 2
    out = tmp_path / "release" / f"dpo{suffix}"
    argv = ["export", "--format", "dpo", "--out", str(out), "--data-dir", str(data)]
    assert run_cli([*argv, "--verified-only", "--card"]) == 0
    assert "from 1 test-backed of 3 samples" in capsys.readouterr().out
    [rec] = read_export(out)
    assert rec["id"] == SAMPLES[0].id and rec["test_backed"] and rec["decided_by"] == "execution"
    assert rec["chosen"] == RIGHT and rec["rejected"] == WRONG
    assert (rec["execution"]["chosen"]["passed"], rec["execution"]["rejected"]["passed"]) == (2, 1)
    # the exported tests, re-run: the chosen answer passes them, the rejected one fails
    assert pytest_on(tmp_path / "chosen", rec["chosen"], rec["tests"]["code"]) == 0
    assert pytest_on(tmp_path / "rejected", rec["rejected"], rec["tests"]["code"]) == 1
    card = (out.parent / "README.md").read_text()
    assert "Only test-backed samples: the 1 of 3 samples" in card
    assert "## Execution" in card


async def test_full_sft_export_from_real_shards_marks_what_the_tests_back(tmp_path: Path):
    data = tmp_path / "data"
    await write_shards(data)
    out = tmp_path / "sft.jsonl"
    assert run_cli(["export", "--format", "sft", "--out", str(out), "--data-dir", str(data)]) == 0
    rows = read_export(out)
    assert [r["test_backed"] for r in rows] == [True, False, False]
    assert [r["tests"] is None for r in rows] == [False, False, True]
    assert rows[1]["messages"][1]["content"] == WRONG  # the votes' choice, kept and marked
