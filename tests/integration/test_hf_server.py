"""The Hugging Face Triton server with the tiny demo models, through the project's real client.

Builds the demo models (random weights, offline), serves them with ``python -m
warriorcoder.localmodels.hf_server`` on free ports and checks generation, the vLLM request
contract, guided choice and batching with ``TritonPool`` (and ``tritonclient`` directly where the
pool has no parameter for it). Expected texts come from the same engine run in this process, so
each check is exact. Needs the ``hf`` extra (torch, transformers); skipped without it.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient

from warriorcoder.arena.prompts import judge_messages, response_system_prompt
from warriorcoder.launcher.processes import ManagedProcess, start_hf_triton
from warriorcoder.localmodels.batching import Batcher
from warriorcoder.localmodels.hf_server import (
    load_model_specs,
    parse_model_specs,
    parse_request,
)
from warriorcoder.localmodels.jobs import Completion, Job, ShuttingDown
from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime.roster import backend_template
from warriorcoder.runtime.settings import ChatTemplateSettings, ModelSettings
from warriorcoder.runtime.templates import ChatTemplate
from warriorcoder.runtime.triton import (
    InferenceError,
    TritonPool,
    _is_final,
    classify_in_band,
    infer_request,
)
from warriorcoder.runtime.vllm import SAMPLING_REJECTED, TEXT_OUTPUT, decode_outputs, encode_inputs

pytestmark = pytest.mark.integration

VERDICTS = ["[[A]]", "[[B]]", "[[Tie]]"]
QUESTION = "Write a Python function that reverses a linked list."


# ------------------------------------------------------------------ parsing (no torch needed)


def _tensors(**values: Any) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, value in values.items():
        if isinstance(value, bool):
            out[name] = np.array([value], dtype=np.bool_)
        else:
            out[name] = np.array([str(value).encode()], dtype=object)
    return out


def test_parse_request_follows_the_vllm_contract():
    sp = {"temperature": 0, "max_tokens": 3, "guided_decoding": json.dumps({"choice": VERDICTS})}
    req = parse_request(_tensors(text_input="hi", sampling_parameters=json.dumps(sp)))
    assert req.job == Job("hi", {"temperature": 0, "max_tokens": 3}, tuple(VERDICTS))
    assert req.prepend and not req.stream  # exclude_input_in_output absent: prompt echoed
    streamed = parse_request(_tensors(text_input="hi", stream=True))
    assert streamed.stream and not streamed.prepend and streamed.job.choices is None

    def sampling(sp: str) -> dict[str, np.ndarray]:
        return _tensors(text_input="x", sampling_parameters=sp)

    bad = [
        (_tensors(text_input="hi", stream=True, exclude_input_in_output=False), "streaming"),
        (sampling("{"), "invalid JSON"),
        (sampling('{"top_p": 0}'), "top_p"),
        (sampling(json.dumps({"guided_decoding": '{"choice": []}'})), "guided_decoding"),
        (sampling(json.dumps({"guided_decoding": '{"choice": [""]}'})), "guided_decoding"),
        (sampling(json.dumps({"guided_decoding": '{"json": {}}'})), "guided_decoding"),
        (sampling('{"guided_decoding": {"choice": ["a"]}}'), "guided_decoding"),  # nested
        (_tensors(stream=False), "text_input"),
    ]
    for data, message in bad:
        with pytest.raises(ValueError, match=message):
            parse_request(data)


def test_models_file_is_strict(tmp_path: Path):
    path = tmp_path / "m.yaml"
    path.write_text(
        "models:\n  - {name: a, path: /x, max_batch_size: 4}\n  - {name: b, path: hub/id}\n"
    )
    specs = load_model_specs(path)
    assert [(s.name, s.max_batch_size, s.device) for s in specs] == [
        ("a", 4, "auto"),
        ("b", 8, "auto"),
    ]
    for doc, where in [
        ({"models": [{"name": "a"}]}, r"\$\.models\[0\]\.path: missing"),
        ({"models": [{"name": "a", "path": "p", "devcie": "cpu"}]}, r"\.devcie: unknown key"),
        ({"models": [{"name": "a", "path": "p", "dtype": "int8"}]}, r"\.dtype: expected"),
        ({"models": [{"name": "a", "path": "p", "max_batch_size": 0}]}, r"\.max_batch_size"),
        ({"models": [{"name": "a b", "path": "p"}]}, r"\.name: invalid"),
        ({"models": [{"name": "a", "path": "p"}, {"name": "a", "path": "q"}]}, "duplicate"),
        ({"models": []}, "non-empty"),
    ]:
        with pytest.raises(ValueError, match=where):
            parse_model_specs(doc)


async def test_batcher_groups_concurrent_requests():
    seen: list[list[str]] = []

    def run(jobs):
        seen.append([j.prompt for j in jobs])
        time.sleep(0.05)  # the worker thread is busy: later requests queue for the next batch
        return [ValueError("bad") if j.prompt == "bad" else [j.prompt.upper()] for j in jobs]

    batcher = Batcher("fake", run, max_batch_size=4, wait_s=0.01)
    try:
        prompts = [f"p{i}" for i in range(9)] + ["bad"]
        results = await asyncio.gather(
            *(batcher.submit(Job(p)) for p in prompts), return_exceptions=True
        )
    finally:
        await batcher.aclose()
    assert results[:9] == [[p.upper()] for p in prompts[:9]]
    assert isinstance(results[9], ValueError)
    assert sorted(p for batch in seen for p in batch) == sorted(prompts)
    assert max(len(b) for b in seen) == 4 and len(seen) == 3  # 10 requests, at most 4 a batch


@pytest.mark.parametrize("from_thread", [False, True])
async def test_closing_the_batcher_cancels_and_awaits_its_task(from_thread: bool):
    release = threading.Event()

    def run(jobs):
        release.wait(5)  # a batch still running when the server stops
        return [[j.prompt] for j in jobs]

    batcher = Batcher("fake", run, max_batch_size=1, wait_s=0)
    running = asyncio.ensure_future(batcher.submit(Job("running")))
    queued = asyncio.ensure_future(batcher.submit(Job("queued")))
    await asyncio.sleep(0.05)
    task = batcher._task
    assert task is not None and not task.done()
    try:
        if from_thread:  # as the server's on_stop hook does, from the main thread
            await asyncio.to_thread(batcher.close)
        else:
            await batcher.aclose()
    finally:
        release.set()
    assert task.cancelled()
    for fut in (running, queued):
        with pytest.raises(ShuttingDown):
            await fut
    with pytest.raises(ShuttingDown):
        await batcher.submit(Job("late"))
    await batcher.aclose()  # idempotent


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from warriorcoder.localmodels.demo import build_demo_models

    return build_demo_models(tmp_path_factory.mktemp("demo-models"), seed=0)


@pytest.fixture(scope="module")
def engines(demo_models: list[Any]) -> dict[str, Any]:
    """The server's engine, in this process, for the expected outputs."""
    import torch

    from warriorcoder.localmodels.hf_engine import HFEngine

    torch.set_num_threads(1)  # as the server below: same kernels, same numbers
    return {m.name: HFEngine.load(m.name, str(m.path), device="cpu") for m in demo_models}


