"""The Triton vLLM backend's request contract in one place: tensors, sampling parameters, parsing.

Usage::

    release = BackendRelease.parse("25.11")  # the Triton container's release (``r25.11`` too)
    inputs = generation_inputs(prompt, params, stop=["<|im_end|>"], choices=["[[A]]"],
                               release=release)
    req = parse_request(inputs)  # as the backend reads it: prompt, checked params, choices
    outputs = encode_outputs([Completion("[[A]]", "stop", 3)], req.returns)  # one response
    texts = decode_outputs(outputs[TEXT_OUTPUT])

It follows triton-inference-server/vllm_backend, read on its release branches r24.12 to r26.01:
``src/model.py`` (``_auto_complete_inputs_and_outputs``: the tensors; up to r25.10 also
``_get_input_tensors`` and ``_create_response``), ``src/utils/request.py`` (from r25.11:
``GenerateRequest._get_input_tensors`` and ``create_response``) and ``src/utils/
vllm_backend_utils.py`` (``TritonSamplingParams.from_dict``: how ``sampling_parameters`` becomes
vLLM's ``SamplingParams``):

- ``text_input`` (BYTES, the raw prompt: chat templates are applied by the client). vLLM tokenizes
  it *with* special tokens, so a tokenizer that adds a BOS (Llama 3, DeepSeek) adds it in front of
  whatever the prompt holds: the client sends rendered prompts without their template's leading
  BOS (``warriorcoder.runtime.roster``), and the local servers tokenize the same way;
- ``stream`` (BOOL, optional, default false);
- ``sampling_parameters`` (BYTES, optional: a JSON object; absent, the request's own parameters
  are the sampling parameters);
- ``exclude_input_in_output`` (BOOL, optional; absent, the prompt is prepended to the output
  unless streaming; false while streaming is rejected);
- ``return_finish_reason`` and ``return_num_output_tokens`` (BOOL, optional, from r24.12; an older
  backend rejects them as unexpected inputs, so they are sent only to releases that declare them)
  ask for the outputs ``finish_reason`` (BYTES, one per sample: ``str(output.finish_reason)``,
  i.e. ``stop``, ``length``, ``abort`` or ``None``) and ``num_output_tokens`` (UINT32, one per
  sample: ``len(output.token_ids)``, the tokens of this response);
- ``text_output`` (BYTES, one text per sample, ``n`` of them).

Guided choice (from r25.01) is one key of ``sampling_parameters`` whose value is a JSON *string*:
``from_dict`` runs ``json.loads`` on it. The key is ``guided_decoding`` up to r25.10 and
``structured_outputs`` from r25.11 (``StructuredOutputsParams``); ``BackendRelease`` picks it.

How the real backend rejects a request is kept exactly, because the client classifies the text:
``from_dict`` catches *any* error building the sampling parameters (a bad value, an unknown key,
a nested object where a JSON string is due), logs it and returns None, and the next line,
``sampling_params.lora_name``, fails, so the in-band error is always ``Error generating stream:
'NoneType' object has no attribute 'lora_name'`` (``SAMPLING_REJECTED``). ``sampling_parameters``
that are not JSON fail earlier, in ``execute`` (``_verify_loras``'s ``json.loads``): the Python
backend answers ``Failed to process the request(s) for model '<name>', message: JSONDecodeError:
...``. The local servers answer these same texts and, where the real backend only logs the cause,
append it in parentheses. Guided forms other than ``choice`` (regex, JSON schema, ...) are valid
for vLLM but not served here: they are refused as ``unsupported``.

Both sides use this module: the Triton client (``warriorcoder.runtime.triton``) builds its requests
with ``generation_inputs``; the local servers (``warriorcoder.localmodels.pytriton`` and the models
bound on it) declare their tensors from ``INPUTS`` and ``OUTPUTS``, read requests with
``parse_request`` and answer with ``encode_outputs``. A change of the wire format is a change here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from warriorcoder.proto.messages import SamplingParams

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_RELEASE",
    "EXCLUDE_INPUT_IN_OUTPUT",
    "FINISH_REASON",
    "GUIDED_KEYS",
    "INPUTS",
    "NUM_OUTPUT_TOKENS",
    "OUTPUTS",
    "RETURN_FINISH_REASON",
    "RETURN_NUM_OUTPUT_TOKENS",
    "SAMPLING_KEYS",
    "SAMPLING_PARAMETERS",
    "SAMPLING_REJECTED",
    "STREAM",
    "TEXT_INPUT",
    "TEXT_OUTPUT",
    "BackendRelease",
    "Completion",
    "Returns",
    "TensorSpec",
    "VllmRequest",
    "decode_outputs",
    "encode_inputs",
    "encode_outputs",
    "generation_inputs",
    "guided_choices",
    "parse_request",
    "requested_outputs",
    "sampling_parameters",
    "stop_strings",
    "validate_sampling_params",
]

TEXT_INPUT = "text_input"
STREAM = "stream"
SAMPLING_PARAMETERS = "sampling_parameters"
EXCLUDE_INPUT_IN_OUTPUT = "exclude_input_in_output"
RETURN_FINISH_REASON = "return_finish_reason"
RETURN_NUM_OUTPUT_TOKENS = "return_num_output_tokens"
TEXT_OUTPUT = "text_output"
FINISH_REASON = "finish_reason"
NUM_OUTPUT_TOKENS = "num_output_tokens"

DEFAULT_MAX_TOKENS = 16  # vLLM's SamplingParams default when max_tokens is not sent

# What the real backend answers for any sampling parameters vLLM refuses (module docstring).
SAMPLING_REJECTED = "Error generating stream: 'NoneType' object has no attribute 'lora_name'"
GUIDED_KEYS = ("guided_decoding", "structured_outputs")  # up to r25.10, from r25.11
DEFAULT_RELEASE = "25.11"  # models.<name>.vllm_release when not given


@dataclass(frozen=True, slots=True, order=True)
class BackendRelease:
    """A release of Triton's vLLM backend (the container's ``YY.MM``), and what it takes."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> BackendRelease:
        """``25.11`` or ``r25.11``; ``ValueError`` otherwise."""
        m = re.fullmatch(r"r?(\d{2})\.(\d{2})", text.strip())
        if m is None or not 1 <= int(m.group(2)) <= 12:
            raise ValueError(f"vLLM backend release: expected YY.MM (e.g. 25.11), got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.year:02d}.{self.month:02d}"

    @property
    def additional_outputs(self) -> bool:
        """``return_finish_reason`` / ``return_num_output_tokens`` are declared (from r24.12)."""
        return (self.year, self.month) >= (24, 12)

    @property
    def guided(self) -> bool:
        """Guided decoding is read from ``sampling_parameters`` (from r25.01)."""
        return (self.year, self.month) >= (25, 1)

    @property
    def guided_key(self) -> str:
        """The ``sampling_parameters`` key of guided decoding in this release."""
        return GUIDED_KEYS[1] if (self.year, self.month) >= (25, 11) else GUIDED_KEYS[0]


_DEFAULT = BackendRelease.parse(DEFAULT_RELEASE)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One tensor of the contract; ``dtype`` is PyTriton's spelling (``bytes``, ``np.bool_``...)."""

    name: str
    dtype: type
    shape: tuple[int, ...]
    optional: bool = False

    @property
    def triton_dtype(self) -> str:
        """The type name of Triton's protocol (``BYTES``, ``BOOL``, ``UINT32``)."""
        return _TRITON_DTYPES[self.dtype]


# Also the TensorRT-LLM contract's types (warriorcoder.runtime.trtllm shares TensorSpec).
_TRITON_DTYPES: dict[type, str] = {
    bytes: "BYTES",
    np.bool_: "BOOL",
    np.uint32: "UINT32",
    np.int32: "INT32",
    np.int64: "INT64",
    np.uint64: "UINT64",
    np.float16: "FP16",
    np.float32: "FP32",
    np.uint8: "UINT8",
}

INPUTS = (
    TensorSpec(TEXT_INPUT, bytes, (1,)),
    TensorSpec(STREAM, np.bool_, (1,), optional=True),
    TensorSpec(SAMPLING_PARAMETERS, bytes, (1,), optional=True),
    TensorSpec(EXCLUDE_INPUT_IN_OUTPUT, np.bool_, (1,), optional=True),
    TensorSpec(RETURN_FINISH_REASON, np.bool_, (1,), optional=True),
    TensorSpec(RETURN_NUM_OUTPUT_TOKENS, np.bool_, (1,), optional=True),
)
OUTPUTS = (
    TensorSpec(TEXT_OUTPUT, bytes, (-1,)),
    TensorSpec(FINISH_REASON, bytes, (-1,)),
    TensorSpec(NUM_OUTPUT_TOKENS, np.uint32, (-1,)),
)


@dataclass(frozen=True, slots=True)
class Returns:
    """The additional outputs a request asked for."""

    finish_reason: bool = False
    num_output_tokens: bool = False


@dataclass(frozen=True, slots=True)
class Completion:
    """One sample of a response: its text, why it ended, how many tokens it took.

    ``finish_reason`` is vLLM's: ``stop`` (EOS or a stop string), ``length`` (``max_tokens`` or
    the context), ``None`` while a stream is still running.
    """

    text: str
    finish_reason: str = "stop"
    tokens: int = 0


# ----------------------------------------------------------------------------- client side


def sampling_parameters(
    params: SamplingParams,
    stop: Sequence[str] = (),
    choices: Sequence[str] | None = None,
    *,
    release: BackendRelease | None = None,
) -> dict[str, Any]:
    """The ``sampling_parameters`` object of ``params``, ``stop`` strings and guided ``choices``.

    Guided choice goes under the key of ``release`` (default ``DEFAULT_RELEASE``), as the JSON
    text the backend ``json.loads``.
    """
    release = release or _DEFAULT
    sp: dict[str, Any] = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
    }
    if stop:
        sp["stop"] = list(stop)
    if params.seed is not None:
        sp["seed"] = params.seed
    if choices:
        if not release.guided:
            raise ValueError(f"vLLM backend {release} has no guided decoding (from 25.01)")
        # vLLM's guided decoding: the output is exactly one of the choices.
        sp[release.guided_key] = json.dumps({"choice": list(choices)}, ensure_ascii=False)
    return sp


