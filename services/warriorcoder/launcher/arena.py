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

The verifier (execution-checked battles) runs wherever code can be sandboxed here
(``warriorcoder.launcher.verifier``): ``verifier="auto"`` (the default) probes the sandbox tool
once before anything starts and runs the arena unverified when it does not work (``verifier_line``
says why); ``"on"`` fails (``VerifierUnavailable``) instead, ``"off"`` never runs it. ``services``
are the services of the run: the verifier only when on.

Supervision: every child is an asyncio subprocess (``warriorcoder.launcher.children``), and one
``asyncio.TaskGroup`` owns a watcher per child and the budget keeper. Any child that exits, or
fails to start again, is restarted with back-off (``RestartPolicy``): the services, and
nats-server and Triton too, on the ports and the store they had, so the services reconnect by
themselves. Whatever the dead child started (its process group: Triton's ``tritonserver``) is
killed first. No child ends the run by dying: past ``max_restarts`` in a minute it is in a crash
loop, restarted every ``loop_cap_s`` at most, and the supervisor says so (an event in
``logs/supervisor.log`` and the display, ``crash_looping()`` in the status). Leaving the context
cancels and awaits every task, then stops the services (upstream first), Triton and nats-server,
each with SIGTERM, then SIGKILL (their process groups included).

The data directory is locked for the run (``warriorcoder.launcher.lock``: a second arena on it
raises ``DataDirLocked``), and the children's process groups are recorded in
``children.json``: a run that starts after one killed with SIGKILL stops whatever of it survived
before it starts anything (``warriorcoder.launcher.groups``).

The JetStream store, logs, the resolved config and the samples all live in ``data_dir``; a second
run on the same directory resumes: unfinished work waits in the streams, and the arena-wide
challenge budget is set to what is still missing (target - samples on disk - work in flight), so
the run ends at exactly ``battles`` samples, with nothing lost and nothing written twice.
``settle()`` waits for the samples stream to hold exactly what is on disk before a run is
reported done.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
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
from warriorcoder.launcher.groups import ChildPids
from warriorcoder.launcher.lock import DataDirLock, DataDirLocked
from warriorcoder.launcher.policy import RestartPolicy, budget_for, settled, top_up
from warriorcoder.launcher.processes import (
    HF_SERVER,
    SCRIPTED_SERVER,
    TritonPorts,
    free_port,
    http_ok,
)
from warriorcoder.launcher.status import NATS_DOWN, StatusReader, count_samples
from warriorcoder.launcher.verifier import (
    Choice,
    VerifierDecision,
    decide_verifier,
    with_verifier,
)
from warriorcoder.runtime.settings import ArenaSettings, SandboxSettings
from warriorcoder.testing.scripted import SCRIPTED_MODELS, load_models

__all__ = [
    "DEMO_NOTE",
    "SCRIPTED_MODELS",
    "SCRIPTED_NOTE",
    "SERVICES",
    "DataDirLocked",
    "LocalArena",
    "Mode",
    "SupervisorError",
    "count_samples",
]

# Started in this order (downstream first); the verifier only when the run verifies.
SERVICES = ("aggregator", "judge", "verifier", "responder", "challenger")
DEMO_NOTE = (
    "DEMO: the models are tiny transformers with RANDOM WEIGHTS built on this machine: their "
    "text is noise. The pipeline (templates, Triton, generation, judging) is real."
)
SCRIPTED_NOTE = "SCRIPTED: deterministic test models, not LLMs (use --demo or --config)."
Mode = Literal["scripted", "demo", "config"]


class SupervisorError(ArenaError, RuntimeError):
    """The arena cannot go on (its children are restarted, whatever they do: this is for what a
    restart cannot mend)."""

    reason = "supervisor"


class LocalArena:
    """Start everything on entry, supervise it while entered, stop it in reverse on exit."""

    stale_grace_s = 10.0  # SIGTERM to SIGKILL, for children an earlier run left running

    def __init__(
        self,
        data_dir: Path,
        *,
        mode: Mode = "scripted",
        settings: ArenaSettings | None = None,
        battles: int | None = None,
        verifier: Choice = "auto",
        max_restarts: int = 5,
        loop_cap_s: float = 60.0,
        poll_s: float = 0.5,
        service_ready_s: float = 180.0,
    ) -> None:
        if mode == "config" and settings is None:
            raise ValueError("mode 'config' needs the arena's settings")
        self.data_dir = data_dir.resolve()
        self.mode = mode
        self.settings = settings
        self.battles = battles
        self.verifier = verifier
        self.max_restarts = max_restarts
        self.loop_cap_s = loop_cap_s
        self.poll_s = poll_s
        self.service_ready_s = service_ready_s
        self.procs: dict[str, Child] = {}
        self.events: list[str] = []
        self.note = {"demo": DEMO_NOTE, "scripted": SCRIPTED_NOTE}.get(mode, "")
        self.config_path = self.data_dir / "arena.yaml"
        self.logs = self.data_dir / "logs"
        self.samples_dir = self.data_dir / "samples"
        self._restarts: dict[str, RestartPolicy] = {}
        self._starters: dict[str, Callable[[], Awaitable[Child]]] = {}
        self._lock = DataDirLock(self.data_dir)
        self._pids = ChildPids(self.data_dir / "children.json")
        self._stack = AsyncExitStack()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._state: StatusReader | None = None
        self._stopping = False
        self.run_settings: ArenaSettings | None = None
        self._verifier: VerifierDecision | None = None

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

    @property
    def services(self) -> tuple[str, ...]:
        """The services this run starts, in start order (the verifier only when it verifies)."""
        verifies = self._verifier is not None and self._verifier.enabled
        return tuple(s for s in SERVICES if s != "verifier" or verifies)

    async def decide_verifier(self) -> VerifierDecision:
        """Whether the run verifies (probing the sandbox tool once, off the event loop); raises
        ``VerifierUnavailable`` when the verifier is asked for and cannot run. Entering the arena
        decides it when this was not called before."""
        if self._verifier is None:
            from warriorcoder.sandbox import probe

            sandbox = self.settings.verifier.sandbox if self.settings else SandboxSettings()
            self._verifier = await asyncio.to_thread(
                decide_verifier, sandbox, self.verifier, check=probe
            )
        return self._verifier

    @property
    def verifier_line(self) -> str:
        """The decision in one line for the terminal ("" before it is made)."""
        return self._verifier.line if self._verifier is not None else ""

    async def _prepare(self) -> None:
        """Lock the data directory, stop what an earlier run left running, open the task group."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()  # raises DataDirLocked: nothing started, nothing to undo
        self._stack.callback(self._lock.release)  # the last thing undone
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.verifier_line:
            self._event(self.verifier_line)
        for stale in await asyncio.to_thread(self._pids.reap_stale, self.stale_grace_s):
            self._event(f"stopped {stale}, left running by an earlier run on this directory")
        self._stack.callback(self._pids.clear)  # runs once every child is stopped
        self._tg = await self._stack.enter_async_context(asyncio.TaskGroup())

    async def _start(self) -> None:
        decision = await self.decide_verifier()  # before anything starts: nothing to undo
        await self._prepare()
        port, store = free_port(), self.data_dir / "nats"
        await self._own(
            "nats-server",
            lambda: start_nats_child(store, log_path=self._log("nats-server"), port=port),
        )
        settings = for_run(
            with_verifier(await self._backends(), enabled=decision.enabled),
            nats_url=self.nats_url,
            samples_dir=self.samples_dir,
        )
        self.run_settings = settings
        await asyncio.to_thread(write_settings, self.config_path, settings)
        self._state = await self._stack.enter_async_context(
            StatusReader(self.nats_url, self.samples_dir)
        )
        if self.battles is not None:
            budget = budget_for(self.battles, await self.samples(), await self.state.pending())
            await self.state.set_budget(budget)
            self._event(f"challenge budget set to {budget}")
            self._spawn_task(self._keep_budget(self.battles), "budget")
        for service in self.services:
            await self._own(service, self._service_starter(service))
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

    async def _own(self, name: str, start: Callable[[], Awaitable[Child]]) -> Child:
        """Start a child with ``start`` and keep it: restarted with ``start`` whenever it exits,
        stopped on exit (looked up by name: restarts replace it)."""
        child = await start()
        self._starters[name] = start
        self._started(child)
        self._stack.push_async_callback(self._stop_child, name)
        self._spawn_task(self._watch(name), f"watch-{name}")
        return child

    def _started(self, child: Child) -> None:
        self.procs[child.name] = child
        self._pids.record(child.name, child.pid)

    async def _stop_child(self, name: str) -> None:
        await self.procs[name].stop()

    async def _backends(self) -> ArenaSettings:
        if self.mode == "scripted":
            names = [m.name for m in load_models(SCRIPTED_MODELS)]
            ports = TritonPorts.free()  # a restarted Triton takes the same ones
            triton = await self._own(
                "tritonserver",
                lambda: start_triton_child(
                    SCRIPTED_SERVER, SCRIPTED_MODELS, names, log_path=self._log("triton"),
                    ports=ports,
                ),
            )  # fmt: skip
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
        ports = TritonPorts.free()
        triton = await self._own(
            "hf-tritonserver",
            lambda: start_triton_child(
                HF_SERVER,
                models_file,
                [e["name"] for e in spec["models"]],
                name="hf-tritonserver",
                extra_args=["--threads", str(threads)],
                log_path=self._log("triton"),
                ready_s=300,
                ports=ports,
            ),
        )
        return await asyncio.to_thread(serve_locally, settings, f"127.0.0.1:{triton.ports['grpc']}")

    def _service_starter(self, service: str) -> Callable[[], Awaitable[Child]]:
        def start() -> Awaitable[Child]:
            return start_service_child(service, self.config_path, log_path=self._log(service))

        return start

    async def _services_healthy(self) -> None:
        """Wait until every service answers ``/healthz`` (whichever process of it is current: a
        service that crashes meanwhile is restarted by its watcher)."""
        deadline = time.monotonic() + self.service_ready_s
        for service in self.services:
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

    def _policy(self, name: str) -> RestartPolicy:
        return self._restarts.setdefault(
            name, RestartPolicy(max_restarts=self.max_restarts, loop_cap_s=self.loop_cap_s)
        )

    async def _watch(self, name: str) -> None:
        """Restart the child whenever it exits, with back-off, for as long as the arena runs."""
        while True:
            child = self.procs[name]
            code = await child.proc.wait()
            if self._stopping:
                return
            await child.kill_rest()  # e.g. Triton's tritonserver, holding the ports
            what = f"exited with code {code}"
            while True:  # until a start succeeds: a failed start is one more crash
                policy = self._policy(name)
                delay = policy.next_delay(time.monotonic())
                after = f" in {delay:g}s" if delay else ""
                if policy.crash_looping(time.monotonic()):
                    self._event(
                        f"CRASH LOOP: {name} {what} ({policy.recent()} restarts in "
                        f"{policy.window_s:g}s); restarting it{after}, and again until it stays up"
                    )
                else:
                    self._event(f"{name} {what}; restarting it{after}")
                await asyncio.sleep(delay)
                try:
                    self._started(await self._starters[name]())
                    break
                except (RuntimeError, TimeoutError, OSError) as exc:
                    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    what = f"failed to start ({first})"

    def crash_looping(self) -> list[str]:
        """The children in a crash loop now (restarted past the limit, not stable since)."""
        now = time.monotonic()
        return sorted(n for n, p in self._restarts.items() if p.crash_looping(now))

    def restarts(self) -> dict[str, int]:
        """Restarts so far, per child that had any."""
        return {n: p.restarts for n, p in sorted(self._restarts.items())}

    async def _keep_budget(self, target: int) -> None:
        """Top the challenge budget up when the pipeline went idle short of the target (seen on
        two polls in a row, so a challenge between its budget and its stream is not missed)."""
        short_before = 0
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                budget, pending = await self.state.budget(), await self.state.pending()
                short = top_up(target, await self.samples(), budget, pending)
                if short and short == short_before:
                    self._event(f"pipeline idle {short} samples short: mining {short} more")
                    await self.state.set_budget(short)
                    short = 0
            except NATS_DOWN:  # nats-server restarting: its watcher brings it back
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

    def settle_s(self) -> float:
        """How long settling may take: an unacked judgement comes back after ``ack_wait``."""
        ack_wait = self.run_settings.nats.ack_wait_s if self.run_settings is not None else 30.0
        return ack_wait + 30.0

    async def settle(
        self, *, timeout_s: float | None = None, poll_s: float = 0.2
    ) -> tuple[int, int, int]:
        """Wait until no battle is in flight and the samples stream holds exactly the samples on
        disk (an aggregator killed between its shard write and its publish left its judgement
        unacked); returns the last ``(disk, streamed, pending)``, settled or not after
        ``timeout_s`` (default ``settle_s()``)."""
        deadline = time.monotonic() + (self.settle_s() if timeout_s is None else timeout_s)
        seen = (-1, -1, -1)
        while True:
            with contextlib.suppress(*NATS_DOWN):
                seen = await self.state.settlement()
                if settled(*seen):
                    return seen
            if time.monotonic() > deadline:
                return seen
            await asyncio.sleep(poll_s)
