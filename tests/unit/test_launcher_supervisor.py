"""The supervisor over stand-in processes: restarts with back-off, crash loops that never end the
run, an infrastructure child restarted, orderly stop, process groups killed whole, children that
die with their supervisor, the data directory's lock, and the clean-up after a killed run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from warriorcoder.launcher.arena import DataDirLocked, LocalArena
from warriorcoder.launcher.children import spawn, start_nats_child
from warriorcoder.launcher.groups import ChildPids, group_members

SLEEP = ["sleep", "60"]


class Sleepers(LocalArena):
    """LocalArena's own supervision over stand-ins: "nats-server" sleeps, "judge" runs ``argv``."""

    stale_grace_s = 1.0

    def __init__(self, data_dir: Path, argv: list[str], **options: object) -> None:
        super().__init__(data_dir, **options)  # type: ignore[arg-type]
        self.argv = argv

    async def _start(self) -> None:
        await self._prepare()
        await self._own(
            "nats-server", lambda: spawn("nats-server", SLEEP, self._log("nats-server"))
        )
        await self._own("judge", lambda: spawn("judge", self.argv, self._log("judge")))


async def until(ready: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Poll ``ready`` (child processes and files: nothing to be woken by)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if ready():
                return
            await asyncio.sleep(0.02)


async def replaced(arena: LocalArena, name: str, old: object) -> None:
    await until(lambda: arena.procs[name] is not old)  # the watcher replaces the child


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
        await replaced(arena, "judge", first)
        assert arena.procs["judge"].alive()
    assert [e[9:] for e in arena.events] == ["judge exited with code -9; restarting it"]
    assert "judge exited with code -9" in (tmp_path / "logs" / "supervisor.log").read_text()


async def test_a_crash_loop_is_reported_and_restarted_for_ever(tmp_path: Path):
    arena = Sleepers(tmp_path, ["sh", "-c", "echo boom; exit 3"], max_restarts=2, loop_cap_s=0.2)
    async with arena:
        await until(lambda: arena.restarts().get("judge", 0) >= 6, 20)
        assert arena.crash_looping() == ["judge"]
        assert arena.procs["nats-server"].alive()  # the run goes on
    events = [e[9:] for e in arena.events]
    assert events[:3] == [
        "judge exited with code 3; restarting it",
        "judge exited with code 3; restarting it in 0.5s",
        "CRASH LOOP: judge exited with code 3 (3 restarts in 60s); restarting it in 0.2s, and "
        "again until it stays up",
    ]
    assert "CRASH LOOP: judge" in (tmp_path / "logs" / "supervisor.log").read_text()
    assert arena.procs["nats-server"].proc.returncode == -signal.SIGTERM  # stopped, not leaked


async def test_a_service_killed_8_times_in_a_minute_does_not_end_the_run(tmp_path: Path):
    async with Sleepers(tmp_path, SLEEP, loop_cap_s=0.2) as arena:
        for _ in range(8):
            old = arena.procs["judge"]
            old.proc.kill()
            await replaced(arena, "judge", old)
        assert arena.procs["judge"].alive() and arena.restarts() == {"judge": 8}
        assert arena.crash_looping() == ["judge"]


async def test_nats_server_exiting_is_restarted(tmp_path: Path):
    async with Sleepers(tmp_path, SLEEP) as arena:
        old = arena.procs["nats-server"]
        old.proc.kill()
        await replaced(arena, "nats-server", old)
        assert arena.procs["nats-server"].alive() and arena.procs["judge"].alive()
        recorded = json.loads((tmp_path / "children.json").read_text())["children"]
        assert recorded["nats-server"][0] == arena.procs["nats-server"].pid
    assert [e[9:] for e in arena.events] == ["nats-server exited with code -9; restarting it"]
    assert not (tmp_path / "children.json").exists()  # all stopped: nothing left to clean up


async def test_a_second_arena_on_the_same_directory_is_refused_naming_the_holder(tmp_path: Path):
    async with Sleepers(tmp_path, SLEEP):
        with pytest.raises(DataDirLocked, match=rf"in use by pid {os.getpid()}"):
            async with Sleepers(tmp_path, SLEEP):
                pass
    async with Sleepers(tmp_path, SLEEP) as again:  # released with the first
        assert again.procs["judge"].alive()


async def test_stopping_a_child_kills_what_it_started(tmp_path: Path):
    log = tmp_path / "parent.log"
    child = await spawn("parent", ["sh", "-c", "sleep 60 & echo $!; wait"], log)
    await until(lambda: log.read_text().strip())
    grandchild = int(log.read_text())
    assert group_members(child.pid) == sorted([child.pid, grandchild])
    await child.stop()  # the shell dies of SIGTERM; its sleep would live on
    assert gone(grandchild) and group_members(child.pid) == []


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


KILLED_ARENA = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from warriorcoder.launcher.arena import LocalArena
    from warriorcoder.launcher.children import spawn

    # A "judge" that ignores SIGTERM (so PR_SET_PDEATHSIG does not stop it) and has a child.
    STUBBORN = ["sh", "-c", "trap '' TERM; sleep 60 & echo $!; wait"]

    class Arena(LocalArena):
        async def _start(self):
            await self._prepare()
            await self._own("judge", lambda: spawn("judge", STUBBORN, self._log("judge")))

    async def main():
        async with Arena(Path(sys.argv[1])) as arena:
            print(arena.procs["judge"].pid, flush=True)
            await asyncio.sleep(60)

    asyncio.run(main())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG")
def test_a_run_after_a_killed_one_stops_what_it_left_running(tmp_path: Path):
    killed = subprocess.Popen(
        [sys.executable, "-c", KILLED_ARENA, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert killed.stdout is not None
        judge = int(killed.stdout.readline())
        log = tmp_path / "logs" / "judge.log"
        asyncio.run(until(lambda: log.exists() and log.read_text().strip()))
        grandchild = int(log.read_text())
        killed.kill()  # no chance to clean up; the judge ignores its SIGTERM
        killed.wait()
        time.sleep(0.3)
        assert not gone(judge) and not gone(grandchild)

        async def rerun() -> list[str]:
            async with Sleepers(tmp_path, SLEEP) as arena:  # waits stale_grace_s, then SIGKILL
                assert gone(judge) and gone(grandchild)
            return arena.events

        assert any(f"stopped judge (pid {judge})" in e for e in asyncio.run(rerun()))
    finally:
        killed.kill()
        killed.wait()
        for pgid in ChildPids(tmp_path / "children.json").stale().values():
            os.killpg(pgid, signal.SIGKILL)  # only if the test failed


class Readings:
    """A stand-in for the arena's StatusReader: ``settlement()`` answers from a script."""

    def __init__(self, *readings: tuple[int, int, int]) -> None:
        self.readings = list(readings)

    async def settlement(self) -> tuple[int, int, int]:
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]


async def test_done_waits_until_the_samples_stream_holds_what_the_disk_holds(tmp_path: Path):
    arena = LocalArena(tmp_path)
    # The aggregator was killed between its shard write and its publish: one judgement unacked.
    arena._state = Readings((300, 299, 1), (300, 299, 1), (300, 300, 0))  # type: ignore[assignment]
    assert await arena.settle(timeout_s=5, poll_s=0.01) == (300, 300, 0)
    arena._state = Readings((300, 299, 0))  # type: ignore[assignment]
    started = time.monotonic()
    assert await arena.settle(timeout_s=0.2, poll_s=0.01) == (300, 299, 0)  # never: says so
    assert time.monotonic() - started >= 0.2
