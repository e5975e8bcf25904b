"""Provenance: the config hash (what it covers, what it leaves out), template hashes, the served
model versions a stage records, each stage's stamp and the aggregator's assembly into the
sample."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgspec
import pytest
from msgspec.structs import replace

from tests.helpers import SP, arena_judgement, arena_settings, arena_tree, battle, challenge
from warriorcoder.arena.prompts import PROMPT_SET_VERSION
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import (
    ChallengeTests,
    Execution,
    Judgement,
    RunResult,
    Sample,
    SamplingParams,
    StageStamp,
    decode,
    encode,
)
from warriorcoder.runtime.provenance import (
    MIXED,
    PROJECT_VERSION,
    Stamper,
    assemble,
    config_hash,
    template_hash,
)
from warriorcoder.runtime.roster import Roster, backend_template
from warriorcoder.runtime.settings import parse_settings
from warriorcoder.runtime.shards import ShardWriter, read_samples
from warriorcoder.runtime.templates import ChatTemplate
from warriorcoder.runtime.triton import Generation
from warriorcoder.stages.aggregator.ratings import RatingsStore
from warriorcoder.stages.aggregator.service import make_handler as aggregator_handler
from warriorcoder.stages.judge.service import make_handler as judge_handler
from warriorcoder.stages.responder.service import make_handler as responder_handler
from warriorcoder.testing.fakes import FakeInference, FakeKV, FakePublisher
from warriorcoder.testing.scripted import load_models

SCRIPTED = Path(__file__).parents[1] / "data" / "scripted-models.yaml"


def _hash(tree: dict) -> str:
    return config_hash(parse_settings(tree))


# -- config hash --------------------------------------------------------------------------------


def test_the_config_hash_is_the_sha256_of_the_canonical_data_making_config():
    s = arena_settings()
    tree = msgspec.to_builtins(s, str_keys=True)
    for key in ("nats", "service", "data_dir", "shard_max_samples"):
        del tree[key]
    for m in tree["models"].values():
        for key in (
            "triton_url",
            "max_concurrency",
            "adaptive_concurrency",
            "min_concurrency",
            "initial_concurrency",
            "latency_tolerance",
            "timeout_s",
            "max_outage_s",
            "probe_interval_s",
            "resolve_interval_s",
        ):
            m.pop(key, None)
        m["chat_template"].pop("file", None)
    for key in ("concurrency", "low_water", "high_water", "poll_interval_s"):
        del tree["challenger"][key]
    del tree["verifier"]["concurrency"]
    del tree["scoring"]["idempotency_window"]
    canonical = json.dumps(tree, sort_keys=True, separators=(",", ":")).encode()
    assert config_hash(s) == hashlib.sha256(canonical).hexdigest()[:16]
    assert len(config_hash(s)) == 16


def test_addresses_scale_timeouts_and_secrets_leave_the_hash_unchanged():
    base = _hash(arena_tree())
    tree = arena_tree(triton_url="10.0.0.7:8001", nats_url="nats://nats.arena:4222")
    tree["nats"].update(password="hunter2", user="arena")
    tree["service"] = {"http_port": 9999, "max_in_flight": 32}
    tree["challenger"] = {"concurrency": 64, "low_water": 1, "high_water": 2}
    tree["data_dir"] = "/elsewhere"
    for m in tree["models"].values():
        m.update(max_concurrency=64, timeout_s=5)
    assert _hash(tree) == base
    other_secret = arena_tree()
    other_secret["nats"]["password"] = "another"
    assert _hash(other_secret) == base


@pytest.mark.parametrize(
    "change",
    [
        {"sampling": {"response": {"temperature": 0.2, "top_p": 0.9, "max_tokens": 512}}},
        {"judge": {"position_mode": "alternate"}},
        {"scoring": {"alpha": 0.5}},
        {"challenger": {"min_chars": 30}},
        {"competitors": ["alpha", "beta", "gamma", "garbler"]},
    ],
)
def test_a_setting_that_changes_the_data_changes_the_hash(change):
    assert _hash(arena_tree(**change)) != _hash(arena_tree())


def test_a_model_behind_another_triton_name_or_template_changes_the_hash():
    renamed = arena_tree()
    renamed["models"]["alpha"]["triton_model"] = "alpha_v2"
    preset = arena_tree()
    preset["models"]["alpha"]["chat_template"] = {"preset": "qwen2.5"}
    assert len({_hash(arena_tree()), _hash(renamed), _hash(preset)}) == 3


# -- templates ----------------------------------------------------------------------------------


def test_template_hashes_tell_templates_and_their_backend_form_apart():
    chatml, llama = ChatTemplate.preset("chatml"), ChatTemplate.preset("llama3")
    assert template_hash(chatml) == template_hash(ChatTemplate.preset("chatml"))
    assert template_hash(chatml) != template_hash(llama)
    assert template_hash(llama).startswith("sha256:") and len(template_hash(llama)) == 23
    # Llama 3's tokenizer adds the BOS, so its prompts are rendered without it: another hash
    assert template_hash(backend_template(llama, tokenizer_adds_bos=True)) != template_hash(llama)
    assert template_hash(ChatTemplate.preset("llama3", eos_token="<|end|>")) != template_hash(llama)


# -- stamps -------------------------------------------------------------------------------------


class _Served:
    """A backend that reports the version serving each call, as Triton's ModelInferResponse
    does in ``model_version`` (the adapter copies it to ``Generation.model_version``)."""

    def __init__(self, versions: dict[str, str]) -> None:
        self.versions = versions

    def guided(self, model: str) -> bool:
        return False

    def available(self, model: str) -> bool:
        return True

    async def wait_available(self, model: str) -> None:
        return None

    async def generate(self, model, prompt, params, *, stop=None, choices=None, role):
        return Generation("ok", 0.01, "stop", 1, self.versions.get(model))


async def test_a_stamp_names_the_version_triton_served_once_a_call_reported_it():
    s = arena_settings()
    roster = Roster.from_settings(s, ["alpha", "beta"])
    stamper = Stamper("responder", s, roster, prompt_set="7")
    assert stamper.model("alpha").version is None  # nothing served yet
    inference = stamper.watch(_Served({"alpha": "3"}))
    await inference.generate("alpha", "p", SP, role="response")
    await inference.generate("beta", "p", SP, role="response")  # reports no version
    stamp = stamper.stamp(["alpha", "beta", "alpha"], sampling={"quality": SP})
    assert stamp.stage == "responder"
    assert stamp.config_hash == config_hash(s)
    assert stamp.project_version == PROJECT_VERSION
    assert stamp.prompt_set == "7"
    assert list(stamp.models) == ["alpha", "beta"]
    assert stamp.models["alpha"].version == "3"
    assert stamp.models["alpha"].triton_model == "alpha"
    assert stamp.models["alpha"].chat_template == template_hash(roster["alpha"].template)
    assert stamp.models["beta"].version is None
    assert stamp.sampling == {"quality": SP}
    with pytest.raises(KeyError, match="'nope' is not configured"):
        stamper.model("nope")


def _stamp(stage: str, h: str = "h1", version: str | None = None) -> StageStamp:
    from warriorcoder.proto.messages import ModelStamp

    models = {"alpha": ModelStamp(triton_model="alpha", version=version)} if stage else {}
    return StageStamp(
        stage=stage, config_hash=h, project_version="1.0", prompt_set="2", models=models
    )


def _stamped_judgement(hashes: dict[str, str]) -> Judgement:
    s = arena_settings()
    quality = SamplingParams(temperature=0.1, top_p=1.0, max_tokens=8)
    ch = replace(
        challenge(),
        stamp=replace(_stamp("challenger", hashes["challenger"]), sampling={"quality": quality}),
    )
    tests_sp = SamplingParams(temperature=0.3, top_p=1.0, max_tokens=900)
    tests = ChallengeTests(
        writer="gamma",
        language="Python",
        code="",
        tests=[],
        usable=False,
        asked=1,
        sampling=tests_sp,
    )
    run = RunResult(status="no_code")
    execution = Execution(
        attacker=run,
        defender=run,
        sandbox="bubblewrap",
        verified_at=2.5,
        stamp=_stamp("verifier", hashes["verifier"]),
    )
    b = replace(
        battle(),
        challenge=ch,
        tests=tests,
        execution=execution,
        stamp=_stamp("responder", hashes["responder"], version="5"),
    )
    judge_sp = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=64)
    j = arena_judgement(b, s)
    votes = [replace(v, sampling=judge_sp) for v in j.votes]
    return replace(j, votes=votes, stamp=_stamp("judge", hashes["judge"]))


def test_assembly_agrees_on_one_config_and_collects_every_call():
    same = dict.fromkeys(("challenger", "responder", "verifier", "judge"), "h1")
    j = _stamped_judgement(same)
    p = assemble(j, _stamp("aggregator", "h1"))
    assert p.config_hash == "h1" and p.project_version == "1.0" and p.prompt_set == "2"
    assert p.judge_mode == "both"
    assert list(p.stages) == ["challenger", "responder", "verifier", "judge", "aggregator"]
    # the responder saw alpha served at version 5; the others did not say
    assert p.models["alpha"].version == "5"
    assert set(p.sampling) == {"mining", "quality", "attacker", "defender", "tests", "judge.gamma"}
    assert p.sampling["mining"] == j.battle.challenge.sampling
    assert p.sampling["quality"].temperature == 0.1
    assert p.sampling["tests"].max_tokens == 900
    assert p.sampling["judge.gamma"].temperature == 0.0


def test_stages_under_different_configs_make_a_mixed_sample():
    hashes = {"challenger": "h1", "responder": "h1", "verifier": "h1", "judge": "h2"}
    p = assemble(_stamped_judgement(hashes), _stamp("aggregator", "h1"))
    assert p.config_hash == MIXED
    assert p.stages["judge"].config_hash == "h2"
    assert p.stages["responder"].config_hash == "h1"


def test_a_battle_of_an_earlier_version_has_the_aggregators_stamp_only():
    j = arena_judgement(battle(), arena_settings())
    p = assemble(j, _stamp("aggregator", "h9"))
    assert p.config_hash == "h9" and list(p.stages) == ["aggregator"]
    assert set(p.sampling) == {"mining", "attacker", "defender"}


# -- the stages, end to end through the fakes ----------------------------------------------------


async def test_every_stage_stamps_and_the_sample_carries_them(tmp_path):
    s = arena_settings()
    models = load_models(SCRIPTED)
    inference = FakeInference(models)
    publisher = FakePublisher()
    roster = Roster.from_settings(s, s.judge_pool)
    ch = replace(
        challenge(),
        stamp=Stamper("challenger", s, roster, prompt_set=PROMPT_SET_VERSION).stamp(["alpha"]),
    )
    await responder_handler(s, roster, inference, publisher)(ch)
    [b] = publisher.messages(subjects.BATTLES)
    assert b.stamp is not None and b.stamp.stage == "responder"
    assert set(b.stamp.models) == {"alpha", "beta"}
    await judge_handler(s, roster, inference, publisher)(b)
    [j] = publisher.messages(subjects.JUDGEMENTS)
    assert j.stamp is not None and set(j.stamp.models) == {"gamma"}
    writer = ShardWriter(tmp_path, max_per_shard=10)
    await writer.open()
    try:
        store = RatingsStore(FakeKV(subjects.KV_RATINGS), s.scoring)
        await aggregator_handler(s.scoring, store, writer, publisher, arena=s)(j)
    finally:
        await writer.close()
    [sample] = read_samples(tmp_path)
    p = sample.provenance
    assert p is not None
    assert p.config_hash == config_hash(s)
    assert p.prompt_set == PROMPT_SET_VERSION and p.project_version == PROJECT_VERSION
    assert list(p.stages) == ["challenger", "responder", "judge", "aggregator"]
    assert set(p.models) == {"alpha", "beta", "gamma"}
    assert p.models["beta"].chat_template == template_hash(roster["beta"].template)
    assert "judge.gamma" in p.sampling  # the judge's vote records its sampling
    # the shard line round-trips with its provenance
    assert decode(encode(sample), Sample) == sample