def encode_inputs(
    prompt: str,
    sampling: Mapping[str, Any] | str | None = None,
    *,
    stream: bool | None = False,
    exclude_input_in_output: bool | None = True,
    returns: Returns | None = None,
) -> dict[str, np.ndarray]:
    """A request's input tensors; ``None`` leaves an optional tensor out.

    ``sampling`` is the sampling parameters object (sent as JSON) or its JSON text as is;
    ``returns`` adds the ``return_*`` flags (both, true or false) for the additional outputs.
    """
    inputs = {TEXT_INPUT: _bytes(prompt)}
    if stream is not None:
        inputs[STREAM] = np.array([stream], dtype=np.bool_)
    if sampling is not None:
        text = sampling if isinstance(sampling, str) else orjson.dumps(dict(sampling)).decode()
        inputs[SAMPLING_PARAMETERS] = _bytes(text)
    if exclude_input_in_output is not None:
        inputs[EXCLUDE_INPUT_IN_OUTPUT] = np.array([exclude_input_in_output], dtype=np.bool_)
    if returns is not None:
        inputs[RETURN_FINISH_REASON] = np.array([returns.finish_reason], dtype=np.bool_)
        inputs[RETURN_NUM_OUTPUT_TOKENS] = np.array([returns.num_output_tokens], dtype=np.bool_)
    return inputs


