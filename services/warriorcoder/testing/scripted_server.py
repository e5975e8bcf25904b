"""Serve scripted LLMs from a real Triton server (PyTriton) with the vLLM backend contract.

Usage::

    python -m warriorcoder.testing.scripted_server \
        --models services/warriorcoder/testing/scripted-arena-models.yaml \
        --grpc-port 8001 --http-port 8000 --metrics-port 8002 [--log-file triton.log]

Each scripted model becomes a decoupled Triton model of the same name, bound and served by
``warriorcoder.localmodels.pytriton`` (start it with ``env=triton_env()``; SIGTERM or SIGINT stops
Triton cleanly), with the tensors and request semantics of ``warriorcoder.runtime.vllm`` (which
follows triton-inference-server/vllm_backend, release branches r24.12 to r26.01):
sampling_parameters is a JSON object (falling back to the request's parameters) whose guided
choice is a JSON string, ``exclude_input_in_output`` absent means the prompt is prepended unless
streaming, ``stream`` sends the text as several deltas, ``return_finish_reason`` and
``return_num_output_tokens`` add vLLM's ``finish_reason`` (``length`` when ``max_tokens`` cut the
text, else ``stop``; ``None`` on a stream's responses before the last) and ``num_output_tokens``
(the tokens of each response), and a bad request is answered with the real backend's in-band
error text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import numpy as np
from pytriton.proxy.types import Request
from pytriton.triton import Triton

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
from warriorcoder.runtime.vllm import Completion, Returns, encode_outputs, parse_request
from warriorcoder.testing.scripted import (
    ScriptedModel,
    load_models,
    pick_choice,
    sample,
    stream_chunks,
)

__all__ = ["bind_model", "completions", "main", "make_infer", "respond", "serve_scripted"]

LOGGER = logging.getLogger("warriorcoder.testing.scripted_server")


def completions(
    model: ScriptedModel,
    data: Mapping[str, np.ndarray],
    parameters: Mapping[str, Any] | None = None,
) -> tuple[Returns, list[list[Completion]]]:
    """One request's responses, each ``n`` samples, and the additional outputs it asked for.

    Raises ``ValueError`` (the backend's in-band error text) for a request it would reject.
    """
    req = parse_request(data, parameters, model=model.name)
    n = req.params.get("n", 1)
    done = sample(model.generate(req.prompt, req.params), req.params)
    if req.choices is not None:
        choice = pick_choice(done.text, list(req.choices))
        done = Completion(choice, "stop", len(choice.split()))
    if not req.stream:
        text = req.prompt + done.text if req.prepend else done.text
        return req.returns, [[Completion(text, done.finish_reason, done.tokens)] * n]
    chunks = stream_chunks(done.text)
    counts = [len(c.split()) for c in chunks]
    counts[-1] = done.tokens - sum(counts[:-1])  # the deltas add up to the sample's count
    last = len(chunks) - 1
    return req.returns, [
        [Completion(chunk, done.finish_reason if i == last else "None", count)] * n
        for i, (chunk, count) in enumerate(zip(chunks, counts, strict=True))
    ]


def respond(
    model: ScriptedModel,
    data: Mapping[str, np.ndarray],
    parameters: Mapping[str, Any] | None = None,
) -> list[list[str]]:
    """The texts of one request's responses: one list of ``n`` texts per response.

    Raises ``ValueError`` for a request the vLLM backend would reject.
    """
    return [[c.text for c in r] for r in completions(model, data, parameters)[1]]


def make_infer(model: ScriptedModel) -> InferFn:
    """PyTriton inference callable for one scripted model.

    An async generator, so ``latency_s`` waits without blocking other requests of the model. Each
    yield holds one response per request; a request with fewer responses gets empty deltas.
    """

    async def infer(requests: list[Request]) -> AsyncIterator[Responses]:
        replies = [completions(model, req.data, req.parameters) for req in requests]
        if model.latency_s > 0:
            await asyncio.sleep(model.latency_s)
        for step in range(max(len(r) for _, r in replies)):
            yield [
                encode_outputs(
                    reply[step]
                    if step < len(reply)
                    else [Completion("", reply[-1][0].finish_reason)] * len(reply[0]),
                    returns,
                )
                for returns, reply in replies
            ]

    return infer


def bind_model(triton: Triton, model: ScriptedModel) -> None:
    """Bind one scripted model under its own name."""
    bind_vllm_model(triton, model.name, make_infer(model))


def serve_scripted(
    argv: Sequence[str] | None,
    bind_one: Callable[[Triton, ScriptedModel], None],
    *,
    doc: str | None,
    logger: logging.Logger,
    contract: str = "vLLM",
) -> int:
    """Serve every scripted model of ``--models`` with ``bind_one`` until SIGTERM/SIGINT (the
    ``main`` of this server and of the other contracts' scripted servers)."""
    args = server_arguments(doc, "scripted models YAML file").parse_args(argv)
    configure_logging()
    models = load_models(args.models)

    def bind(triton: Triton, hooks: ServerHooks) -> None:
        for model in models:
            bind_one(triton, model)
        logger.info("serving %s (%s contract)", ", ".join(m.name for m in models), contract)

    return serve(triton_config(args), bind, logger=logger)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit status."""
    doc = __doc__.splitlines()[0] if __doc__ else None
    return serve_scripted(argv, bind_model, doc=doc, logger=LOGGER)


if __name__ == "__main__":
    raise SystemExit(main())
