"""Triton Inference Server adapter: text generation over ``tritonclient.grpc.aio`` ``stream_infer``.

Usage::

    async with TritonPool(settings.models) as pool:
        gen = await pool.generate("qwen", prompt, SamplingParams(...), stop=["<|im_end|>"],
                                  role="response")

The request contract is Triton's vLLM backend, declared in ``warriorcoder.runtime.vllm``:
``text_input``, ``sampling_parameters`` (JSON), ``exclude_input_in_output=true``, ``stream=false``
and, where the model's ``vllm_release`` has them, ``return_finish_reason`` and
``return_num_output_tokens`` in; ``text_output`` (plus ``finish_reason``, ``num_output_tokens``)
out. A ``Generation`` carries the finish reason (``length``: cut at ``max_tokens``) and the token
count when the backend gave them (else None). The backend is decoupled, so each request opens one
gRPC stream and reads responses until the final one.
Errors are typed: ``RetryableInferenceError`` (unavailable, overloaded, timed out) and
``InferenceError`` (bad request, unknown model) — in-band errors and gRPC transport errors alike.
``classify_in_band`` reads the real backend's texts (see its table in tests/unit/test_vllm.py).

Outages pause instead of failing: each model has a ``Circuit`` (``warriorcoder.runtime.circuit``).
A retryable failure while the model is not ready (Triton unreachable, stopping, or reloading the
model: "unknown model ... has no available versions"), or "unknown model" from a model that
served before, opens it; calls then wait (a consumer's message stays held: the bus sends
``in_progress`` heartbeats meanwhile) while one prober asks ``is_model_ready`` every
``probe_interval_s``, and all resume once it answers ready. A call waits at most ``max_outage_s``
after the outage it met began, then raises ``BackendDown`` (retryable), as a failure did before.
A failure while the model is ready is raised at once, as before. ``available(model)`` and
``wait_available(model)`` let a producer (the challenger) hold off while a model is down.

Concurrency adapts per model and endpoint (``warriorcoder.runtime.limiter``): each endpoint of a
model has a ``ConcurrencyGate`` whose limit grows while the latency per generated token stays
flat and shrinks when it rises or the backend drops requests (a retryable error while the model
is ready, or a timeout), capped by ``max_concurrency``; an outage restarts it from
``min_concurrency``. A request's latency is measured from when it gets its slot, so waiting in
the gate never counts as backend latency; a request still running past what its ``max_tokens``
may take cuts the limit before it finishes. ``limits()`` reads the current limits (also the
``warriorcoder_inference_concurrency_limit`` gauge).

Replicas are balanced on the client (``triton_url: dns:///name:port``, e.g. a headless Service):
the name's addresses are resolved at start and again every ``resolve_interval_s`` by a task the
pool owns (``resolver``: ``resolve_dns`` or a stand-in), each address gets its own client and
concurrency gate, and a request goes to the address with the most free slots (round robin among
equals), so the adaptive limit is learnt per replica. An address that leaves the name is no
longer picked; its client is closed once its last request ends (drained). A resolution that
fails keeps the addresses known; a model with none is down (its circuit re-resolves while
probing). A plain ``host:port`` is one endpoint, as before.

The contract is chosen per model (``contract``): ``vllm`` (above) or ``trtllm``, the
TensorRT-LLM backend's ``ensemble`` / ``tensorrt_llm_bls`` (``warriorcoder.runtime.trtllm``:
one tensor per sampling knob with a batch dimension, ``text_output`` back, the stop string cut).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from warriorcoder.errors import ArenaError, RetryableError
from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime import metrics, trtllm, vllm
from warriorcoder.runtime.circuit import Circuit
from warriorcoder.runtime.limiter import ConcurrencyGate, FixedLimit, GradientLimit, LimitAlgorithm
from warriorcoder.runtime.settings import ConfigError, ModelSettings

__all__ = [
    "BackendDown",
    "Generation",
    "InferenceError",
    "InferenceTimeout",
    "Resolver",
    "RetryableInferenceError",
    "TritonPool",
    "concurrency_limit",
    "infer_request",
    "resolve_dns",
]

LOGGER = logging.getLogger("warriorcoder.runtime.triton")

DNS_SCHEME = "dns:///"
# (host, port) -> the endpoints ("ip:port") that name has now; OSError when it cannot tell.
Resolver = Callable[[str, int], Awaitable[list[str]]]


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


class BackendDown(RetryableInferenceError):
    """The model stayed down (unreachable or not ready) for longer than its ``max_outage_s``."""

    reason = "backend_down"


@dataclass(frozen=True, slots=True)
class Generation:
    """One completion: its text (prompt excluded), latency and, when the backend says, why it
    ended (vLLM's ``stop`` or ``length``) and how many tokens it generated."""

    text: str
    latency_s: float
    finish_reason: str | None = None
    output_tokens: int | None = None
    model_version: str | None = None  # the version Triton says served it (provenance)

    @property
    def truncated(self) -> bool:
        """Cut at ``max_tokens`` (or the context), not ended by the model or a stop string."""
        return self.finish_reason == "length"


_RETRYABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}
# In-band texts that ask for a retry win over everything else ("Unexpected error ..., please
# retry" must stay retryable whatever words it holds). Triton core answers "Request for unknown
# model: 'm' has no available versions" while the model unloads or reloads and while the server
# stops (its models unloading): an outage, not a wrong request.
_RETRY_IN_BAND = re.compile(
    r"\bretry\b|\btry again\b|\btemporar|\bhas no available versions\b", re.IGNORECASE
)
# Triton core's text for a model it does not serve ("... is not found"); from a model that served
# before it means the server restarted and has not loaded it yet.
_UNKNOWN_MODEL = re.compile(r"\bunknown model\b", re.IGNORECASE)
# A readiness probe's own limit: a hung server counts as down instead of stalling the prober.
_PROBE_TIMEOUT_S = 5.0
# In-band texts that say the request itself is wrong, matched as whole words. Anything else is
# taken as transient (engine restarting, out of KV-cache, ...), which bounded redelivery then turns
# into a dead letter. The real backend's texts (triton-inference-server/vllm_backend r25.01-r25.11,
# Triton core, the Python backend) come first, then the local servers' own.
_PERMANENT_IN_BAND = re.compile(
    "|".join(
        (
            # vllm_backend: any sampling parameter vLLM refuses (TritonSamplingParams.from_dict
            # returns None, then `sampling_params.lora_name` fails)
            r"'NoneType' object has no attribute 'lora_name'",
            # Python backend: sampling_parameters that are not JSON (execute -> _verify_loras)
            r"\bJSONDecodeError\b",
            # Triton core: inputs/outputs the model does not declare, missing inputs, no model
            r"\bunexpected inference (?:input|output)\b",
            r"\bexpected \d+ inputs? but got\b",
            # Triton core: a tensor of another dtype or shape than the model config declares
            r"\bdata-type is '\w+', but model '[^']*' expects\b",
            r"\bunexpected shape for input\b",
            r"\bunknown model\b",
            r"\bnot found\b",
            # vllm_backend: LoRA, streaming with the prompt echoed, unsupported request kinds
            r"\bLoRA feature is not enabled\b",
            r"\bis not supported\b",
            r"\bis not allowed\b",
            r"\bdoes not support\b",
            # vLLM: a prompt longer than the context, an empty prompt
            r"\bis longer than the maximum model length\b",
            r"\bprompt cannot be empty\b",
            # the local servers (warriorcoder.runtime.vllm, hf_engine)
            r"\bunknown sampling parameter\b",
            r"\bexpected\b",
            r"\binvalid\b",
            r"\bunsupported\b",
            r"\bmust be\b",
            # the TensorRT-LLM backend (warriorcoder.runtime.trtllm)
            *trtllm.PERMANENT_TEXTS,
        )
    ),
    re.IGNORECASE,
)