def generation_inputs(
    prompt: str,
    params: SamplingParams,
    *,
    stop: Sequence[str] = (),
    choices: Sequence[str] | None = None,
    release: BackendRelease | None = None,
) -> dict[str, np.ndarray]:
    """What the arena sends: one non-streamed completion of ``prompt``, the prompt not echoed,
    with its finish reason and token count where ``release`` (default ``DEFAULT_RELEASE``) has
    them."""
    release = release or _DEFAULT
    extra = release.additional_outputs
    return encode_inputs(
        prompt,
        sampling_parameters(params, stop, choices, release=release),
        stream=False,
        exclude_input_in_output=True,
        returns=Returns(finish_reason=True, num_output_tokens=True) if extra else None,
    )


def requested_outputs(release: BackendRelease) -> list[str]:
    """The output tensors to ask ``release`` for (an older one does not declare the extra ones)."""
    if release.additional_outputs:
        return [TEXT_OUTPUT, FINISH_REASON, NUM_OUTPUT_TOKENS]
    return [TEXT_OUTPUT]


def decode_outputs(array: np.ndarray | None) -> list[str]:
    """The texts of one response's ``text_output`` or ``finish_reason`` (none when absent)."""
    if array is None:
        return []
    return [
        x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x)
        for x in array.reshape(-1)
    ]


