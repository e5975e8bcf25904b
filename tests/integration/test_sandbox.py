"""The sandbox against real bubblewrap: correct, wrong and broken code, and every escape attempt
of issue 12 (network, writing and reading outside the scratch directory, fork and memory bombs,
infinite output, sleeping past the limit). Each hostile run must return a result, leave no
process behind on the host (the host's process table is checked), and the host (this test
process) must still run a correct solution afterwards. Skipped only when ``probe()`` says the
sandbox is unavailable here, with its reason."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest

from warriorcoder.proto.messages import RunResult
from warriorcoder.runtime.settings import SandboxSettings
from warriorcoder.sandbox import Sandbox, SandboxUnavailable, probe

ROOT = Path(__file__).resolve().parents[2]
# A uid range of this test process's own: other sandboxes on the host (the default uid 60000)
# must not show up in its process-table checks.
SETTINGS = SandboxSettings(
    timeout_s=10, cpu_s=5, memory_mb=512, max_processes=32, uid=61000 + os.getpid() % 1000 * 4
)

ADD = "def add(a, b):\n    return a + b\n"
ADD_WRONG = "def add(a, b):\n    return a - b\n"
ADD_TESTS = """\
from solution import add


def test_small():
    assert add(1, 2) == 3


def test_zero():
    assert add(0, 0) == 0


def test_negative():
    assert add(-4, 1) == -3


class TestMore:
    def test_big(self):
        assert add(10**12, 1) == 10**12 + 1
"""


@pytest.fixture(scope="module")
def available() -> str:
    try:
        return probe(SETTINGS)
    except SandboxUnavailable as exc:
        if os.environ.get("WARRIORCODER_REQUIRE_SANDBOX"):  # CI (tox): the sandbox must run
            pytest.fail(f"sandbox unavailable: {exc}")
        pytest.skip(f"sandbox unavailable: {exc}")


def _sandbox_uids(settings: SandboxSettings, concurrency: int) -> set[int]:
    return {settings.uid + i for i in range(concurrency)} if os.geteuid() == 0 else set()


def _host_processes(marker: str = "", uids: frozenset[int] = frozenset()) -> list[str]:
    """Host processes whose command line holds ``marker`` or whose real uid is in ``uids``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        uid = int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1])
        if (marker and marker in cmdline) or uid in uids:
            found.append(f"{entry.name} uid={uid}: {cmdline[:120]}")
    return found


@pytest.fixture
async def make(available: str) -> AsyncIterator[object]:
    """Builds sandboxes; afterwards checks the host is clean and still runs correct code."""
    made: list[tuple[Sandbox, SandboxSettings, int]] = []

    def build(settings: SandboxSettings = SETTINGS, concurrency: int = 1) -> Sandbox:
        sb = Sandbox(settings, concurrency=concurrency)
        made.append((sb, settings, concurrency))
        return sb

    yield build
    for sb, settings, concurrency in made:
        await sb.close()
        uids = frozenset(_sandbox_uids(settings, concurrency))
        assert _host_processes(uids=uids) == [], "a sandboxed process outlived its run"
    after = Sandbox(SETTINGS)
    result = await after.run_pytest(ADD, ADD_TESTS)
    await after.close()
    assert (result.status, result.passed, result.total) == ("ran", 4, 4)


def _attack(code: str, checks: str) -> tuple[str, str]:
    """A hostile solution (``code`` runs at import, its findings in ``found``) and tests that
    pass only when every attempt failed."""
    solution = "found = {}\n" + code
    tests = "from solution import found\n\n" + checks
    return solution, tests


# -- correct, wrong, no code, broken --------------------------------------------------------------


async def test_correct_code_passes_every_test(make):
    sb = make()
    result = await sb.run_pytest(ADD, ADD_TESTS)
    assert result.status == "ran"
    assert (result.passed, result.failed, result.errored, result.total) == (4, 0, 0, 4)
    assert result.exit_code == 0
    assert "4 passed" in result.stdout
    assert 0 < result.wall_s < SETTINGS.timeout_s
    assert result.cpu_s > 0
    assert sb.description == probe(SETTINGS)