def classify_in_band(model: str, message: str) -> InferenceError:
    """The error of an in-band error text: permanent (``InferenceError``) when the text says the
    request is wrong, else retryable."""
    if not _RETRY_IN_BAND.search(message) and _PERMANENT_IN_BAND.search(message):
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


_SPECS = {
    "vllm": {spec.name: spec for spec in vllm.INPUTS},
    "trtllm": {spec.name: spec for spec in trtllm.INPUTS},
}


async def resolve_dns(host: str, port: int) -> list[str]:
    """The ``ip:port`` endpoints of ``host`` now (its A/AAAA records: one per ready pod of a
    headless Service), sorted; ``OSError`` when the name does not resolve."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    ips = {str(info[4][0]) for info in infos}
    return sorted(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips)


def _dns_target(url: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``dns:///host:port`` URL; None for a plain ``host:port``."""
    if not url.startswith(DNS_SCHEME):
        return None
    host, _, port = url[len(DNS_SCHEME) :].rpartition(":")
    return host, int(port)


def infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    request_id: str,
    outputs: Sequence[str] = (vllm.TEXT_OUTPUT,),
    *,
    contract: str = "vllm",
) -> dict[str, Any]:
    """The ``stream_infer`` request of ``inputs`` (``vllm.encode_inputs`` or
    ``trtllm.generation_inputs``, per ``contract``) for ``model``, asking for ``outputs``
    (``vllm.requested_outputs``)."""
    specs = _SPECS[contract]
    infer_inputs = []
    for name, array in inputs.items():
        i = InferInput(name, list(array.shape), specs[name].triton_dtype)
        i.set_data_from_numpy(array)
        infer_inputs.append(i)
    return {
        "model_name": model,
        "inputs": infer_inputs,
        "outputs": [InferRequestedOutput(name) for name in outputs],
        "request_id": request_id,
    }


