"""A GPU-like test backend: scripted text, served with the timing of a continuous-batching LLM.

Usage::

    python -m warriorcoder.testing.continuous_batching --models batched-models.yaml \
        --grpc-port 8001 --http-port 8000 --metrics-port 8002 [--record requests.jsonl]

The engine alone (the unit tests drive it so), Usage::

    batcher = ContinuousBatcher(BatchingParams(capacity=32, base_step_s=0.02, per_seq_step_s=0.005))
    tokens = await batcher.generate(48)  # returns after 48 decoding steps of the running batch
    await batcher.aclose()

The models file lists ``{name, strength, capacity, base_step_s, per_seq_step_s, lengths, seed}``
per model (``BatchedModel``). Each model is a decoupled Triton model on the local PyTriton Triton
(``warriorcoder.localmodels.pytriton``) with exactly the vLLM backend's tensors and request
semantics (``warriorcoder.runtime.vllm``, which follows triton-inference-server/vllm_backend
r24.12 to r26.01): its *text* is the scripted model's (``warriorcoder.testing.scripted_server.
completions``: the arena works on it as on the scripted Triton); only the *timing* is simulated.

The timing model follows vLLM's scheduler (V1's ``vllm/v1/core/sched/scheduler.py``, V0's
``vllm/core/scheduler.py`` before it; vLLM's docs on continuous batching and ``max_num_seqs``):
the engine runs one decoding step after another over its *running* batch; a new request waits in
a FCFS *waiting* queue and joins the batch at the next step boundary while fewer than
``capacity`` (vLLM's ``max_num_seqs``) sequences run; a finished sequence leaves at the end of
the step that completed it, freeing its slot at once. One step emits one token for every running
sequence and takes

    step_s(active) = base_step_s + per_seq_step_s * active        (active <= capacity)

(a decode step's weights read is a fixed cost; attention and sampling grow with the batch), so
throughput grows with the batch while it fills (``active / step_s``) and is capped at capacity.
Not modelled: prefill (a joining sequence's prompt is processed within its first step at no extra
cost), KV-cache blocks and preemption (capacity alone bounds the batch), the token budget
``max_num_batched_tokens``, speculative decoding. A request aborted by its client leaves the batch
at the next step, as vLLM aborts it.

A request's output length (the decoding steps it takes) is, by ``lengths``: ``text`` the scripted
text's own token count (whitespace runs, after ``max_tokens`` and stop strings); ``max_tokens`` the
request's ``max_tokens`` (vLLM's default 16 when absent); ``uniform:LO:HI`` drawn uniformly (seeded)
and capped at ``max_tokens``. ``num_output_tokens`` reports that length; ``finish_reason`` stays the
scripted text's. ``--record`` appends one JSON line per finished request (model, role, prompt,
sampling parameters as sent, tokens, queued and total seconds, wall-clock end), which is how the
benchmarks count model-side tokens and replay the same requests.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
from pytriton.proxy.types import Request
from pytriton.triton import Triton

from warriorcoder.localmodels.models_file import check_model_name, load_models_file
from warriorcoder.localmodels.pytriton import (
    InferFn,
    Responses,
    ServerHooks,
    bind_vllm_model,
    configure_logging,
    serve,
    server_arguments,
    triton_config,
)
from warriorcoder.runtime.vllm import (
    DEFAULT_MAX_TOKENS,
    SAMPLING_PARAMETERS,
    encode_outputs,
    parse_request,
)
from warriorcoder.testing.scripted import ScriptedModel, role_of
from warriorcoder.testing.scripted_server import completions

__all__ = [
    "BatchedModel",
    "BatcherStats",
    "BatchingParams",
    "ContinuousBatcher",
    "OutputLengths",
    "Recorder",
    "bind_model",
    "load_batched_models",
    "main",
    "make_infer",
]

LOGGER = logging.getLogger("warriorcoder.testing.continuous_batching")


@dataclass(frozen=True, slots=True)
class OutputLengths:
    """How many tokens a request generates: ``text``, ``max_tokens`` or ``uniform:LO:HI``."""

    kind: str = "text"
    low: int = 0
    high: int = 0

    @classmethod
    def parse(cls, text: str) -> OutputLengths:
        """``text``, ``max_tokens`` or ``uniform:LO:HI`` (1 <= LO <= HI); ``ValueError`` else."""
        if text in ("text", "max_tokens"):
            return cls(text)
        parts = text.split(":")
        if len(parts) == 3 and parts[0] == "uniform" and all(p.isdigit() for p in parts[1:]):
            low, high = int(parts[1]), int(parts[2])
            if 1 <= low <= high:
                return cls("uniform", low, high)
        raise ValueError(
            f"expected 'text', 'max_tokens' or 'uniform:LO:HI' (1 <= LO <= HI), got {text!r}"
        )

    def draw(self, max_tokens: int, text_tokens: int, rng: random.Random) -> int:
        """One request's output length (at least 1: vLLM emits at least one token)."""
        if self.kind == "text":
            n = text_tokens
        elif self.kind == "max_tokens":
            n = max_tokens
        else:
            n = min(rng.randint(self.low, self.high), max_tokens)
        return max(1, n)


