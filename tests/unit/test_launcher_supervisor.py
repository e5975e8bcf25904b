"""The supervisor over stand-in processes: restarts with back-off, the crash-loop limit, an
infrastructure child exiting, orderly stop, and children that die with their supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from warriorcoder.launcher.arena import LocalArena, SupervisorError
from warriorcoder.launcher.children import spawn, start_nats_child

SLEEP = ["sleep", "60"]


class Sleepers(LocalArena):
    """LocalArena's own supervision over stand-ins: "nats-server" sleeps, "judge" runs ``argv``."""

    def __init__(self, data_dir: Path, argv: list[str], **options: object) -> None:
        super().__init__(data_dir, **options)  # type: ignore[arg-type]
        self.argv = argv

    async def _start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._tg = await self._stack.enter_async_context(asyncio.TaskGroup())
        await self._own(spawn("nats-server", SLEEP, self._log("nats-server")))
        await self._own(spawn("judge", self.argv, self._log("judge")))

    async def _start_service(self, service: str) -> None:
        self.procs[service] = await spawn(service, self.argv, self._log(service))


def gone(pid: int) -> bool:
    """Exited (a zombie nobody reaped yet counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def test_leaving_stops_every_child_with_sigterm_and_awaits_every_task(tmp_path: Path):
    async with Sleepers(tmp_path, SLEEP) as arena:
        children = dict(arena.procs)
        tasks = list(arena._tasks)
        assert len(tasks) == 2 and all(c.alive() for c in children.values())
    assert {n: c.proc.returncode for n, c in children.items()} == {
        "nats-server": -signal.SIGTERM,
        "judge": -signal.SIGTERM,
    }
    assert all(t.done() for t in tasks) and arena.events == []


async def test_a_killed_service_is_restarted_and_the_event_logged(tmp_path: Path):
    async with Sleepers(tmp_path, SLEEP) as arena:
        first = arena.procs["judge"]
        first.proc.kill()
        async with asyncio.timeout(10):
            while True:  # the watcher replaces the child: polled, nothing to be woken by
                if arena.procs["judge"] is not first:
                    break
                await asyncio.sleep(0.02)
        assert arena.procs["judge"].alive()
    assert [e[9:] for e in arena.events] == ["judge exited with code -9; restarting it"]
    assert "judge exited with code -9" in (tmp_path / "logs" / "supervisor.log").read_text()


async def test_a_crash_loop_stops_the_arena_after_backing_off(tmp_path: Path):
    started = time.monotonic()
    arena = Sleepers(tmp_path, ["sh", "-c", "echo boom; exit 3"], max_restarts=2)
    with pytest.raises(SupervisorError, match=r"judge keeps crashing \(2 restarts in 60s\)"):
        async with arena:
            await asyncio.sleep(30)  # cancelled by the supervisor's error
    assert time.monotonic() - started < 10
    assert [e[9:] for e in arena.events] == [
        "judge exited with code 3; restarting it",
        "judge exited with code 3; restarting it in 0.5s",
    ]
    assert arena.procs["nats-server"].proc.returncode == -signal.SIGTERM  # stopped, not leaked


async def test_nats_server_exiting_ends_the_arena(tmp_path: Path):
    arena = Sleepers(tmp_path, SLEEP)
    with pytest.raises(SupervisorError, match=r"nats-server exited \(-9\)"):
        async with arena:
            arena.procs["nats-server"].proc.kill()
            await asyncio.sleep(30)
    assert arena.procs["judge"].proc.returncode == -signal.SIGTERM
    assert arena.events == []  # not restarted: only services are


async def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path):
    child = await spawn("stubborn", ["sh", "-c", "trap '' TERM; sleep 60"], tmp_path / "s.log")
    await asyncio.sleep(0.2)  # let the shell install its trap
    assert await child.stop(grace_s=0.3) == -signal.SIGKILL
    assert await child.stop() == -signal.SIGKILL  # idempotent


SUPERVISOR = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from warriorcoder.launcher.children import spawn

    async def main():
        child = await spawn("sleeper", ["sleep", "60"], Path(sys.argv[1]))
        print(child.pid, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_dies_with_its_supervisor(tmp_path: Path):
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(tmp_path / "sleeper.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert supervisor.stdout is not None
        pid = int(supervisor.stdout.readline())
        assert not gone(pid)
        assert os.getsid(pid) == pid  # its own session: a terminal's Ctrl-C does not reach it
        supervisor.kill()  # no chance to clean up
        supervisor.wait()
        deadline = time.monotonic() + 5
        while not gone(pid):
            assert time.monotonic() < deadline, "the child outlived its supervisor"
            time.sleep(0.02)
    finally:
        supervisor.kill()
        supervisor.wait()


async def test_nats_is_ready_when_it_says_so(tmp_path: Path):
    log = tmp_path / "nats.log"
    log.write_text("[INF] Server is ready\n")  # an earlier run's line does not count
    nats = await start_nats_child(tmp_path / "store", log_path=log)
    try:
        assert log.read_text().count("Server is ready") == 2
        reader, writer = await asyncio.open_connection("127.0.0.1", nats.ports["client"])
        assert (await reader.readline()).startswith(b"INFO ")
        writer.close()
        await writer.wait_closed()
    finally:
        assert await nats.stop() == 0
