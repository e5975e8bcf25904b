"""Process groups of the supervisor's children, and what a killed supervisor left behind.

Usage::

    members = group_members(child.pid)          # living processes of its group (Triton's too)
    await kill_group(child.pid)                  # SIGKILL them all, wait until they are gone
    pids = ChildPids(Path("arena-data/children.json"))
    stopped = pids.reap_stale(grace_s=10)        # at start: groups of an earlier run still alive
    pids.record("nats-server", nats.pid)         # at every (re)start

Every child starts its own session, so its process group holds it and whatever it starts: a
local Triton's ``python -m ...`` child starts ``tritonserver``, which starts a Python backend
stub per model. Killing the group kills them all; killing only the child would leave
``tritonserver`` holding the ports a restart needs.

``PR_SET_PDEATHSIG`` stops the children when the supervisor dies, but only the direct children,
and only by asking: a run killed with SIGKILL records its children's groups in
``DATA_DIR/children.json`` so the next run on the directory stops any that survived before it
starts a nats-server on the same store. A recorded pid is trusted only while the process has the
start time recorded with it (pids are reused); once the leader is gone, its group id cannot be
reused while any member lives, so the members found are the old run's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

__all__ = ["ChildPids", "group_members", "kill_group", "signal_group", "start_time"]

_PROC = Path("/proc")


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (field 3 onwards)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text.rsplit(")", 1)[1].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None: no such process)."""
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


def group_members(pgid: int) -> list[int]:
    """Living processes (zombies do not count) whose process group is ``pgid``."""
    if not sys.platform.startswith("linux"):
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def kill_group(pgid: int, *, timeout_s: float = 10.0) -> bool:
    """SIGKILL every process of the group and wait until none lives; False on time-out."""
    deadline = time.monotonic() + timeout_s
    while await asyncio.to_thread(group_members, pgid):
        signal_group(pgid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _wait_gone(pgids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (alive := [g for g in pgids if group_members(g)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


class ChildPids:
    """``name -> (pid, start time)`` of the running children, in a JSON file of the data dir."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pids: dict[str, tuple[int, int | None]] = {}

    def record(self, name: str, pid: int) -> None:
        """Remember a (re)started child; written at once (a SIGKILL gives no later chance)."""
        self._pids[name] = (pid, start_time(pid))
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"supervisor": os.getpid(), "children": self._pids}))
        os.replace(tmp, self.path)

    def clear(self) -> None:
        """Every child stopped: nothing for the next run to clean up."""
        self._pids.clear()
        self.path.unlink(missing_ok=True)

    def stale(self) -> dict[str, int]:
        """Groups of the recorded children that still have living members: ``name -> pgid``."""
        try:
            recorded = json.loads(self.path.read_text())["children"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return {}
        found = {}
        for name, (pid, started) in recorded.items():
            now = start_time(pid)
            if now is not None and started is not None and now != started:
                continue  # the pid was reused by an unrelated process
            if group_members(pid):
                found[name] = pid
        return found

    def reap_stale(self, grace_s: float = 10.0) -> list[str]:
        """Stop what an earlier run left running: SIGTERM, ``grace_s``, then SIGKILL; blocking.
        Returns what was stopped, e.g. ``["nats-server (pid 4242)"]``."""
        stale = self.stale()
        for pgid in stale.values():
            signal_group(pgid, signal.SIGTERM)
        left = _wait_gone(list(stale.values()), grace_s)
        for pgid in left:
            signal_group(pgid, signal.SIGKILL)
        if left := _wait_gone(left, 10.0):
            raise RuntimeError(f"processes of an earlier run would not stop: groups {left}")
        self.path.unlink(missing_ok=True)
        return [f"{name} (pid {pid})" for name, pid in stale.items()]