async def test_wrong_code_fails_tests(make):
    result = await make().run_pytest(ADD_WRONG, ADD_TESTS)
    assert result.status == "ran"
    # a - b: right only for add(0, 0)
    assert (result.passed, result.failed, result.errored, result.total) == (1, 3, 0, 4)
    assert result.exit_code == 1
    assert "FAILED" in result.stdout


async def test_no_code_does_not_run(make):
    result = await make().run_pytest("  \n", ADD_TESTS)
    assert result == RunResult(status="no_code")


async def test_syntax_error_errors_every_test(make):
    result = await make().run_pytest("def add(a, b)\n    return a + b\n", ADD_TESTS)
    assert result.status == "ran"
    assert (result.passed, result.failed, result.errored, result.total) == (0, 0, 4, 4)
    assert "SyntaxError" in result.stdout


async def test_fixture_error_counts_as_errored(make):
    tests = ADD_TESTS + (
        "\n\nimport pytest\n\n@pytest.fixture\ndef broken():\n    raise RuntimeError('x')\n\n"
        "def test_uses_broken(broken):\n    assert add(1, 1) == 2\n"
    )
    result = await make().run_pytest(ADD, tests)
    assert (result.passed, result.failed, result.errored, result.total) == (4, 0, 1, 5)


async def test_runs_concurrently_in_separate_slots(make):
    sb = make(concurrency=2)
    results = await asyncio.gather(*(sb.run_pytest(ADD, ADD_TESTS) for _ in range(3)))
    assert [(r.status, r.passed) for r in results] == [("ran", 4)] * 3


# -- escape attempts ------------------------------------------------------------------------------


async def test_network_is_unreachable(make):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    outside = _outside_address()
    solution, tests = _attack(
        f"""
import socket
for host in ("127.0.0.1", {outside!r}, "1.1.1.1"):
    try:
        socket.create_connection((host, {port} if host == "127.0.0.1" else 80), timeout=3)
        found[host] = "connected"
    except OSError as exc:
        found[host] = type(exc).__name__
try:
    socket.getaddrinfo("example.com", 80)
    found["dns"] = "resolved"
except OSError as exc:
    found["dns"] = type(exc).__name__
print(found)
""",
        "def test_every_connection_failed():\n"
        "    assert len(found) == 4\n"
        "    assert 'connected' not in found.values() and 'resolved' not in found.values()\n",
    )
    try:
        result = await make().run_pytest(solution, tests)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing reached the host's listener
    finally:
        listener.close()
    assert (result.status, result.passed, result.total) == ("ran", 1, 1), result.stdout


def _outside_address() -> str:
    """An address of this host other than loopback (what a hostile answer would try next)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: picks the outgoing address
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.2"


@pytest.fixture
def secrets(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A secret file in a host temporary directory and one in the project directory."""
    token = uuid.uuid4().hex
    files = {"tmp": tmp_path / "secret.txt", "project": ROOT / f".sandbox-secret-{token}"}
    for path in files.values():
        path.write_text(f"SECRET-{token}")
    try:
        yield files
    finally:
        files["project"].unlink(missing_ok=True)


def _tmp_listing() -> list[str]:
    """What the sandboxed code sees in /tmp: the scratch directory, or, when this Python is
    installed under /tmp (CI's virtualenvs), only the empty parents of its read-only bind."""
    under = {
        Path(p).relative_to("/tmp").parts[0]
        for p in (sys.prefix, sys.base_prefix)
        if Path(p).is_relative_to("/tmp")
    }
    return sorted(under) or ["solution.py", "test_solution.py"]


