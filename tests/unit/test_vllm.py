"""The vLLM backend contract (warriorcoder.runtime.vllm): what the client sends, the servers read.

Usage::

    python -m pytest tests/unit/test_vllm.py -q
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime.vllm import (
    EXCLUDE_INPUT_IN_OUTPUT,
    FINISH_REASON,
    INPUTS,
    NUM_OUTPUT_TOKENS,
    OUTPUTS,
    RETURN_FINISH_REASON,
    RETURN_NUM_OUTPUT_TOKENS,
    SAMPLING_PARAMETERS,
    SAMPLING_REJECTED,
    STREAM,
    TEXT_INPUT,
    TEXT_OUTPUT,
    BackendRelease,
    Completion,
    Returns,
    decode_outputs,
    encode_inputs,
    encode_outputs,
    generation_inputs,
    parse_request,
    requested_outputs,
)

PROMPT = "<|im_start|>user\nÉcris une fonction — 日本語 too.<|im_end|>\n<|im_start|>assistant\n"
VERDICTS = ["[[A]]", "[[B]]", "[[Tie]]"]


@pytest.mark.parametrize(
    ("params", "stop", "choices", "expected"),
    [
        (
            SamplingParams(temperature=0.7, top_p=0.9, max_tokens=64, seed=5),
            ["<|im_end|>", "</s>"],
            VERDICTS,
            {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "seed": 5,
             "stop": ["<|im_end|>", "</s>"]},
        ),
        (
            SamplingParams(temperature=0.0, top_p=1.0, max_tokens=1),
            [],
            None,
            {"temperature": 0.0, "top_p": 1.0, "max_tokens": 1},
        ),
        (
            SamplingParams(temperature=1.5, top_p=0.5, max_tokens=2048, seed=0),
            ["x"],
            ["only"],
            {"temperature": 1.5, "top_p": 0.5, "max_tokens": 2048, "seed": 0, "stop": ["x"]},
        ),
    ],
)  # fmt: skip
def test_the_clients_request_round_trips_through_the_parser(
    params: SamplingParams,
    stop: list[str],
    choices: list[str] | None,
    expected: dict[str, Any],
) -> None:
    req = parse_request(generation_inputs(PROMPT, params, stop=stop, choices=choices))
    assert req.prompt == PROMPT
    assert req.params == expected
    assert req.choices == (tuple(choices) if choices else None)
    assert req.stream is False
    assert req.prepend is False  # exclude_input_in_output=true: the output is the completion only


def test_the_clients_tensors_are_the_declared_ones() -> None:
    specs = {s.name: s for s in INPUTS}
    inputs = generation_inputs(PROMPT, SamplingParams(temperature=1, top_p=1, max_tokens=8))
    assert list(inputs) == [
        TEXT_INPUT,
        STREAM,
        SAMPLING_PARAMETERS,
        EXCLUDE_INPUT_IN_OUTPUT,
        RETURN_FINISH_REASON,
        RETURN_NUM_OUTPUT_TOKENS,
    ]
    for name, array in inputs.items():
        want = np.object_ if specs[name].dtype is bytes else np.bool_
        assert array.dtype == want, name
        assert array.shape == specs[name].shape, name


# triton-inference-server/vllm_backend src/model.py, _auto_complete_inputs_and_outputs, on r24.12
# to r25.11 (TYPE_STRING is BYTES on the wire); the backend also declares image, logprobs and
# input-token tensors the arena does not use.
UPSTREAM_INPUTS = {
    ("text_input", "BYTES", (1,), False),
    ("image", "BYTES", (-1,), True),
    ("stream", "BOOL", (1,), True),
    ("sampling_parameters", "BYTES", (1,), True),
    ("exclude_input_in_output", "BOOL", (1,), True),
    ("return_finish_reason", "BOOL", (1,), True),
    ("return_cumulative_logprob", "BOOL", (1,), True),
    ("return_logprobs", "BOOL", (1,), True),
    ("return_num_input_tokens", "BOOL", (1,), True),
    ("return_num_output_tokens", "BOOL", (1,), True),
}
UPSTREAM_OUTPUTS = {
    ("text_output", "BYTES", (-1,)),
    ("finish_reason", "BYTES", (-1,)),
    ("cumulative_logprob", "FP32", (-1,)),
    ("logprobs", "BYTES", (-1,)),
    ("num_input_tokens", "UINT32", (1,)),
    ("num_output_tokens", "UINT32", (-1,)),
}


def test_declaration_matches_the_upstream_backend() -> None:
    """triton-inference-server/vllm_backend src/model.py: auto_complete_config's tensors."""
    declared = {(s.name, s.triton_dtype, s.shape, s.optional) for s in INPUTS}
    assert declared <= UPSTREAM_INPUTS
    assert {
        ("text_input", "BYTES", (1,), False),
        ("stream", "BOOL", (1,), True),
        ("sampling_parameters", "BYTES", (1,), True),
        ("exclude_input_in_output", "BOOL", (1,), True),
    } <= declared
    assert OUTPUTS[0].name == TEXT_OUTPUT  # the one output every release has
    assert (
        {(s.name, s.triton_dtype, s.shape) for s in OUTPUTS}
        == {
            ("text_output", "BYTES", (-1,)),
            ("finish_reason", "BYTES", (-1,)),
            ("num_output_tokens", "UINT32", (-1,)),
        }
        <= UPSTREAM_OUTPUTS
    )


