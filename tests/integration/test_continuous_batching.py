"""The continuous-batching test backend on a real Triton, asked by the real client (TritonPool)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from warriorcoder.arena.prompts import response_system_prompt
from warriorcoder.launcher.processes import ManagedProcess, start_local_triton
from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime.settings import ChatTemplateSettings, ModelSettings
from warriorcoder.runtime.templates import ChatTemplate
from warriorcoder.runtime.triton import TritonPool
from warriorcoder.testing.scripted import ScriptedModel, sample

pytestmark = pytest.mark.integration

MODULE = "warriorcoder.testing.continuous_batching"
STEP_S = 0.05  # per decoding step, whatever the batch (per_seq_step_s 0)
MODELS = [
    # one sequence at a time: requests queue
    {"name": "narrow", "strength": 9, "capacity": 1, "base_step_s": STEP_S,
     "per_seq_step_s": 0.0, "lengths": "max_tokens"},
    # a batch of 8: requests share steps
    {"name": "wide", "strength": 9, "capacity": 8, "base_step_s": STEP_S,
     "per_seq_step_s": 0.0, "lengths": "max_tokens"},
    {"name": "texty", "strength": 2, "capacity": 8, "base_step_s": 0.001,
     "per_seq_step_s": 0.0, "lengths": "text"},
]  # fmt: skip


@pytest.fixture(scope="module")
def batched_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("batched")
    models_file, record = tmp / "models.yaml", tmp / "requests.jsonl"
    models_file.write_text(yaml.safe_dump({"models": MODELS}))
    proc: ManagedProcess = start_local_triton(
        MODULE,
        models_file,
        [m["name"] for m in MODELS],  # type: ignore[misc]
        extra_args=["--record", str(record)],
        log_path=tmp / "triton.log",
    )
    try:
        yield f"127.0.0.1:{proc.ports['grpc']}", record
    finally:
        proc.stop()


def _pool(url: str) -> TritonPool:
    models = {
        m["name"]: ModelSettings(
            triton_url=url,
            triton_model=str(m["name"]),
            chat_template=ChatTemplateSettings(preset="chatml"),
            max_concurrency=16,
        )
        for m in MODELS
    }
    return TritonPool(models)  # type: ignore[arg-type]


def _prompt() -> str:
    tpl = ChatTemplate.preset("chatml")
    return tpl.conversation(response_system_prompt("Python"), "Reverse `a_list` in Python.")


async def _timed(pool: TritonPool, model: str, n: int, max_tokens: int) -> float:
    sp = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=max_tokens)
    started = time.monotonic()
    gens = await asyncio.gather(
        *(pool.generate(model, _prompt(), sp, role="response") for _ in range(n))
    )
    assert [g.output_tokens for g in gens] == [max_tokens] * n  # lengths: max_tokens
    return time.monotonic() - started


async def test_requests_share_a_batch_up_to_capacity_and_queue_beyond(batched_triton):
    url, _ = batched_triton
    async with _pool(url) as pool:
        await _timed(pool, "wide", 1, 1)  # warm the channel
        wide = await _timed(pool, "wide", 4, 4)
        narrow = await _timed(pool, "narrow", 4, 4)
    # 4 x 4 tokens: one batch takes 4 steps (0.2 s), one at a time 16 steps (0.8 s)
    assert narrow >= 16 * STEP_S
    assert wide < 10 * STEP_S
    assert wide < narrow / 2


async def test_text_is_the_scripted_models_and_tokens_are_counted(batched_triton):
    url, record = batched_triton
    sp = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=512)
    async with _pool(url) as pool:
        gen = await pool.generate("texty", _prompt(), sp, role="response")
    expected = sample(ScriptedModel("texty", 2).generate(_prompt(), {}), {"max_tokens": 512})
    assert gen.text == expected.text
    assert gen.text.rstrip().endswith("quality=2")
    assert gen.output_tokens == expected.tokens  # lengths: text
    assert gen.finish_reason == "stop"
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    mine = [x for x in lines if x["model"] == "texty"]
    assert len(mine) == 1
    assert mine[0]["role"] == "answerer"
    assert mine[0]["tokens"] == expected.tokens
    assert json.loads(mine[0]["sampling"])["max_tokens"] == 512
    assert mine[0]["prompt"] == _prompt()