@pytest.fixture(scope="module")
def hf_triton(
    demo_models: list[Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagedProcess]:
    from warriorcoder.localmodels.demo import write_models_file

    work = tmp_path_factory.mktemp("hf-triton")
    models_file = write_models_file(demo_models, work / "models.yaml", max_batch_size=8)
    proc = start_hf_triton(
        models_file, [m.name for m in demo_models], log_path=work / "hf-triton.log", threads=1
    )
    yield proc
    code = proc.stop()
    assert code == 0, f"hf_server exited {code} on SIGTERM:\n{proc.log_tail()}"


@pytest.fixture(scope="module")
def hf_url(hf_triton: ManagedProcess) -> str:
    return f"127.0.0.1:{hf_triton.ports['grpc']}"


def hf_pool(url: str, demo_models: list[Any], **extra: dict[str, Any]) -> TritonPool:
    models = {
        m.name: ModelSettings(
            triton_url=url,
            triton_model=m.name,
            chat_template=ChatTemplateSettings(file=str(m.tokenizer_config)),
            max_concurrency=8,
            timeout_s=120,
            guided_choice=True,
        )
        for m in demo_models
    }
    for name, changes in extra.items():
        base = models[demo_models[0].name]
        fields = {f: getattr(base, f) for f in base.__struct_fields__}
        models[name] = ModelSettings(**{**fields, **changes})
    return TritonPool(models)


def template(model: Any) -> ChatTemplate:
    return ChatTemplate.from_settings(ChatTemplateSettings(file=str(model.tokenizer_config)))


def sent(model: Any) -> ChatTemplate:
    """The template as the arena's stages render prompts for the backend (the roster's)."""
    return backend_template(template(model), tokenizer_adds_bos=True)


def answer_prompt(model: Any) -> str:
    return sent(model).conversation(response_system_prompt("Python"), QUESTION)


def judge_prompt(model: Any) -> str:
    messages = judge_messages(QUESTION, "Use a loop.\n```python\n...\n```", "Recursion works.")
    return sent(model).render(messages, add_generation_prompt=True)


def completions(
    engine: Any, prompt: str, params: dict[str, Any], choices: Any = None
) -> list[Completion]:
    [out] = engine.run_batch([Job(prompt, params, tuple(choices) if choices else None)])
    assert not isinstance(out, Exception), out
    return list(out)


def expected(engine: Any, prompt: str, params: dict[str, Any], choices: Any = None) -> list[str]:
    return [c.text for c in completions(engine, prompt, params, choices)]


async def raw_infer(
    url: str,
    model: str,
    prompt: str,
    sp: dict[str, Any],
    *,
    stream: bool = False,
    exclude_input: bool | None = True,
) -> list[list[str]]:
    """Each response's ``text_output`` entries, by tritonclient directly (the final one too)."""
    inputs = encode_inputs(prompt, sp, stream=stream, exclude_input_in_output=exclude_input)
    request = infer_request(model, inputs, "raw")

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield request

    client = grpcclient.InferenceServerClient(url)
    responses: list[list[str]] = []
    try:
        async for result, error in client.stream_infer(requests(), stream_timeout=120):
            if error is not None:
                raise classify_in_band(model, str(error.message()))
            responses.append(decode_outputs(result.as_numpy(TEXT_OUTPUT)))
            if _is_final(result):
                break
    finally:
        await client.close()
    return responses


# ------------------------------------------------------------------ the served models


async def test_models_are_ready_once_loaded(hf_url, demo_models):
    async with hf_pool(hf_url, demo_models, missing={"triton_model": "no_such_model"}) as pool:
        ready = await pool.ready()
    assert ready == {**{m.name: True for m in demo_models}, "missing": False}


async def test_each_model_answers_through_its_own_chat_template(hf_url, demo_models, engines):
    sp = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=24, seed=11)
    rendered = set()
    async with hf_pool(hf_url, demo_models) as pool:
        for m in demo_models:
            tpl = template(m)
            messages = [{"role": "user", "content": QUESTION}]
            preset = ChatTemplate.preset(m.template)
            assert tpl.render(messages, add_generation_prompt=True) == preset.render(
                messages, add_generation_prompt=True
            )
            prompt = answer_prompt(m)
            rendered.add(prompt.split(QUESTION)[0])
            gen = await pool.generate(m.name, prompt, sp, role="response")
            params = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 24, "seed": 11}
            assert gen.text == expected(engines[m.name], prompt, params)[0]
            assert gen.text and not gen.text.startswith(prompt[:10])
    assert len(rendered) == 3  # three different templates


