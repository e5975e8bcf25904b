"""Serving Python models on a local Triton (PyTriton) with the vLLM backend's contract.

Usage::

    def bind_my_models(triton: Triton, hooks: ServerHooks) -> None:
        bind_vllm_model(triton, "qwen", infer)  # infer: an async generator of responses
        hooks.on_stop.append(release_qwen)

    args = server_arguments("my models", "models YAML file").parse_args()
    status = serve(triton_config(args), bind_my_models, logger=LOGGER)

What both local servers share (the HF server, ``warriorcoder.localmodels.hf_server``, and the
scripted one, ``warriorcoder.testing.scripted_server``): the command line, Triton's config, models
bound as decoupled Triton models with exactly the tensors of ``warriorcoder.runtime.vllm``, and the
process's life. Launchers must start such a server with ``env=triton_env()``: PyTriton's
Python-backend stub can otherwise load the wrong libpython.

``serve`` starts Triton, lets ``bind`` bind the models (a model bound is a model Triton reports
ready; Triton answers health checks meanwhile) and serves until SIGTERM or SIGINT: the first
signal runs the ``on_signal`` hooks at once (stop running work), ends serving, runs the
``on_stop`` hooks (in reverse, while the models' inference loops still run) and stops Triton;
exit status 0. It returns 1 if Triton or a model proxy dies, or if ``bind`` raises
``StartupError`` (logged).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sysconfig
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import numpy as np
from pytriton.model_config import ModelConfig, Tensor
from pytriton.proxy.types import Request
from pytriton.triton import Triton, TritonConfig

from warriorcoder.runtime.vllm import INPUTS, OUTPUTS, TensorSpec

__all__ = [
    "InferFn",
    "Responses",
    "ServerHooks",
    "StartupError",
    "bind_vllm_model",
    "configure_logging",
    "serve",
    "server_arguments",
    "triton_config",
    "triton_env",
]

Responses = list[dict[str, np.ndarray]]
InferFn = Callable[[list[Request]], AsyncIterator[Responses]]

_MONITORING_PERIOD_S = 1.0  # how often a serving process checks that Triton and its models live


def triton_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ (or base) with this interpreter's LIBDIR first on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
        env["LD_LIBRARY_PATH"] = ":".join([libdir, *rest])
    return env


def bind_vllm_model(triton: Triton, name: str, infer_func: InferFn) -> None:
    """Bind a decoupled model with the vLLM backend's exact tensors."""
    triton.bind(
        model_name=name,
        infer_func=infer_func,
        inputs=[_tensor(spec) for spec in INPUTS],
        outputs=[_tensor(spec) for spec in OUTPUTS],
        config=ModelConfig(batching=False, decoupled=True),
    )


def _tensor(spec: TensorSpec) -> Tensor:
    return Tensor(name=spec.name, dtype=spec.dtype, shape=spec.shape, optional=spec.optional)


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


class StartupError(Exception):
    """A model cannot be bound (e.g. its weights do not load): the server exits with status 1."""


@dataclass
class ServerHooks:
    """What a binding asks of the server's shutdown.

    ``on_signal``: run inside the signal handler, so quick and thread-safe (an engine's abort).
    ``on_stop``: run once serving ends, last registered first, before Triton stops.
    """

    on_signal: list[Callable[[], None]] = field(default_factory=list)
    on_stop: list[Callable[[], None]] = field(default_factory=list)


def serve(
    config: TritonConfig,
    bind: Callable[[Triton, ServerHooks], None],
    *,
    logger: logging.Logger,
) -> int:
    """Run Triton with the models ``bind`` binds until SIGTERM/SIGINT; returns the exit status."""
    hooks = ServerHooks()
    signalled: list[int] = []

    def interrupt(signum: int, frame: FrameType | None) -> None:
        signalled.append(signum)
        if len(signalled) > 1:
            return  # already stopping: let the shutdown finish
        for abort in hooks.on_signal:
            abort()
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    status = 0
    try:
        with Triton(config=config) as triton:
            logger.info(
                "Triton up on grpc %s:%d, http %s:%d",
                config.grpc_address,
                config.grpc_port,
                config.http_address,
                config.http_port,
            )
            try:
                bind(triton, hooks)
                # Not Triton.serve(): it stops Triton the moment the signal arrives, and the
                # on_stop hooks need Triton (and the models' inference loops) still running.
                while triton.is_alive():
                    time.sleep(_MONITORING_PERIOD_S)
            except StartupError as exc:
                logger.error("%s", exc)
                status = 1
            finally:
                for close in reversed(hooks.on_stop):
                    try:
                        close()
                    except Exception:  # the others must still run, and Triton still stop
                        logger.exception("stopping: %s failed", close)
    except KeyboardInterrupt:
        pass  # the signal: leaving the with block has stopped Triton
    if status:
        return status
    if not signalled:
        logger.error("Triton or a model proxy died")
        return 1
    logger.info("stopped on signal %d", signalled[0])
    return 0


def configure_logging() -> None:
    """The local servers' log format, on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