@dataclass
class _Received:
    """What the responses of one request held, joined (one sample: ``n`` is never sent)."""

    chunks: list[str]
    finish_reason: str | None = None
    tokens: int | None = None
    model_version: str | None = None

    def add_trtllm(self, result: Any) -> None:
        """One response of the TensorRT-LLM contract: its text (it has no finish reason or
        token count)."""
        served = result.get_response().model_version
        if served:
            self.model_version = served
        self.chunks.append(trtllm.decode_text(result.as_numpy(trtllm.TEXT_OUTPUT)))

    def add(self, result: Any) -> None:
        served = result.get_response().model_version  # ModelInferResponse.model_version
        if served:
            self.model_version = served
        self.chunks.append("".join(vllm.decode_outputs(result.as_numpy(vllm.TEXT_OUTPUT))))
        reasons = vllm.decode_outputs(result.as_numpy(vllm.FINISH_REASON))
        if reasons and reasons[0] != "None":  # "None": a stream's response before the last
            self.finish_reason = reasons[0]
        counts = result.as_numpy(vllm.NUM_OUTPUT_TOKENS)
        if counts is not None and counts.size:  # per response: the tokens it added
            self.tokens = (self.tokens or 0) + int(counts.reshape(-1)[0])


def _is_final(result: Any) -> bool:
    params = result.get_response().parameters
    flag = params.get("triton_final_response")
    return bool(flag is not None and flag.bool_param)


def concurrency_limit(cfg: ModelSettings) -> LimitAlgorithm:
    """The limit algorithm of one endpoint of a model configured as ``cfg``."""
    if not cfg.adaptive_concurrency:
        return FixedLimit(cfg.max_concurrency)
    return GradientLimit(
        initial=cfg.start_concurrency,
        min_limit=cfg.min_concurrency,
        max_limit=cfg.max_concurrency,
        tolerance=cfg.latency_tolerance,
    )


def _gate(model: str, endpoint: str, cfg: ModelSettings) -> ConcurrencyGate:
    limit = metrics.INFERENCE_CONCURRENCY_LIMIT.labels(model=model, endpoint=endpoint)
    in_flight = metrics.INFERENCE_IN_FLIGHT.labels(model=model, endpoint=endpoint)

    def observe(now: int, busy: int) -> None:
        limit.set(now)
        in_flight.set(busy)

    return ConcurrencyGate(concurrency_limit(cfg), on_change=observe)


class _Endpoint:
    """One address serving a model: its (shared) client and its own concurrency gate."""

    def __init__(
        self, model: str, address: str, cfg: ModelSettings, client: grpcclient.InferenceServerClient
    ):
        self.address = address
        self.client = client
        self.gate = _gate(model, address, cfg)
        self.removed = False  # left the name: not picked, closed once idle
        self.closed = False

    @property
    def free(self) -> int:
        """Slots free now (negative while requests wait for one)."""
        return self.gate.limit - self.gate.in_flight - self.gate.waiting


