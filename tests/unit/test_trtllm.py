"""The TensorRT-LLM contract (warriorcoder.runtime.trtllm): tensors as tensorrtllm_backend
r25.05's ensemble/config.pbtxt declares them, the response parsed, errors classified."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.helpers import SP
from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime import trtllm
from warriorcoder.runtime.triton import InferenceError, classify_in_band, infer_request

# From ensemble/config.pbtxt (r25.05), by hand: name -> (TYPE_*, dims, optional).
UPSTREAM = {
    "text_input": ("BYTES", (1,), False),
    "max_tokens": ("INT32", (1,), False),
    "stop_words": ("BYTES", (-1,), True),
    "exclude_input_in_output": ("BOOL", (1,), True),
    "end_id": ("INT32", (1,), True),
    "pad_id": ("INT32", (1,), True),
    "top_k": ("INT32", (1,), True),
    "top_p": ("FP32", (1,), True),
    "temperature": ("FP32", (1,), True),
    "seed": ("UINT64", (1,), True),
    "stream": ("BOOL", (1,), True),
    "guided_decoding_guide_type": ("BYTES", (1,), True),
    "guided_decoding_guide": ("BYTES", (1,), True),
    "lora_config": ("INT32", (-1, 3), True),
    "prompt_embedding_table": ("FP16", (-1, -1), True),
}


def test_the_declared_tensors_are_upstreams() -> None:
    specs = {s.name: s for s in trtllm.INPUTS}
    assert len(specs) == len(trtllm.INPUTS) == 34  # the ensemble's 34 inputs, none twice
    for name, (dtype, dims, optional) in UPSTREAM.items():
        s = specs[name]
        assert (s.triton_dtype, s.shape, s.optional) == (dtype, dims, optional), name
    out = {s.name: s for s in trtllm.OUTPUTS}
    assert len(out) == 17
    assert (out["text_output"].triton_dtype, out["text_output"].shape) == ("BYTES", (-1,))


def test_a_request_is_a_batch_of_one_with_one_tensor_per_knob() -> None:
    params = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=128, seed=-1)
    got = trtllm.generation_inputs("hi", params, stop=["<|im_end|>", "\n\n"])
    assert {k: (v.shape, v.dtype.name) for k, v in got.items()} == {
        "text_input": ((1, 1), "object"),
        "max_tokens": ((1, 1), "int32"),
        "top_p": ((1, 1), "float32"),
        "temperature": ((1, 1), "float32"),
        "seed": ((1, 1), "uint64"),
        "stop_words": ((1, 2), "object"),
        "exclude_input_in_output": ((1, 1), "bool"),
        "stream": ((1, 1), "bool"),
    }
    assert got["max_tokens"][0, 0] == 128
    assert got["seed"][0, 0] == 2**64 - 1  # -1 wrapped into UINT64
    assert got["temperature"][0, 0] == pytest.approx(0.7)
    assert list(got["stop_words"][0]) == [b"<|im_end|>", b"\n\n"]
    assert bool(got["exclude_input_in_output"][0, 0]) and not bool(got["stream"][0, 0])


def test_greedy_is_top_k_one_and_choices_a_regex_guide() -> None:
    got = trtllm.generation_inputs(
        "p", SamplingParams(temperature=0.0, top_p=1.0, max_tokens=4), choices=["[[A]]", "[[B]]"]
    )
    assert "temperature" not in got and got["top_k"][0, 0] == 1
    assert got["guided_decoding_guide_type"][0, 0] == b"regex"
    guide = got["guided_decoding_guide"][0, 0].decode()
    assert re.fullmatch(guide, "[[A]]") and re.fullmatch(guide, "[[B]]")
    assert not re.fullmatch(guide, "[[A]") and not re.fullmatch(guide, "A")


def test_infer_request_uses_the_contracts_dtypes() -> None:
    inputs = trtllm.generation_inputs("p", SP, stop=["x"])
    req = infer_request("ensemble", inputs, "r1", ["text_output"], contract="trtllm")
    got = {i.name(): (i.datatype(), i.shape()) for i in req["inputs"]}
    assert got["max_tokens"] == ("INT32", [1, 1])
    assert got["temperature"] == ("FP32", [1, 1])
    assert got["stop_words"] == ("BYTES", [1, 1])


def test_the_server_side_reads_back_what_the_client_sends() -> None:
    params = SamplingParams(temperature=0.5, top_p=0.8, max_tokens=7, seed=3)
    (row,) = trtllm.parse_request(trtllm.generation_inputs("héllo", params, stop=["END"]))
    assert row == trtllm.TrtllmRequest(
        prompt="héllo",
        max_tokens=7,
        temperature=0.5,
        top_p=pytest.approx(0.8),  # type: ignore[arg-type]
        seed=3,
        stop=("END",),
        exclude_input_in_output=True,
        stream=False,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n": np.array([[1]], dtype=np.int32)}, "unexpected inference input 'n'"),
        ({"max_tokens": None}, "expected input 'max_tokens'"),
        ({"max_tokens": np.array([1], dtype=np.int32)}, "max_tokens: expected shape"),
        ({"max_tokens": np.array([[1]], dtype=np.int64)}, "max_tokens: expected INT32"),
        ({"top_p": np.array([[0.5], [0.5]], dtype=np.float32)}, "one leading batch dimension"),
        ({"max_tokens": np.array([[0]], dtype=np.int32)}, "max_tokens: must be >= 1"),
    ],
)
def test_what_triton_would_refuse_is_refused_with_the_tensor_named(change, message) -> None:
    inputs = trtllm.generation_inputs("p", SP)
    for k, v in change.items():
        if v is None:
            inputs.pop(k)
        else:
            inputs[k] = v
    with pytest.raises(ValueError, match=re.escape(message)):
        trtllm.parse_request(inputs)


def test_the_response_text_loses_the_stop_string_it_ends_with() -> None:
    out = trtllm.encode_outputs(["def f(): pass<|im_end|>"])
    assert out["text_output"].shape == (1, 1)
    text = trtllm.decode_text(out["text_output"])
    assert trtllm.strip_stop(text, ["<|im_end|>", "<|im"]) == "def f(): pass"
    assert trtllm.strip_stop("a\n\nb", ["\n\n"]) == "a\n\nb"  # only at the end
    assert trtllm.decode_text(None) == "" and trtllm.decode_text(np.array([], dtype=object)) == ""


@pytest.mark.parametrize(
    ("text", "permanent"),
    [
        ("Prompt length (9000) exceeds maximum input length (8192).", True),
        ("request_output_len is not present in the request", True),
        ("Streaming is only supported if model is deployed using decoupled mode.", True),
        ("Maximum queue size of 100 has been reached, please try again later", False),
        ("Encountered an error in forward function: out of memory", False),
    ],
)
def test_backend_errors_are_classified(text: str, permanent: bool) -> None:
    err = classify_in_band("ensemble", text)
    assert isinstance(err, InferenceError)
    assert err.retryable is not permanent
