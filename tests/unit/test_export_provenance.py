"""Exports by provenance (``--where``), TRL's conversational preference format (``trl``) and the
provenance section of the dataset card."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from msgspec.structs import replace

from tests.helpers import SP
from tests.unit.test_export import make_samples
from warriorcoder.data.card import render_card
from warriorcoder.data.commands import register
from warriorcoder.data.export import ExportError, arrow_schema, export, read_export, records
from warriorcoder.data.provenance import parse_where, provenance_fields, select
from warriorcoder.proto.messages import (
    ModelStamp,
    Provenance,
    Sample,
    SamplingParams,
    StageStamp,
    encode,
)

JUDGE_SP = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=64)


def _provenance(config: str, version: str | None, *, model: str = "qwen2.5-coder") -> Provenance:
    stamp = StageStamp(
        stage="responder",
        config_hash=config,
        project_version="1.2.0",
        prompt_set="2",
        models={model: ModelStamp(triton_model="qwen", version=version, chat_template="sha256:ab")},
    )
    return Provenance(
        config_hash=config,
        project_version="1.2.0",
        prompt_set="2",
        judge_mode="both",
        models=dict(stamp.models),
        sampling={"mining": SP, "judge.gamma": JUDGE_SP},
        stages={"responder": stamp},
    )


@pytest.fixture
def samples() -> list[Sample]:
    """Three samples: two under config c1 (served versions 1 and 2), one under c2; and one
    sample of an earlier version, without provenance."""
    base = make_samples()
    extra = replace(base[0], id="f" * 32)
    return [
        replace(base[0], provenance=_provenance("c1", "1")),
        replace(base[1], provenance=_provenance("c1", "2")),
        replace(base[2], provenance=_provenance("c2", None)),
        extra,
    ]


# -- the flat view and --where ------------------------------------------------------------------


def test_provenance_fields_are_dotted_keys_with_text_values(samples):
    flat = provenance_fields(samples[0])
    assert flat["config_hash"] == "c1"
    assert flat["judge_mode"] == "both"
    # a model name with a dot keeps it: the key is matched whole
    assert flat["models.qwen2.5-coder.triton_model"] == "qwen"
    assert flat["models.qwen2.5-coder.version"] == "1"
    assert flat["sampling.judge.gamma.temperature"] == "0.0"
    assert flat["sampling.mining.max_tokens"] == "128"
    assert flat["stages.responder.config_hash"] == "c1"
    assert provenance_fields(samples[2])["models.qwen2.5-coder.version"] == "null"
    assert provenance_fields(samples[3]) == {}


def test_where_selects_by_every_key_and_any_value_of_a_key(samples):
    ids = [s.id for s in samples]
    assert [s.id for s in select(samples, parse_where(["config_hash=c1"]))] == ids[:2]
    two_keys = parse_where(["config_hash=c1", "models.qwen2.5-coder.version=2"])
    assert [s.id for s in select(samples, two_keys)] == [ids[1]]
    either = parse_where(["config_hash=c1", "config_hash=c2"])
    assert [s.id for s in select(samples, either)] == ids[:3]  # never the one without provenance
    assert select(samples, parse_where(["config_hash=c3"])) == []
    assert select(samples, {}) == samples


def test_where_errors_name_the_problem(samples):
    with pytest.raises(ExportError, match="expected KEY=VALUE"):
        parse_where(["config_hash"])
    with pytest.raises(ExportError, match="expected KEY=VALUE"):
        parse_where(["=c1"])
    with pytest.raises(
        ExportError, match=r"unknown --where key 'config_hsh'; did you mean config_hash"
    ):
        select(samples, parse_where(["config_hsh=c1"]))
    with pytest.raises(ExportError, match=r"unknown --where key 'models.llama.version'"):
        select(samples, parse_where(["models.llama.version=1"]))
    # a top-level key is known even when no sample carries provenance yet
    assert select(samples[3:], parse_where(["config_hash=c1"])) == []


# -- trl ----------------------------------------------------------------------------------------


def test_trl_records_are_tlrs_conversational_preference_format(samples):
    s = samples[0]
    [rec, *_] = records(samples, "trl")
    assert rec == {
        "id": s.id,
        "prompt": [{"role": "user", "content": s.prompt}],
        "chosen": [{"role": "assistant", "content": s.chosen}],
        "rejected": [{"role": "assistant", "content": s.rejected}],
        "test_backed": False,
    }
    backed = replace(s, test_backed=True)
    assert records([backed], "trl", evidence=False)[0]["test_backed"] is True


def _is_conversational(example: dict) -> bool:
    """TRL's ``trl.data_utils.is_conversational`` (trl/data_utils.py, v0.12-v0.24): a supported
    key holds a list whose first item is a dict with ``role`` and ``content``."""
    keys = {k for k in example if k in ("prompt", "chosen", "rejected", "completion", "messages")}
    for key in keys:  # TRL checks one arbitrary key of these: every one must pass
        value = example[key]
        if not (isinstance(value, list) and isinstance(value[0], dict)):
            return False
        if not {"role", "content"} <= set(value[0]):
            return False
    return bool(keys)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_trl_exports_round_trip_and_are_conversational(tmp_path: Path, samples, suffix):
    out = tmp_path / f"trl{suffix}"
    assert export(samples, "trl", out) == 4
    back = read_export(out)
    assert back == records(samples, "trl")
    assert all(_is_conversational(r) for r in back)
    if suffix == ".parquet":
        assert pq.read_schema(out).equals(arrow_schema("trl"))


def test_trl_export_of_test_backed_samples_only(tmp_path: Path, samples):
    kept = [replace(samples[1], test_backed=True)]
    out = tmp_path / "trl.jsonl"
    assert export([samples[0], *kept], "trl", out, verified_only=True) == 1
    assert [r["id"] for r in read_export(out)] == [samples[1].id]


def test_hf_exports_refuse_a_file_path_and_a_foreign_folder(tmp_path: Path, samples):
    with pytest.raises(ExportError, match="writes a datasets folder"):
        export(samples, "hf", tmp_path / "x.parquet")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="exists and is not a datasets folder"):
        export(samples, "hf", foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


# -- the card -----------------------------------------------------------------------------------


def test_the_card_lists_provenance_with_counts_per_config_hash(samples):
    card = render_card(samples, bootstrap_n=0)
    section = card.split("## Provenance", 1)[1]
    assert "| `c1` | 2 | 1.2.0 (2) | 2 (2) | both (2) |" in section
    assert "| `c2` | 1 | 1.2.0 (1) | 2 (1) | both (1) |" in section
    assert "| (none: an earlier version) | 1 | - | - | - |" in section
    assert "| qwen2.5-coder | qwen | `sha256:ab` | 1 (1), 2 (1), unknown (1) |" in section
    assert "| judge.gamma | 0.0 | 1.0 | 64 | 3 |" in section
    assert "--where config_hash=<hash>" in section


def test_a_card_without_provenance_says_so():
    card = render_card(make_samples(), bootstrap_n=0)
    assert "No provenance recorded (samples of an earlier version)." in card


# -- the command --------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="warriorcoder")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def data_dir(tmp_path: Path, samples) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "samples-w-00000.jsonl").write_bytes(b"".join(encode(s) + b"\n" for s in samples))
    return data


def test_export_command_filters_by_provenance(tmp_path: Path, data_dir, samples, capsys):
    out = tmp_path / "trl.jsonl"
    argv = ["export", "--format", "trl", "--out", str(out), "--data-dir", str(data_dir)]
    assert run_cli([*argv, "--where", "config_hash=c1", "--card"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 trl records from 2 samples" in printed and "where config_hash=c1" in printed
    assert [r["id"] for r in read_export(out)] == [samples[0].id, samples[1].id]
    card = (tmp_path / "README.md").read_text()
    assert "| `c1` | 2 |" in card and "`c2`" not in card


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("config_hash=nope", "no sample of the 4 in"),
        ("modles.qwen.version=1", "unknown --where key 'modles.qwen.version'"),
        ("config_hash", "expected KEY=VALUE"),
    ],
)
def test_export_command_where_errors_exit_2(tmp_path, data_dir, capsys, where, message):
    out = tmp_path / "x.jsonl"
    argv = ["export", "--format", "sft", "--out", str(out), "--data-dir", str(data_dir)]
    assert run_cli([*argv, "--where", where]) == 2
    err = capsys.readouterr().err
    assert err.startswith("warriorcoder: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_battles_export_keeps_the_provenance(tmp_path: Path, samples):
    out = tmp_path / "battles.jsonl"
    export(samples, "battles", out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["provenance"]["config_hash"] == "c1"
    assert rows[3].get("provenance") is None
    parquet = tmp_path / "battles.parquet"
    export(samples, "battles", parquet)
    back = read_export(parquet)
    assert back[0]["provenance"]["models"]["qwen2.5-coder"]["version"] == "1"