class _Backend:
    """One configured model: its endpoints (one per address, each with a concurrency gate
    keyed, like the limit metric, by model and endpoint), its backend's release, and its
    circuit (open while the model is down)."""

    def __init__(
        self,
        name: str,
        cfg: ModelSettings,
        release: vllm.BackendRelease,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ):
        self.name = name
        self.cfg = cfg
        self.release = release
        self.target = _dns_target(cfg.endpoint)
        self.endpoints: dict[str, _Endpoint] = {}
        self.draining: list[_Endpoint] = []
        self.refresh = refresh
        self._turn = 0
        self.circuit = Circuit(name, self.probe, probe_interval_s=cfg.probe_interval_s)
        self.served = False  # seen ready or answering: an "unknown model" later is an outage

    @property
    def endpoint(self) -> str:
        """The first endpoint's address (the only one of a plain ``host:port``)."""
        return next(iter(self.endpoints), self.cfg.endpoint)

    @property
    def gate(self) -> ConcurrencyGate:
        """The first endpoint's gate (the only one of a plain ``host:port``)."""
        return next(iter(self.endpoints.values())).gate

    def pick(self) -> _Endpoint | None:
        """The endpoint with the most free slots; round robin among equals."""
        live = list(self.endpoints.values())
        if not live:
            return None
        self._turn = (self._turn + 1) % len(live)
        order = live[self._turn :] + live[: self._turn]
        return max(order, key=lambda e: e.free)

    def restart(self) -> None:
        """An outage: every endpoint's limit starts over."""
        for e in self.endpoints.values():
            e.gate.restart()

    async def probe(self) -> bool:
        """Whether Triton reports the model ready on any endpoint (resolving the name again
        first when it has none); False when unreachable, failing or hung."""
        if not self.endpoints and self.refresh is not None:
            await self.refresh()
        answers = await asyncio.gather(*(self._ready(e) for e in list(self.endpoints.values())))
        ready = any(answers)
        self.served = self.served or ready
        return ready

    async def _ready(self, e: _Endpoint) -> bool:
        try:
            return bool(
                await e.client.is_model_ready(
                    self.cfg.triton_model, client_timeout=_PROBE_TIMEOUT_S
                )
            )
        except Exception:  # unreachable, stopping, timed out: not ready
            return False


def _channel_args() -> list[tuple[str, Any]]:
    """tritonclient's default channel options, plus a reconnect back-off capped at 1 s: gRPC's
    own grows to 120 s, which would keep a channel failing long after its server is back."""
    keepalive = grpcclient.KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def _release(name: str, cfg: ModelSettings) -> vllm.BackendRelease:
    """The model's backend release; a ConfigError when it cannot serve what the model is asked."""
    try:
        release = vllm.BackendRelease.parse(cfg.vllm_release)
    except ValueError as exc:
        raise ConfigError(f"`$.models.{name}.vllm_release`: {exc}") from None
    if cfg.guided_choice and not release.guided:
        raise ConfigError(
            f"`$.models.{name}`: guided_choice needs vllm_release 25.01 or later "
            f"(got {cfg.vllm_release})"
        )
    return release


