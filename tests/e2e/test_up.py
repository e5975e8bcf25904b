"""``warriorcoder up``: the demo completes offline, a crashed service is restarted, and a run
stopped with Ctrl-C resumes on the same data directory with nothing lost and nothing twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from warriorcoder.launcher.arena import SERVICES, count_samples
from warriorcoder.launcher.background import BackgroundArena
from warriorcoder.launcher.processes import free_port
from warriorcoder.runtime.shards import read_samples

pytestmark = pytest.mark.e2e


def up(data_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "warriorcoder.cli", "up", "--data-dir", str(data_dir), "--plain",
         *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def test_demo_runs_offline_and_writes_valid_samples(tmp_path: Path):
    proc = up(tmp_path / "demo", "--demo", "--battles", "3", "--port", "0", "--timeout", "600")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert "RANDOM WEIGHTS" in out  # the output says plainly that these are not real models
    samples = read_samples(tmp_path / "demo" / "samples")
    assert len(samples) == 3 and len({s.id for s in samples}) == 3
    for s in samples:
        assert s.attacker.startswith("demo-") and s.defender.startswith("demo-")
        assert s.attacker != s.defender
        assert [t.role for t in s.messages] == ["user", "assistant"]
        assert s.chosen in (s.messages[1].content,) and s.rejected != ""
        # Guided choices keep even random-weight judges well-formed: every vote is valid.
        assert s.votes and all(v.winner != "invalid" for v in s.votes)
        assert all(v.judge not in (s.attacker, s.defender) for v in s.votes)
    assert "done: 3 samples" in out


def test_stop_with_ctrl_c_and_resume_loses_nothing_and_writes_nothing_twice(tmp_path: Path):
    data = tmp_path / "arena"
    port = free_port()
    first = up(data, "--scripted", "--battles", "40", "--port", str(port))
    deadline = time.monotonic() + 300
    status: dict = {"samples": 0}
    while status["samples"] < 5:  # the page's own view of the run
        assert first.poll() is None, first.stdout.read() if first.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.2)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as r:
                status = json.load(r)
        except OSError:
            continue  # not serving yet
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        page = resp.read().decode()
    first.send_signal(signal.SIGINT)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 130, out
    assert "interrupted" in out
    assert status["target"] == 40 and status["samples"] >= 5
    assert "WarriorCoder Arena" in page and "<table>" in page
    stopped_at = count_samples(data / "samples")
    assert 5 <= stopped_at < 40

    second = up(data, "--scripted", "--battles", "40", "--port", "0")
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    samples = read_samples(data / "samples")
    assert len(samples) == 40  # exactly the target: nothing lost, nothing extra
    assert len({s.id for s in samples}) == 40  # nothing written twice
    assert (
        f"{stopped_at} samples already" in out
        or "budget set to" in (data / "logs" / "supervisor.log").read_text()
    )


def test_a_crashed_service_is_restarted_and_the_run_completes(tmp_path: Path):
    with BackgroundArena(tmp_path / "arena", battles=10) as arena:
        # Killed before it could judge anything: every sample needs the restarted judge.
        arena.kill("judge")
        arena.wait_for_samples(10, timeout=180)
        assert any("judge exited with code -9; restarting it" in e for e in arena.events)
        assert arena.procs["judge"].alive()
    samples = read_samples(tmp_path / "arena" / "samples")
    assert len({s.id for s in samples}) == len(samples) == 10
    log = (tmp_path / "arena" / "logs" / "supervisor.log").read_text()
    assert "judge exited" in log


def test_up_with_a_config_of_existing_tritons(tmp_path: Path, triton_url: str):
    import yaml

    from tests.helpers import arena_tree

    config = tmp_path / "arena.yaml"
    config.write_text(yaml.safe_dump(arena_tree(triton_url)))
    check = subprocess.run(
        [sys.executable, "-m", "warriorcoder.cli", "check-config", "--config", "examples/"
         "cpu-small-models.yaml"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    proc = up(tmp_path / "data", "--config", str(config), "--battles", "4", "--port", "0")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert not (tmp_path / "data" / "local-models.yaml").exists()  # no local Triton started
    resolved = yaml.safe_load((tmp_path / "data" / "arena.yaml").read_text())
    assert resolved["models"]["alpha"]["triton_url"] == triton_url
    assert len(read_samples(tmp_path / "data" / "samples")) == 4


def _wait_output(proc: subprocess.Popen[str], text: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"no {text!r} within {timeout:g}s:\n{''.join(lines)}")


def _ratings(nats_store_dir: Path) -> tuple[int, dict[str, float]]:
    """The ratings document of a stopped arena's store, read through a nats-server of its own."""
    import asyncio

    from nats.aio.client import Client

    from warriorcoder.launcher.processes import start_nats
    from warriorcoder.proto import subjects
    from warriorcoder.proto.messages import decode
    from warriorcoder.proto.state import Ratings

    server = start_nats(nats_store_dir)
    try:

        async def read() -> Ratings:
            nc = Client()
            await nc.connect(f"nats://127.0.0.1:{server.ports['client']}")
            try:
                kv = await nc.jetstream().key_value(subjects.KV_RATINGS)
                return decode((await kv.get(subjects.RATINGS_KEY)).value or b"", Ratings)
            finally:
                await nc.close()

        doc = asyncio.run(read())
    finally:
        server.stop()
    return doc.battles, dict(doc.ratings)


