"""Serve scripted LLMs from a real Triton server (PyTriton) with the TensorRT-LLM contract.

Usage::

    python -m warriorcoder.testing.trtllm_server \
        --models services/warriorcoder/testing/scripted-arena-models.yaml \
        --grpc-port 8001 --http-port 8000 --metrics-port 8002 [--log-file triton.log]

The stand-in of a model repository built from triton-inference-server/tensorrtllm_backend r25.05
(``all_models/inflight_batcher_llm/ensemble/config.pbtxt``; ``tensorrt_llm_bls`` declares the
same text interface): each scripted model becomes a Triton model of the same name whose inputs
and outputs are exactly the ensemble's (``warriorcoder.runtime.trtllm.INPUTS`` / ``OUTPUTS``:
names, dtypes, dims, optional), with ``max_batch_size`` 64 (a leading batch dimension on every
tensor) and the decoupled transaction policy (upstream's ``decoupled_mode: true``, which in-flight
batching needs for batches > 1 and streaming). Triton itself then refuses what the real server
refuses: an undeclared input, a missing ``text_input`` / ``max_tokens``, a wrong dtype or shape.

What it answers, per batch row, follows the real pipeline (preprocessing, the executor,
postprocessing): the scripted models' text (``warriorcoder.testing.scripted``) cut at
``max_tokens`` tokens, then *after* the first stop word (the executor keeps the stop tokens and
postprocessing detokenizes them); the prompt in front unless ``exclude_input_in_output``;
``stream`` sends the text as several deltas; a ``regex`` guide yields the guide's last match in
the text (else its first literal alternative); ``text_output`` has shape ``[batch, 1]`` (one
beam), and no finish reason or token count (the ensemble has none).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pytriton.model_config import ModelConfig, Tensor
from pytriton.proxy.types import Request
from pytriton.triton import Triton

from warriorcoder.localmodels.pytriton import (
    InferFn,
    Responses,
)
from warriorcoder.runtime import trtllm
from warriorcoder.runtime.vllm import TensorSpec
from warriorcoder.testing.scripted import ScriptedModel, sample, stream_chunks
from warriorcoder.testing.scripted_server import serve_scripted

__all__ = ["bind_model", "main", "make_infer", "respond"]

LOGGER = logging.getLogger("warriorcoder.testing.trtllm_server")


def respond(model: ScriptedModel, req: trtllm.TrtllmRequest) -> list[str]:
    """The texts of one batch row's responses (one, or several deltas when streaming)."""
    params: dict[str, Any] = {"max_tokens": req.max_tokens}
    for key, value in (("temperature", req.temperature), ("top_p", req.top_p), ("seed", req.seed)):
        if value is not None:
            params[key] = value
    raw = model.generate(req.prompt, params)
    text = sample(raw, params).text  # cut at max_tokens; stop words handled below
    cuts = [(i, s) for s in req.stop if (i := text.find(s)) >= 0]
    if cuts:
        i, s = min(cuts)
        text = text[: i + len(s)]  # the executor stops after the stop word, keeping it
    if req.guide_type == "regex" and req.guide is not None:
        text = _guided(req.guide, raw)
    elif req.guide_type is not None:
        raise ValueError(f"{trtllm.GUIDE_TYPE}: {req.guide_type!r} is not supported here")
    if not req.exclude_input_in_output:
        text = req.prompt + text
    return stream_chunks(text) if req.stream else [text]


def make_infer(model: ScriptedModel) -> InferFn:
    """PyTriton inference callable for one scripted model: per request, its batch rows'
    responses (a request whose rows have fewer deltas gets empty ones)."""

    async def infer(requests: list[Request]) -> AsyncIterator[Responses]:
        replies = [[respond(model, row) for row in trtllm.parse_request(r.data)] for r in requests]
        if model.latency_s > 0:
            await asyncio.sleep(model.latency_s)
        steps = max(len(texts) for rows in replies for texts in rows)
        for step in range(steps):
            yield [
                trtllm.encode_outputs([texts[step] if step < len(texts) else "" for texts in rows])
                for rows in replies
            ]

    return infer


def bind_model(triton: Triton, model: ScriptedModel) -> None:
    """Bind one scripted model under its own name with the ensemble's tensors."""
    triton.bind(
        model_name=model.name,
        infer_func=make_infer(model),
        inputs=[_tensor(spec) for spec in trtllm.INPUTS],
        outputs=[_tensor(spec) for spec in trtllm.OUTPUTS],
        config=ModelConfig(batching=True, max_batch_size=trtllm.MAX_BATCH_SIZE, decoupled=True),
    )


def _tensor(spec: TensorSpec) -> Tensor:
    return Tensor(name=spec.name, dtype=spec.dtype, shape=spec.shape, optional=spec.optional)


def _guided(guide: str, raw: str) -> str:
    """A text the regex guide accepts: its last match in ``raw``, else its first alternative."""
    try:
        pattern = re.compile(guide)
    except re.error as exc:
        raise ValueError(f"{trtllm.GUIDE}: invalid regex: {exc}") from None
    found = [m.group(0) for m in pattern.finditer(raw) if m.group(0)]
    if found:
        return found[-1]
    body = guide[1:-1] if guide.startswith("(") and guide.endswith(")") else guide
    first = re.split(r"(?<!\\)\|", body)[0]
    return re.sub(r"\\(.)", r"\1", first)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit status."""
    doc = __doc__.splitlines()[0] if __doc__ else None
    return serve_scripted(argv, bind_model, doc=doc, logger=LOGGER, contract="TensorRT-LLM")


if __name__ == "__main__":
    raise SystemExit(main())