@dataclass(frozen=True, slots=True)
class BatchingParams:
    """The timing model of one engine (module docstring)."""

    capacity: int = 32  # vLLM's max_num_seqs
    base_step_s: float = 0.02
    per_seq_step_s: float = 0.005

    def __post_init__(self) -> None:
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int):
            raise ValueError(f"capacity: expected an integer >= 1, got {self.capacity!r}")
        if self.capacity < 1:
            raise ValueError(f"capacity: expected an integer >= 1, got {self.capacity!r}")
        for key in ("base_step_s", "per_seq_step_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{key}: expected a number >= 0, got {value!r}")

    def step_s(self, active: int) -> float:
        """One decoding step's duration with ``active`` running sequences."""
        return self.base_step_s + self.per_seq_step_s * min(active, self.capacity)

    def peak_tokens_per_s(self) -> float:
        """Tokens per second with a full batch: the engine's ceiling."""
        return self.capacity / self.step_s(self.capacity)


@dataclass(frozen=True, slots=True)
class BatcherStats:
    """Counters of one engine since it started."""

    steps: int
    tokens: int  # tokens generated (one per running sequence per step)
    finished: int  # requests completed
    aborted: int  # requests whose caller went away
    active: int  # running now
    waiting: int  # queued for a slot now
    peak_active: int
    busy_s: float  # time spent in steps


@dataclass(eq=False, slots=True)
class _Seq:
    left: int
    done: asyncio.Future[int]
    tokens: int = 0