def test_kill_9_of_up_leaves_no_child_and_a_rerun_resumes_to_exactly_n(tmp_path: Path):
    from warriorcoder.launcher.groups import group_members

    data = tmp_path / "arena"
    first = up(data, "--scripted", "--battles", "300", "--port", "0")
    try:
        _wait_output(first, "arena running", 300)
        deadline = time.monotonic() + 120
        while count_samples(data / "samples") < 3:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        # One run per data directory: a second `up` is refused, naming the holder.
        second = up(data, "--scripted", "--battles", "300", "--port", "0")
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 2, out
        assert f"in use by pid {first.pid}" in out
        recorded = json.loads((data / "children.json").read_text())["children"]
        assert set(recorded) == {"nats-server", "tritonserver", *SERVICES}
        pids = {p for pgid, _ in recorded.values() for p in group_members(pgid)}
        assert len(pids) > len(recorded)  # Triton's own tritonserver and its stubs among them
    finally:
        first.kill()
        first.wait()
    deadline = time.monotonic() + 60
    while alive := [p for p in pids if not _gone(p)]:
        assert time.monotonic() < deadline, f"children outlived `up`: {alive}"
        time.sleep(0.2)
    killed_at = count_samples(data / "samples")

    rerun = up(data, "--scripted", "--battles", "300", "--port", "0")
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    samples = read_samples(data / "samples")
    assert len(samples) == len({s.id for s in samples}) == 300, (killed_at, out)
    assert "done: 300 samples" in out and killed_at < 300
    battles, ratings = _ratings(data / "nats")
    assert battles >= 300 and set(ratings) >= {s.attacker for s in samples}


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_nats_server_killed_mid_run_is_restarted_and_the_run_completes(tmp_path: Path):
    with BackgroundArena(tmp_path / "arena", battles=20) as arena:
        arena.wait_for_samples(3, timeout=180)
        old = arena.procs["nats-server"].pid
        arena.kill("nats-server")
        arena.wait_for_samples(20, timeout=300)
        assert arena.procs["nats-server"].pid != old and not arena.dead()
        assert any("nats-server exited with code -9; restarting it" in e for e in arena.events)
    samples = read_samples(tmp_path / "arena" / "samples")
    assert len({s.id for s in samples}) == len(samples) >= 20


# Enough battles that the run cannot finish while the responder is being killed (between kills
# its restarts still answer a few challenges each).
N_STORM = 150


def test_a_service_killed_8_times_in_a_minute_does_not_end_the_run(tmp_path: Path):
    with BackgroundArena(tmp_path / "arena", battles=N_STORM, loop_cap_s=2.0) as arena:
        arena.wait_for_samples(2, timeout=180)
        for _ in range(8):  # each as soon as the last one's restart is up: 8 in under a minute
            old = arena.procs["responder"]
            arena.kill("responder")
            deadline = time.monotonic() + 30
            while arena.procs["responder"] is old:
                assert time.monotonic() < deadline and arena.samples() < N_STORM
                time.sleep(0.05)
        assert arena.arena.crash_looping() == ["responder"]
        arena.wait_for_samples(N_STORM, timeout=600)
        assert arena.arena.restarts()["responder"] == 8
    log = (tmp_path / "arena" / "logs" / "supervisor.log").read_text()
    assert "CRASH LOOP: responder" in log
    samples = read_samples(tmp_path / "arena" / "samples")
    assert len({s.id for s in samples}) == len(samples) >= N_STORM
