"""Triton Inference Server adapter: text generation over ``tritonclient.grpc.aio`` ``stream_infer``.

Usage::

    async with TritonPool(settings.models) as pool:
        gen = await pool.generate("qwen", prompt, SamplingParams(...), stop=["<|im_end|>"],
                                  role="response")

The request contract is Triton's vLLM backend: ``text_input``, ``sampling_parameters`` (JSON),
``exclude_input_in_output=true`` and ``stream=false`` in; ``text_output`` out. The backend is
decoupled, so each request opens one gRPC stream and reads responses until the final one.
Errors are typed: ``RetryableInferenceError`` (unavailable, overloaded, timed out) and
``InferenceError`` (bad request, unknown model) — in-band errors and gRPC transport errors alike.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
import numpy as np
import orjson
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from warriorcoder.errors import ArenaError, RetryableError
from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime import metrics
from warriorcoder.runtime.settings import ModelSettings

__all__ = [
    "Generation",
    "InferenceError",
    "InferenceTimeout",
    "RetryableInferenceError",
    "TritonPool",
]


class InferenceError(ArenaError):
    """A request the backend will not serve however often it is retried."""

    reason = "inference_failed"

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"{model}: {message}")
        self.model = model


class RetryableInferenceError(InferenceError, RetryableError):
    """A failure that may pass on retry: backend unavailable, overloaded or too slow."""

    reason = "retries_exhausted"


class InferenceTimeout(RetryableInferenceError):
    """No final response in time (our deadline or gRPC's)."""


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    latency_s: float


_RETRYABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}
# In-band error texts that say the request itself is wrong; anything else is taken as transient
# (engine restarting, out of KV-cache, ...), which bounded redelivery then turns into a dead letter.
_PERMANENT_IN_BAND = (
    "unknown model",
    "unknown sampling parameter",
    "unexpected inference input",
    "expected",
    "invalid",
    "not found",
    "unsupported",
    "must be",
)


def classify_in_band(model: str, message: str) -> InferenceError:
    low = message.lower()
    if any(p in low for p in _PERMANENT_IN_BAND):
        return InferenceError(model, message)
    return RetryableInferenceError(model, message)


def classify_rpc(model: str, exc: grpc.RpcError) -> InferenceError:
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    text = f"gRPC {code.name if code else 'error'}: {detail}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return InferenceTimeout(model, f"no final response within the deadline ({text})")
    if code in _RETRYABLE_CODES:
        return RetryableInferenceError(model, text)
    if code == grpc.StatusCode.NOT_FOUND or code == grpc.StatusCode.INVALID_ARGUMENT:
        return InferenceError(model, text)
    return RetryableInferenceError(model, text)


def _bytes_input(name: str, value: str) -> InferInput:
    arr = np.array([value.encode("utf-8")], dtype=np.object_)
    i = InferInput(name, [1], "BYTES")
    i.set_data_from_numpy(arr)
    return i


def _bool_input(name: str, value: bool) -> InferInput:
    i = InferInput(name, [1], "BOOL")
    i.set_data_from_numpy(np.array([value], dtype=np.bool_))
    return i


def vllm_request(
    model: str,
    prompt: str,
    params: SamplingParams,
    stop: list[str],
    request_id: str,
    choices: list[str] | None = None,
) -> dict[str, Any]:
    """The stream_infer request dict of the vLLM backend contract."""
    sp: dict[str, Any] = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
    }
    if stop:
        sp["stop"] = stop
    if params.seed is not None:
        sp["seed"] = params.seed
    if choices:
        # vLLM's guided decoding: the output is exactly one of the choices.
        sp["guided_decoding"] = {"choice": choices}
    return {
        "model_name": model,
        "inputs": [
            _bytes_input("text_input", prompt),
            _bool_input("stream", False),
            _bytes_input("sampling_parameters", orjson.dumps(sp).decode()),
            _bool_input("exclude_input_in_output", True),
        ],
        "outputs": [InferRequestedOutput("text_output")],
        "request_id": request_id,
    }


def _text_of(result: Any) -> str:
    arr = result.as_numpy("text_output")
    if arr is None:
        return ""
    return "".join(
        x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x)
        for x in arr.reshape(-1)
    )


def _is_final(result: Any) -> bool:
    params = result.get_response().parameters
    flag = params.get("triton_final_response")
    return bool(flag is not None and flag.bool_param)


