"""Run one answer's code against a challenge's pytest tests in a fresh bubblewrap sandbox.

Usage::

    description = probe(settings)                 # "bubblewrap 0.8.0", or SandboxUnavailable
    sandbox = Sandbox(settings, concurrency=2)
    result = await sandbox.run_pytest(solution, tests)    # a RunResult
    await sandbox.close()

What it guarantees (each checked by ``tests/integration/test_sandbox.py`` against real bwrap):

* **no network**: a new network namespace holding only its own loopback; connecting out or to a
  host service fails, DNS fails, and the host's abstract unix sockets are not reachable;
* **a private, read-only filesystem view**: ``/usr``, the interpreter's prefixes and the runner
  read-only, a fresh ``/proc`` (own pid namespace), a minimal ``/dev``, and a size-limited tmpfs
  scratch directory (the only writable place, gone after the run). No host ``/etc``, ``/home``,
  ``/root``, ``/tmp`` or project files (layout in ``warriorcoder.sandbox.command``);
* **limits** set by the runner before any untrusted code runs: CPU seconds (RLIMIT_CPU: SIGXCPU,
  then SIGKILL), address space (RLIMIT_AS), processes and threads (RLIMIT_NPROC), file size
  (RLIMIT_FSIZE = the scratch size), open files, no core dumps; stdout and stderr each kept to
  ``max_output_bytes`` (its first and last halves: the pipes are drained to the end, the middle
  dropped and marked, ``output_truncated``);
* **the whole process tree dies** at the wall limit: the sandbox's pid namespace init is killed,
  which kills every process in the namespace before the run returns (and ``--die-with-parent``
  kills it should this process die); the same on ``close()`` or cancellation;
* **no privilege**: ``--new-session`` (no TIOCSTI into a terminal), no-new-privs, binds nosuid;
  started as root, the tests run as the unprivileged uid ``settings.uid + slot`` (one uid per
  concurrent slot, so each run's process limit counts only its own processes) with every
  capability gone; started unprivileged, in a user namespace with nested ones disabled. Two
  sandboxes (replicas) on one host as root need disjoint ``uid`` ranges of ``concurrency`` uids.

What it does NOT guarantee:

* the kernel is shared: a kernel bug reachable from an unprivileged process breaks the sandbox.
  There is no seccomp filter (bubblewrap's ``--seccomp`` is not used); started as root, nested
  user namespaces are not disabled (``--disable-userns`` needs bwrap's own user namespace, which
  the root mode avoids), so the code can reach the kernel's user-namespace surface. On
  Kubernetes run the verifier under the gVisor ``runtimeClassName`` for a second boundary;
* started unprivileged, RLIMIT_NPROC counts every process of the service's uid: the limit given
  is the uid's task count at start plus ``max_processes``, shared by concurrent runs;
* memory is capped as address space, not resident memory (no cgroup): concurrent runs can use
  up to ``concurrency x memory_mb`` plus ``scratch_mb`` each of tmpfs;
* the result is the sandboxed process's own report: the code under test runs in the runner's
  process and can forge it (``warriorcoder.sandbox.runner``). The sandbox contains hostile code;
  it does not make a hostile answer's self-reported pass count trustworthy;
* ``cpu_s`` counts the processes that were waited for; on a wall-clock kill it is a lower bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

from warriorcoder.errors import ArenaError
from warriorcoder.proto.messages import RunResult
from warriorcoder.runtime.settings import SandboxSettings
from warriorcoder.sandbox.command import HostView, bwrap_argv, host_view
from warriorcoder.sandbox.report import parse_report, run_result

__all__ = ["Sandbox", "SandboxUnavailable", "probe"]

_REPORT_LIMIT = 1024 * 1024  # bytes of report kept: ~10k test lines
_PIPE_GRACE_S = 2.0  # after the sandbox exits, how long its pipes may take to reach EOF
_PROBE_TIMEOUT_S = 30.0


class SandboxUnavailable(ArenaError):
    """The sandbox cannot run here; the message says what to install or enable."""

    reason = "sandbox_unavailable"


def _sandbox_uid(settings: SandboxSettings, slot: int) -> int | None:
    return settings.uid + slot if os.geteuid() == 0 else None


def _own_task_count(uid: int) -> int:
    """Tasks (processes and threads) of ``uid`` on this host: what RLIMIT_NPROC counts."""
    n = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                fields = dict(ln.split(":", 1) for ln in f if ":" in ln)
        except OSError:  # exited meanwhile
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            n += int(fields.get("Threads", "1"))
    return n


def _nproc(settings: SandboxSettings, uid: int | None) -> int:
    if uid is not None:
        return settings.max_processes
    return _own_task_count(os.getuid()) + settings.max_processes


def probe(settings: SandboxSettings) -> str:
    """The sandbox's description ("bubblewrap 0.8.0") after one trivial sandboxed run.

    Raises ``SandboxUnavailable`` when bubblewrap is missing or the sandbox cannot start here
    (namespaces refused, the interpreter or pytest not reachable inside).
    """
    if settings.tool != "bubblewrap":
        raise SandboxUnavailable(f"unknown sandbox tool {settings.tool!r}")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed: apt-get install bubblewrap "
            "(or dnf install bubblewrap)"
        )
    version = subprocess.run(
        [bwrap, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    uid = _sandbox_uid(settings, 0)
    report_r, report_w = os.pipe()
    info_r, info_w = os.pipe()
    argv = bwrap_argv(
        settings,
        host_view(),
        report_fd=report_w,
        info_fd=info_w,
        uid=uid,
        nproc=_nproc(settings, uid),
        probe=True,
    )
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            pass_fds=(report_w, info_w),
            timeout=_PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SandboxUnavailable(f"a trivial sandboxed run took over {exc.timeout} s") from exc
    finally:
        os.close(report_w)
        os.close(info_w)
        with os.fdopen(report_r, "rb") as f:
            report = f.read()
        os.close(info_r)
    if done.returncode != 0 or b'"probe"' not in report:
        raise SandboxUnavailable(_explain(done.stderr.strip() or f"exit code {done.returncode}"))
    return version or "bubblewrap"


def _explain(stderr: str) -> str:
    hint = ""
    if "uid map" in stderr or "user namespace" in stderr or "Operation not permitted" in stderr:
        hint = (
            ": user namespaces are refused; enable them (sysctl user.max_user_namespaces=15000, "
            "kernel.unprivileged_userns_clone=1, on Ubuntu 24.04+ "
            "kernel.apparmor_restrict_unprivileged_userns=0) or run the verifier as root"
        )
    elif "No module named" in stderr:
        hint = ": the interpreter inside the sandbox cannot import pytest (install pytest)"
    return f"the sandbox does not start here: {stderr[-500:]}{hint}"


class _Output:
    """One pipe read to EOF, keeping at most ``limit`` bytes: with ``tail``, the first and the
    last half of them (a flood's start and pytest's summary at its end), else the first ``limit``;
    the rest is drained and counted."""

    def __init__(
        self, fd: int, limit: int, loop: asyncio.AbstractEventLoop, *, tail: bool = False
    ) -> None:
        self.fd, self.loop = fd, loop
        self.head_limit = limit - limit // 2 if tail else limit
        self.tail_limit = limit // 2 if tail else 0
        self.data = bytearray()  # the head
        self.tail = bytearray()
        self.seen = 0
        self.eof = asyncio.Event()
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self.close()
            return
        self.seen += len(chunk)
        room = self.head_limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
            chunk = chunk[room:]
        if self.tail_limit and chunk:
            self.tail += chunk
            del self.tail[: max(0, len(self.tail) - self.tail_limit)]

    @property
    def truncated(self) -> bool:
        return self.seen > len(self.data) + len(self.tail)

    def text(self) -> str:
        """What was kept, as text of at most ``limit`` UTF-8 bytes (the dropped middle marked)."""
        if not self.tail:
            return self.data.decode("utf-8", errors="replace")
        limit = self.head_limit + self.tail_limit
        dropped = self.seen - len(self.data) - len(self.tail)
        gap = f"\n[... {dropped} bytes dropped ...]\n" if dropped else ""
        head = self.data.decode("utf-8", errors="replace")
        tail = self.tail.decode("utf-8", errors="replace")
        # the marker (and any replacement characters) take their room from the head
        over = len((head + gap + tail).encode()) - limit
        while over > 0 and head:
            head = head[: -max(1, over // 3)]
            over = len((head + gap + tail).encode()) - limit
        return head + gap + tail

    def close(self) -> None:
        if not self.eof.is_set():
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.eof.set()


class Sandbox:
    """Runs answers' code against tests, at most ``concurrency`` sandboxes at once.

    Construction runs ``probe()`` (a blocking trivial sandboxed run, well under a second) and
    raises ``SandboxUnavailable`` when it fails; ``description`` is what it returned.
    """

    def __init__(self, settings: SandboxSettings, *, concurrency: int = 1) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.settings = settings
        self.description = probe(settings)
        self._view: HostView = host_view()
        self._slots: asyncio.Queue[int] | None = None
        self._concurrency = concurrency
        self._live: set[subprocess.Popen[bytes]] = set()
        self._closed = False

    async def run_pytest(self, solution: str, tests: str) -> RunResult:
        """``solution`` against ``tests`` in a fresh sandbox; never raises for the answer's faults.

        An empty solution is ``no_code`` (nothing runs). A sandbox that cannot start is
        ``sandbox_error`` with the reason in ``stderr``.
        """
        if not solution.strip():
            return RunResult(status="no_code")
        if self._closed:
            return RunResult(status="sandbox_error", stderr="the sandbox is closed")
        if self._slots is None:  # made here: a Queue belongs to the loop that uses it
            self._slots = asyncio.Queue()
            for i in range(self._concurrency):
                self._slots.put_nowait(i)
        slot = await self._slots.get()
        try:
            return await self._run(slot, solution, tests)
        except OSError as exc:  # could not spawn or set up the pipes
            return RunResult(status="sandbox_error", stderr=f"sandbox: {exc}")
        finally:
            self._slots.put_nowait(slot)

    async def close(self) -> None:
        """Kill the sandboxes still running (their runs return ``sandbox_error``). Idempotent."""
        self._closed = True
        for proc in list(self._live):
            _kill_group(proc.pid)

    async def _run(self, slot: int, solution: str, tests: str) -> RunResult:
        loop = asyncio.get_running_loop()
        uid = _sandbox_uid(self.settings, slot)
        with _pipes() as (report_r, report_w, info_r, info_w), _payload(solution, tests) as stdin:
            argv = bwrap_argv(
                self.settings,
                self._view,
                report_fd=report_w,
                info_fd=info_w,
                uid=uid,
                nproc=_nproc(self.settings, uid),
            )
            started = time.monotonic()
            # Spawning is a fork/exec of about a millisecond; the wait is on a pidfd, below.
            proc = subprocess.Popen(  # noqa: ASYNC220
                argv,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(report_w, info_w),
                start_new_session=True,  # its own process group: killed as one
            )
        assert proc.stdout is not None and proc.stderr is not None
        self._live.add(proc)
        limit = self.settings.max_output_bytes
        out = _Output(os.dup(proc.stdout.fileno()), limit, loop, tail=True)
        err = _Output(os.dup(proc.stderr.fileno()), limit, loop, tail=True)
        proc.stdout.close()
        proc.stderr.close()
        report = _Output(report_r, _REPORT_LIMIT, loop)
        info = _Output(info_r, 4096, loop)
        pidfd = os.pidfd_open(proc.pid)
        exited = asyncio.Event()
        loop.add_reader(pidfd, exited.set)
        init: _Init | None = None
        timed_out = False
        ns_cpu_s = 0.0
        try:
            deadline = started + self.settings.timeout_s
            # bwrap names its pid-namespace init on the info fd right after it is cloned.
            while _child_pid(info) is None and not exited.is_set() and not info.eof.is_set():
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.002)
            init = _Init.open(_child_pid(info), loop)
            try:
                await asyncio.wait_for(exited.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                timed_out = True
                ns_cpu_s = _namespace_cpu_s(init.pid) if init else 0.0
                _kill_tree(proc.pid, init)
                await exited.wait()
            # Reaped here, not by Popen (its wait would race the pidfd).
            _, status, _ = os.wait4(proc.pid, 0)  # noqa: ASYNC222 (exited: does not block)
            proc.returncode = os.waitstatus_to_exitcode(status)
            wall_s = time.monotonic() - started
            if init is not None:  # bwrap may exit first: the namespace is empty once init is gone
                try:
                    await asyncio.wait_for(init.gone.wait(), _PIPE_GRACE_S)
                except TimeoutError:
                    _kill_tree(proc.pid, init)
                    await init.gone.wait()
            for pipe in (out, err, report):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pipe.eof.wait(), _PIPE_GRACE_S)
        except BaseException:  # cancelled: the tree dies with the run
            _kill_tree(proc.pid, init)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, 0)  # noqa: ASYNC222 (SIGKILLed: gone at once)
                proc.returncode = -signal.SIGKILL
            raise
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            if init is not None:
                init.close()
            for pipe in (out, err, report, info):
                pipe.close()
            self._live.discard(proc)
        code = proc.returncode
        if self._closed and code in (-signal.SIGKILL, 128 + signal.SIGKILL):
            return RunResult(status="sandbox_error", stderr="sandbox: closed during the run")
        # bwrap passes a signal death on as 128 + signal. RLIMIT_CPU ends in SIGXCPU, or in
        # SIGKILL a second later when SIGXCPU is caught; a SIGKILL not sent by us is that.
        cpu_limited = not timed_out and code in (128 + signal.SIGXCPU, 128 + signal.SIGKILL)
        counts = parse_report(bytes(report.data))
        if counts.cpu_s is not None:
            cpu_s = counts.cpu_s
        elif cpu_limited:
            cpu_s = float(self.settings.cpu_s)
        else:
            cpu_s = ns_cpu_s
        return run_result(
            counts,
            exit_code=code,
            timed_out=timed_out,
            cpu_limited=cpu_limited,
            stdout=out.text(),
            stderr=err.text(),
            truncated=out.truncated or err.truncated,
            wall_s=wall_s,
            cpu_s=cpu_s,
        )


class _Init:
    """The sandbox's pid-namespace init, watched through a pidfd: when it has exited, the
    kernel has killed every other process of the namespace."""

    def __init__(self, pid: int, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.pid, self.fd, self.loop = pid, fd, loop
        self.gone = asyncio.Event()
        loop.add_reader(fd, self.gone.set)

    @classmethod
    def open(cls, pid: int | None, loop: asyncio.AbstractEventLoop) -> _Init | None:
        if pid is None:
            return None
        try:
            return cls(pid, os.pidfd_open(pid), loop)
        except ProcessLookupError:  # already gone, and its namespace with it
            return None

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        os.close(self.fd)


def _child_pid(info: _Output) -> int | None:
    text = bytes(info.data).decode(errors="replace")
    if "}" not in text:
        return None
    try:
        pid = json.loads(text[: text.index("}") + 1]).get("child-pid")
    except ValueError:
        return None
    return pid if isinstance(pid, int) and pid > 1 else None


def _namespace_cpu_s(init_pid: int) -> float:
    """CPU seconds used so far by the processes in ``init_pid``'s pid namespace."""
    try:
        ns = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return 0.0
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/ns/pid") != ns:
                continue
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(x) for x in fields[11:13])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _kill_tree(pid: int, init: _Init | None) -> None:
    """Kill the sandbox's pid-namespace init (the kernel then kills every process in the
    namespace) and bwrap's process group."""
    if init is not None and not init.gone.is_set():
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(init.fd, signal.SIGKILL)
    _kill_group(pid)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def _pipes() -> Iterator[tuple[int, int, int, int]]:
    """The report and info pipes; the write ends are closed here once the child holds them."""
    report_r, report_w = os.pipe()
    info_r, info_w = os.pipe()
    try:
        yield report_r, report_w, info_r, info_w
    except BaseException:
        os.close(report_r)
        os.close(info_r)
        raise
    finally:
        os.close(report_w)
        os.close(info_w)


@contextlib.contextmanager
def _payload(solution: str, tests: str) -> Iterator[int]:
    """The runner's stdin: a memory file, so no pipe can fill up before the runner reads it."""
    fd = os.memfd_create("payload", os.MFD_CLOEXEC)
    try:
        data = json.dumps({"solution": solution, "tests": tests}).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)