async def test_greedy_max_tokens_matches_transformers_generate(hf_url, demo_models, engines):
    import torch
    from transformers import GenerationConfig

    async with hf_pool(hf_url, demo_models) as pool:
        for m in demo_models:
            engine, prompt = engines[m.name], answer_prompt(m)
            # tokenized as vLLM tokenizes a text prompt: with special tokens
            ids = engine.tokenizer(prompt, add_special_tokens=True, return_tensors="pt").input_ids
            config = GenerationConfig(
                do_sample=False,
                max_new_tokens=5,
                eos_token_id=sorted(engine.eos),
                pad_token_id=engine.pad,
            )
            with torch.inference_mode():
                mask = torch.ones_like(ids)
                out = engine.model.generate(ids, attention_mask=mask, generation_config=config)
            new = out[0, ids.shape[1] :].tolist()
            assert len(new) <= 5
            want = engine.tokenizer.decode(new, skip_special_tokens=True)
            sp = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=5)
            gen = await pool.generate(m.name, prompt, sp, role="response")
            assert gen.text == want


async def test_stop_strings_cut_before_the_first_stop(hf_url, demo_models):
    m = demo_models[1]
    sp = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=40, seed=5)
    async with hf_pool(hf_url, demo_models) as pool:
        full = (await pool.generate(m.name, answer_prompt(m), sp, role="response")).text
        words = [w for w in re.findall(r"[A-Za-z]{2,}", full[8:]) if w in full]
        assert words, full
        stop = words[0]
        cut = (await pool.generate(m.name, answer_prompt(m), sp, stop=[stop], role="r")).text
        both = (
            await pool.generate(m.name, answer_prompt(m), sp, stop=["\x00", stop], role="r")
        ).text
    assert cut == full[: full.find(stop)] == both
    assert stop not in cut


