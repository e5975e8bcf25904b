"""The Triton adapter against a real Triton server serving scripted vLLM-contract models."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import arena_settings
from warriorcoder.arena.prompts import challenge_system_prompt, response_system_prompt
from warriorcoder.launcher.processes import free_port
from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime import metrics
from warriorcoder.runtime.settings import ModelSettings
from warriorcoder.runtime.templates import ChatTemplate
from warriorcoder.runtime.triton import (
    InferenceError,
    InferenceTimeout,
    RetryableInferenceError,
    TritonPool,
)

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
    async with pool_for(url, alpha={"triton_url": url}) as pool:
        with pytest.raises(RetryableInferenceError, match="UNAVAILABLE"):
            await pool.generate("alpha", "hello", SP, role="response")
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