class _Backend:
    """One configured model: its client, its concurrency limit."""

    def __init__(self, name: str, cfg: ModelSettings, client: grpcclient.InferenceServerClient):
        self.name = name
        self.cfg = cfg
        self.client = client
        self.slots = asyncio.Semaphore(cfg.max_concurrency)


class TritonPool(AbstractAsyncContextManager["TritonPool"]):
    """Clients for the configured models, one gRPC channel per Triton URL."""

    def __init__(self, models: Mapping[str, ModelSettings], *, names: list[str] | None = None):
        self._models = {n: models[n] for n in (names if names is not None else list(models))}
        self._clients: dict[str, grpcclient.InferenceServerClient] = {}
        self._backends: dict[str, _Backend] = {}

    async def __aenter__(self) -> TritonPool:
        for name, cfg in self._models.items():
            client = self._clients.get(cfg.triton_url)
            if client is None:
                client = self._clients[cfg.triton_url] = grpcclient.InferenceServerClient(
                    cfg.triton_url
                )
            self._backends[name] = _Backend(name, cfg, client)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    @property
    def names(self) -> list[str]:
        return list(self._backends)

    def guided(self, model: str) -> bool:
        """Whether ``model``'s backend takes constrained choices (``guided_choice``)."""
        b = self._backends.get(model)
        return b is not None and b.cfg.guided_choice

    async def ready(self) -> dict[str, bool]:
        """Each model's readiness as Triton reports it (False when unreachable)."""

        async def one(b: _Backend) -> bool:
            try:
                return bool(await b.client.is_model_ready(b.cfg.triton_model))
            except (InferenceServerException, grpc.RpcError):
                return False

        results = await asyncio.gather(*(one(b) for b in self._backends.values()))
        return dict(zip(self._backends, results, strict=True))

    async def generate(
        self,
        model: str,
        prompt: str,
        params: SamplingParams,
        *,
        stop: list[str] | None = None,
        choices: list[str] | None = None,
        role: str,
    ) -> Generation:
        """Generate a completion of ``prompt``; raises ``InferenceError`` or its retryable kind.

        With ``choices`` (only for models configured with ``guided_choice``) the backend returns
        exactly one of them.
        """
        backend = self._backends.get(model)
        if backend is None:
            raise InferenceError(model, "model is not configured in this service")
        async with backend.slots:
            start = time.monotonic()
            outcome = "ok"
            try:
                text = await asyncio.wait_for(
                    self._stream_once(backend, prompt, params, stop or [], choices),
                    timeout=backend.cfg.timeout_s,
                )
            except TimeoutError:
                outcome = "timeout"
                raise InferenceTimeout(
                    model, f"no final response within {backend.cfg.timeout_s:g}s"
                ) from None
            except InferenceError as exc:
                if isinstance(exc, InferenceTimeout):
                    outcome = "timeout"
                else:
                    outcome = "retryable_error" if exc.retryable else "error"
                raise
            finally:
                elapsed = time.monotonic() - start
                metrics.INFERENCE_SECONDS.labels(model=model, role=role).observe(elapsed)
                metrics.INFERENCE_REQUESTS.labels(model=model, role=role, outcome=outcome).inc()
            metrics.GENERATED_CHARS.labels(model=model, role=role).inc(len(text))
            return Generation(text=text, latency_s=elapsed)

    async def _stream_once(
        self,
        b: _Backend,
        prompt: str,
        params: SamplingParams,
        stop: list[str],
        choices: list[str] | None,
    ) -> str:
        request = vllm_request(b.cfg.triton_model, prompt, params, stop, uuid.uuid4().hex, choices)

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield request

        chunks: list[str] = []
        received = 0
        responses = None
        try:
            responses = b.client.stream_infer(requests(), stream_timeout=b.cfg.timeout_s)
            async for result, error in responses:
                if error is not None:
                    raise classify_in_band(b.name, str(error.message()))
                received += 1
                chunks.append(_text_of(result))
                if _is_final(result):
                    break
        except grpc.RpcError as exc:
            raise classify_rpc(b.name, exc) from exc
        except InferenceServerException as exc:
            raise classify_in_band(b.name, str(exc.message())) from exc
        finally:
            if responses is not None:
                responses.cancel()  # the stream is done with; free it at once
        if received == 0:
            raise RetryableInferenceError(b.name, "stream closed without a response")
        return "".join(chunks)