def test_the_request_over_the_grpc_encoding_round_trips() -> None:
    """The client's InferInputs, decoded from their wire bytes, parse to what was asked."""
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

    from warriorcoder.runtime.triton import infer_request

    params = SamplingParams(temperature=0.2, top_p=0.8, max_tokens=7, seed=3)
    inputs = generation_inputs(PROMPT, params, stop=["<|eot_id|>"], choices=VERDICTS)
    request = infer_request("judge-model", inputs, "req-1")
    assert request["model_name"] == "judge-model" and request["request_id"] == "req-1"
    assert [o.name() for o in request["outputs"]] == [TEXT_OUTPUT]
    wire: dict[str, np.ndarray] = {}
    for i in request["inputs"]:
        raw = i._get_content()
        if i.datatype() == "BYTES":
            wire[i.name()] = deserialize_bytes_tensor(raw).reshape(i.shape())
        else:
            wire[i.name()] = np.frombuffer(raw, dtype=triton_to_np_dtype(i.datatype()))
    assert parse_request(wire) == parse_request(inputs)
    req = parse_request(wire)
    assert (req.prompt, req.choices) == (PROMPT, tuple(VERDICTS))
    assert req.params == {"temperature": 0.2, "top_p": 0.8, "max_tokens": 7, "seed": 3,
                          "stop": ["<|eot_id|>"]}  # fmt: skip