class TritonPool(AbstractAsyncContextManager["TritonPool"]):
    """Clients for the configured models, one gRPC channel per Triton address."""

    def __init__(
        self,
        models: Mapping[str, ModelSettings],
        *,
        names: list[str] | None = None,
        resolver: Resolver | None = None,
    ):
        self._models = {n: models[n] for n in (names if names is not None else list(models))}
        self._releases = {n: _release(n, cfg) for n, cfg in self._models.items()}
        self._resolver = resolver or resolve_dns
        self._clients: dict[str, grpcclient.InferenceServerClient] = {}
        self._users: dict[str, int] = {}  # endpoints (of all models) on each client
        self._backends: dict[str, _Backend] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> TritonPool:
        for name, cfg in self._models.items():
            url = cfg.endpoint  # a ConfigError for a `local` model whose Triton is not known yet
            b = _Backend(name, cfg, self._releases[name])
            self._backends[name] = b
            if b.target is None:
                self._add(b, url)
                continue
            b.refresh = self._refresher(name)
            self._locks[name] = asyncio.Lock()
            await self.refresh(name)
            self._tasks.append(asyncio.create_task(self._resolve_every(b)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for b in self._backends.values():
            await b.circuit.aclose()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        self._users.clear()

    def endpoints(self, model: str) -> list[str]:
        """The addresses ``model``'s requests go to now."""
        b = self._backends.get(model)
        return list(b.endpoints) if b is not None else []

    async def refresh(self, model: str) -> None:
        """Resolve ``model``'s ``dns:///`` name again: new addresses are added, gone ones
        drained (closed once idle). A failed resolution keeps what is known."""
        b = self._backends[model]
        if b.target is None:
            return
        async with self._locks[model]:
            try:
                found = await self._resolver(*b.target)
            except OSError as exc:
                LOGGER.warning("%s: cannot resolve %s: %s", model, b.cfg.endpoint, exc)
                return
            for address in found:
                if address not in b.endpoints:
                    LOGGER.info("%s: endpoint %s added", model, address)
                    self._add(b, address)
            for address in [a for a in b.endpoints if a not in found]:
                LOGGER.info("%s: endpoint %s removed (draining)", model, address)
                e = b.endpoints.pop(address)
                e.removed = True
                b.draining.append(e)
            for e in list(b.draining):
                await self._close_if_idle(b, e)

    def _refresher(self, model: str) -> Callable[[], Awaitable[None]]:
        async def refresh() -> None:
            await self.refresh(model)

        return refresh

    async def _resolve_every(self, b: _Backend) -> None:
        while True:
            await asyncio.sleep(b.cfg.resolve_interval_s)
            await self.refresh(b.name)

    def _add(self, b: _Backend, address: str) -> None:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = grpcclient.InferenceServerClient(
                address, channel_args=_channel_args()
            )
        self._users[address] = self._users.get(address, 0) + 1
        b.endpoints[address] = _Endpoint(b.name, address, b.cfg, client)

    async def _close_if_idle(self, b: _Backend, e: _Endpoint) -> None:
        """Close a removed endpoint with no request in flight (its client with its last user)."""
        if not e.removed or e.closed or e.gate.in_flight or e.gate.waiting:
            return
        e.closed = True
        if e in b.draining:
            b.draining.remove(e)
        for gauge in (metrics.INFERENCE_CONCURRENCY_LIMIT, metrics.INFERENCE_IN_FLIGHT):
            with contextlib.suppress(KeyError):  # never set
                gauge.remove(b.name, e.address)
        self._users[e.address] -= 1
        if self._users[e.address] == 0:
            del self._users[e.address]
            client = self._clients.pop(e.address)
            await client.close()

    @property
    def names(self) -> list[str]:
        return list(self._backends)

    def guided(self, model: str) -> bool:
        """Whether ``model``'s backend takes constrained choices (``guided_choice``)."""
        b = self._backends.get(model)
        return b is not None and b.cfg.guided_choice

    def limits(self) -> dict[tuple[str, str], int]:
        """The current concurrency limit of each (model, endpoint)."""
        return {
            (b.name, e.address): e.gate.limit
            for b in self._backends.values()
            for e in b.endpoints.values()
        }

    async def ready(self) -> dict[str, bool]:
        """Each model's readiness as Triton reports it (False when unreachable)."""
        results = await asyncio.gather(*(b.probe() for b in self._backends.values()))
        return dict(zip(self._backends, results, strict=True))

    def available(self, model: str) -> bool:
        """False while ``model``'s circuit is open (down: its calls wait); True otherwise, also
        for a model this pool does not serve (its calls fail at once)."""
        b = self._backends.get(model)
        return b is None or not b.circuit.is_open

    async def wait_available(self, model: str) -> None:
        """Return once ``model``'s circuit is closed (at once when it is)."""
        b = self._backends.get(model)
        if b is not None:
            await b.circuit.wait_closed()

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
        exactly one of them. While the model is down the call waits (see the module docstring),
        then raises ``BackendDown`` once the outage outlasts ``max_outage_s``.
        """
        backend = self._backends.get(model)
        if backend is None:
            raise InferenceError(model, "model is not configured in this service")
        circuit = backend.circuit
        deadline: float | None = None  # set by the first outage this call meets, never moved
        while True:
            if circuit.is_open:
                if deadline is None:
                    deadline = circuit.outage_deadline(backend.cfg.max_outage_s)
                if not await circuit.wait_closed(deadline):
                    raise BackendDown(
                        model,
                        f"not ready for {circuit.down_s():.0f}s "
                        f"(max_outage_s {backend.cfg.max_outage_s:g}): {circuit.reason}",
                    )
            try:
                return await self._generate_once(backend, prompt, params, stop, choices, role)
            except InferenceError as exc:
                if not await self._outage(backend, exc):
                    raise

    async def _outage(self, b: _Backend, exc: InferenceError) -> bool:
        """Whether ``exc`` comes from the model being down; if so its circuit is open after."""
        if b.cfg.max_outage_s <= 0:
            return False
        unknown = not exc.retryable and b.served and _UNKNOWN_MODEL.search(str(exc)) is not None
        if not (exc.retryable or unknown):
            return False  # a wrong request: permanent whatever the backend's state
        if not b.circuit.is_open:
            if await b.probe():
                return False  # the model is ready: a transient failure, raised as before
            b.restart()  # a new outage: the limits start over once the model is back
        b.circuit.trip(f"{type(exc).__name__}: {exc}")
        return True

    async def _generate_once(
        self,
        backend: _Backend,
        prompt: str,
        params: SamplingParams,
        stop: list[str] | None,
        choices: list[str] | None,
        role: str,
    ) -> Generation:
        model = backend.name
        endpoint = backend.pick()
        if endpoint is None:
            raise RetryableInferenceError(model, f"no address for {backend.cfg.endpoint}")
        try:
            return await self._generate_on(backend, endpoint, prompt, params, stop, choices, role)
        finally:
            if endpoint.removed:
                await self._close_if_idle(backend, endpoint)

    async def _generate_on(
        self,
        backend: _Backend,
        endpoint: _Endpoint,
        prompt: str,
        params: SamplingParams,
        stop: list[str] | None,
        choices: list[str] | None,
        role: str,
    ) -> Generation:
        model = backend.name
        # the budget lets the gate count a request still running as overdue (TCP's timeout)
        async with endpoint.gate.slot(tokens=params.max_tokens) as slot:
            start = time.monotonic()  # from the slot on: waiting for it is not backend latency
            outcome = "ok"
            try:
                got = await asyncio.wait_for(
                    self._stream_once(backend, endpoint, prompt, params, stop or [], choices),
                    timeout=backend.cfg.timeout_s,
                )
            except TimeoutError:
                outcome = "timeout"
                slot.drop(time.monotonic() - start)
                raise InferenceTimeout(
                    model, f"no final response within {backend.cfg.timeout_s:g}s"
                ) from None
            except InferenceError as exc:
                if isinstance(exc, InferenceTimeout):
                    outcome = "timeout"
                else:
                    outcome = "retryable_error" if exc.retryable else "error"
                if exc.retryable:  # overloaded, rejected, timed out (an outage restarts it)
                    slot.drop(time.monotonic() - start)
                raise
            finally:
                elapsed = time.monotonic() - start
                metrics.INFERENCE_SECONDS.labels(model=model, role=role).observe(elapsed)
                metrics.INFERENCE_REQUESTS.labels(model=model, role=role, outcome=outcome).inc()
            slot.done(elapsed, got.tokens)
            backend.served = True
            text = "".join(got.chunks)
            metrics.GENERATED_CHARS.labels(model=model, role=role).inc(len(text))
            if got.tokens is not None:
                metrics.GENERATED_TOKENS.labels(model=model, role=role).inc(got.tokens)
            return Generation(text, elapsed, got.finish_reason, got.tokens, got.model_version)

    async def _stream_once(
        self,
        b: _Backend,
        endpoint: _Endpoint,
        prompt: str,
        params: SamplingParams,
        stop: list[str],
        choices: list[str] | None,
    ) -> _Received:
        trt = b.cfg.contract == "trtllm"
        if trt:
            inputs = trtllm.generation_inputs(prompt, params, stop=stop, choices=choices)
            outputs = [trtllm.TEXT_OUTPUT]
        else:
            inputs = vllm.generation_inputs(
                prompt, params, stop=stop, choices=choices, release=b.release
            )
            outputs = vllm.requested_outputs(b.release)
        request = infer_request(
            b.cfg.triton_model, inputs, uuid.uuid4().hex, outputs, contract=b.cfg.contract
        )

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield request

        got = _Received([])
        received = 0
        responses = None
        try:
            responses = endpoint.client.stream_infer(requests(), stream_timeout=b.cfg.timeout_s)
            async for result, error in responses:
                if error is not None:
                    raise classify_in_band(b.name, str(error.message()))
                received += 1
                if trt:
                    got.add_trtllm(result)
                else:
                    got.add(result)
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
        if trt:  # TensorRT-LLM keeps the stop string it met; vLLM leaves it out
            got.chunks = [trtllm.strip_stop("".join(got.chunks), stop)]
        return got
