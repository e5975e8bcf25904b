"""Exporting from the samples stream of a real nats-server: every sample once, then stop."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import msgspec
import pytest

from tests.helpers import arena_settings, judgement
from warriorcoder.arena.decide import decide
from warriorcoder.data.commands import register
from warriorcoder.data.export import ExportError, read_export, records, samples_from_nats
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Sample
from warriorcoder.runtime.bus import Bus, connect
from warriorcoder.runtime.settings import NatsSettings

pytestmark = pytest.mark.integration


def make_samples(n: int) -> list[Sample]:
    scoring = arena_settings().scoring
    pairs = [("alpha", "beta"), ("beta", "gamma"), ("gamma", "alpha")]
    out = []
    for i in range(n):
        attacker, defender = pairs[i % 3]
        j = judgement(
            ["attacker", "tie"] if i % 2 else ["defender"],
            attacker=attacker,
            defender=defender,
            text=f"Write a Python function number {i} that parses a CSV line.",
        )
        s = decide(j, 1000.0, 1000.0, scoring)
        assert s is not None
        out.append(msgspec.structs.replace(s, created_at=1_700_000_000.0 + i))
    return out


@pytest.fixture
async def bus(nats_url):
    cfg = NatsSettings(url=nats_url)
    nc = await connect(cfg)
    b = Bus(nc, cfg, stage="aggregator")
    await b.ensure_topology()
    yield b
    await nc.drain()


async def test_samples_from_nats_returns_every_sample_once_and_stops(bus, nats_url):
    samples = make_samples(5)
    for s in samples:
        await bus.publish(subjects.SAMPLES, s, msg_id=s.id)
    await bus.publish(subjects.SAMPLES, samples[1], msg_id=samples[1].id)  # de-duplicated by NATS
    await bus.publish(subjects.SAMPLES, samples[2], msg_id="another-id")  # stored twice
    await bus.js.publish(subjects.SAMPLES, b'{"not": "a sample"}')  # skipped
    info = await bus.js.stream_info(subjects.STREAM_SAMPLES)
    assert info.state.messages == 7

    start = time.monotonic()
    got = await samples_from_nats(nats_url, fetch_timeout_s=10.0, batch=2)
    assert time.monotonic() - start < 5.0  # caught up, not waiting out the fetch timeout
    assert got == samples

    info = await bus.js.stream_info(subjects.STREAM_SAMPLES)
    assert info.state.consumer_count == 0  # the export's consumer is gone
    assert info.state.messages == 7  # and nothing was removed


async def test_samples_from_nats_of_an_empty_stream(bus, nats_url):
    start = time.monotonic()
    assert await samples_from_nats(nats_url, fetch_timeout_s=10.0) == []
    assert time.monotonic() - start < 5.0


async def test_samples_from_nats_without_the_stream(nats_url):
    with pytest.raises(ExportError, match=f"no stream {subjects.STREAM_SAMPLES}"):
        await samples_from_nats(nats_url)


async def test_samples_from_nats_unreachable():
    with pytest.raises(ExportError, match=r"cannot connect to NATS at nats://127\.0\.0\.1:1"):
        await samples_from_nats("nats://127.0.0.1:1")


async def test_export_command_reads_nats(bus, nats_url, tmp_path: Path, capsys):
    samples = make_samples(4)
    for s in samples:
        await bus.publish(subjects.SAMPLES, s, msg_id=s.id)
    parser = argparse.ArgumentParser(prog="warriorcoder")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "sft.jsonl"
    args = parser.parse_args(
        ["export", "--format", "sft", "--out", str(out), "--nats", nats_url, "--card"]
    )
    # The command runs its own event loop (asyncio.run), as it will from the CLI.
    rc = await asyncio.to_thread(args.func, args)
    assert rc == 0
    assert f"wrote 4 sft records from 4 samples ({nats_url})" in capsys.readouterr().out
    assert read_export(out) == records(samples, "sft")
    assert "| samples (battles) | 4 |" in (tmp_path / "README.md").read_text()