async def test_host_files_cannot_be_read(make, secrets):
    targets = [str(p) for p in secrets.values()] + ["/etc/passwd", "/etc/hostname"]
    targets += [str(Path.home() / ".bash_history"), str(ROOT / "pyproject.toml")]
    solution, tests = _attack(
        f"""
import os
for path in {targets!r}:
    try:
        with open(path) as f:
            found[path] = f.read()
    except OSError as exc:
        found[path] = type(exc).__name__
for d in ("/", "/tmp", "/home", "/root", "/work", "/etc"):
    try:
        found["ls " + d] = sorted(os.listdir(d))
    except OSError as exc:
        found["ls " + d] = type(exc).__name__
print(found)
""",
        f"def test_nothing_was_read():\n"
        f"    for path in {targets!r}:\n"
        f"        assert found[path] in ('FileNotFoundError', 'PermissionError'), found[path]\n"
        # The view holds only what the interpreter needs: no host /etc, /home, /tmp, project.
        f"    assert found['ls /etc'] == found['ls /home'] == 'FileNotFoundError'\n"
        f"    assert found['ls /tmp'] == {_tmp_listing()!r}\n"
        f"    assert found['ls /work'] == ['venv'] or found['ls /work'] == 'FileNotFoundError'\n",
    )
    result = await make().run_pytest(solution, tests)
    assert (result.status, result.passed, result.total) == ("ran", 1, 1), result.stdout
    secret = secrets["tmp"].read_text()
    assert secret not in result.stdout + result.stderr


async def test_writing_outside_the_scratch_dir_fails(make, tmp_path):
    token = uuid.uuid4().hex
    outside = [
        str(tmp_path / f"planted-{token}"),
        str(ROOT / f"planted-{token}"),
        f"/usr/planted-{token}",
        f"/planted-{token}",
        f"/dev/planted-{token}",
        f"/proc/planted-{token}",
        "/etc/planted",
    ]
    solution, tests = _attack(
        f"""
for path in {outside!r}:
    try:
        with open(path, "w") as f:
            f.write("x")
        found[path] = "written"
    except OSError as exc:
        found[path] = type(exc).__name__
with open("inside.txt", "w") as f:  # the scratch dir is writable
    found["scratch"] = f.write("ok")
""",
        f"def test_only_scratch_was_written():\n"
        f"    assert found.pop('scratch') == 2\n"
        f"    assert 'written' not in found.values(), found\n"
        f"    assert len(found) == {len(outside)}\n",
    )
    result = await make().run_pytest(solution, tests)
    assert (result.status, result.passed, result.total) == ("ran", 1, 1), result.stdout
    assert not any(map(os.path.lexists, outside[:2]))


async def test_fork_bomb_is_stopped_by_the_process_limit(make):
    settings = msgspec.structs.replace(SETTINGS, max_processes=16)
    solution, tests = _attack(
        """
import os, time
n = 0
try:
    while n < 10_000:
        if os.fork() == 0:
            time.sleep(300)
            os._exit(0)
        n += 1
except OSError as exc:
    found["error"] = type(exc).__name__
found["children"] = n
""",
        "def test_forks_were_refused():\n"
        "    assert found['error'] == 'BlockingIOError'\n"
        "    assert found['children'] < 16\n",
    )
    started = time.monotonic()
    result = await make(settings).run_pytest(solution, tests)
    assert (result.status, result.passed, result.total) == ("ran", 1, 1), result.stdout
    assert time.monotonic() - started < settings.timeout_s  # the sleeping children did not hold it


async def test_endless_fork_bomb_times_out_and_leaves_nothing(make):
    settings = msgspec.structs.replace(SETTINGS, max_processes=16, timeout_s=3, cpu_s=2)
    bomb = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    started = time.monotonic()
    result = await make(settings).run_pytest(bomb, ADD_TESTS)
    assert result.status == "timeout"
    assert result.passed == 0 and result.errored == 4
    assert time.monotonic() - started < settings.timeout_s + 3
    # the make fixture then checks that no process of the sandbox's uid is left


