"""The ``hf`` export: a Hugging Face ``datasets`` folder read back with ``datasets.load_from_disk``
(columns for TRL's SFTTrainer and DPOTrainer, the test-backed flag, the card inside), written by
``warriorcoder export`` from the aggregator's real shard files, filtered by provenance; and the
model version a real Triton reports reaching a stage's stamp."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from msgspec.structs import replace

from tests.helpers import SP, arena_settings
from tests.integration.test_export_verified import SAMPLES
from warriorcoder.data.commands import register
from warriorcoder.data.export import export, read_export, records
from warriorcoder.proto.messages import Provenance, Sample
from warriorcoder.runtime.provenance import Stamper
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.shards import ShardWriter
from warriorcoder.runtime.triton import TritonPool

pytestmark = pytest.mark.integration

datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is not installed")


def _with_config(s: Sample, h: str) -> Sample:
    p = Provenance(config_hash=h, project_version="1", prompt_set="2", judge_mode="both")
    return replace(s, provenance=p)


# two under config c1 (one test-backed), one under c2
STAMPED = [
    _with_config(SAMPLES[0], "c1"),
    _with_config(SAMPLES[1], "c1"),
    _with_config(SAMPLES[2], "c2"),
]


def test_the_folder_loads_with_load_from_disk_and_has_both_trainers_columns(tmp_path: Path):
    out = tmp_path / "ds"
    assert export(STAMPED, "hf", out) == 3
    ds = datasets.load_from_disk(str(out))
    assert ds.num_rows == 3
    for col in ("id", "messages", "prompt", "chosen", "rejected", "test_backed", "config_hash"):
        assert col in ds.column_names
    rows = ds.to_list()
    assert rows == records(STAMPED, "hf")
    first = rows[0]
    s = STAMPED[0]
    assert first["messages"] == [
        {"role": "user", "content": s.prompt},
        {"role": "assistant", "content": s.chosen},
    ]
    assert first["prompt"] == [{"role": "user", "content": s.prompt}]
    assert first["chosen"] == [{"role": "assistant", "content": s.chosen}]
    assert first["rejected"] == [{"role": "assistant", "content": s.rejected}]
    assert (
        [r["test_backed"] for r in rows]
        == [s.test_backed for s in STAMPED]
        == [
            True,
            False,
            False,
        ]
    )
    assert [r["config_hash"] for r in rows] == ["c1", "c1", "c2"]
    # the tests travel with the rows (execution evidence), to be re-run
    assert s.tests is not None and first["tests"]["code"] == s.tests.code
    dpo = ds.select_columns(["prompt", "chosen", "rejected"])
    assert dpo.column_names == ["prompt", "chosen", "rejected"]


def test_a_new_export_replaces_the_folder(tmp_path: Path):
    out = tmp_path / "ds"
    export(STAMPED, "hf", out)
    assert export(STAMPED[:1], "hf", out) == 1
    assert datasets.load_from_disk(str(out)).num_rows == 1
    assert read_export(out) == records(STAMPED[:1], "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary left


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


async def test_export_command_writes_the_folder_with_its_card(tmp_path: Path, capsys):
    data = tmp_path / "data"
    writer = ShardWriter(data, max_per_shard=2)
    await writer.open()
    try:
        for s in STAMPED:
            assert await writer.write(s)
    finally:
        await writer.close()
    out = tmp_path / "release"
    argv = ["export", "--format", "hf", "--out", str(out), "--data-dir", str(data)]
    assert run_cli([*argv, "--where", "config_hash=c1", "--verified-only"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 1 hf records from 1 test-backed of 2 samples" in printed
    ds = datasets.load_from_disk(str(out))
    assert ds["id"] == [STAMPED[0].id] and ds["test_backed"] == [True]
    card = (out / "README.md").read_text()
    assert "# WarriorCoder Arena samples" in card and "| `c1` | 1 |" in card
    assert "configs:" not in card  # no data files for the Hub's loader: the folder is Arrow


async def test_a_stamp_records_the_version_a_real_triton_served(triton_url):
    s = arena_settings(triton_url)
    stamper = Stamper("responder", s, Roster.from_settings(s, ["alpha"]), prompt_set="2")
    async with TritonPool({"alpha": s.models["alpha"]}) as pool:
        gen = await stamper.watch(pool).generate("alpha", "Say hi.", SP, role="response")
    # PyTriton serves each model as version 1; Triton names it in every response
    assert gen.model_version == "1"  # type: ignore[attr-defined]
    assert stamper.stamp(["alpha"]).models["alpha"].version == "1"
