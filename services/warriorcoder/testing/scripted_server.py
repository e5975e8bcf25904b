"""Serve scripted LLMs from a real Triton server (PyTriton) with the vLLM backend contract.

Usage::

    python -m warriorcoder.testing.scripted_server \
        --models services/warriorcoder/testing/scripted-arena-models.yaml \
        --grpc-port 8001 --http-port 8000 --metrics-port 8002 [--log-file triton.log]

Launchers must start it with ``env=triton_env()``: PyTriton's Python-backend stub can otherwise load
the wrong libpython. Each scripted model becomes a decoupled Triton model of the same name with the
vLLM backend's tensors (``text_input``, ``stream``, ``sampling_parameters``,
``exclude_input_in_output`` -> ``text_output``) and its semantics: sampling_parameters is a JSON
object (falling back to the request's parameters), ``exclude_input_in_output`` absent means the
prompt is prepended unless streaming, ``stream`` sends the text as several deltas, and a bad request
is answered with an in-band error. SIGTERM or SIGINT stops Triton cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sysconfig
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from pytriton.model_config import ModelConfig, Tensor
from pytriton.proxy.types import Request
from pytriton.triton import Triton, TritonConfig

from warriorcoder.testing.scripted import (
    ScriptedModel,
    apply_sampling,
    load_models,
    pick_choice,
    stream_chunks,
    validate_sampling_params,
)

__all__ = ["bind_model", "main", "make_infer", "respond", "triton_env"]

LOGGER = logging.getLogger("warriorcoder.testing.scripted_server")

Responses = list[dict[str, np.ndarray]]
InferFn = Callable[[list[Request]], AsyncIterator[Responses]]

INPUTS = (
    Tensor(name="text_input", dtype=bytes, shape=(1,)),
    Tensor(name="stream", dtype=np.bool_, shape=(1,), optional=True),
    Tensor(name="sampling_parameters", dtype=bytes, shape=(1,), optional=True),
    Tensor(name="exclude_input_in_output", dtype=np.bool_, shape=(1,), optional=True),
)
OUTPUTS = (Tensor(name="text_output", dtype=bytes, shape=(-1,)),)


def triton_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ (or base) with this interpreter's LIBDIR first on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
        env["LD_LIBRARY_PATH"] = ":".join([libdir, *rest])
    return env


def _first(data: Mapping[str, np.ndarray], name: str) -> Any:
    array = np.asarray(data[name]).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name}: empty tensor")
    return array[0]


def _text(data: Mapping[str, np.ndarray], name: str) -> str:
    value = _first(data, name)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{name}: not UTF-8: {exc}") from None
    return str(value)


@dataclass(frozen=True, slots=True)
class VllmRequest:
    """One request of the vLLM backend contract, checked."""

    prompt: str
    params: dict[str, Any]  # validated sampling parameters
    stream: bool
    prepend: bool  # echo the prompt before the text (exclude_input_in_output false)


def parse_vllm_request(
    data: Mapping[str, np.ndarray], parameters: Mapping[str, Any] | None = None
) -> VllmRequest:
    """Read a request's tensors as the vLLM backend does; ``ValueError`` if it would reject it."""
    if "text_input" not in data:
        raise ValueError("text_input: missing")
    prompt = _text(data, "text_input")
    stream = bool(_first(data, "stream")) if "stream" in data else False
    if "exclude_input_in_output" in data:
        prepend = not bool(_first(data, "exclude_input_in_output"))
    else:
        prepend = not stream
    if prepend and stream:
        raise ValueError("When streaming, `exclude_input_in_output` = False is not allowed.")
    if "sampling_parameters" in data:
        raw = _text(data, "sampling_parameters")
        try:
            params = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"sampling_parameters: invalid JSON: {exc}") from None
    else:
        params = dict(parameters or {})
    return VllmRequest(prompt, validate_sampling_params(params), stream, prepend)


