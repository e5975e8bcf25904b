"""Child processes of the async supervisor: spawned with asyncio, ready when they say so.

Usage::

    nats = await start_nats_child(Path("data/nats"), log_path=Path("data/logs/nats-server.log"))
    triton = await start_triton_child(SCRIPTED_SERVER, models_file, ["alpha"], log_path=log)
    judge = await start_service_child("judge", config_path, log_path=Path("data/logs/judge.log"))
    ...
    await judge.stop(); await triton.stop(); await nats.stop()

Readiness is read from each child the way nats.py's test helper reads nats-server's: the server's
own "Server is ready" log line and its client port; for Triton, every model's ready endpoint; for
a service, its ``/healthz`` (served once it is connected to NATS and Triton). A child that exits
while it is awaited fails the start-up with the tail of its log.

Every child runs in its own session (Ctrl-C in a terminal reaches only the supervisor), writes
to its log file, and dies with the supervisor: ``stop()`` sends SIGTERM, then SIGKILL, then
SIGKILL to whatever is left of its process group (``warriorcoder.launcher.groups``: Triton's own
``tritonserver``). If the supervisor itself is killed, the kernel signals the child (Linux
``PR_SET_PDEATHSIG``): SIGTERM for nats-server and Triton (which then stops its
``tritonserver``, tied by PyTriton to its parent's life too), SIGKILL for a service, whose
graceful drain needs the dying nats-server. A restarted nats-server or Triton takes the ports of
the one it replaces (``port=``, ``ports=``), so connected services find it again by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from warriorcoder.launcher.groups import kill_group
from warriorcoder.launcher.processes import (
    NATS_READY_LINE,
    ProcessInfo,
    TritonPorts,
    free_port,
    http_ok,
    nats_argv,
    port_open,
    service_argv,
    triton_argv,
)
from warriorcoder.localmodels.pytriton import triton_env

__all__ = [
    "Child",
    "spawn",
    "start_nats_child",
    "start_service_child",
    "start_triton_child",
]

_POLL_S = 0.05


def _die_with_parent(parent: int, sig: int) -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to send the child ``sig`` when the supervisor dies."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def hook() -> None:
        libc.prctl(pr_set_pdeathsig, sig)
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)

    return hook


@dataclass
class Child(ProcessInfo):
    """A child under ``asyncio.create_subprocess_exec``."""

    proc: asyncio.subprocess.Process = field(kw_only=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.returncode is None

    async def stop(self, grace_s: float = 30.0) -> int:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL, then SIGKILL to what is left of its
        process group; returns the exit code. Idempotent."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                async with asyncio.timeout(grace_s):
                    await self.proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
        code = await self.proc.wait()
        await self.kill_rest()
        return code

    async def kill_rest(self) -> None:
        """SIGKILL whatever the child started that outlived it (its process group), and wait
        until it is gone: a restart on the same ports needs them free."""
        await kill_group(self.pid)

    async def wait_until(self, ready: Callable[[], bool]) -> None:
        """Poll ``ready`` (a quick blocking probe, run in a thread) while the child lives."""
        while not await asyncio.to_thread(ready):
            if not self.alive():
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            await asyncio.sleep(_POLL_S)


async def spawn(
    name: str,
    argv: list[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    death_signal: int = signal.SIGTERM,
) -> Child:
    """Start ``argv`` in its own session with stdout and stderr appended to ``log_path``; it gets
    ``death_signal`` when the supervisor dies."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid(), death_signal),
        )
    return Child(name=name, log_path=log_path, proc=proc)


async def _started(
    child: Child, ready: Callable[[Child], Awaitable[None]], what: str, ready_s: float
) -> Child:
    """``child`` once ``ready(child)`` returns within ``ready_s``; stopped if it fails, times out
    or is cancelled."""
    try:
        async with asyncio.timeout(ready_s):
            await ready(child)
    except TimeoutError:
        await asyncio.shield(child.stop(5))
        raise TimeoutError(f"{what} not ready within {ready_s:g}s:\n{child.log_tail()}") from None
    except BaseException:
        await asyncio.shield(child.stop(5))
        raise
    return child


def _log_offset(store_dir: Path, log_path: Path) -> int:
    store_dir.mkdir(parents=True, exist_ok=True)
    return log_path.stat().st_size if log_path.exists() else 0


async def start_nats_child(
    store_dir: Path, *, log_path: Path, port: int | None = None, ready_s: float = 20.0
) -> Child:
    """nats-server with JetStream, ready once it logs "Server is ready" and takes connections."""
    port = port or free_port()
    # Only the lines of this run count: the log file is appended to across runs.
    seen = _log_offset(store_dir, log_path)
    child = await spawn("nats-server", nats_argv(store_dir, port), log_path)
    child.ports["client"] = port

    def ready() -> bool:
        with log_path.open("rb") as f:
            f.seek(seen)
            return NATS_READY_LINE in f.read() and port_open(port)

    async def wait(c: Child) -> None:
        await c.wait_until(ready)

    return await _started(child, wait, f"nats-server on port {port}", ready_s)


async def start_triton_child(
    module: str,
    models_file: Path,
    model_names: list[str],
    *,
    log_path: Path,
    name: str = "tritonserver",
    extra_args: list[str] | None = None,
    ready_s: float = 180.0,
    ports: TritonPorts | None = None,
) -> Child:
    """A local Triton (PyTriton) on ``ports`` (default: free ones), ready once every model of
    ``model_names`` is."""
    ports = ports or TritonPorts.free()
    argv = triton_argv(module, models_file, ports, extra_args)
    child = await spawn(name, argv, log_path, env=triton_env())
    child.ports.update(ports.as_dict())

    async def wait(c: Child) -> None:
        for url in map(ports.model_ready_url, model_names):
            await c.wait_until(functools.partial(http_ok, url))

    return await _started(child, wait, f"{name} models {', '.join(model_names)}", ready_s)


async def start_service_child(service: str, config_path: Path, *, log_path: Path) -> Child:
    """``warriorcoder serve SERVICE`` on a free port; returns at once (it answers ``/healthz``
    once it is connected to NATS and Triton)."""
    port = free_port()
    # SIGKILL, not SIGTERM, when the supervisor dies: a service drains through NATS, and its
    # nats-server is going down too, so the drain may never end; what it held is redelivered.
    argv = service_argv(service, config_path, port)
    child = await spawn(service, argv, log_path, death_signal=signal.SIGKILL)
    child.ports["http"] = port
    return child