def test_optional_tensors_take_the_backends_defaults() -> None:
    bare = encode_inputs("p", None, stream=None, exclude_input_in_output=None)
    assert list(bare) == [TEXT_INPUT]
    # No sampling_parameters tensor: the request's own parameters are the sampling parameters.
    req = parse_request(bare, {"max_tokens": 2, "seed": None})
    assert req.params == {"max_tokens": 2}  # null values dropped: vLLM's default applies
    assert req.prepend and not req.stream  # exclude_input_in_output absent: the prompt is echoed
    streaming = encode_inputs("p", {"n": 2}, stream=True, exclude_input_in_output=None)
    streamed = parse_request(streaming)
    assert streamed.stream and not streamed.prepend and streamed.params == {"n": 2}
    echoed = parse_request(encode_inputs("p", "{}", exclude_input_in_output=False))
    assert echoed.prepend and echoed.params == {} and echoed.choices is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            encode_inputs("p", {}, stream=True, exclude_input_in_output=False),
            "When streaming, `exclude_input_in_output` = False is not allowed.",
        ),
        ({STREAM: np.array([False])}, "text_input: missing"),
        ({TEXT_INPUT: np.array([], dtype=np.object_)}, "text_input: empty tensor"),
        ({TEXT_INPUT: np.array([b"\xff\xfe"], dtype=np.object_)}, "text_input: not UTF-8"),
        (encode_inputs("p", "{not json"), "sampling_parameters: invalid JSON"),
        (encode_inputs("p", "[1, 2]"), "sampling_parameters: expected a JSON object, got list"),
        (
            encode_inputs("p", {"beam_width": 2}),
            "sampling_parameters.beam_width: unknown sampling parameter",
        ),
        (encode_inputs("p", {"top_p": 0}), r"sampling_parameters.top_p: must be in \(0, 1\]"),
        (encode_inputs("p", {"max_tokens": "5"}), "sampling_parameters.max_tokens: expected an"),
        (
            encode_inputs("p", {"guided_decoding": '{"regex": "a+"}'}),
            r'sampling_parameters.guided_decoding: expected \{"choice": \[...\]\}',
        ),
        (
            encode_inputs("p", {"guided_decoding": '{"choice": []}'}),
            "sampling_parameters.guided_decoding.choice: expected a non-empty list of strings",
        ),
    ],
)
def test_malformed_requests_are_rejected_as_the_backend_does(
    data: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        parse_request(data)


def test_outputs_round_trip() -> None:
    texts = ["[[A]]", "déjà vu ✓", ""]
    outputs = encode_outputs(texts)
    assert list(outputs) == [TEXT_OUTPUT]
    assert outputs[TEXT_OUTPUT].dtype == np.object_
    assert decode_outputs(outputs[TEXT_OUTPUT]) == texts
    assert decode_outputs(None) == []


# ------------------------------------------------------------------ releases and guided decoding


def upstream_guided(sampling_json: str, key: str) -> dict[str, Any]:
    """What vllm_backend's ``TritonSamplingParams.from_dict`` does with the guided key
    (src/utils/vllm_backend_utils.py, r25.01-r25.10 ``guided_decoding``, r25.11 on
    ``structured_outputs``): ``GuidedDecodingParams(**json.loads(value))``."""
    params = json.loads(sampling_json)
    return dict(json.loads(params[key]))  # TypeError for anything but a JSON string


@pytest.mark.parametrize(
    ("release", "key"),
    [("25.01", "guided_decoding"), ("r25.10", "guided_decoding"), ("25.11", "structured_outputs"),
     ("26.01", "structured_outputs")],
)  # fmt: skip
def test_guided_choice_is_sent_as_the_json_string_the_backend_loads(release: str, key: str) -> None:
    rel = BackendRelease.parse(release)
    params = SamplingParams(temperature=0, top_p=1, max_tokens=4)
    inputs = generation_inputs(PROMPT, params, choices=VERDICTS, release=rel)
    sampling_json = decode_outputs(inputs[SAMPLING_PARAMETERS])[0]
    sent = json.loads(sampling_json)
    other = {"guided_decoding", "structured_outputs"} - {key}
    assert isinstance(sent[key], str) and not other & set(sent)
    assert upstream_guided(sampling_json, key) == {"choice": VERDICTS}
    req = parse_request(inputs, release=rel)
    assert req.choices == tuple(VERDICTS) and key not in req.params


def test_the_nested_guided_object_is_refused_as_the_real_backend_refuses_it() -> None:
    """The form the client used to send: vLLM's backend json.loads a dict -> TypeError ->
    from_dict returns None -> ``'NoneType' object has no attribute 'lora_name'``."""
    nested = {"max_tokens": 4, "guided_decoding": {"choice": VERDICTS}}
    with pytest.raises(TypeError):
        upstream_guided(json.dumps(nested), "guided_decoding")
    for key in ("guided_decoding", "structured_outputs"):
        data = encode_inputs("p", {"max_tokens": 4, key: {"choice": VERDICTS}})
        with pytest.raises(ValueError) as info:
            parse_request(data)
        assert str(info.value).startswith(SAMPLING_REJECTED)
        assert "must be str" in str(info.value)


def test_a_release_reads_only_its_own_guided_key() -> None:
    choice = json.dumps({"choice": VERDICTS})
    old, new = BackendRelease.parse("25.10"), BackendRelease.parse("25.11")
    for release, wrong in ((new, "guided_decoding"), (old, "structured_outputs")):
        with pytest.raises(ValueError, match=f"{wrong}: unknown sampling parameter") as info:
            parse_request(encode_inputs("p", {wrong: choice}), release=release)
        assert str(info.value).startswith(SAMPLING_REJECTED)
    both = encode_inputs("p", {"guided_decoding": choice, "structured_outputs": choice})
    with pytest.raises(ValueError, match="both"):
        parse_request(both)
    with pytest.raises(ValueError, match="no guided decoding"):
        generation_inputs("p", SamplingParams(temperature=0, top_p=1, max_tokens=1),
                          choices=VERDICTS, release=BackendRelease.parse("24.12"))  # fmt: skip


@pytest.mark.parametrize("text", ["25", "25.13", "r25.00", "v25.11", "25.1", ""])
def test_release_must_be_yy_mm(text: str) -> None:
    with pytest.raises(ValueError, match=r"YY\.MM"):
        BackendRelease.parse(text)


def test_finish_reason_and_token_count_are_asked_only_of_releases_that_declare_them() -> None:
    params = SamplingParams(temperature=0, top_p=1, max_tokens=4)
    old = BackendRelease.parse("24.11")  # rejects unknown inputs: "unexpected inference input"
    assert not old.additional_outputs
    inputs = generation_inputs("p", params, release=old)
    assert RETURN_FINISH_REASON not in inputs and RETURN_NUM_OUTPUT_TOKENS not in inputs
    assert requested_outputs(old) == [TEXT_OUTPUT]
    assert parse_request(inputs).returns == Returns()
    new = BackendRelease.parse("24.12")
    inputs = generation_inputs("p", params, release=new)
    assert bool(inputs[RETURN_FINISH_REASON][0]) and bool(inputs[RETURN_NUM_OUTPUT_TOKENS][0])
    assert requested_outputs(new) == [TEXT_OUTPUT, FINISH_REASON, NUM_OUTPUT_TOKENS]
    assert parse_request(inputs).returns == Returns(finish_reason=True, num_output_tokens=True)


def test_additional_outputs_are_encoded_as_the_backend_sends_them() -> None:
    """_create_response / create_response: finish_reason ``str(output.finish_reason)`` as an
    object array, num_output_tokens ``np.uint32``, one entry per sample."""
    done = [Completion("a b", "length", 2), Completion("c", "stop", 1)]
    bare = encode_outputs(done)
    assert list(bare) == [TEXT_OUTPUT]
    full = encode_outputs(done, Returns(finish_reason=True, num_output_tokens=True))
    assert decode_outputs(full[FINISH_REASON]) == ["length", "stop"]
    assert full[NUM_OUTPUT_TOKENS].dtype == np.uint32
    assert full[NUM_OUTPUT_TOKENS].tolist() == [2, 1]
    only_reason = encode_outputs(done, Returns(finish_reason=True))
    assert set(only_reason) == {TEXT_OUTPUT, FINISH_REASON}


# ------------------------------------------------------------------ in-band error classification

MODEL_PATH = "/opt/tritonserver/backends/vllm/model.py"

# (text, permanent). The real texts: vllm_backend src/model.py / src/utils/request.py (r25.01 to
# r25.11), Triton core's request validation, the Python backend's stub (exceptions in execute),
# vLLM's input processing. Then the local servers' own texts.
IN_BAND = [
    # any sampling parameter vLLM refuses: bad value, unknown key, nested guided object
    ("Error generating stream: 'NoneType' object has no attribute 'lora_name'", True),
    (
        "Failed to process the request(s) for model 'vllm_model', message: JSONDecodeError: "
        f"Expecting value: line 1 column 1 (char 0)\n\nAt:\n  {MODEL_PATH}(585): _verify_loras",
        True,
    ),
    ("[request id: <id_unknown>] unexpected inference input 'return_finish_reason' for model "
     "'vllm_model'", True),
    ("[request id: <id_unknown>] unexpected inference output 'finish_reason' for model "
     "'vllm_model'", True),
    ("[request id: <id_unknown>] expected 1 inputs but got 0 inputs for model 'vllm_model'", True),
    ("Request for unknown model: 'nope' is not found", True),
    ("Error generating stream: When streaming, `exclude_input_in_output` = False is not allowed.",
     True),
    ("LoRA feature is not enabled.", True),
    ("LoRA sql-lora is not supported, we currently support ['alpaca']", True),
    ("Error generating stream: Model vllm_model does not support 'generate' request", True),
    ("Error generating stream: The decoder prompt (length 5000) is longer than the maximum model "
     "length of 4096. Make sure that `max_model_len` is no smaller than the number of text "
     "tokens.", True),
    # transient: must be retried
    ("Unexpected error while processing the request, please retry", False),
    ("Unexpected error: invalid engine state, please retry", False),
    ("Model is unavailable due to unhealthy vLLM engine", False),
    ("Request was cancelled", False),
    ("Error generating stream: CUDA out of memory. Tried to allocate 2.00 GiB", False),
    ("Failed to process the request(s) for model 'vllm_model', message: Failed to increase the "
     "shared memory pool size for key 'triton_python_backend_shm_region_6' to 67108864 bytes.",
     False),
    ("Error generating stream: Background loop has errored already.", False),
    # the local servers (warriorcoder.runtime.vllm, hf_engine)
    (f"{SAMPLING_REJECTED} (sampling_parameters.temperature: must be >= 0, got -1.0)", True),
    ("sampling_parameters.guided_decoding: expected {\"choice\": [...]} (other guided forms are "
     "unsupported here)", True),
    ("text_input: the prompt is empty; it must be at least one token", True),
    ("text_input: missing", False),  # Triton core answers the "expected 1 inputs" text first
]  # fmt: skip


@pytest.mark.parametrize(("text", "permanent"), IN_BAND)
def test_in_band_errors_are_classified_by_the_real_texts(text: str, permanent: bool) -> None:
    from warriorcoder.runtime.triton import classify_in_band

    error = classify_in_band("m", text)
    assert error.retryable is (not permanent), text
    assert text in str(error)