def respond(
    model: ScriptedModel,
    data: Mapping[str, np.ndarray],
    parameters: Mapping[str, Any] | None = None,
) -> list[list[str]]:
    """The texts of one request's responses: one list of ``n`` texts per response.

    Raises ``ValueError`` for a request the vLLM backend would reject.
    """
    req = parse_vllm_request(data, parameters)
    prompt, params, stream, prepend = req.prompt, req.params, req.stream, req.prepend
    n = params.get("n", 1)
    text = apply_sampling(model.generate(prompt, params), params)
    if "guided_decoding" in params:
        text = pick_choice(text, params["guided_decoding"]["choice"])
    if not stream:
        return [[prompt + text if prepend else text] * n]
    return [[chunk] * n for chunk in stream_chunks(text)]


def _tensor(texts: list[str]) -> dict[str, np.ndarray]:
    return {"text_output": np.array([t.encode("utf-8") for t in texts], dtype=object)}


def make_infer(model: ScriptedModel) -> InferFn:
    """PyTriton inference callable for one scripted model.

    An async generator, so ``latency_s`` waits without blocking other requests of the model. Each
    yield holds one response per request; a request with fewer responses gets empty deltas.
    """

    async def infer(requests: list[Request]) -> AsyncIterator[Responses]:
        replies = [respond(model, req.data, req.parameters) for req in requests]
        if model.latency_s > 0:
            await asyncio.sleep(model.latency_s)
        for step in range(max(len(r) for r in replies)):
            yield [
                _tensor(reply[step] if step < len(reply) else [""] * len(reply[0]))
                for reply in replies
            ]

    return infer


def bind_vllm_model(triton: Triton, name: str, infer_func: Any) -> None:
    """Bind a decoupled model with the vLLM backend's exact tensors (both local servers)."""
    triton.bind(
        model_name=name,
        infer_func=infer_func,
        inputs=list(INPUTS),
        outputs=list(OUTPUTS),
        config=ModelConfig(batching=False, decoupled=True),
    )


def bind_model(triton: Triton, model: ScriptedModel) -> None:
    """Bind one scripted model under its own name."""
    bind_vllm_model(triton, model.name, make_infer(model))


def server_arguments(description: str | None, models_help: str) -> argparse.ArgumentParser:
    """The command-line options both local Triton servers take."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", required=True, type=Path, help=models_help)
    parser.add_argument("--grpc-port", required=True, type=int)
    parser.add_argument("--http-port", required=True, type=int)
    parser.add_argument("--metrics-port", required=True, type=int)
    parser.add_argument("--address", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--log-file", type=Path, default=None, help="Triton's log file")
    return parser


def triton_config(args: argparse.Namespace) -> TritonConfig:
    """Triton's config from ``server_arguments``; also fixes this process's LD_LIBRARY_PATH,
    which PyTriton copies when it starts tritonserver (belt and braces with ``triton_env``)."""
    os.environ["LD_LIBRARY_PATH"] = triton_env()["LD_LIBRARY_PATH"]
    return TritonConfig(
        grpc_port=args.grpc_port,
        grpc_address=args.address,
        http_port=args.http_port,
        http_address=args.address,
        metrics_port=args.metrics_port,
        metrics_address=args.address,
        log_verbose=0,
        log_file=args.log_file,
        exit_timeout_secs=5,
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    doc = __doc__.splitlines()[0] if __doc__ else None
    return server_arguments(doc, "scripted models YAML file").parse_args(argv)


_signalled: list[int] = []


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _signalled.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit status."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    models = load_models(args.models)
    config = triton_config(args)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        with Triton(config=config) as triton:
            for model in models:
                bind_model(triton, model)
            LOGGER.info(
                "starting %s on grpc %s:%d, http %s:%d",
                ", ".join(m.name for m in models),
                args.address,
                args.grpc_port,
                args.address,
                args.http_port,
            )
            triton.serve()  # returns after SIGINT/SIGTERM (as KeyboardInterrupt) or if Triton dies
    except KeyboardInterrupt:
        pass
    if not _signalled:
        LOGGER.error("Triton or a model proxy died")
        return 1
    LOGGER.info("stopped on signal %d", _signalled[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