# ----------------------------------------------------------------------------- server side


@dataclass(frozen=True, slots=True)
class VllmRequest:
    """One request of the contract, as the backend reads it."""

    prompt: str
    params: dict[str, Any]  # validated sampling parameters, guided decoding taken out
    choices: tuple[str, ...] | None  # guided choice: the output is exactly one of these
    stream: bool
    prepend: bool  # exclude_input_in_output is false: the prompt precedes each output
    returns: Returns = Returns()  # the additional outputs asked for


def parse_request(
    data: Mapping[str, np.ndarray],
    parameters: Mapping[str, Any] | None = None,
    *,
    model: str = "model",
    release: BackendRelease | None = None,
) -> VllmRequest:
    """Read a request's tensors as the backend does; ``ValueError`` if it would reject it.

    ``parameters`` are the request's own parameters, used when ``sampling_parameters`` is absent.
    ``model`` names the model in the error texts that carry it. With ``release``, guided decoding
    is read under that release's key only; without, under either (the local servers).
    """
    if TEXT_INPUT not in data:
        raise ValueError(f"{TEXT_INPUT}: missing")
    prompt = _text(data, TEXT_INPUT)
    stream = bool(_first(data, STREAM)) if STREAM in data else False
    if EXCLUDE_INPUT_IN_OUTPUT in data:
        prepend = not bool(_first(data, EXCLUDE_INPUT_IN_OUTPUT))
    else:
        prepend = not stream
    if prepend and stream:
        raise ValueError(
            "Error generating stream: When streaming, `exclude_input_in_output` = False is not "
            "allowed."
        )
    if SAMPLING_PARAMETERS in data:
        raw = _text(data, SAMPLING_PARAMETERS)
        try:
            params = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"Failed to process the request(s) for model '{model}', message: "
                f"JSONDecodeError: {exc} ({SAMPLING_PARAMETERS}: invalid JSON)"
            ) from None
    else:
        params = dict(parameters or {})
    keys = GUIDED_KEYS if release is None else (release.guided_key,)
    checked = validate_sampling_params(params, guided_keys=keys)
    guided = [checked.pop(k) for k in keys if k in checked]
    if len(guided) > 1:
        raise ValueError(f"{SAMPLING_REJECTED} (both {' and '.join(keys)} given)")
    choices = tuple(guided[0]) if guided else None
    returns = Returns(
        finish_reason=_flag(data, RETURN_FINISH_REASON),
        num_output_tokens=_flag(data, RETURN_NUM_OUTPUT_TOKENS),
    )
    return VllmRequest(prompt, checked, choices, stream, prepend, returns)


def encode_outputs(
    samples: Sequence[Completion | str], returns: Returns = Returns()
) -> dict[str, np.ndarray]:
    """One response's tensors: ``text_output`` (one text per sample) and the outputs asked for.

    A sample given as a plain text is a ``Completion`` of that text.
    """
    completions = [Completion(c) if isinstance(c, str) else c for c in samples]
    out = {TEXT_OUTPUT: np.array([c.text.encode("utf-8") for c in completions], dtype=np.object_)}
    if returns.finish_reason:
        reasons = [c.finish_reason.encode("utf-8") for c in completions]
        out[FINISH_REASON] = np.array(reasons, dtype=np.object_)
    if returns.num_output_tokens:
        out[NUM_OUTPUT_TOKENS] = np.array([c.tokens for c in completions], dtype=np.uint32)
    return out


def _bytes(value: str) -> np.ndarray:
    return np.array([value.encode("utf-8")], dtype=np.object_)


def _first(data: Mapping[str, np.ndarray], name: str) -> Any:
    array = np.asarray(data[name]).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name}: empty tensor")
    return array[0]


def _flag(data: Mapping[str, np.ndarray], name: str) -> bool:
    return bool(_first(data, name)) if name in data else False


def _text(data: Mapping[str, np.ndarray], name: str) -> str:
    value = _first(data, name)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{name}: not UTF-8: {exc}") from None
    return str(value)


# ----------------------------------------------------------------------------- sampling parameters

_INT_KEYS = frozenset({"n", "top_k", "max_tokens", "seed"})
_FLOAT_KEYS = frozenset(
    {"temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"}
)
_BOOL_KEYS = frozenset({"ignore_eos", "skip_special_tokens"})
SAMPLING_KEYS = _INT_KEYS | _FLOAT_KEYS | _BOOL_KEYS | {"stop", *GUIDED_KEYS}


