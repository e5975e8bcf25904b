"""Serve Hugging Face causal LMs from a local Triton (PyTriton) with the vLLM backend's contract.

Usage::

    python -m warriorcoder.localmodels.hf_server --models hf-models.yaml \
        --grpc-port 8001 --http-port 8000 --metrics-port 8002 [--threads N] [--log-file F]

The models file lists one Triton model per entry::

    models:
      - {name: qwen, path: Qwen/Qwen2.5-0.5B-Instruct, device: auto, dtype: auto, max_batch_size: 8}
      - {name: tiny, path: /abs/dir/of/a/saved/model}

``path`` is a local directory or a hub id (``AutoModelForCausalLM`` / ``AutoTokenizer``);
``device`` is ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available); ``dtype`` is
``auto`` (float32 on the CPU, bfloat16 or float16 on a GPU), ``float32``, ``bfloat16`` or
``float16``; ``max_batch_size`` (default 8) caps the requests served by one ``generate`` call and
``batch_wait_ms`` (default 5) is how long a batch waits for more requests.

Each model has exactly the tensors and request semantics of the scripted server
(``warriorcoder.testing.scripted_server``, the Triton vLLM backend's contract): ``text_input`` (raw
text: chat templates are applied client-side, never here), ``stream``, ``sampling_parameters``
(JSON, validated by ``validate_sampling_params``; ``guided_decoding: {"choice": [...]}`` accepted),
``exclude_input_in_output`` -> ``text_output``; a bad request gets an in-band error. ``stream=true``
sends the whole completion as one response, followed by the final (empty) response. Generation and
guided choice are described in ``warriorcoder.localmodels.hf_engine``.

Batching: every model has an asyncio queue; a batch is the first waiting request plus whatever
arrives within ``batch_wait_ms``, up to ``max_batch_size``, and it runs in the model's own worker
thread (one ``generate`` call for its generation requests, one forward pass for its guided
choices), so the server keeps accepting requests meanwhile; requests that arrive during a batch
form the next one. Each batch is logged (``<model>: batch of N requests ...``).

A model is bound to Triton (and so reported ready) only once its weights are loaded; Triton itself
answers health checks while the models load. Logs go to stderr. Launchers must start it with
``env=triton_env()`` (see ``start_hf_triton``). SIGTERM or SIGINT stops Triton cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import numpy as np
import yaml
from pytriton.proxy.types import Request
from pytriton.triton import Triton

from warriorcoder.launcher.processes import ManagedProcess, start_local_triton
from warriorcoder.testing.scripted_server import (
    _tensor,
    bind_vllm_model,
    parse_vllm_request,
    server_arguments,
    triton_config,
)

__all__ = [
    "Batcher",
    "Engine",
    "HFModelSpec",
    "Job",
    "Outcome",
    "ParsedRequest",
    "ShuttingDown",
    "load_model_specs",
    "main",
    "make_infer",
    "parse_model_specs",
    "parse_request",
    "start_hf_triton",
]

LOGGER = logging.getLogger("warriorcoder.localmodels.hf_server")

Responses = list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class Job:
    """One request for a model: a raw prompt, validated sampling params, guided choices."""

    prompt: str
    params: Mapping[str, Any] = field(default_factory=dict)
    choices: tuple[str, ...] | None = None


Outcome = list[str] | ValueError  # a request's n texts, or why it cannot be served
RunBatch = Callable[[Sequence[Job]], list[Outcome]]


class ShuttingDown(RuntimeError):
    """A batch was cut short because the server is stopping (the client may retry elsewhere)."""


class Engine(Protocol):
    """What the server needs of a model (``warriorcoder.localmodels.hf_engine.HFEngine``)."""

    def run_batch(self, jobs: Sequence[Job]) -> list[Outcome]: ...
    def abort(self) -> None: ...


# ----------------------------------------------------------------------------- models file

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # as scripted models (Triton model names)
_DEVICES = ("auto", "cpu", "cuda")
_DTYPES = ("auto", "float32", "bfloat16", "float16")
_SPEC_KEYS = frozenset({"name", "path", "device", "dtype", "max_batch_size", "batch_wait_ms"})


@dataclass(frozen=True)
class HFModelSpec:
    """One entry of the models file."""

    name: str
    path: str
    device: str = "auto"
    dtype: str = "auto"
    max_batch_size: int = 8
    batch_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(f"name: invalid model name {self.name!r}")
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"path: expected a directory or hub id, got {self.path!r}")
        device = self.device
        if not isinstance(device, str) or not (
            device in _DEVICES or (device.startswith("cuda:") and device[5:].isdigit())
        ):
            raise ValueError(f"device: expected cpu, cuda, cuda:N or auto, got {device!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        size = self.max_batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"max_batch_size: expected an integer >= 1, got {size!r}")
        wait = self.batch_wait_ms
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= 1000:
            raise ValueError(f"batch_wait_ms: expected a number in [0, 1000], got {wait!r}")


def parse_model_specs(doc: Any) -> list[HFModelSpec]:
    """Model specs from a parsed YAML document ``{models: [{name, path, ...}, ...]}``."""
    if not isinstance(doc, Mapping) or set(doc) != {"models"}:
        raise ValueError("$: expected a mapping with the single key 'models'")
    entries = doc["models"]
    if not isinstance(entries, list) or not entries:
        raise ValueError("$.models: expected a non-empty list")
    specs: list[HFModelSpec] = []
    for i, entry in enumerate(entries):
        where = f"$.models[{i}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected a mapping")
        unknown = sorted(set(entry) - _SPEC_KEYS)
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown key")
        for key in ("name", "path"):
            if key not in entry:
                raise ValueError(f"{where}.{key}: missing")
        try:
            spec = HFModelSpec(**entry)
        except ValueError as exc:
            raise ValueError(f"{where}.{exc}") from None
        if any(s.name == spec.name for s in specs):
            raise ValueError(f"{where}.name: duplicate model name {spec.name!r}")
        specs.append(spec)
    return specs


def load_model_specs(path: str | Path) -> list[HFModelSpec]:
    """Model specs from a YAML file (see ``parse_model_specs``)."""
    return parse_model_specs(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class ParsedRequest:
    """A request of the vLLM backend contract, validated."""

    job: Job
    stream: bool
    prepend: bool  # exclude_input_in_output is false: the prompt precedes the completion


def parse_request(
    data: Mapping[str, np.ndarray], parameters: Mapping[str, Any] | None = None
) -> ParsedRequest:
    """Parse a request as the vLLM backend does; ``ValueError`` if it would reject it."""
    req = parse_vllm_request(data, parameters)
    checked = dict(req.params)
    guided = checked.pop("guided_decoding", None)
    choices = tuple(guided["choice"]) if guided is not None else None
    return ParsedRequest(
        job=Job(req.prompt, checked, choices), stream=req.stream, prepend=req.prepend
    )


# ----------------------------------------------------------------------------- batching


class Batcher:
    """Collects one model's requests into batches and runs them in the model's worker thread.

    Bound lazily to the event loop of the first ``submit`` (PyTriton's inference loop).
    """

    def __init__(self, name: str, run: RunBatch, *, max_batch_size: int, wait_s: float) -> None:
        self.name = name
        self.run = run
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.batches = 0
        self.requests = 0
        self.largest = 0
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[list[str]]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hf-{name}")

    async def submit(self, job: Job) -> list[str]:
        """The job's texts once its batch has run; raises the job's ``ValueError``."""
        loop = asyncio.get_running_loop()
        if self._queue is None or self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._serve(self._queue), name=f"batcher-{self.name}")
        future: asyncio.Future[list[str]] = loop.create_future()
        await self._queue.put((job, future))
        return await future

    async def _collect(
        self, queue: asyncio.Queue[tuple[Job, asyncio.Future[list[str]]]]
    ) -> list[tuple[Job, asyncio.Future[list[str]]]]:
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), left))
            except TimeoutError:
                break
        return [(job, fut) for job, fut in batch if not fut.done()]

    async def _serve(self, queue: asyncio.Queue[tuple[Job, asyncio.Future[list[str]]]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(queue)
            if not batch:
                continue
            self.batches += 1
            self.requests += len(batch)
            self.largest = max(self.largest, len(batch))
            try:
                outcomes = await loop.run_in_executor(
                    self._executor, self.run, [job for job, _ in batch]
                )
            except Exception as exc:  # the whole batch failed (e.g. out of memory)
                LOGGER.error(
                    "%s: batch of %d requests failed: %s",
                    self.name,
                    len(batch),
                    exc,
                    exc_info=not isinstance(exc, ShuttingDown),
                )
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(RuntimeError(f"{self.name}: generation failed: {exc}"))
                continue
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                if fut.done():
                    continue
                if isinstance(outcome, Exception):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def make_infer(batcher: Batcher) -> Callable[[list[Request]], AsyncIterator[Responses]]:
    """PyTriton inference callable: parse, queue for the model's next batch, answer."""

    async def infer(requests: list[Request]) -> AsyncIterator[Responses]:
        parsed = [parse_request(req.data, req.parameters) for req in requests]
        results = await asyncio.gather(*(batcher.submit(p.job) for p in parsed))
        responses = []
        for p, texts in zip(parsed, results, strict=True):
            responses.append(_tensor([p.job.prompt + t if p.prepend else t for t in texts]))
        yield responses

    return infer


def bind_model(triton: Triton, name: str, batcher: Batcher) -> None:
    bind_vllm_model(triton, name, make_infer(batcher))


# ----------------------------------------------------------------------------- process


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    doc = __doc__.splitlines()[0] if __doc__ else None
    parser = server_arguments(doc, "models YAML file")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op CPU threads (0: torch's default); 1 suits tiny models on few cores",
    )
    return parser.parse_args(argv)


_signalled: list[int] = []
_on_signal: list[Callable[[], None]] = []  # engines' abort: a running generate ends at once


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _signalled.append(signum)
    for abort in _on_signal:
        abort()
    raise KeyboardInterrupt(f"signal {signum}")


def _load(spec: HFModelSpec, threads: int) -> Engine:
    import torch

    from warriorcoder.localmodels.hf_engine import HFEngine  # torch and transformers: the hf extra

    if threads > 0:
        torch.set_num_threads(threads)

    start = time.monotonic()
    engine = HFEngine.load(spec.name, spec.path, device=spec.device, dtype=spec.dtype)
    LOGGER.info(
        "%s: loaded %s (%d parameters, %s, %s) in %.1f s",
        spec.name,
        spec.path,
        engine.parameters(),
        engine.device,
        engine.model.dtype,
        time.monotonic() - start,
    )
    return engine


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit status."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        specs = load_model_specs(args.models)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        LOGGER.error("%s: %s", args.models, exc)
        return 2
    config = triton_config(args)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    batchers: list[Batcher] = []
    status = 0
    try:
        with Triton(config=config) as triton:
            LOGGER.info(
                "Triton up on grpc %s:%d, http %s:%d; loading %s",
                args.address,
                args.grpc_port,
                args.address,
                args.http_port,
                ", ".join(s.name for s in specs),
            )
            for spec in specs:
                try:
                    engine = _load(spec, args.threads)
                except Exception as exc:
                    LOGGER.error("%s: cannot load %s: %s", spec.name, spec.path, exc)
                    status = 1
                    break
                _on_signal.append(engine.abort)
                batcher = Batcher(
                    spec.name,
                    engine.run_batch,
                    max_batch_size=spec.max_batch_size,
                    wait_s=spec.batch_wait_ms / 1000,
                )
                batchers.append(batcher)
                bind_model(triton, spec.name, batcher)
                LOGGER.info("%s: ready", spec.name)
            if status == 0:
                # Returns after SIGINT/SIGTERM (as KeyboardInterrupt) or if Triton dies.
                triton.serve()
    except KeyboardInterrupt:
        pass
    finally:
        for batcher in batchers:
            batcher.close()
    if status:
        return status
    if not _signalled:
        LOGGER.error("Triton or a model proxy died")
        return 1
    LOGGER.info("stopped on signal %d", _signalled[0])
    return 0


def start_hf_triton(
    models_file: Path,
    model_names: list[str],
    *,
    log_path: Path | None = None,
    threads: int = 0,
    timeout: float = 300.0,
) -> ManagedProcess:
    """A real Triton Inference Server (PyTriton) serving the models of ``models_file``.

    Returns once every model of ``model_names`` is ready (its weights loaded). ``threads``: torch
    CPU threads (0: torch's default).
    """
    return start_local_triton(
        "warriorcoder.localmodels.hf_server",
        models_file,
        model_names,
        name="hf-tritonserver",
        extra_args=["--threads", str(threads)],
        log_path=log_path,
        timeout=timeout,
    )


if __name__ == "__main__":
    raise SystemExit(main())
