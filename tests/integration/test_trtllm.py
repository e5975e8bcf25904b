"""The TensorRT-LLM contract against a real Triton (PyTriton) serving scripted models with the
tensors of tensorrtllm_backend r25.05's ensemble: the served config is upstream's, the client's
requests and parsing work, and a whole arena runs on ``contract: trtllm``."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator

import msgspec
import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import InferInput

from tests.conftest import SCRIPTED_MODELS
from tests.helpers import SP, arena_settings, arena_tree
from warriorcoder.launcher.processes import ManagedProcess, free_port, start_local_triton
from warriorcoder.proto import subjects
from warriorcoder.runtime import trtllm
from warriorcoder.runtime.bus import connect
from warriorcoder.runtime.service import run_service
from warriorcoder.runtime.settings import parse_settings
from warriorcoder.runtime.triton import TritonPool, classify_in_band, infer_request
from warriorcoder.stages import load

pytestmark = pytest.mark.integration

SERVER = "warriorcoder.testing.trtllm_server"
MODELS = ["alpha", "beta", "gamma"]
_DTYPES = {"BYTES": "TYPE_STRING"}


@pytest.fixture(scope="module")
def trt_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    logs = tmp_path_factory.mktemp("trtllm")
    proc = start_local_triton(SERVER, SCRIPTED_MODELS, MODELS, log_path=logs / "triton.log")
    yield proc
    proc.stop()


def grpc_url(proc: ManagedProcess) -> str:
    return f"127.0.0.1:{proc.ports['grpc']}"


def trt_pool(url: str, **changes: object) -> TritonPool:
    s = arena_settings(url)
    models = {
        n: msgspec.structs.replace(m, contract="trtllm", **changes)  # type: ignore[arg-type]
        for n, m in s.models.items()
        if n in MODELS
    }
    return TritonPool(models)


def test_the_served_model_declares_exactly_the_ensembles_tensors(trt_triton):
    url = f"http://127.0.0.1:{trt_triton.ports['http']}/v2/models/alpha/config"
    with urllib.request.urlopen(url, timeout=5) as resp:
        config = json.load(resp)
    assert config["max_batch_size"] == trtllm.MAX_BATCH_SIZE  # a leading batch dimension
    assert config["model_transaction_policy"]["decoupled"] is True

    def declared(specs):
        return [
            (
                s.name,
                _DTYPES.get(s.triton_dtype, f"TYPE_{s.triton_dtype}"),
                [int(d) for d in s.shape],
            )
            for s in specs
        ]

    served_in = [(i["name"], i["data_type"], i["dims"]) for i in config["input"]]
    served_out = [(o["name"], o["data_type"], o["dims"]) for o in config["output"]]
    assert sorted(served_in) == sorted(declared(trtllm.INPUTS))
    assert sorted(served_out) == sorted(declared(trtllm.OUTPUTS))
    optional = {i["name"] for i in config["input"] if i.get("optional")}
    assert optional == {s.name for s in trtllm.INPUTS} - {"text_input", "max_tokens"}


async def test_generation_over_the_trtllm_contract(trt_triton):
    async with trt_pool(grpc_url(trt_triton), guided_choice=True) as pool:
        assert await pool.ready() == dict.fromkeys(MODELS, True)
        full = await pool.generate("alpha", "Write a function to sum a list.", SP, role="r")
        assert full.text and full.finish_reason is None and full.output_tokens is None
        # the stand-in keeps the stop word like the executor; the client takes it off
        word = full.text.split()[3]
        cut = await pool.generate(
            "alpha", "Write a function to sum a list.", SP, stop=[word], role="r"
        )
        assert cut.text == full.text[: full.text.index(word)]
        verdict = await pool.generate("alpha", "judge", SP, choices=["[[A]]", "[[B]]"], role="j")
        assert verdict.text in ("[[A]]", "[[B]]")


async def test_a_request_against_the_config_is_refused_by_triton_itself(trt_triton):
    client = grpcclient.InferenceServerClient(grpc_url(trt_triton))
    inputs = trtllm.generation_inputs("p", SP)
    del inputs["max_tokens"]
    req = infer_request("alpha", inputs, "bad", ["text_output"], contract="trtllm")
    wrong = InferInput("max_tokens", [1, 1], "INT64")  # the config says TYPE_INT32
    wrong.set_data_from_numpy(np.array([[8]], dtype=np.int64))
    req["inputs"].append(wrong)

    async def one():
        yield req

    try:
        async for _, error in client.stream_infer(one()):
            assert error is not None
            err = classify_in_band("alpha", str(error.message()))
            assert "max_tokens" in str(err) and not err.retryable, err
            break
    finally:
        await client.close()


async def test_an_arena_runs_end_to_end_on_the_trtllm_contract(trt_triton, nats_url, tmp_path):
    tree = arena_tree(
        grpc_url(trt_triton),
        nats_url,
        challenger={"low_water": 2, "high_water": 6, "concurrency": 2, "poll_interval_s": 0.2},
        service={"http_host": "127.0.0.1"},
        data_dir=str(tmp_path / "data"),
    )
    tree["models"] = {
        n: {**m, "contract": "trtllm"} for n, m in tree["models"].items() if n in MODELS
    }
    s = parse_settings(tree)
    nc = await connect(s.nats)
    js = nc.jetstream()

    async def count(stream: str) -> int:
        try:
            return int((await js.stream_info(stream)).state.messages)
        except Exception:  # not created yet
            return 0

    stop = asyncio.Event()
    names = ("challenger", "responder", "judge", "aggregator")
    services = [
        asyncio.create_task(run_service(load(n), s, stop, http_port=free_port())) for n in names
    ]
    try:
        deadline = time.monotonic() + 120
        while await count(subjects.STREAM_SAMPLES) < 3:
            assert time.monotonic() < deadline, "3 samples within 120 s"
            assert not any(t.done() for t in services), [
                t.exception() for t in services if t.done()
            ]
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait(services, timeout=60)
        for t in services:
            t.cancel()
        await asyncio.gather(*services, return_exceptions=True)
    assert await count(subjects.STREAM_DLQ) == 0
    await nc.drain()
