"""The Triton TensorRT-LLM backend's request contract (``contract: trtllm``): tensors, parsing.

Usage::

    inputs = generation_inputs(prompt, params, stop=["<|im_end|>"], choices=["[[A]]"])
    req = parse_request(inputs)  # as the ensemble reads it: one TrtllmRequest per batch row
    outputs = encode_outputs(["[[A]]"])  # one response: text_output, shape [batch, 1]
    text = strip_stop(decode_text(outputs[TEXT_OUTPUT]), ["<|im_end|>"])

It follows triton-inference-server/tensorrtllm_backend, release branch r25.05 (commit c2e65b8,
the last release whose model repository lives in that repository; later ones ship the same
``all_models`` from NVIDIA/TensorRT-LLM's ``triton_backend``):
``all_models/inflight_batcher_llm/ensemble/config.pbtxt`` and ``.../tensorrt_llm_bls/
config.pbtxt``. Both models declare the same text interface, so one client serves either:

- ``max_batch_size: ${triton_max_batch_size}`` (> 0): every tensor has a leading batch dimension,
  so a request of one prompt sends each input with shape ``[1, *dims]``: ``[1, 1]`` for the
  scalars, ``[1, n]`` for ``stop_words``;
- one tensor per sampling knob, not vLLM's JSON: ``text_input`` (TYPE_STRING), ``max_tokens``
  (TYPE_INT32, required), ``temperature`` / ``top_p`` (TYPE_FP32), ``top_k`` (TYPE_INT32),
  ``seed`` (TYPE_UINT64; ``random_seed`` up to r25.04), ``stop_words`` (TYPE_STRING, dims
  ``[-1]``), ``exclude_input_in_output`` and ``stream`` (TYPE_BOOL), ``end_id`` / ``pad_id``
  (TYPE_INT32, optional: the preprocessing model takes them from the tokenizer when absent, so
  the client leaves them out), ``guided_decoding_guide_type`` / ``guided_decoding_guide``
  (TYPE_STRING; types ``json``, ``json_schema``, ``regex``, ``ebnf_grammar``);
- ``text_output`` (TYPE_STRING, dims ``[-1]``: per batch row, one text per beam). There is no
  finish reason and no token count among the outputs, so a ``Generation`` of this contract has
  neither (as with a vLLM backend before 24.12).

Semantics the client must mend: the preprocessing model tokenizes ``stop_words`` and the
executor stops *after* generating them, and postprocessing detokenizes every output token, so
the text ends with the stop string it met; ``strip_stop`` takes it off (vLLM leaves it out).
Temperature 0 is not greedy decoding in TensorRT-LLM's sampling config; greedy is ``top_k`` 1,
which is what the client sends for it. Guided choice (the judges' verdicts) is sent as a
``regex`` guide matching exactly one of the choices (needs the ``tensorrt_llm`` model's
``guided_decoding_backend: xgrammar``).

Both sides use this module: the Triton client (``warriorcoder.runtime.triton``) builds its
requests with ``generation_inputs`` and reads responses with ``decode_text`` and ``strip_stop``;
the scripted stand-in (``warriorcoder.testing.trtllm_server``) declares its model from ``INPUTS``
and ``OUTPUTS`` with ``MAX_BATCH_SIZE`` and reads requests with ``parse_request``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime.vllm import TensorSpec

__all__ = [
    "END_ID",
    "EXCLUDE_INPUT_IN_OUTPUT",
    "GUIDE",
    "GUIDE_TYPE",
    "INPUTS",
    "MAX_BATCH_SIZE",
    "MAX_TOKENS",
    "OUTPUTS",
    "PAD_ID",
    "PERMANENT_TEXTS",
    "SEED",
    "STOP_WORDS",
    "STREAM",
    "TEMPERATURE",
    "TEXT_INPUT",
    "TEXT_OUTPUT",
    "TOP_K",
    "TOP_P",
    "TrtllmRequest",
    "choice_regex",
    "decode_text",
    "encode_outputs",
    "generation_inputs",
    "parse_request",
    "strip_stop",
]

TEXT_INPUT = "text_input"
MAX_TOKENS = "max_tokens"
TEMPERATURE = "temperature"
TOP_P = "top_p"
TOP_K = "top_k"
SEED = "seed"
STOP_WORDS = "stop_words"
EXCLUDE_INPUT_IN_OUTPUT = "exclude_input_in_output"
STREAM = "stream"
END_ID = "end_id"
PAD_ID = "pad_id"
GUIDE_TYPE = "guided_decoding_guide_type"
GUIDE = "guided_decoding_guide"
TEXT_OUTPUT = "text_output"

# The templates' ${triton_max_batch_size}: the value of upstream's examples and of the chart.
MAX_BATCH_SIZE = 64

_S = bytes  # TYPE_STRING
_LOGITS = np.float32  # ${logits_datatype}: TYPE_FP32 in upstream's examples


def _in(name: str, dtype: type, dims: tuple[int, ...] = (1,), optional: bool = True) -> TensorSpec:
    return TensorSpec(name, dtype, dims, optional=optional)


# ensemble/config.pbtxt's inputs, in its order (dims without the batch dimension).
INPUTS = (
    _in(TEXT_INPUT, _S, optional=False),
    _in("decoder_text_input", _S),
    _in(MAX_TOKENS, np.int32, optional=False),
    _in("num_return_sequences", np.int32),
    _in("bad_words", _S, (-1,)),
    _in(STOP_WORDS, _S, (-1,)),
    _in(EXCLUDE_INPUT_IN_OUTPUT, np.bool_),
    _in(END_ID, np.int32),
    _in(PAD_ID, np.int32),
    _in(TOP_K, np.int32),
    _in(TOP_P, np.float32),
    _in(TEMPERATURE, np.float32),
    _in("length_penalty", np.float32),
    _in("repetition_penalty", np.float32),
    _in("min_tokens", np.int32),
    _in("presence_penalty", np.float32),
    _in("frequency_penalty", np.float32),
    _in(SEED, np.uint64),
    _in("return_log_probs", np.bool_),
    _in("return_context_logits", np.bool_),
    _in("return_generation_logits", np.bool_),
    _in("return_perf_metrics", np.bool_),
    _in("beam_width", np.int32),
    _in(STREAM, np.bool_),
    _in("prompt_embedding_table", np.float16, (-1, -1)),
    _in("prompt_table_extra_id", np.uint64),
    _in("prompt_vocab_size", np.int32),
    _in("embedding_bias_words", _S, (-1,)),
    _in("embedding_bias_weights", np.float32, (-1,)),
    _in("lora_task_id", np.uint64),
    _in("lora_weights", np.float16, (-1, -1)),
    _in("lora_config", np.int32, (-1, 3)),
    _in(GUIDE_TYPE, _S),
    _in(GUIDE, _S),
)
# Its outputs (upstream declares kv_cache_alloc_total_blocks twice; once here).
OUTPUTS = (
    TensorSpec(TEXT_OUTPUT, _S, (-1,)),
    TensorSpec("cum_log_probs", np.float32, (-1,)),
    TensorSpec("output_log_probs", np.float32, (-1, -1)),
    TensorSpec("context_logits", _LOGITS, (-1, -1)),
    TensorSpec("generation_logits", _LOGITS, (-1, -1, -1)),
    TensorSpec("batch_index", np.int32, (1,)),
    TensorSpec("sequence_index", np.int32, (1,)),
    TensorSpec("kv_cache_alloc_new_blocks", np.int32, (1,)),
    TensorSpec("kv_cache_reused_blocks", np.int32, (1,)),
    TensorSpec("kv_cache_alloc_total_blocks", np.int32, (1,)),
    TensorSpec("arrival_time_ns", np.int64, (1,)),
    TensorSpec("first_scheduled_time_ns", np.int64, (1,)),
    TensorSpec("first_token_time_ns", np.int64, (1,)),
    TensorSpec("last_token_time_ns", np.int64, (1,)),
    TensorSpec("acceptance_rate", np.float32, (1,)),
    TensorSpec("total_accepted_draft_tokens", np.int32, (1,)),
    TensorSpec("total_draft_tokens", np.int32, (1,)),
)

# In-band texts of the backend (r25.05's inflight_batcher_llm/src, TensorRT-LLM's executor and
# the preprocessing model) that say the request itself is wrong: retrying cannot help. The
# executor's full queue ("Maximum queue size ... please try again later") stays retryable.
PERMANENT_TEXTS = (
    r"\bexceeds maximum input length\b",
    r"\bis not present in the request\b",
    r"\bStreaming is only supported if model is deployed using decoupled mode\b",
    r"\bBatch size > 1 requires\b",
    r"\bUnsupported model type\b",
    r"\bGuided decoding is currently supported with 'xgrammar' backend\b",
)

_UINT64 = 2**64


@dataclass(frozen=True, slots=True)
class TrtllmRequest:
    """One batch row of a request, as the ensemble reads it."""

    prompt: str
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    exclude_input_in_output: bool = False  # absent: the prompt precedes the output
    stream: bool = False
    guide_type: str | None = None
    guide: str | None = None


def choice_regex(choices: Sequence[str]) -> str:
    """A regex guide whose only matches are the ``choices`` (each literally)."""
    if not choices or not all(choices):
        raise ValueError("choices: expected a non-empty list of non-empty strings")
    return "(" + "|".join(re.escape(c) for c in choices) + ")"


def generation_inputs(
    prompt: str,
    params: SamplingParams,
    *,
    stop: Sequence[str] = (),
    choices: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """What the arena sends: one non-streamed completion of ``prompt`` (a batch of one), the
    prompt not echoed, one tensor per sampling knob."""
    inputs = {
        TEXT_INPUT: _strings([prompt]),
        MAX_TOKENS: np.array([[params.max_tokens]], dtype=np.int32),
        TOP_P: np.array([[params.top_p]], dtype=np.float32),
        EXCLUDE_INPUT_IN_OUTPUT: np.array([[True]], dtype=np.bool_),
        STREAM: np.array([[False]], dtype=np.bool_),
    }
    if params.temperature > 0:
        inputs[TEMPERATURE] = np.array([[params.temperature]], dtype=np.float32)
    else:  # greedy is top_k 1 in TensorRT-LLM (module docstring)
        inputs[TOP_K] = np.array([[1]], dtype=np.int32)
    if params.seed is not None:
        inputs[SEED] = np.array([[params.seed % _UINT64]], dtype=np.uint64)
    if stop:
        if not all(stop):
            raise ValueError("stop: expected non-empty strings")
        inputs[STOP_WORDS] = _strings(list(stop))
    if choices:
        inputs[GUIDE_TYPE] = _strings(["regex"])
        inputs[GUIDE] = _strings([choice_regex(choices)])
    return inputs


def decode_text(array: np.ndarray | None) -> str:
    """The text of one response's ``text_output`` for a batch of one (the first beam); empty
    when the response carries none (a decoupled stream's final, empty response)."""
    if array is None or array.size == 0:
        return ""
    first = array.reshape(-1)[0]
    if isinstance(first, bytes):
        return first.decode("utf-8", errors="replace")
    return str(first)


def strip_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` without the stop string it ends with (the longest that matches), as vLLM
    returns it."""
    for s in sorted((s for s in stop if s), key=len, reverse=True):
        if text.endswith(s):
            return text[: -len(s)]
    return text


# ----------------------------------------------------------------------------- server side

_SPECS = {spec.name: spec for spec in INPUTS}


def parse_request(data: Mapping[str, np.ndarray]) -> list[TrtllmRequest]:
    """Read a request's tensors as the ensemble does: one ``TrtllmRequest`` per batch row.

    Raises ``ValueError`` naming the tensor for what Triton would refuse against the config
    (an undeclared input, a missing required one, a wrong dtype or shape, rows that disagree).
    """
    for name in data:
        if name not in _SPECS:
            raise ValueError(f"unexpected inference input '{name}' for model 'ensemble'")
    for spec in INPUTS:
        if not spec.optional and spec.name not in data:
            raise ValueError(f"expected input '{spec.name}' for model 'ensemble' is missing")
    rows = {np.asarray(a).shape[0] if np.asarray(a).ndim else 0 for a in data.values()}
    if len(rows) != 1 or 0 in rows:
        raise ValueError("inputs: expected one leading batch dimension, the same for all inputs")
    (batch,) = rows
    if batch > MAX_BATCH_SIZE:
        raise ValueError(f"inputs: batch size {batch} exceeds max_batch_size {MAX_BATCH_SIZE}")
    for name, array in data.items():
        _check(_SPECS[name], np.asarray(array))
    return [_row(data, i) for i in range(batch)]


def encode_outputs(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """One response's ``text_output`` for a batch of ``len(texts)`` rows, one beam each."""
    return {TEXT_OUTPUT: np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)}


def _check(spec: TensorSpec, array: np.ndarray) -> None:
    want = np.dtype(np.object_) if spec.dtype is bytes else np.dtype(spec.dtype)
    if array.dtype != want and not (spec.dtype is bytes and array.dtype.kind in "SO"):
        raise ValueError(f"{spec.name}: expected {spec.triton_dtype}, got {array.dtype}")
    dims = array.shape[1:]
    if len(dims) != len(spec.shape) or any(
        d != -1 and d != got for d, got in zip(spec.shape, dims, strict=True)
    ):
        raise ValueError(
            f"{spec.name}: expected shape [batch, {', '.join(map(str, spec.shape))}], "
            f"got {list(array.shape)}"
        )


def _row(data: Mapping[str, np.ndarray], i: int) -> TrtllmRequest:
    def scalar(name: str) -> object | None:
        return np.asarray(data[name])[i].reshape(-1)[0] if name in data else None

    def text(name: str) -> str | None:
        value = scalar(name)
        if value is None:
            return None
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def number(name: str, kind: type[int] | type[float]) -> int | float | None:
        value = scalar(name)
        return None if value is None else kind(value)  # type: ignore[arg-type, call-overload]

    max_tokens = int(number(MAX_TOKENS, int) or 0)
    if max_tokens < 1:
        raise ValueError(f"{MAX_TOKENS}: must be >= 1, got {max_tokens}")
    stop: tuple[str, ...] = ()
    if STOP_WORDS in data:
        stop = tuple(
            s.decode("utf-8") if isinstance(s, bytes) else str(s)
            for s in np.asarray(data[STOP_WORDS])[i].reshape(-1)
            if s
        )
    guide_type = text(GUIDE_TYPE)
    if guide_type is not None and guide_type not in (
        "json",
        "json_schema",
        "regex",
        "ebnf_grammar",
    ):
        raise ValueError(f"{GUIDE_TYPE}: invalid guide type {guide_type!r}")
    top_k = number(TOP_K, int)
    seed = number(SEED, int)
    return TrtllmRequest(
        prompt=text(TEXT_INPUT) or "",
        max_tokens=max_tokens,
        temperature=number(TEMPERATURE, float),
        top_p=number(TOP_P, float),
        top_k=None if top_k is None else int(top_k),
        seed=None if seed is None else int(seed),
        stop=stop,
        exclude_input_in_output=bool(scalar(EXCLUDE_INPUT_IN_OUTPUT) or False),
        stream=bool(scalar(STREAM) or False),
        guide_type=guide_type,
        guide=text(GUIDE),
    )


def _strings(values: Sequence[str]) -> np.ndarray:
    """One batch row of strings: shape ``[1, len(values)]``."""
    return np.array([[v.encode("utf-8") for v in values]], dtype=np.object_)
