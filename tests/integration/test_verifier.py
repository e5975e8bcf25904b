"""The verifier as its own OS process (``warriorcoder serve verifier``) on a real nats-server, with
the real sandbox (bubblewrap): battles published to ANSWERED come out on BATTLES with execution
results; hostile answers are contained and the service keeps serving; without the sandbox tool it
refuses to start, saying which key and what to install."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from msgspec.structs import replace

from tests.helpers import arena_tree, battle
from warriorcoder.launcher.processes import ManagedProcess, start_service, wait_http
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Battle, ChallengeTests, decode
from warriorcoder.runtime.bus import Bus, connect
from warriorcoder.runtime.settings import parse_settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

TIMEOUT_S = 8  # the sandbox's wall-clock limit here (20 s by default): room for a loaded machine
MAX_OUTPUT = 4096

TEST_CODE = (
    "from solution import *\n\n"
    "def test_small():\n    assert add(1, 2) == 3\n\n"
    "def test_zero():\n    assert add(0, 0) == 0\n\n"
    "def test_negative():\n    assert add(-1, -2) == -3\n\n"
    "def test_large():\n    assert add(10**6, 1) == 1000001\n"
)
TESTS = ChallengeTests(
    writer="gamma",
    language="Python",
    code=TEST_CODE,
    tests=["test_small", "test_zero", "test_negative", "test_large"],
    usable=True,
    asked=1,
)
RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"  # passes test_zero only

# Each attack makes ``add`` correct only if its escape works: contained <=> no test passes.
# {port}: the host's nats-server; {secret}/{outside}: host paths outside the sandbox's view.
ATTACKS = {
    "socket": (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
        "    ESCAPED = True\n"
        "except OSError:\n"
        "    ESCAPED = False\n"
    ),
    "read_host_file": (
        "try:\n"
        "    ESCAPED = open({secret!r}).read() == 's3cret'\n"
        "except OSError:\n"
        "    ESCAPED = False\n"
    ),
    "write_outside": (
        "ESCAPED = False\n"
        "for path in ({outside!r}, '/usr/escaped', '/etc/escaped'):\n"
        "    try:\n"
        "        with open(path, 'w') as f:\n"
        "            f.write('escaped')\n"
        "        ESCAPED = True\n"
        "    except OSError:\n"
        "        pass\n"
    ),
    "fork_bomb": (
        "import os\n"
        "ESCAPED = False\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    ),
    "memory_bomb": (
        "ESCAPED = False\nhog = []\nwhile True:\n    hog.append(bytearray(64 * 1024 * 1024))\n"
    ),
    "infinite_output": (
        "import sys\nESCAPED = False\nwhile True:\n    sys.stdout.write('x' * 4096)\n"
    ),
    "sleep": "import time\nESCAPED = False\ntime.sleep(3600)\n",
}
ADD = "\n\ndef add(a, b):\n    return a + b if ESCAPED else a - b - 1\n"


def fenced(code: str, quality: int = 5) -> str:
    return f"My solution:\n\n```python\n{code}```\n\nquality={quality}"


def verified_battle(name: str, attacker_code: str, defender_code: str) -> Battle:
    text = f"Write a Python function add(a, b) that returns the sum of two integers ({name})."
    b = battle(fenced(attacker_code), fenced(defender_code), attacker="alpha", defender="beta",
               text=text)  # fmt: skip
    return replace(b, tests=TESTS)


def write_config(tmp_path: Path, nats_url: str) -> Path:
    tree = arena_tree(
        nats_url=nats_url,
        verifier={
            "enabled": True,
            "concurrency": 2,
            "sandbox": {
                "timeout_s": TIMEOUT_S,
                "cpu_s": 4,
                "memory_mb": 512,
                "max_output_bytes": MAX_OUTPUT,
            },
        },
        service={"log_format": "json", "max_in_flight": 4},
    )
    path = tmp_path / "arena.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


async def publish(nats_url: str, battles: list[Battle]) -> None:
    s = parse_settings(arena_tree(nats_url=nats_url))
    nc = await connect(s.nats)
    bus = Bus(nc, s.nats, stage="test")
    await bus.ensure_topology()
    for b in battles:
        await bus.publish(subjects.ANSWERED, b, msg_id=b.id)
    await nc.drain()


async def verified(nats_url: str, n: int, within_s: float) -> dict[str, Battle]:
    """The next ``n`` battles on BATTLES (what the judges would get), by id."""
    s = parse_settings(arena_tree(nats_url=nats_url))
    nc = await connect(s.nats)
    js = nc.jetstream()
    sub = await js.pull_subscribe(subjects.BATTLES, durable="test-reader")
    out: dict[str, Battle] = {}
    deadline = time.monotonic() + within_s
    while len(out) < n and time.monotonic() < deadline:
        try:
            msgs = await sub.fetch(n - len(out), timeout=1)
        except TimeoutError:
            continue
        for msg in msgs:
            await msg.ack()
            b = decode(msg.data, Battle)
            out[b.id] = b
    dlq = (await js.stream_info(subjects.STREAM_DLQ)).state.messages
    await nc.drain()
    assert dlq == 0, f"{dlq} dead letters"
    assert len(out) == n, f"{len(out)}/{n} battles verified in {within_s:g}s"
    return out


@pytest.fixture
def verifier(tmp_path: Path, nats_url: str) -> Iterator[ManagedProcess]:
    proc = start_service("verifier", write_config(tmp_path, nats_url),
                         log_path=tmp_path / "verifier.log")  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{proc.ports['http']}/readyz", proc, 60)
        yield proc
    finally:
        code = proc.stop(timeout=30)
        assert code == 0, proc.log_tail()


def metrics_text(proc: ManagedProcess) -> str:
    url = f"http://127.0.0.1:{proc.ports['http']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def test_correct_code_passes_and_wrong_code_fails(verifier, nats_url):
    b = verified_battle("plain", RIGHT, WRONG)
    unverified = replace(verified_battle("no tests", RIGHT, WRONG), tests=None)
    asyncio.run(publish(nats_url, [b, unverified]))
    out = asyncio.run(verified(nats_url, 2, within_s=60))
    assert out[unverified.id] == unverified  # passed on unchanged, execution None
    got = out[b.id]
    assert replace(got, execution=None) == b
    ex = got.execution
    assert ex is not None and ex.sandbox.startswith("bubblewrap")
    a, d = ex.attacker, ex.defender
    assert (a.status, a.passed, a.failed, a.total, a.exit_code) == ("ran", 4, 0, 4, 0), a
    assert (d.status, d.passed, d.failed, d.total) == ("ran", 1, 3, 4), d
    assert 0 < a.wall_s < TIMEOUT_S
    text = metrics_text(verifier)
    assert 'warriorcoder_verifier_tests_passed_total{model="alpha"} 4.0' in text
    assert 'warriorcoder_verifier_tests_total{model="beta"} 4.0' in text
    assert 'warriorcoder_verifier_runs_total{model="beta",outcome="failed"} 1.0' in text


def test_hostile_answers_are_contained_and_the_service_keeps_serving(
    verifier, nats_url, nats_server, tmp_path
):
    secret = tmp_path / "host-secret.txt"
    secret.write_text("s3cret")
    outside = tmp_path / "escaped.txt"
    fill = {"port": nats_server.ports["client"], "secret": str(secret), "outside": str(outside)}
    hostile = {
        name: verified_battle(name, attack.format(**fill) + ADD, RIGHT)
        for name, attack in ATTACKS.items()
    }
    after = verified_battle("after the attacks", WRONG, RIGHT)
    start = time.monotonic()
    asyncio.run(publish(nats_url, [*hostile.values(), after]))
    out = asyncio.run(verified(nats_url, len(hostile) + 1, within_s=120))
    elapsed = time.monotonic() - start

    for name, b in hostile.items():
        ex = out[b.id].execution
        assert ex is not None, name
        attack, fair = ex.attacker, ex.defender
        # contained: the escape failed, so add() is wrong and no test passed
        assert attack.status in ("ran", "timeout"), (name, attack)
        assert attack.passed == 0, (name, attack)
        # the honest answer of the same battle, run beside it, is unaffected
        assert (fair.status, fair.passed, fair.total) == ("ran", 4, 4), (name, fair)
    runs = {name: out[b.id].execution.attacker for name, b in hostile.items()}
    assert runs["sleep"].status == "timeout"
    assert TIMEOUT_S - 0.5 <= runs["sleep"].wall_s < TIMEOUT_S + 5
    assert runs["infinite_output"].output_truncated
    assert len(runs["infinite_output"].stdout.encode()) <= MAX_OUTPUT
    assert not outside.exists()
    # the battle after the attacks is verified as any other
    late = out[after.id].execution
    assert late is not None
    assert (late.attacker.passed, late.defender.passed) == (1, 4)
    assert verifier.alive()
    assert 'warriorcoder_verifier_timeouts_total{model="alpha"}' in metrics_text(verifier)
    # concurrency 2: eight battles of two runs, the slow ones bounded by the limit
    assert elapsed < 8 * TIMEOUT_S + 30, elapsed


def test_without_the_sandbox_tool_the_verifier_refuses_to_start(tmp_path, nats_url):
    """bwrap not on PATH: start-up fails, naming the key and what to install."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    config = write_config(tmp_path, nats_url)
    result = subprocess.run(
        [sys.executable, "-m", "warriorcoder.cli", "serve", "verifier", "--config", str(config),
         "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "verifier.sandbox.tool" in result.stderr
    assert "apt-get install bubblewrap" in result.stderr
