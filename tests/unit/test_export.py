"""Exports of samples (sft, dpo, battles, votes; JSONL and Parquet), sources, the dataset card and
the ``export`` command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import pytest
import yaml

from tests.helpers import arena_settings, judgement
from warriorcoder.arena.decide import decide
from warriorcoder.data.card import render_card, write_card
from warriorcoder.data.commands import register
from warriorcoder.data.export import (
    ExportError,
    arrow_schema,
    export,
    read_export,
    records,
    samples_from_dir,
)
from warriorcoder.data.votes import ArenaVote, votes_from_samples
from warriorcoder.proto.messages import Sample, decode, encode

SPECS = [
    # (judge votes, attacker, defender, instruction)
    (
        ["attacker", "attacker", "defender"],
        "alpha",
        "beta",
        "Write a Python function summing a list.",
    ),
    (["defender", "tie", "invalid"], "beta", "gamma", "Write a Python class for a bounded stack."),
    (["attacker", "tie"], "gamma", "alpha", "Write a Python generator of prime numbers."),
]


def make_samples() -> list[Sample]:
    scoring = arena_settings().scoring
    out = []
    for n, (winners, attacker, defender, text) in enumerate(SPECS):
        s = decide(
            judgement(winners, attacker=attacker, defender=defender, text=text),
            1000.0,
            1000.0,
            scoring,
        )
        assert s is not None
        out.append(msgspec.structs.replace(s, created_at=1_700_000_000.0 + n))
    out[2] = msgspec.structs.replace(out[2], language="Rust")
    return out


@pytest.fixture
def samples() -> list[Sample]:
    return make_samples()


def test_votes_from_samples_maps_attacker_to_model_a(samples):
    votes = votes_from_samples(samples)
    assert [(v.model_a, v.model_b, v.winner, v.judge) for v in votes] == [
        ("alpha", "beta", "model_a", "judge0"),
        ("alpha", "beta", "model_a", "judge1"),
        ("alpha", "beta", "model_b", "judge2"),
        ("beta", "gamma", "model_b", "judge0"),
        ("beta", "gamma", "tie", "judge1"),  # the invalid vote (judge2) is skipped
        ("gamma", "alpha", "model_a", "judge0"),
        ("gamma", "alpha", "tie", "judge1"),
    ]
    assert [v.battle_id for v in votes] == [samples[0].id] * 3 + [samples[1].id] * 2 + [
        samples[2].id
    ] * 2


def test_records_of_each_format(samples):
    s = samples[0]
    [sft, *_] = records(samples, "sft")
    assert sft == {
        "id": s.id,
        "messages": [
            {"role": "user", "content": s.prompt},
            {"role": "assistant", "content": s.chosen},
        ],
    }
    [dpo, *_] = records(samples, "dpo")
    assert dpo == {"id": s.id, "prompt": s.prompt, "chosen": s.chosen, "rejected": s.rejected}
    assert s.chosen != s.rejected
    [battle, *_] = records(samples, "battles")
    assert battle["type"] == "warriorcoder.v1.sample"
    assert msgspec.convert(battle, Sample) == s
    assert len(records(samples, "votes")) == 7


@pytest.mark.parametrize("fmt", ["sft", "dpo", "battles", "votes"])
def test_jsonl_export_round_trips(tmp_path: Path, samples, fmt):
    out = tmp_path / "out" / f"{fmt}.jsonl"
    n = export(samples, fmt, out)
    expected = records(samples, fmt)
    assert n == len(expected)
    assert read_export(out) == expected
    table = pa_json.read_json(out)  # pyarrow reads it back as JSON lines
    assert table.num_rows == n
    assert set(table.column_names) == set(expected[0])
    assert not list(out.parent.glob(".*tmp"))  # no temporary file left behind


def test_battles_jsonl_is_byte_identical_to_the_shards(tmp_path: Path, samples):
    out = tmp_path / "battles.jsonl"
    export(samples, "battles", out)
    lines = out.read_bytes().splitlines()
    assert lines == [encode(s) for s in samples]
    assert [decode(line, Sample) for line in lines] == samples


def test_votes_jsonl_is_read_by_read_votes(tmp_path: Path, samples):
    from warriorcoder.data.votes import read_votes

    out = tmp_path / "votes.jsonl"
    export(samples, "votes", out)
    assert read_votes(out) == votes_from_samples(samples)


@pytest.mark.parametrize("fmt", ["sft", "dpo", "battles", "votes"])
def test_parquet_export_round_trips(tmp_path: Path, samples, fmt):
    out = tmp_path / f"{fmt}.parquet"
    assert export(samples, fmt, out) == len(records(samples, fmt))
    table = pq.read_table(out)
    assert table.schema.equals(arrow_schema(fmt))
    rows = table.to_pylist(maps_as_pydicts="strict")
    assert rows == records(samples, fmt)
    assert read_export(out) == rows
    if fmt == "battles":
        assert [msgspec.convert(r, Sample) for r in rows] == samples
        ratings = table.schema.field("ratings_before").type
        assert pa.types.is_map(ratings) and ratings.item_type == pa.float64()
    if fmt == "votes":
        assert [msgspec.convert(r, ArenaVote) for r in rows] == votes_from_samples(samples)


def test_battles_schema_has_every_sample_field():
    names = arrow_schema("battles").names
    assert names == ["type", *(f.encode_name for f in msgspec.structs.fields(Sample))]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_empty_export(tmp_path: Path, suffix):
    out = tmp_path / f"sft{suffix}"
    assert export([], "sft", out) == 0
    assert read_export(out) == []


def test_export_errors(tmp_path: Path, samples):
    with pytest.raises(ExportError, match=r"unsupported suffix '\.csv', use \.jsonl or \.parquet"):
        export(samples, "sft", tmp_path / "out.csv")
    with pytest.raises(ExportError, match=r"unsupported suffix '\(none\)'"):
        export(samples, "sft", tmp_path / "out")
    with pytest.raises(ExportError, match=r"unknown export format 'alpaca': use one of sft, dpo"):
        export(samples, "alpaca", tmp_path / "out.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_sft_jsonl_loads_with_hugging_face_datasets(tmp_path: Path, samples, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is not installed")
    out = tmp_path / "sft.jsonl"
    export(samples, "sft", out)
    ds = datasets.load_dataset(
        "json", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert ds.num_rows == 3
    assert ds.column_names == ["id", "messages"]
    assert ds[0]["messages"] == [
        {"role": "user", "content": samples[0].prompt},
        {"role": "assistant", "content": samples[0].chosen},
    ]
    messages = ds.features["messages"]  # a list of {role, content} (older versions: [{...}])
    turn = messages.feature if hasattr(messages, "feature") else messages[0]
    assert turn["role"].dtype == "string" and turn["content"].dtype == "string"
    pq_out = tmp_path / "dpo.parquet"
    export(samples, "dpo", pq_out)
    dpo = datasets.load_dataset(
        "parquet", data_files=str(pq_out), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert dpo.column_names == ["id", "prompt", "chosen", "rejected"]
    assert dpo[1]["chosen"] == samples[1].chosen


# -- sources ------------------------------------------------------------------------------------


def test_samples_from_dir_reads_every_shard_once_oldest_first(tmp_path: Path, samples):
    data = tmp_path / "data"
    data.mkdir()
    (data / "samples-w1-00000.jsonl").write_bytes(
        encode(samples[2]) + b"\n" + encode(samples[0]) + b"\n"
    )
    (data / "samples-w2-00000.jsonl").write_bytes(
        encode(samples[1]) + b"\n" + encode(samples[0]) + b"\n" + b'{"torn": '
    )
    (data / "notes.jsonl").write_text("not a shard\n")
    assert samples_from_dir(data) == samples
    with pytest.raises(ExportError, match="no such data directory"):
        samples_from_dir(tmp_path / "missing")


# -- dataset card -------------------------------------------------------------------------------


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_beside_a_data_file(tmp_path: Path, samples):
    out = tmp_path / "sft.jsonl"
    export(samples, "sft", out)
    readme = write_card(out, samples, {"too_short": 5, "duplicate": 7}, fmt="sft")
    assert readme == tmp_path / "README.md"
    text = readme.read_text()
    meta = front_matter(text)
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "sft.jsonl"}]}
    ]
    assert meta["task_categories"] == ["text-generation"]
    assert "code" in meta["tags"]
    assert meta["license"] == "apache-2.0"
    assert meta["size_categories"] == ["n<1K"]
    assert "| samples (battles) | 3 |" in text
    assert "| judge votes | 8 |" in text
    assert "| valid votes | 7 |" in text
    assert "| invalid votes | 1 |" in text
    assert "| tie votes | 2 |" in text
    assert "| Python | 2 |" in text and "| Rust | 1 |" in text
    # winners: alpha wins battle 1 (attacker), gamma battle 3 (attacker); battle 2 by scores
    assert f"| {samples[0].winner} |" in text
    assert "| attacker \\ defender | alpha | beta | gamma |" in text
    assert "| alpha | 0 | 1 | 0 |" in text
    assert "## Leaderboard" in text and "From the 7 valid judge votes" in text
    for model in ("alpha", "beta", "gamma"):
        assert f"| {model} | " in text
    assert "- competitors: alpha, beta, gamma" in text
    assert "- judges: judge0, judge1, judge2" in text
    assert "## Filter statistics" in text
    assert "| duplicate | 7 |" in text and "| total | 12 |" in text
    assert "`sft`: `id`, `messages`" in text


def test_card_for_a_directory_lists_every_data_file(tmp_path: Path, samples):
    export(samples, "sft", tmp_path / "sft.jsonl")
    export(samples, "dpo", tmp_path / "dpo.parquet")
    readme = write_card(tmp_path, samples)
    meta = front_matter(readme.read_text())
    assert [(c["config_name"], c["data_files"][0]["path"]) for c in meta["configs"]] == [
        ("dpo", "dpo.parquet"),
        ("sft", "sft.jsonl"),
    ]
    assert meta["configs"][0]["default"] is True
    assert "## Filter statistics" not in readme.read_text()


def test_card_of_no_samples_and_determinism(samples):
    empty = render_card([], data_files=["x.jsonl"])
    assert "| samples (battles) | 0 |" in empty and "No valid judge votes." in empty
    assert render_card(samples, {"a": 1}) == render_card(samples, {"a": 1})


# -- the export command -------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="warriorcoder")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_export_command_from_a_data_dir_with_card(tmp_path: Path, samples, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "samples-w-00000.jsonl").write_bytes(b"".join(encode(s) + b"\n" for s in samples))
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"too_long": 2}))
    out = tmp_path / "release" / "dpo.parquet"
    argv = ["export", "--format", "dpo", "--out", str(out), "--data-dir", str(data), "--card"]
    assert run_cli([*argv, "--filter-stats", str(stats)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote 3 dpo records from 3 samples ({data}) to {out}" in printed
    assert read_export(out) == records(samples, "dpo")
    card = (out.parent / "README.md").read_text()
    assert "path: dpo.parquet" in card and "| too_long | 2 |" in card


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "sft", "--out", "{tmp}/x.csv", "--data-dir", "{tmp}"], "unsupported suffix"),
        (["--format", "sft", "--out", "{tmp}/x.jsonl", "--data-dir", "{tmp}/no"], "no such data"),
        (
            ["--format", "sft", "--out", "{tmp}/x.jsonl", "--nats", "nats://127.0.0.1:1"],
            "cannot connect to NATS at nats://127.0.0.1:1",
        ),
    ],
)
def test_export_command_errors_exit_2(tmp_path: Path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert run_cli(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("warriorcoder: ") and message in err and err.count("\n") == 1


def test_export_command_takes_the_arena_data_dir_of_up(tmp_path: Path, samples, capsys):
    """`up --data-dir DIR` and `export --data-dir DIR` take the same DIR (shards in DIR/samples)."""
    arena = tmp_path / "arena-data"
    (arena / "samples").mkdir(parents=True)
    (arena / "nats").mkdir()
    (arena / "samples" / "samples-w-00000.jsonl").write_bytes(
        b"".join(encode(s) + b"\n" for s in samples)
    )
    out = tmp_path / "sft.jsonl"
    assert run_cli(["export", "--format", "sft", "--out", str(out), "--data-dir", str(arena)]) == 0
    assert f"from 3 samples ({arena / 'samples'})" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 3


def test_export_command_fails_when_the_source_holds_no_samples(tmp_path: Path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "sft.jsonl"
    assert run_cli(["export", "--format", "sft", "--out", str(out), "--data-dir", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"no samples in {empty}" in err and err.count("\n") == 1
    assert not out.exists()


def test_export_command_needs_exactly_one_source(tmp_path: Path):
    with pytest.raises(SystemExit):
        run_cli(["export", "--format", "sft", "--out", str(tmp_path / "x.jsonl")])
    with pytest.raises(SystemExit):
        run_cli(
            ["export", "--format", "xml", "--out", str(tmp_path / "x.jsonl"), "--data-dir", "."]
        )
