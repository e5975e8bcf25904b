"""An arena on one machine: nats-server, model backends and the four services, supervised on one
event loop.

Usage::

    async with LocalArena(data_dir, mode="scripted", battles=6) as arena, asyncio.timeout(300):
        await arena.wait_for_samples(6)

Backends, by ``mode``:

- ``scripted``: scripted test models on a real Triton Inference Server (PyTriton); fastest.
- ``demo``: tiny random-weight transformer models built on the spot, served through the same
  local Triton path as real Hugging Face models (transformers, batched, guided choices).
- ``config``: the user's ``ArenaSettings``. Models with a ``local`` section are served by a local
  Triton from their ``local.path`` (a directory or hub id); others use their ``triton_url`` as is.

Supervision: every child is an asyncio subprocess (``warriorcoder.launcher.children``), and one
``asyncio.TaskGroup`` owns a watcher per child and the budget keeper. A service that exits is
restarted with back-off (``RestartPolicy``) and the event logged to ``logs/supervisor.log``; a
crash loop, or nats-server or Triton exiting, stops the arena with ``SupervisorError``. Leaving
the context cancels and awaits every task, then stops the services (upstream first), Triton and
nats-server, each with SIGTERM, then SIGKILL.

The JetStream store, logs, the resolved config and the samples all live in ``data_dir``; a second
run on the same directory resumes: unfinished work waits in the streams, and the arena-wide
challenge budget is set to what is still missing (target - samples on disk - work in flight), so
the run ends at exactly ``battles`` samples, with nothing lost and nothing written twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Coroutine
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Literal

import yaml

from warriorcoder.errors import ArenaError
from warriorcoder.launcher.children import (
    Child,
    start_nats_child,
    start_service_child,
    start_triton_child,
)
from warriorcoder.launcher.config import (
    demo_arena_settings,
    for_run,
    local_models_file,
    scripted_arena_settings,
    serve_locally,
    write_settings,
)
from warriorcoder.launcher.policy import CrashLoop, RestartPolicy, budget_for, top_up
from warriorcoder.launcher.processes import HF_SERVER, SCRIPTED_SERVER, http_ok
from warriorcoder.launcher.status import StatusReader, count_samples
from warriorcoder.runtime.settings import ArenaSettings
from warriorcoder.testing.scripted import SCRIPTED_MODELS, load_models

__all__ = [
    "DEMO_NOTE",
    "SCRIPTED_MODELS",
    "SCRIPTED_NOTE",
    "SERVICES",
    "LocalArena",
    "Mode",
    "SupervisorError",
    "count_samples",
]

SERVICES = ("aggregator", "judge", "responder", "challenger")  # started in this order
DEMO_NOTE = (
    "DEMO: the models are tiny transformers with RANDOM WEIGHTS built on this machine: their "
    "text is noise. The pipeline (templates, Triton, generation, judging) is real."
)
SCRIPTED_NOTE = "SCRIPTED: deterministic test models, not LLMs (use --demo or --config)."
Mode = Literal["scripted", "demo", "config"]


class SupervisorError(ArenaError, RuntimeError):
    """The arena cannot go on: nats-server or Triton exited, or a service keeps crashing."""

    reason = "supervisor"


class LocalArena:
    """Start everything on entry, supervise it while entered, stop it in reverse on exit."""

    def __init__(
        self,
        data_dir: Path,
        *,
        mode: Mode = "scripted",
        settings: ArenaSettings | None = None,
        battles: int | None = None,
        max_restarts: int = 5,
        poll_s: float = 0.5,
        service_ready_s: float = 180.0,
    ) -> None:
        if mode == "config" and settings is None:
            raise ValueError("mode 'config' needs the arena's settings")
        self.data_dir = data_dir.resolve()
        self.mode = mode
        self.settings = settings
        self.battles = battles
        self.max_restarts = max_restarts
        self.poll_s = poll_s
        self.service_ready_s = service_ready_s
        self.procs: dict[str, Child] = {}
        self.events: list[str] = []
        self.note = {"demo": DEMO_NOTE, "scripted": SCRIPTED_NOTE}.get(mode, "")
        self.config_path = self.data_dir / "arena.yaml"
        self.logs = self.data_dir / "logs"
        self.samples_dir = self.data_dir / "samples"
        self._restarts: dict[str, RestartPolicy] = {}
        self._stack = AsyncExitStack()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._state: StatusReader | None = None
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> LocalArena:
        try:
            await self._start()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.procs['nats-server'].ports['client']}"

    @property
    def state(self) -> StatusReader:
        """The arena's one reader of its state (one NATS connection)."""
        if self._state is None:
            raise RuntimeError("the arena is not running")
        return self._state

    async def _start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._tg = await self._stack.enter_async_context(asyncio.TaskGroup())
        await self._own(start_nats_child(self.data_dir / "nats", log_path=self._log("nats-server")))
        settings = for_run(
            await self._backends(), nats_url=self.nats_url, samples_dir=self.samples_dir
        )
        await asyncio.to_thread(write_settings, self.config_path, settings)
        self._state = await self._stack.enter_async_context(
            StatusReader(self.nats_url, self.samples_dir)
        )
        if self.battles is not None:
            budget = budget_for(self.battles, await self.samples(), await self.state.pending())
            await self.state.set_budget(budget)
            self._event(f"challenge budget set to {budget}")
            self._spawn_task(self._keep_budget(self.battles), "budget")
        for service in SERVICES:
            await self._own(
                start_service_child(service, self.config_path, log_path=self._log(service))
            )
        await self._services_healthy()

    async def _close(self) -> None:
        """Cancel and await every task, then stop the children in reverse (the exit stack)."""
        self._stopping = True  # a watcher seeing its child exit from now on leaves it be
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        try:
            await self._stack.aclose()
        except BaseExceptionGroup as group:  # the task group's: raise the supervisor's own error
            errors = [e for e in group.exceptions if isinstance(e, ArenaError)]
            if len(errors) == len(group.exceptions) == 1:
                raise errors[0] from None
            raise

    def _log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def _spawn_task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        assert self._tg is not None
        self._tasks.append(self._tg.create_task(coro, name=name))

    async def _own(self, starting: Awaitable[Child]) -> Child:
        """Keep a started child: stopped on exit (looked up by name: restarts replace it) and
        watched meanwhile."""
        child = await starting
        self.procs[child.name] = child
        self._stack.push_async_callback(self._stop_child, child.name)
        self._spawn_task(self._watch(child.name), f"watch-{child.name}")
        return child

    async def _stop_child(self, name: str) -> None:
        await self.procs[name].stop()

    async def _backends(self) -> ArenaSettings:
        if self.mode == "scripted":
            names = [m.name for m in load_models(SCRIPTED_MODELS)]
            triton = await self._own(
                start_triton_child(
                    SCRIPTED_SERVER, SCRIPTED_MODELS, names, log_path=self._log("triton")
                )
            )
            grpc = f"127.0.0.1:{triton.ports['grpc']}"
            return scripted_arena_settings(names, triton_grpc=grpc, data_dir=self.data_dir)
        if self.mode == "demo":
            from warriorcoder.localmodels.demo import build_demo_models

            demo = await asyncio.to_thread(build_demo_models, self.data_dir / "demo-models")
            # Tiny models on a shared CPU: one torch thread each is several times faster.
            return await self._serve_local(
                demo_arena_settings({m.name: m.path for m in demo}), threads=1
            )
        assert self.settings is not None
        return await self._serve_local(self.settings, threads=0)

    async def _serve_local(self, settings: ArenaSettings, *, threads: int) -> ArenaSettings:
        """Serve the ``local`` models on a local Triton and point the settings at it."""
        spec = local_models_file(settings)
        if not spec["models"]:
            return settings
        models_file = self.data_dir / "local-models.yaml"
        models_file.write_text(yaml.safe_dump(spec, sort_keys=False))
        triton = await self._own(
            start_triton_child(
                HF_SERVER,
                models_file,
                [e["name"] for e in spec["models"]],
                name="hf-tritonserver",
                extra_args=["--threads", str(threads)],
                log_path=self._log("triton"),
                ready_s=300,
            )
        )
        return await asyncio.to_thread(serve_locally, settings, f"127.0.0.1:{triton.ports['grpc']}")

    async def _start_service(self, service: str) -> None:
        """(Re)start a service; its watcher and stop callback follow it by name."""
        child = await start_service_child(service, self.config_path, log_path=self._log(service))
        self.procs[service] = child

    async def _services_healthy(self) -> None:
        """Wait until every service answers ``/healthz`` (whichever process of it is current: a
        service that crashes meanwhile is restarted by its watcher)."""
        deadline = time.monotonic() + self.service_ready_s
        for service in SERVICES:
            while not await asyncio.to_thread(http_ok, self._health_url(service)):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{service} not healthy within {self.service_ready_s:g}s:\n"
                        f"{self.procs[service].log_tail()}"
                    )
                await asyncio.sleep(0.1)

    def _health_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.procs[service].ports['http']}/healthz"

    # -- supervision ----------------------------------------------------------------------------

    def _event(self, text: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {text}"
        self.events.append(stamped)
        with (self.logs / "supervisor.log").open("a") as f:
            f.write(stamped + "\n")

    async def _watch(self, name: str) -> None:
        """Restart a service whenever it exits (with back-off); anything else exiting, or a
        crash loop, ends the arena."""
        while True:
            child = self.procs[name]
            code = await child.proc.wait()
            if self._stopping:
                return
            if name not in SERVICES:
                raise SupervisorError(f"{name} exited ({code}):\n{child.log_tail()}")
            policy = self._restarts.setdefault(name, RestartPolicy(max_restarts=self.max_restarts))
            try:
                delay = policy.next_delay(time.monotonic())
            except CrashLoop as exc:
                raise SupervisorError(
                    f"{name} keeps crashing ({exc}):\n{child.log_tail()}"
                ) from None
            after = f" in {delay:g}s" if delay else ""
            self._event(f"{name} exited with code {code}; restarting it{after}")
            await asyncio.sleep(delay)
            await self._start_service(name)

    async def _keep_budget(self, target: int) -> None:
        """Top the challenge budget up when the pipeline went idle short of the target (seen on
        two polls in a row, so a challenge between its budget and its stream is not missed)."""
        short_before = 0
        while True:
            await asyncio.sleep(self.poll_s)
            budget, pending = await self.state.budget(), await self.state.pending()
            short = top_up(target, await self.samples(), budget, pending)
            if short and short == short_before:
                self._event(f"pipeline idle {short} samples short: mining {short} more")
                await self.state.set_budget(short)
                short = 0
            short_before = short

    # -- running --------------------------------------------------------------------------------

    async def samples(self) -> int:
        return await asyncio.to_thread(count_samples, self.samples_dir)

    def dead(self) -> list[str]:
        return [name for name, p in self.procs.items() if not p.alive()]

    async def wait_for_samples(self, n: int, *, poll_s: float = 0.5) -> int:
        """Wait until the data directory holds ``n`` samples (supervision runs meanwhile); bound
        it with ``asyncio.timeout``."""
        while True:  # the aggregator's shards are files: polled, nothing to be woken by
            if (count := await self.samples()) >= n:
                return count
            await asyncio.sleep(poll_s)