class ContinuousBatcher:
    """One continuous-batching engine on the running event loop (started by the first request).

    ``sleep`` is how a step's time passes (``asyncio.sleep``; tests pass a recording one).
    """

    def __init__(
        self,
        params: BatchingParams,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.params = params
        self._sleep = sleep
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._running: list[_Seq] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._steps = self._tokens = self._finished = self._aborted = self._peak = 0
        self._busy_s = 0.0

    async def generate(self, tokens: int) -> int:
        """Queue a sequence of ``tokens`` output tokens; return once its last step ran."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ValueError(f"tokens: expected an integer >= 1, got {tokens!r}")
        if self._task is None:
            self.loop = asyncio.get_running_loop()
            self._task = self.loop.create_task(self._run(), name="continuous-batcher")
        seq = _Seq(tokens, asyncio.get_running_loop().create_future())
        self._waiting.append(seq)
        self._wake.set()
        try:
            return await seq.done
        except asyncio.CancelledError:
            if not seq.done.done():  # the caller went away: the engine drops it at the next step
                seq.done.cancel()
            raise

    def stats(self) -> BatcherStats:
        return BatcherStats(
            steps=self._steps,
            tokens=self._tokens,
            finished=self._finished,
            aborted=self._aborted,
            active=len(self._running),
            waiting=len(self._waiting),
            peak_active=self._peak,
            busy_s=self._busy_s,
        )

    async def aclose(self) -> None:
        """Stop the engine (cancelled and awaited); requests still queued are cancelled."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for seq in [*self._running, *self._waiting]:
            seq.done.cancel()
        self._running.clear()
        self._waiting.clear()

    async def _run(self) -> None:
        while True:
            self._drop_aborted()
            while self._waiting and len(self._running) < self.params.capacity:
                seq = self._waiting.popleft()
                if not seq.done.done():
                    self._running.append(seq)
            if not self._running:
                self._wake.clear()
                await self._wake.wait()
                continue
            active = len(self._running)
            self._peak = max(self._peak, active)
            step = self.params.step_s(active)
            await self._sleep(step)
            self._steps += 1
            self._busy_s += step
            still: list[_Seq] = []
            for seq in self._running:
                if seq.done.done():  # aborted during the step: its token is not counted
                    self._aborted += 1
                    continue
                seq.left -= 1
                seq.tokens += 1
                self._tokens += 1
                if seq.left:
                    still.append(seq)
                else:
                    self._finished += 1
                    seq.done.set_result(seq.tokens)
            self._running = still

    def _drop_aborted(self) -> None:
        kept = [s for s in self._running if not s.done.done()]
        self._aborted += len(self._running) - len(kept)
        self._running = kept


@dataclass
class BatchedModel:
    """One model of the models file: a scripted model's text with an engine's timing."""

    name: str
    strength: int
    capacity: int = 32
    base_step_s: float = 0.02
    per_seq_step_s: float = 0.005
    lengths: str = "text"
    seed: int = 0
    scripted: ScriptedModel = field(init=False, repr=False)
    params: BatchingParams = field(init=False, repr=False)
    output_lengths: OutputLengths = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_model_name(self.name)
        self.scripted = ScriptedModel(self.name, self.strength)  # checks strength
        self.params = BatchingParams(self.capacity, self.base_step_s, self.per_seq_step_s)
        if not isinstance(self.lengths, str):
            raise ValueError(f"lengths: expected a string, got {self.lengths!r}")
        try:
            self.output_lengths = OutputLengths.parse(self.lengths)
        except ValueError as exc:
            raise ValueError(f"lengths: {exc}") from None
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed: expected an integer, got {self.seed!r}")


def load_batched_models(path: str | Path) -> list[BatchedModel]:
    """The models of a models file (``warriorcoder.localmodels.models_file`` rules)."""
    return load_models_file(path, BatchedModel)


class Recorder:
    """One JSON line per finished request, appended from any model's thread."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def write(self, record: Mapping[str, Any]) -> None:
        line = orjson.dumps(record) + b"\n"
        with self._lock:
            self._out.write(line)
            self._out.flush()


def make_infer(
    model: BatchedModel, batcher: ContinuousBatcher, recorder: Recorder | None = None
) -> InferFn:
    """PyTriton inference callable: the scripted responses, sent once the engine has run the
    request's decoding steps."""
    rng = random.Random(model.seed)

    async def one(req: Request) -> list[dict[str, np.ndarray]]:
        started = time.monotonic()
        parsed = parse_request(req.data, req.parameters, model=model.name)
        returns, responses = completions(model.scripted, req.data, req.parameters)
        text_tokens = sum(r[0].tokens for r in responses)
        max_tokens = parsed.params.get("max_tokens", DEFAULT_MAX_TOKENS)
        n = model.output_lengths.draw(max_tokens, text_tokens, rng)
        await batcher.generate(n)
        counts = _split(n, [r[0].tokens for r in responses])
        if recorder is not None:
            raw = req.data.get(SAMPLING_PARAMETERS)
            recorder.write(
                {
                    "model": model.name,
                    "role": role_of(parsed.prompt),
                    "prompt": parsed.prompt,
                    "sampling": None if raw is None else bytes(raw.reshape(-1)[0]).decode(),
                    "tokens": n,
                    "took_s": time.monotonic() - started,
                    "end": time.time(),
                }
            )
        return [
            encode_outputs([dataclasses.replace(c, tokens=count) for c in response], returns)
            for response, count in zip(responses, counts, strict=True)
        ]

    async def infer(requests: list[Request]) -> AsyncIterator[Responses]:
        replies = await asyncio.gather(*(one(req) for req in requests))
        for step in range(max(len(r) for r in replies)):
            yield [reply[step] if step < len(reply) else _empty(reply[-1]) for reply in replies]

    return infer


def _split(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` tokens over a stream's responses in proportion to their texts' tokens."""
    if len(weights) == 1:
        return [total]
    whole = sum(weights) or 1
    counts = [total * w // whole for w in weights[:-1]]
    return [*counts, total - sum(counts)]


def _empty(last: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An empty delta for a request whose stream already ended (others of the call go on)."""
    out = dict(last)
    out["text_output"] = np.array([b""] * len(last["text_output"]), dtype=np.object_)
    if "num_output_tokens" in out:
        out["num_output_tokens"] = np.zeros_like(out["num_output_tokens"])
    return out


def bind_model(
    triton: Triton, model: BatchedModel, hooks: ServerHooks, recorder: Recorder | None = None
) -> ContinuousBatcher:
    """Bind one model under its own name with its own engine, stopped when serving ends."""
    batcher = ContinuousBatcher(model.params)

    def stop() -> None:
        if batcher.loop is not None and not batcher.loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(batcher.aclose(), batcher.loop)
            future.result(timeout=5)

    hooks.on_stop.append(stop)
    bind_vllm_model(triton, model.name, make_infer(model, batcher, recorder))
    return batcher


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit status."""
    doc = __doc__.splitlines()[0] if __doc__ else None
    parser = server_arguments(doc, "continuous-batching models YAML file")
    parser.add_argument("--record", type=Path, default=None, help="JSON lines, one per request")
    args = parser.parse_args(argv)
    configure_logging()
    models = load_batched_models(args.models)
    out = args.record.open("ab") if args.record is not None else None
    recorder = Recorder(out) if out is not None else None

    def bind(triton: Triton, hooks: ServerHooks) -> None:
        for model in models:
            bind_model(triton, model, hooks, recorder)
            LOGGER.info(
                "serving %s: capacity %d, step %.4f s + %.4f s/seq (peak %.0f tokens/s), "
                "lengths %s",
                model.name,
                model.capacity,
                model.base_step_s,
                model.per_seq_step_s,
                model.params.peak_tokens_per_s(),
                model.lengths,
            )

    try:
        return serve(triton_config(args), bind, logger=LOGGER)
    finally:
        if out is not None:
            out.close()


if __name__ == "__main__":
    raise SystemExit(main())
