"""The Triton adapter against a real Triton server serving scripted vLLM-contract models."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import tritonclient.grpc.aio as grpcclient

from tests.helpers import arena_settings
from warriorcoder.arena.prompts import challenge_system_prompt, response_system_prompt
from warriorcoder.launcher.processes import free_port
from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime import metrics
from warriorcoder.runtime.settings import ConfigError, ModelSettings
from warriorcoder.runtime.templates import ChatTemplate
from warriorcoder.runtime.triton import (
    BackendDown,
    InferenceError,
    InferenceTimeout,
    RetryableInferenceError,
    TritonPool,
    _is_final,
    classify_in_band,
    infer_request,
)
from warriorcoder.runtime.vllm import SAMPLING_REJECTED, encode_inputs

pytestmark = pytest.mark.integration

SP = SamplingParams(temperature=1.2, top_p=0.99, max_tokens=256, seed=7)


def pool_for(triton_url: str, **model_changes) -> TritonPool:
    s = arena_settings(triton_url)
    models = dict(s.models)
    for name, changes in model_changes.items():
        base = models.get(name) or models["alpha"]
        models[name] = ModelSettings(**{**_fields(base), **changes})
    return TritonPool(models)


def _fields(m: ModelSettings) -> dict:
    return {f: getattr(m, f) for f in m.__struct_fields__}


async def test_models_are_ready(triton_url):
    async with pool_for(triton_url, missing={"triton_model": "no_such_model"}) as pool:
        ready = await pool.ready()
    assert ready["alpha"] and ready["beta"] and ready["garbler"]
    assert ready["missing"] is False


async def test_magpie_mining_stops_at_the_end_of_the_user_turn(triton_url):
    tpl = ChatTemplate.preset("chatml")
    prefix = tpl.magpie_prefix(challenge_system_prompt("Python"))
    async with pool_for(triton_url) as pool:
        a = await pool.generate("alpha", prefix, SP, stop=[tpl.user_turn_end()], role="challenge")
        b = await pool.generate("alpha", prefix, SP, stop=[tpl.user_turn_end()], role="challenge")
    # exclude_input_in_output: no prompt echoed; the stop string and what follows are cut.
    assert not a.text.startswith("<|im_start|>")
    assert "<|im_end|>" not in a.text and "assistant" not in a.text
    assert "Python" in a.text
    assert a.text != b.text
    assert a.latency_s > 0


async def test_answers_follow_strength(triton_url):
    tpl = ChatTemplate.preset("llama3")
    prompt = tpl.conversation(response_system_prompt("Python"), "Reverse a list in Python.")
    sp = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=512)
    async with pool_for(triton_url) as pool:
        strong, weak = await asyncio.gather(
            pool.generate("alpha", prompt, sp, role="response"),
            pool.generate("gamma", prompt, sp, role="response"),
        )
    assert strong.text.rstrip().endswith("quality=9")
    assert weak.text.rstrip().endswith("quality=2")


async def test_in_band_error_for_a_bad_request_is_not_retryable(triton_url):
    bad = SamplingParams(temperature=-1.0, top_p=0.9, max_tokens=8)
    before = _count("alpha", "error")
    async with pool_for(triton_url) as pool:
        with pytest.raises(InferenceError) as info:
            await pool.generate("alpha", "hello", bad, role="response")
    assert not info.value.retryable
    assert "temperature" in str(info.value)
    assert _count("alpha", "error") == before + 1


async def test_unknown_model_is_not_retryable(triton_url):
    async with pool_for(triton_url, missing={"triton_model": "no_such_model"}) as pool:
        with pytest.raises(InferenceError) as info:
            await pool.generate("missing", "hello", SP, role="judge")
    assert not info.value.retryable


async def test_unreachable_server_is_retryable():
    url = f"127.0.0.1:{free_port()}"
    async with pool_for(url, alpha={"triton_url": url, "max_outage_s": 0}) as pool:
        with pytest.raises(RetryableInferenceError, match="UNAVAILABLE"):
            await pool.generate("alpha", "hello", SP, role="response")
        assert (await pool.ready())["alpha"] is False


async def test_an_unreachable_server_is_waited_for_up_to_max_outage_s():
    url = f"127.0.0.1:{free_port()}"
    limits = {"triton_url": url, "max_outage_s": 1.5, "probe_interval_s": 0.2}
    async with pool_for(url, alpha=limits) as pool:
        start = time.monotonic()
        with pytest.raises(BackendDown, match="UNAVAILABLE") as info:
            await pool.generate("alpha", "hello", SP, role="response")
        assert 1.4 < time.monotonic() - start < 5
        assert info.value.retryable and info.value.reason == "backend_down"
        assert not pool.available("alpha")
        assert (await pool.ready())["alpha"] is False


async def test_timeout_is_retryable(triton_url):
    async with pool_for(triton_url, slow={"triton_model": "slow", "timeout_s": 0.5}) as pool:
        with pytest.raises(InferenceTimeout, match=r"no final response within") as info:
            await pool.generate("slow", "hello", SP, role="response")
    assert info.value.retryable


async def test_unconfigured_model_name():
    async with TritonPool(arena_settings().models, names=[]) as pool:
        with pytest.raises(InferenceError, match="not configured"):
            await pool.generate("alpha", "x", SP, role="judge")


ANSWER = ChatTemplate.preset("chatml").conversation(response_system_prompt("Python"), "Reverse.")
VERDICTS = ["[[A]]", "[[B]]", "[[Tie]]"]


async def test_finish_reason_and_token_count_come_back_from_the_backend(triton_url):
    cut = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=5)
    whole = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=1000)
    before = _tokens("alpha", "response")
    async with pool_for(triton_url) as pool:
        short = await pool.generate("alpha", ANSWER, cut, role="response")
        full = await pool.generate("alpha", ANSWER, whole, role="response")
    assert (short.finish_reason, short.output_tokens, short.truncated) == ("length", 5, True)
    assert full.finish_reason == "stop" and not full.truncated
    assert full.output_tokens == len(full.text.split()) > 5
    assert _tokens("alpha", "response") == before + 5 + full.output_tokens


async def test_a_backend_before_24_12_is_not_asked_for_the_extra_outputs(triton_url):
    sp = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=5)
    async with pool_for(triton_url, old={"triton_model": "alpha", "vllm_release": "24.11"}) as pool:
        gen = await pool.generate("old", ANSWER, sp, role="response")
    assert gen.text and gen.finish_reason is None and gen.output_tokens is None


@pytest.mark.parametrize("release", ["25.10", "25.11"])
async def test_guided_choice_over_the_wire_for_each_release(triton_url, release):
    sp = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=64)
    changes = {"triton_model": "alpha", "guided_choice": True, "vllm_release": release}
    async with pool_for(triton_url, judge=changes) as pool:
        gen = await pool.generate("judge", "Pick one.", sp, choices=VERDICTS, role="judge")
    assert gen.text in VERDICTS and gen.finish_reason == "stop"


def test_guided_choice_needs_a_release_with_guided_decoding():
    with pytest.raises(ConfigError, match=r"25\.01"):
        pool_for("127.0.0.1:1", judge={"guided_choice": True, "vllm_release": "24.12"})


async def test_the_nested_guided_object_is_a_permanent_error(triton_url):
    """What the client used to send: the real backend refuses it (json.loads of a dict)."""
    nested = {"max_tokens": 8, "guided_decoding": {"choice": VERDICTS}}
    with pytest.raises(InferenceError) as info:
        await _raw("alpha", triton_url, nested)
    assert not info.value.retryable
    assert SAMPLING_REJECTED in str(info.value)
    as_string = {"max_tokens": 8, "guided_decoding": json.dumps({"choice": VERDICTS})}
    assert await _raw("alpha", triton_url, as_string) in VERDICTS


async def _raw(model: str, url: str, sampling: dict) -> str:
    request = infer_request(model, encode_inputs("Pick one.", sampling), "raw")

    async def requests():
        yield request

    client = grpcclient.InferenceServerClient(url)
    text = ""
    try:
        async for result, error in client.stream_infer(requests(), stream_timeout=30):
            if error is not None:
                raise classify_in_band(model, str(error.message()))
            text += "".join(x.decode() for x in result.as_numpy("text_output").reshape(-1))
            if _is_final(result):
                break
    finally:
        await client.close()
    return text


def _tokens(model: str, role: str) -> float:
    for m in metrics.GENERATED_TOKENS.collect():
        for s in m.samples:
            if s.name.endswith("_total") and s.labels == {"model": model, "role": role}:
                return s.value
    return 0.0


def _count(model: str, outcome: str) -> float:
    for m in metrics.INFERENCE_REQUESTS.collect():
        for s in m.samples:
            if (
                s.name.endswith("_total")
                and s.labels["model"] == model
                and s.labels["outcome"] == outcome
            ):
                return s.value
    return 0.0