async def test_stop_ends_generation_early(engines, demo_models):
    engine, prompt = engines[demo_models[0].name], answer_prompt(demo_models[0])
    params = {"temperature": 1.0, "max_tokens": 200, "seed": 3, "ignore_eos": True}
    [full] = expected(engine, prompt, params)
    words = [w for w in re.findall(r"[A-Za-z]{2,}", full[20:])]
    assert words, full
    stop = words[0]
    [cut] = expected(engine, prompt, {**params, "stop": [stop]})
    assert cut == full[: full.find(stop)]
    assert engine.last_stats.new_tokens < 200


async def test_seed_makes_sampling_reproducible(hf_url, demo_models):
    m = demo_models[2]
    a = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=24, seed=123)
    b = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=24, seed=124)
    async with hf_pool(hf_url, demo_models) as pool:
        first, again, other = [
            (await pool.generate(m.name, answer_prompt(m), sp, role="response")).text
            for sp in (a, a, b)
        ]
    assert first == again
    assert first != other


async def test_guided_choice_returns_the_most_likely_choice(hf_url, demo_models, engines):
    sp = SamplingParams(temperature=1.0, top_p=0.995, max_tokens=64)
    async with hf_pool(hf_url, demo_models) as pool:
        for m in demo_models:
            prompt = judge_prompt(m)
            picks = [
                (await pool.generate(m.name, prompt, sp, choices=VERDICTS, role="judge")).text
                for _ in range(2)
            ]
            assert picks[0] == picks[1]
            assert picks[0] in VERDICTS
            scores = [loglik(engines[m.name], prompt, c) for c in VERDICTS]
            assert picks[0] == VERDICTS[scores.index(max(scores))], scores


