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

Each model has exactly the tensors and request semantics of the Triton vLLM backend's contract
(``warriorcoder.runtime.vllm``, which follows triton-inference-server/vllm_backend r24.12 to
r26.01; the same as the scripted server): ``text_input`` (raw text: chat templates
are applied client-side, never here; tokenized with special tokens, as vLLM does), ``stream``,
``sampling_parameters`` (JSON, validated as vLLM does; guided choice as the JSON string
``{"choice": [...]}`` under ``guided_decoding`` or ``structured_outputs``),
``exclude_input_in_output``, ``return_finish_reason``, ``return_num_output_tokens`` ->
``text_output``, ``finish_reason``, ``num_output_tokens``; a bad request gets the real backend's
in-band error text. ``stream=true`` sends the whole completion as one response, followed by the
final (empty) response. Generation and guided choice are described in
``warriorcoder.localmodels.hf_engine``.

Batching (``warriorcoder.localmodels.batching``): a batch is the first waiting request plus
whatever arrives within ``batch_wait_ms``, up to ``max_batch_size``, and it runs in the model's own
worker thread (one ``generate`` call for its generation requests, one forward pass for its guided
choices), so the server keeps accepting requests meanwhile. Each batch is logged
(``<model>: batch of N requests ...``).

A model is bound to Triton (and so reported ready) only once its weights are loaded; Triton itself
answers health checks while the models load. Logs go to stderr. The process's life (signals, exit
status, ``env=triton_env()`` for launchers) is ``warriorcoder.localmodels.pytriton``'s: on SIGTERM
or SIGINT the engines abort their running batch, the batchers close, Triton stops (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pytriton.proxy.types import Request
from pytriton.triton import Triton

from warriorcoder.localmodels.batching import Batcher
from warriorcoder.localmodels.jobs import Engine, Job
from warriorcoder.localmodels.models_file import (
    check_model_name,
    load_models_file,
    parse_models_file,
)
from warriorcoder.localmodels.pytriton import (
    InferFn,
    Responses,
    ServerHooks,
    StartupError,
    bind_vllm_model,
    configure_logging,
    serve,
    server_arguments,
    triton_config,
)
from warriorcoder.runtime import vllm

__all__ = [
    "HFModelSpec",
    "ParsedRequest",
    "bind_model",
    "load_model_specs",
    "main",
    "make_infer",
    "parse_model_specs",
    "parse_request",
]

LOGGER = logging.getLogger("warriorcoder.localmodels.hf_server")


# ----------------------------------------------------------------------------- models file

_DEVICES = ("auto", "cpu", "cuda")
_DTYPES = ("auto", "float32", "bfloat16", "float16")


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
        check_model_name(self.name)
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
    return parse_models_file(doc, HFModelSpec)


def load_model_specs(path: str | Path) -> list[HFModelSpec]:
    """Model specs from a YAML file (see ``parse_model_specs``)."""
    return load_models_file(path, HFModelSpec)


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class ParsedRequest:
    """A request of the vLLM backend contract, validated."""

    job: Job
    stream: bool
    prepend: bool  # exclude_input_in_output is false: the prompt precedes the completion
    returns: vllm.Returns = field(default_factory=vllm.Returns)  # additional outputs asked for


def parse_request(
    data: Mapping[str, np.ndarray],
    parameters: Mapping[str, Any] | None = None,
    *,
    model: str = "model",
) -> ParsedRequest:
    """Parse a request as the vLLM backend does (``vllm.parse_request``) into the model's job."""
    req = vllm.parse_request(data, parameters, model=model)
    job = Job(req.prompt, req.params, req.choices)
    return ParsedRequest(job, req.stream, req.prepend, req.returns)


def make_infer(batcher: Batcher) -> InferFn:
    """PyTriton inference callable: parse, queue for the model's next batch, answer."""

    def answer(p: ParsedRequest, done: list[vllm.Completion]) -> dict[str, np.ndarray]:
        if p.prepend:
            done = [replace(c, text=p.job.prompt + c.text) for c in done]
        return vllm.encode_outputs(done, p.returns)

    async def infer(requests: list[Request]) -> AsyncIterator[Responses]:
        parsed = [parse_request(req.data, req.parameters, model=batcher.name) for req in requests]
        results = await asyncio.gather(*(batcher.submit(p.job) for p in parsed))
        yield [answer(p, done) for p, done in zip(parsed, results, strict=True)]

    return infer


def bind_model(triton: Triton, name: str, batcher: Batcher) -> None:
    """Bind one model, served through its batcher."""
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
    configure_logging()
    try:
        specs = load_model_specs(args.models)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        LOGGER.error("%s: %s", args.models, exc)
        return 2

    def bind(triton: Triton, hooks: ServerHooks) -> None:
        LOGGER.info("loading %s", ", ".join(s.name for s in specs))
        for spec in specs:
            try:
                engine = _load(spec, args.threads)
            except Exception as exc:
                raise StartupError(f"{spec.name}: cannot load {spec.path}: {exc}") from exc
            hooks.on_signal.append(engine.abort)  # a running generate ends at once
            batcher = Batcher(
                spec.name,
                engine.run_batch,
                max_batch_size=spec.max_batch_size,
                wait_s=spec.batch_wait_ms / 1000,
            )
            hooks.on_stop.append(batcher.close)
            bind_model(triton, spec.name, batcher)
            LOGGER.info("%s: ready", spec.name)

    return serve(triton_config(args), bind, logger=LOGGER)


if __name__ == "__main__":
    raise SystemExit(main())