async def test_memory_bomb_is_stopped(make):
    solution, tests = _attack(
        """
try:
    big = bytearray(8 * 1024**3)
    found["big"] = "allocated"
except MemoryError:
    found["big"] = "MemoryError"
hoard = []
try:
    while len(hoard) < 10_000:
        hoard.append(bytearray(50 * 1024**2))
    found["grow"] = "allocated"
except MemoryError:
    found["grow"] = "MemoryError"
found["held_mb"] = 50 * len(hoard)
del hoard
""",
        "def test_allocations_were_refused():\n"
        "    assert found['big'] == found['grow'] == 'MemoryError'\n"
        "    assert found['held_mb'] < 512\n",
    )
    result = await make().run_pytest(solution, tests)
    assert (result.status, result.passed, result.total) == ("ran", 1, 1), result.stdout


async def test_infinite_output_is_truncated(make):
    settings = msgspec.structs.replace(SETTINGS, max_output_bytes=4096)
    spam = "import os\nwhile True:\n    os.write(1, b'x' * 65536)\n    os.write(2, b'y' * 65536)\n"
    result = await make(settings).run_pytest(spam, ADD_TESTS)
    assert result.status in ("ran", "timeout")
    assert result.output_truncated
    # the first and last 2 KiB of each stream, the dropped middle marked between them, in all
    # at most the limit
    for text in (result.stdout, result.stderr):
        assert len(text.encode()) <= 4096
    assert "bytes dropped" in result.stdout + result.stderr
    assert result.passed == 0


async def test_sleeping_past_the_limit_times_out_and_leaves_no_process(make):
    settings = msgspec.structs.replace(SETTINGS, timeout_s=2)
    marker = str(900_000 + os.getpid() % 99_999)
    solution = _sleeper(marker)
    started = time.monotonic()
    result = await make(settings).run_pytest(solution, ADD_TESTS)
    assert time.monotonic() - started < settings.timeout_s + 3
    assert result.status == "timeout"
    assert (result.passed, result.errored, result.total) == (0, 4, 4)
    assert result.wall_s >= settings.timeout_s
    assert _host_processes(marker) == []


async def test_cpu_limit_ends_a_busy_loop(make):
    settings = msgspec.structs.replace(SETTINGS, cpu_s=1, timeout_s=20)
    started = time.monotonic()
    result = await make(settings).run_pytest("while True:\n    pass\n", ADD_TESTS)
    assert result.status == "timeout"
    assert time.monotonic() - started < 10  # the CPU limit, not the wall limit, ended it


# -- cancellation and close -----------------------------------------------------------------------


def _sleeper(marker: str) -> str:
    return (
        "import subprocess, time\n"
        f"child = subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
        "time.sleep(3600)\n"
    )


async def _until_running(marker: str) -> None:
    for _ in range(400):
        if _host_processes(marker):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the sandboxed `sleep {marker}` never started")


async def test_a_cancelled_run_leaves_no_process(make):
    marker = str(800_000 + os.getpid() % 99_999)
    sb = make(msgspec.structs.replace(SETTINGS, timeout_s=60))
    task = asyncio.create_task(sb.run_pytest(_sleeper(marker), ADD_TESTS))
    try:
        await _until_running(marker)  # seen on the host's process table while it runs
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert _host_processes(marker) == []


async def test_close_kills_running_sandboxes(make):
    marker = str(700_000 + os.getpid() % 99_999)
    sb = make(msgspec.structs.replace(SETTINGS, timeout_s=60))
    task = asyncio.create_task(sb.run_pytest(_sleeper(marker), ADD_TESTS))
    try:
        await _until_running(marker)
        await sb.close()
        result = await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
    assert result.status == "sandbox_error"  # not the answer's fault
    assert _host_processes(marker) == []
    assert (await sb.run_pytest(ADD, ADD_TESTS)).status == "sandbox_error"