def test_exactly_one_bos_reaches_the_model(engines, demo_models):
    """The server tokenizes as vLLM (special tokens added); the arena sends no BOS of its own."""
    for m in demo_models:
        engine = engines[m.name]
        tok, bos = engine.tokenizer, engine.tokenizer.bos_token_id
        before = template(m).conversation(response_system_prompt("Python"), QUESTION)
        ids = engine._encode_prompt(Job(answer_prompt(m)))  # the prompt the arena sends now
        if bos is None:  # demo-qwen: Qwen's tokenizer has no BOS, its template none either
            assert answer_prompt(m) == before
            assert tok("x")["input_ids"] == tok("x", add_special_tokens=False)["input_ids"]
            continue
        assert tok("x")["input_ids"][0] == bos  # adds its BOS, as the real Llama/DeepSeek ones
        assert ids[0] == bos and ids.count(bos) == 1
        doubled = engine._encode_prompt(Job(before))  # the prompt the arena used to send
        assert doubled[:2] == [bos, bos] and doubled.count(bos) == 2
        # ... which the old server, tokenizing without special tokens, hid:
        assert tok(before, add_special_tokens=False)["input_ids"].count(bos) == 1
    assert sum(engines[m.name].tokenizer.bos_token_id is not None for m in demo_models) == 2


def test_the_engine_reports_finish_reason_and_tokens_as_vllm(engines, demo_models):
    engine, prompt = engines[demo_models[1].name], answer_prompt(demo_models[1])
    params = {"temperature": 1.0, "max_tokens": 60, "seed": 3, "ignore_eos": True}
    [cut] = completions(engine, prompt, {**params, "max_tokens": 7})
    assert (cut.finish_reason, cut.tokens) == ("length", 7)
    [full] = completions(engine, prompt, params)
    words = re.findall(r"[A-Za-z]{2,}", full.text[10:])
    assert words, full
    [stopped] = completions(engine, prompt, {**params, "stop": [words[0]]})
    assert stopped.finish_reason == "stop" and 0 < stopped.tokens < 60
    [pick] = completions(engine, judge_prompt(demo_models[1]), {}, VERDICTS)
    ids = engine.tokenizer(pick.text, add_special_tokens=False)["input_ids"]
    assert (pick.finish_reason, pick.tokens) == ("stop", len(ids))


async def test_finish_reason_and_tokens_come_back_through_the_client(hf_url, demo_models, engines):
    m = demo_models[2]
    prompt = answer_prompt(m)
    async with hf_pool(hf_url, demo_models) as pool:
        for max_tokens in (3, 9):
            sp = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=max_tokens, seed=4)
            gen = await pool.generate(m.name, prompt, sp, role="response")
            params = {"temperature": 1.0, "top_p": 0.95, "max_tokens": max_tokens, "seed": 4}
            [want] = completions(engines[m.name], prompt, params)
            assert (gen.text, gen.finish_reason, gen.output_tokens) == (
                want.text,
                want.finish_reason,
                want.tokens,
            )
            assert want.finish_reason == ("length" if want.tokens == max_tokens else "stop")
        sp = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=64)
        pick = await pool.generate(m.name, judge_prompt(m), sp, choices=VERDICTS, role="judge")
    assert pick.text in VERDICTS and pick.finish_reason == "stop" and pick.output_tokens


