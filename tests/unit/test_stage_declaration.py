"""Stage declarations and their registry, the ask helper, and the fakes' upstream semantics."""

from __future__ import annotations

import subprocess
import sys

import pytest
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError

from tests.helpers import arena_settings
from warriorcoder.arena.quality import parse_score, quality_messages
from warriorcoder.proto import subjects, topology
from warriorcoder.proto.messages import Challenge, Judgement
from warriorcoder.runtime.ask import ask
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.stage import Consumes, Stage, no_models
from warriorcoder.stages import STAGES, load
from warriorcoder.testing.fakes import FakeInference, FakeKV
from warriorcoder.testing.scripted import ScriptedModel


def test_every_registered_stage_loads_with_its_name():
    s = arena_settings(judges=["garbler"])
    for name in STAGES:
        stage = load(name)
        assert stage.name == name
        assert (stage.consumes is None) == (stage.run is not None)
        assert set(stage.models(s)) <= set(s.models)
    assert load("aggregator").models(s) == []
    assert load("verifier").models(s) == []  # CPU only: runs code, calls no model
    assert load("judge").models(s) == s.judge_pool


def test_consuming_stages_read_the_streams_the_topology_declares():
    consuming = {n: load(n).consumes for n in STAGES if load(n).consumes is not None}
    assert set(consuming) == {c.stage for c in topology.CONSUMERS}
    for name, c in consuming.items():
        assert c is not None
        assert (c.stream, c.durable) == (topology.consumer(name).stream, name)
    assert Consumes.declared("aggregator", Judgement, max_ack_pending=1).max_ack_pending == 1
    with pytest.raises(KeyError):
        Consumes.declared("challenger", Challenge)  # produces, consumes nothing


def test_a_stage_declares_either_a_stream_and_setup_or_its_own_loop():
    async def run(deps, stop):
        return None

    with pytest.raises(TypeError):
        Stage(name="x", models=no_models, run=run, consumes=Consumes("S", "x", Challenge))
    with pytest.raises(TypeError):
        Stage(name="x", models=no_models)
    assert Stage(name="x", models=no_models, run=run).consumes is None


def test_the_command_line_loads_no_stage_nor_triton_client():
    code = (
        "import sys, warriorcoder.cli as c; c.build_parser(); "
        "print(sorted(m for m in sys.modules if m.startswith(('tritonclient', "
        "'warriorcoder.stages.judge', 'warriorcoder.runtime.service'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_ask_reasks_until_parsed_and_offers_choices_only_to_guided_models():
    class Late(ScriptedModel):
        calls = 0

        def generate(self, prompt, params):
            type(self).calls += 1
            return "no idea" if type(self).calls < 3 else "[[7]]"

    s = arena_settings()
    roster = Roster.from_settings(s, ["alpha"])
    inference = FakeInference([Late(name="alpha", strength=5)], guided=["alpha"])

    def messages(reask):
        return quality_messages("Sort a list.", "Python", reask=reask)

    asked = await ask(
        inference, roster["alpha"], messages, parse_score, role="quality", max_reasks=1
    )
    assert (asked.value, asked.calls, asked.reasks) == (None, 2, 1)
    asked = await ask(
        inference, roster["alpha"], messages, parse_score, role="quality", max_reasks=3,
        choices=["[[7]]"],
    )  # fmt: skip
    assert (asked.value, asked.calls) == (7, 1)
    # alpha is not configured guided: its requests carry no choice
    assert all(r.choices is None for r in inference.requests)
    assert inference.requests[0].params["max_tokens"] == s.sampling.quality.max_tokens


async def test_fake_kv_follows_nats_key_value_semantics():
    kv = FakeKV(subjects.KV_SCHEDULE)
    with pytest.raises(KeyNotFoundError):
        await kv.get("cursor")
    r1 = await kv.create("cursor", b"1")
    with pytest.raises(KeyWrongLastSequenceError):
        await kv.create("cursor", b"2")
    r2 = await kv.put("other", b"x")  # revisions are the bucket's sequence
    assert r2 == r1 + 1
    with pytest.raises(KeyWrongLastSequenceError):
        await kv.update("cursor", b"3", last=r2)
    r3 = await kv.update("cursor", b"3", last=r1)
    assert (await kv.get("cursor")).value == b"3" and (await kv.get("cursor")).revision == r3
    with pytest.raises(BadRequestError):
        await kv.delete("cursor", last=r1)
    assert await kv.delete("cursor")
    with pytest.raises(KeyNotFoundError):
        await kv.get("cursor")
    assert await kv.create("cursor", b"again") > r3  # a deleted key may be created again