def stop_strings(params: Mapping[str, Any]) -> list[str]:
    """The stop strings of params as a list (vLLM accepts one string or a list)."""
    stop = params.get("stop")
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _rejected(detail: str) -> ValueError:
    """The real backend's in-band error for refused sampling parameters, with the cause it logs."""
    return ValueError(f"{SAMPLING_REJECTED} ({SAMPLING_PARAMETERS}.{detail})")


def _check_type(key: str, value: Any) -> None:
    if key in _INT_KEYS:
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif key in _FLOAT_KEYS:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        expected = "a finite number"
    elif key in _BOOL_KEYS:
        ok, expected = isinstance(value, bool), "a boolean"
    else:  # stop
        ok = isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(s, str) for s in value)
        )
        expected = "a string or a list of strings"
    if not ok:
        raise _rejected(f"{key}: expected {expected}, got {value!r}")


_RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "n": ("must be >= 1", lambda v: v >= 1),
    "max_tokens": ("must be >= 1", lambda v: v >= 1),
    "top_k": ("must be -1, 0 or >= 1", lambda v: v >= -1),
    "temperature": ("must be >= 0", lambda v: v >= 0),
    "top_p": ("must be in (0, 1]", lambda v: 0 < v <= 1),
    "min_p": ("must be in [0, 1]", lambda v: 0 <= v <= 1),
    "presence_penalty": ("must be in [-2, 2]", lambda v: -2 <= v <= 2),
    "frequency_penalty": ("must be in [-2, 2]", lambda v: -2 <= v <= 2),
    "repetition_penalty": ("must be > 0", lambda v: v > 0),
    "stop": ("must not contain an empty string", lambda v: "" not in stop_strings({"stop": v})),
}


def validate_sampling_params(
    params: Any, *, guided_keys: Sequence[str] = GUIDED_KEYS
) -> dict[str, Any]:
    """Check params as vLLM's SamplingParams would; ``ValueError`` with the backend's text, the
    offending key in parentheses. Guided decoding (under ``guided_keys``) becomes its choices.

    Like the Triton vLLM backend, keys whose value is null are dropped (vLLM's default applies).
    """
    if not isinstance(params, Mapping):
        # _verify_loras calls .pop("lora_name", None) on it before anything else.
        raise ValueError(
            f"{SAMPLING_REJECTED} ({SAMPLING_PARAMETERS}: expected a JSON object, "
            f"got {type(params).__name__})"
        )
    checked: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if key in guided_keys:
            checked[key] = guided_choices(value, key=key)
            continue
        if key not in SAMPLING_KEYS or key in GUIDED_KEYS:
            raise _rejected(f"{key}: unknown sampling parameter")
        _check_type(key, value)
        rule = _RANGES.get(key)
        if rule is not None and not rule[1](value):
            raise _rejected(f"{key}: {rule[0]}, got {value!r}")
        checked[key] = value
    return checked


def guided_choices(value: Any, *, key: str = GUIDED_KEYS[0]) -> list[str]:
    """The choices of a guided-decoding value: a JSON string ``{"choice": [...]}``.

    The backend runs ``json.loads`` on the value, so a nested object (or anything not a string)
    is refused with ``SAMPLING_REJECTED``, as is JSON that vLLM's params class would refuse.
    Other guided forms (regex, json, grammar) are valid for vLLM but unsupported here.
    """
    where = f"{SAMPLING_PARAMETERS}.{key}"
    if not isinstance(value, str):
        raise ValueError(
            f"{SAMPLING_REJECTED} ({where}: the JSON object must be str, bytes or bytearray, "
            f"not {type(value).__name__}: send the object as a JSON string)"
        )
    try:
        spec = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{SAMPLING_REJECTED} ({where}: invalid JSON: {exc})") from None
    if not isinstance(spec, Mapping):
        raise ValueError(f"{SAMPLING_REJECTED} ({where}: expected a JSON object)")
    if set(spec) != {"choice"}:
        raise ValueError(
            f'{where}: expected {{"choice": [...]}} (other guided forms are unsupported here)'
        )
    choices = spec["choice"]
    if (
        not isinstance(choices, list)
        or not choices
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise ValueError(
            f"{SAMPLING_REJECTED} ({where}.choice: expected a non-empty list of strings)"
        )
    return list(choices)