def loglik(engine: Any, prompt: str, choice: str) -> float:
    """log p(choice | prompt), one unpadded sequence at a time (independent of the batching)."""
    import torch

    tok = engine.tokenizer
    head = tok(prompt, add_special_tokens=True).input_ids  # as the server (and vLLM) does
    tail = tok(choice, add_special_tokens=False).input_ids
    ids = torch.tensor([head + tail])
    with torch.inference_mode():
        logprobs = torch.log_softmax(engine.model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(float(logprobs[len(head) - 1 + i, t]) for i, t in enumerate(tail))


async def test_stream_echo_and_n_follow_the_vllm_contract(hf_url, demo_models):
    m, prompt = demo_models[0], answer_prompt(demo_models[0])
    sp = {"temperature": 1.0, "max_tokens": 12, "seed": 9}
    [[text], *rest] = await raw_infer(hf_url, m.name, prompt, sp)
    assert all(r == [] for r in rest)  # only the final flag follows
    streamed = await raw_infer(hf_url, m.name, prompt, sp, stream=True, exclude_input=None)
    assert "".join(r[0] for r in streamed if r) == text
    [[echoed], *_] = await raw_infer(hf_url, m.name, prompt, sp, exclude_input=False)
    assert echoed == prompt + text
    [[one, two], *_] = await raw_infer(hf_url, m.name, prompt, {**sp, "n": 2})
    assert one == text and two != text  # n samples: seed, seed + 1
    guided = {"guided_decoding": json.dumps({"choice": VERDICTS}), "n": 2}
    [picks, *_] = await raw_infer(hf_url, m.name, judge_prompt(m), guided)
    assert len(picks) == 2 and picks[0] == picks[1] in VERDICTS


async def test_concurrent_requests_are_batched(hf_url, hf_triton, demo_models):
    m = demo_models[1]
    log = hf_triton.log_path
    assert log is not None
    seen = len(log.read_text(errors="replace"))
    sp = [SamplingParams(temperature=1.0, top_p=0.95, max_tokens=32, seed=i) for i in range(6)]
    async with hf_pool(hf_url, demo_models) as pool:
        start = time.monotonic()
        gens = await asyncio.gather(
            *(pool.generate(m.name, answer_prompt(m), s, role="response") for s in sp)
        )
        elapsed = time.monotonic() - start
    assert len(gens) == 6 and all(isinstance(g.text, str) for g in gens)
    assert len({g.text for g in gens}) > 1
    sizes = [
        int(n)
        for n in re.findall(
            rf"{re.escape(m.name)}: batch of (\d+) requests", log.read_text(errors="replace")[seen:]
        )
    ]
    assert sum(sizes) == 6, sizes
    assert max(sizes) > 1, f"never batched: {sizes} in {elapsed:.2f}s"


async def test_bad_requests_are_not_retryable(hf_url, demo_models):
    m = demo_models[2]
    async with hf_pool(hf_url, demo_models) as pool:
        with pytest.raises(InferenceError) as info:
            bad = SamplingParams(temperature=-1.0, top_p=0.9, max_tokens=8)
            await pool.generate(m.name, "hello", bad, role="response")
        assert not info.value.retryable and "temperature" in str(info.value)
        with pytest.raises(InferenceError) as info:
            sp = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=8)
            await pool.generate(m.name, "x " * 5000, sp, role="response")  # > 4096 context
        assert not info.value.retryable and "context" in str(info.value)
    for sp in ({"guided_decoding": {"choice": []}}, {"guided_decoding": {"regex": "a+"}}):
        with pytest.raises(InferenceError, match="guided_decoding") as info:
            await raw_infer(hf_url, m.name, "hello", sp)
        assert not info.value.retryable
    # Rejected in-band with the real backend's text (the cause in parentheses): permanent.
    with pytest.raises(InferenceError, match="beam_width: unknown sampling parameter") as info:
        await raw_infer(hf_url, m.name, "hello", {"beam_width": 2})
    assert not info.value.retryable and SAMPLING_REJECTED in str(info.value)
    # An empty text is no tokens only for a tokenizer that adds no BOS (Qwen's); with a BOS it is
    # one token, as in vLLM.
    with pytest.raises(InferenceError, match="empty") as info:
        await raw_infer(hf_url, demo_models[0].name, "", {"max_tokens": 4})
    assert not info.value.retryable


async def test_abort_ends_a_running_batch(demo_models):
    pytest.importorskip("torch")
    from warriorcoder.localmodels.hf_engine import HFEngine

    m = demo_models[0]
    engine = HFEngine.load(m.name, str(m.path), device="cpu")
    job = Job(answer_prompt(m), {"max_tokens": 4000, "ignore_eos": True, "seed": 1})
    task = asyncio.create_task(asyncio.to_thread(engine.run_batch, [job]))
    await asyncio.sleep(0.3)
    start = time.monotonic()
    engine.abort()  # what SIGTERM does: partial texts are not returned as answers
    with pytest.raises(RuntimeError, match="shutting down"):
        await task
    assert time.monotonic() - start < 5
    with pytest.raises(RuntimeError, match="shutting down"):
        engine.run_batch([job])
