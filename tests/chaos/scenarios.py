"""Chaos scenarios against real arenas on this machine, each checked afterwards (``checks``).

Usage::

    figures = kill_storm(tmp_path, triton_grpc="127.0.0.1:8001", battles=150, seed=1)
    assert not figures.problems, figures.report()

One function per fault, sized by its arguments: the CI suite (``tests/chaos/test_chaos.py``) runs
them small, ``benchmarks/chaos/run.py`` runs them long. All use scripted models on a real Triton
(PyTriton) and real nats-servers; the services run as processes. Arenas run under the
``warriorcoder up`` supervisor (``BackgroundArena``, or ``warriorcoder up`` itself as a process for
the faults of ``up``), except the cluster scenario, whose services are started by hand against a
3-node JetStream cluster. Every scenario ends by checking the store: exactly N samples on disk and
in the stream, no duplicate, ratings equal to the replay of the votes, every dead letter explained.

- ``kill_storm``: SIGKILL a random running service, one kill per 10 battles, all run long;
- ``nats_restart``: SIGKILL the arena's nats-server (and once SIGTERM it) mid-run;
- ``cluster_node``: SIGKILL the JetStream meta leader of a 3-node cluster, restart it after a
  while, more than once; no service may crash meanwhile;
- ``triton_outage``: stop Triton (gracefully) for ``down_s``; no dead letter, and the first sample
  within ``resume_within_s`` of the backend being ready again;
- ``poison``: poison on every subject mid-run (``tests/chaos/poison.py``), duplicates of battles
  applied more than the idempotency window ago included;
- ``sigterm_resume``: ``warriorcoder up``, a 900 KB poison message, SIGTERM, then ``up`` again;
- ``kill_up``: a second ``up`` on the same directory is refused; SIGKILL of ``up`` takes its
  children with it; ``up`` again completes the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import yaml

from tests.chaos.checks import Expect, Outcome, check, inspect_store, read_state, wait_drained
from tests.chaos.cluster import NatsCluster
from tests.chaos.poison import Poison, absorbable, expected_reasons, inject, make_poison
from warriorcoder.launcher.background import BackgroundArena
from warriorcoder.launcher.config import for_run, scripted_arena_settings, write_settings
from warriorcoder.launcher.policy import top_up
from warriorcoder.launcher.processes import (
    ManagedProcess,
    TritonPorts,
    start_scripted_triton,
    start_service,
)
from warriorcoder.launcher.status import StatusReader, count_samples
from warriorcoder.runtime.settings import ArenaSettings, ScoringSettings, load_settings
from warriorcoder.runtime.shards import read_samples
from warriorcoder.testing.scripted import SCRIPTED_MODELS

__all__ = [
    "MODELS",
    "SERVICES",
    "Figures",
    "chaos_settings",
    "cluster_node",
    "dump",
    "kill_storm",
    "kill_up",
    "nats_restart",
    "poison",
    "sigterm_resume",
    "start_triton",
    "triton_outage",
]

MODELS = ["alpha", "beta", "gamma"]  # the scripted arena's competitors
SERVICES = ("aggregator", "judge", "responder", "challenger")


@dataclass
class Figures:
    """What a scenario did and what it left: the table row of the reliability section."""

    scenario: str
    battles: int
    faults: Counter[str] = field(default_factory=Counter)
    poison: int = 0
    seconds: float = 0.0
    outcome: Outcome | None = None
    notes: dict[str, float] = field(default_factory=dict)
    extra_problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Samples short of N (negative: written more than N)."""
        return self.battles - (self.outcome.samples if self.outcome else 0)

    @property
    def problems(self) -> list[str]:
        found = list(self.extra_problems)
        found += self.outcome.problems if self.outcome else ["the run was never checked"]
        return found

    def report(self) -> str:
        o = self.outcome
        letters = dict(o.dead_letters) if o else {}
        lines = [
            f"{self.scenario}: {self.battles} battles in {self.seconds:.1f}s; faults "
            f"{dict(self.faults)}; poison {self.poison}; dead letters {letters}; lost {self.lost}"
            + "".join(f"; {k} {v:.1f}" for k, v in self.notes.items()),
            *(f"  - {p}" for p in self.problems),
        ]
        return "\n".join(lines)

    def row(self) -> dict[str, object]:
        o = self.outcome
        return {
            "scenario": self.scenario,
            "battles": self.battles,
            "samples": o.samples if o else None,
            "faults": dict(self.faults),
            "poison": self.poison,
            "dead_letters": dict(o.dead_letters) if o else {},
            "lost": self.lost,
            "seconds": round(self.seconds, 1),
            **{k: round(v, 2) for k, v in self.notes.items()},
            "problems": self.problems,
        }


def chaos_settings(
    triton_grpc: str, *, idempotency_window: int | None = None, **nats: object
) -> ArenaSettings:
    """The scripted arena (alpha, beta, gamma) on the Triton at ``triton_grpc``; optionally a
    small idempotency window and other NATS settings."""
    s = scripted_arena_settings(MODELS, triton_grpc=triton_grpc)
    rep = msgspec.structs.replace
    if idempotency_window is not None and "idempotency_window" in ScoringSettings.__struct_fields__:
        s = rep(s, scoring=rep(s.scoring, idempotency_window=idempotency_window))
    if nats:
        s = rep(s, nats=rep(s.nats, **nats))
    return s


def _scoring(data_dir: Path) -> ScoringSettings:
    return load_settings(data_dir / "arena.yaml", {}).scoring


def _deadline(timeout: float) -> Callable[[str], None]:
    end = time.monotonic() + timeout

    def check_time(what: str) -> None:
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: over {timeout:g}s")

    return check_time


class _Progress:
    """Samples over time: the longest stretch without a new one (a stall)."""

    def __init__(self, samples_dir: Path) -> None:
        self.samples_dir = samples_dir
        self.last = 0
        self.last_at = time.monotonic()
        self.max_stall = 0.0

    def poll(self) -> int:
        n = count_samples(self.samples_dir)
        now = time.monotonic()
        if n > self.last:
            self.last, self.last_at = n, now
        self.max_stall = max(self.max_stall, now - self.last_at)
        return n


def _finish(arena: BackgroundArena, figures: Figures, drain_s: float) -> None:
    """Wait for N samples, then for the streams to settle, under the arena."""
    figures.notes["drain_s"] = asyncio.run(
        wait_drained(arena.nats_url, arena.samples_dir, figures.battles, drain_s)
    )


# -- under the supervisor ------------------------------------------------------------------------


def kill_storm(
    root: Path,
    *,
    triton_grpc: str,
    battles: int,
    seed: int,
    kills: int | None = None,
    min_up_s: float = 2.0,
    per_minute: int = 4,
    max_stall_s: float | None = None,
    timeout: float = 600,
) -> Figures:
    """SIGKILL a random service ``kills`` times (default: one per 10 battles), spread evenly over
    the run by progress (kill i once i/(kills+1) of the samples are in), so the storm covers the
    whole run however fast it goes. A victim has run ``min_up_s`` at least (its restart done);
    at most ``per_minute`` kills of one service in any minute (under the supervisor's crash-loop
    threshold: this storm tests recovery, not back-off). ``max_stall_s``: the longest a kill may
    stall the pipeline (no new sample)."""
    rng = random.Random(seed)
    kills = battles // 10 if kills is None else kills
    data = root / "arena"
    figures = Figures("kill -9 storm", battles)
    start = time.monotonic()
    over = _deadline(timeout)
    seen: dict[int, float] = {}  # pid -> first seen alive
    history: dict[str, list[float]] = {name: [] for name in SERVICES}
    done = 0
    with BackgroundArena(
        data, mode="config", settings=chaos_settings(triton_grpc), battles=battles
    ) as arena:
        progress = _Progress(arena.samples_dir)
        while progress.poll() < battles:
            over(f"kill storm at {progress.last}/{battles} samples")
            time.sleep(0.1)
            if done >= kills or progress.last < battles * (done + 1) // (kills + 1):
                continue
            now = time.monotonic()
            ready = []
            for name in SERVICES:
                child = arena.procs[name]
                since = seen.setdefault(child.pid, now)
                recent = [t for t in history[name] if now - t < 60]
                if child.alive() and now - since >= min_up_s and len(recent) < per_minute:
                    ready.append(name)
            if not ready:
                continue
            name = rng.choice(ready)
            with contextlib.suppress(ProcessLookupError):
                arena.kill(name)
                history[name].append(now)
                figures.faults[f"kill -9 {name}"] += 1
            done += 1
        figures.notes["max_stall_s"] = progress.max_stall
        _finish(arena, figures, drain_s=120)
    if done < kills // 2:
        figures.extra_problems.append(f"only {done} of {kills} kills: the run outpaced the storm")
    if max_stall_s is not None and progress.max_stall > max_stall_s:
        figures.extra_problems.append(
            f"a kill stalled the pipeline {progress.max_stall:.1f}s (bound {max_stall_s:g}s)"
        )
    figures.seconds = time.monotonic() - start
    figures.outcome = inspect_store(data, Expect(battles, _scoring(data)))
    return figures


def nats_restart(
    root: Path, *, triton_grpc: str, battles: int, restarts: int = 2, timeout: float = 600
) -> Figures:
    """SIGKILL (then SIGTERM, alternately) the arena's nats-server ``restarts`` times, evenly
    over the run; the supervisor must bring it back on its port and store."""
    data = root / "arena"
    figures = Figures("nats-server restart", battles)
    start = time.monotonic()
    with BackgroundArena(
        data, mode="config", settings=chaos_settings(triton_grpc), battles=battles
    ) as arena:
        for i in range(restarts):
            arena.wait_for_samples(battles * (i + 1) // (restarts + 1), timeout=timeout)
            sig = signal.SIGKILL if i % 2 == 0 else signal.SIGTERM
            os.kill(arena.procs["nats-server"].pid, sig)
            figures.faults[f"nats-server {sig.name}"] += 1
        # Raises as soon as the arena stops (the supervisor gave up on its nats-server).
        arena.wait_for_samples(battles, timeout=timeout)
        _finish(arena, figures, drain_s=120)
    figures.seconds = time.monotonic() - start
    figures.outcome = inspect_store(data, Expect(battles, _scoring(data)))
    return figures


def start_triton(ports: TritonPorts, log_path: Path, timeout: float = 180) -> ManagedProcess:
    """The scripted models on a Triton (PyTriton) on fixed ports (to restart it in place)."""
    return start_scripted_triton(
        SCRIPTED_MODELS, MODELS, log_path=log_path, timeout=timeout, ports=ports
    )


def triton_outage(
    root: Path,
    *,
    battles: int,
    down_s: float,
    outages: int = 1,
    resume_within_s: float = 10.0,
    timeout: float = 600,
) -> Figures:
    """Stop Triton gracefully for ``down_s`` seconds, ``outages`` times over the run."""
    data = root / "arena"
    figures = Figures(f"Triton down {down_s:g}s", battles)
    ports = TritonPorts.free()
    log = root / "triton.log"
    triton = start_triton(ports, log)
    start = time.monotonic()
    try:
        settings = chaos_settings(f"127.0.0.1:{ports.grpc}")
        with BackgroundArena(data, mode="config", settings=settings, battles=battles) as arena:
            progress = _Progress(arena.samples_dir)
            for i in range(outages):
                arena.wait_for_samples(battles * (i + 1) // (outages + 2), timeout=timeout)
                triton.stop()
                figures.faults["Triton stopped"] += 1
                time.sleep(down_s)
                figures.notes["outage_s"] = figures.notes.get("outage_s", 0) + down_s
                triton = start_triton(ports, log)
                ready, at_ready = time.monotonic(), progress.poll()
                arena.wait_for_samples(min(at_ready + 1, battles), timeout=timeout, poll_s=0.1)
                resumed = time.monotonic() - ready
                figures.notes["first_sample_after_ready_s"] = max(
                    resumed, figures.notes.get("first_sample_after_ready_s", 0)
                )
                if resumed > resume_within_s:
                    figures.extra_problems.append(
                        f"first sample {resumed:.1f}s after Triton was ready (target "
                        f"<= {resume_within_s:g}s)"
                    )
            arena.wait_for_samples(battles, timeout=timeout)
            _finish(arena, figures, drain_s=120)
    finally:
        triton.stop()
    figures.seconds = time.monotonic() - start
    figures.outcome = inspect_store(data, Expect(battles, _scoring(data)))
    return figures


def poison(
    root: Path,
    *,
    triton_grpc: str,
    battles: int,
    messages: int,
    seed: int,
    per_second: float = 200,
    window: int = 16,
    timeout: float = 600,
) -> Figures:
    """``messages`` poison messages on every subject from mid-run on; the idempotency window
    is ``window`` battles and the duplicates copy battles applied longer ago than that."""
    data = root / "arena"
    figures = Figures("poison", battles, poison=messages)
    start = time.monotonic()
    settings = chaos_settings(triton_grpc, idempotency_window=window)
    with BackgroundArena(data, mode="config", settings=settings, battles=battles) as arena:
        half = max(battles // 2, 1)
        arena.wait_for_samples(half, timeout=timeout)
        applied = [
            s for s in read_samples(arena.samples_dir) if (s.rating_seq or 0) <= half - window - 4
        ]
        run_settings = load_settings(data / "arena.yaml", {})
        batch = make_poison(messages, seed=seed, settings=run_settings, applied=applied)
        figures.faults.update(Counter(p.category for p in batch))
        asyncio.run(inject(arena.nats_url, batch, per_second=per_second))
        arena.wait_for_samples(battles, timeout=timeout)
        _finish(arena, figures, drain_s=180)
    figures.seconds = time.monotonic() - start
    expect = Expect(
        battles, _scoring(data), injected=expected_reasons(batch), absorbable=absorbable(batch)
    )
    figures.outcome = inspect_store(data, expect)
    return figures


# -- a 3-node JetStream cluster, services by hand ------------------------------------------------


def cluster_node(
    root: Path,
    *,
    triton_grpc: str,
    battles: int,
    kills: int = 2,
    down_s: float = 5.0,
    timeout: float = 600,
) -> Figures:
    """The four services on a 3-node cluster (streams with 3 replicas); SIGKILL the JetStream
    meta leader ``kills`` times over the run, each restarted after ``down_s``. No service may
    exit meanwhile (an exit is restarted, so the run can end, and counted as a problem)."""
    figures = Figures("3-node cluster, leader killed", battles)
    samples_dir = root / "samples"
    config = root / "arena.yaml"
    start = time.monotonic()
    over = _deadline(timeout)
    services: dict[str, ManagedProcess] = {}
    crashes: Counter[str] = Counter()
    with NatsCluster(root / "cluster") as cluster:
        settings = chaos_settings(triton_grpc, stream_replicas=3)
        settings = for_run(settings, nats_url=cluster.url, samples_dir=samples_dir)
        write_settings(config, settings)

        def supervise() -> None:
            for name in SERVICES:
                proc = services.get(name)
                if proc is not None and proc.alive():
                    continue
                if proc is not None:
                    crashes[name] += 1
                    figures.extra_problems.append(
                        f"{name} exited ({proc.proc.returncode}) during the cluster faults:\n"
                        f"{proc.log_tail(1500)}"
                    )
                services[name] = start_service(name, config, log_path=root / f"{name}.log")

        try:
            asyncio.run(_set_budget(cluster.url, samples_dir, battles))
            supervise()
            progress = _Progress(samples_dir)
            for i in range(kills):
                while progress.poll() < battles * (i + 1) // (kills + 1):
                    over(f"cluster kill {i}: {progress.last}/{battles}")
                    supervise()
                    time.sleep(0.2)
                leader = cluster.meta_leader()
                cluster.kill(leader)
                figures.faults[f"kill -9 meta leader n{leader}"] += 1
                end = time.monotonic() + down_s
                while time.monotonic() < end:
                    supervise()
                    time.sleep(0.2)
                cluster.start(leader)
            idle_since: float | None = None
            while progress.poll() < battles:
                over(f"cluster run: {progress.last}/{battles}")
                supervise()
                idle_since = asyncio.run(_top_up(cluster.url, samples_dir, battles, idle_since))
                time.sleep(1)
            figures.notes["max_stall_s"] = progress.max_stall
            figures.notes["drain_s"] = asyncio.run(
                wait_drained(cluster.url, samples_dir, battles, 120)
            )
            supervise()
            state = asyncio.run(read_state(cluster.url, samples_dir))
        finally:
            for proc in services.values():
                proc.stop()
    figures.faults.update({f"{k} crashed": v for k, v in crashes.items()})
    figures.seconds = time.monotonic() - start
    figures.outcome = check(state, Expect(battles, settings.scoring))
    return figures


async def _set_budget(url: str, samples_dir: Path, battles: int) -> None:
    async with StatusReader(url, samples_dir) as reader:
        await reader.set_budget(battles)


async def _top_up(
    url: str, samples_dir: Path, battles: int, idle_since: float | None
) -> float | None:
    """What the supervisor's budget keeper does: mine what a rejected or lost challenge left
    missing, once the pipeline has been idle 10 s (a challenge whose publish is being retried
    through an election is neither in the budget nor in a stream: a quick top-up over-mines)."""
    more = 0
    with contextlib.suppress(Exception):  # the cluster electing a leader: next time
        async with StatusReader(url, samples_dir) as reader:
            samples, budget = await reader.samples(), await reader.budget()
            more = top_up(battles, samples, budget, await reader.pending())
            if more and idle_since is not None and time.monotonic() - idle_since >= 10:
                await reader.set_budget(more)
                return None
    if not more:
        return None
    return idle_since if idle_since is not None else time.monotonic()


# -- `warriorcoder up` as a process --------------------------------------------------------------


def _up(data: Path, battles: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "warriorcoder.cli", "up", "--scripted", "--plain",
            "--data-dir", str(data), "--battles", str(battles), "--port", "0"]  # fmt: skip
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
        )  # fmt: skip


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (children in their own sessions included)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _nats_url(data: Path) -> str:
    return str(yaml.safe_load((data / "arena.yaml").read_text())["nats"]["url"])


def _wait_samples(proc: subprocess.Popen[bytes], samples_dir: Path, n: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while count_samples(samples_dir) < n:
        if proc.poll() is not None:
            raise RuntimeError(f"up exited ({proc.returncode}) before {n} samples")
        if time.monotonic() > end:
            raise TimeoutError(f"{count_samples(samples_dir)}/{n} samples after {timeout:g}s")
        time.sleep(0.2)


def _wait_exit(
    proc: subprocess.Popen[bytes], timeout: float, what: str, problems: list[str]
) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        problems.append(f"{what}: still running after {timeout:g}s (killed)")
        _kill_all(_descendants(proc.pid) | {proc.pid})
        return proc.wait()


def sigterm_resume(
    root: Path, *, battles: int, oversized: int = 1, timeout: float = 600
) -> Figures:
    """``up`` until a third of the run, ``oversized`` 900 KB poison messages on the challenges
    subject, SIGTERM; ``up`` again must end at exactly ``battles``."""
    data, log = root / "arena", root / "up.log"
    figures = Figures("SIGTERM + resume (up)", battles, poison=oversized)
    start = time.monotonic()
    batch: list[Poison] = []
    first = _up(data, battles, log)
    try:
        _wait_samples(first, data / "samples", max(battles // 3, 1), timeout)
        settings = load_settings(data / "arena.yaml", {})
        made = make_poison(50 * oversized, seed=3, settings=settings)
        batch = [p for p in made if p.category == "oversized"][:oversized]
        asyncio.run(inject(_nats_url(data), batch))
        figures.poison = len(batch)
        first.send_signal(signal.SIGTERM)
        figures.faults["SIGTERM up"] += 1
        code = _wait_exit(first, 120, "up after SIGTERM", figures.extra_problems)
        if code not in (0, 130):
            figures.extra_problems.append(f"up exited {code} after SIGTERM (expected 130)")
        figures.notes["samples_at_sigterm"] = at_term = count_samples(data / "samples")
        if at_term >= battles:
            figures.extra_problems.append("up finished before SIGTERM: nothing was tested")
    finally:
        _kill_all(_descendants(first.pid) | {first.pid} if first.poll() is None else set())
    second = _up(data, battles, log)
    code = _wait_exit(second, timeout, "up resumed", figures.extra_problems)
    if code != 0:
        figures.extra_problems.append(f"resumed up exited {code}: {log.read_text()[-2000:]}")
    figures.seconds = time.monotonic() - start
    expect = Expect(battles, _scoring(data), injected=expected_reasons(batch))
    figures.outcome = inspect_store(data, expect)
    return figures


def kill_up(root: Path, *, battles: int, timeout: float = 600, die_within_s: float = 20) -> Figures:
    """``up``; a second ``up`` on the same directory meanwhile must refuse; SIGKILL ``up`` at a
    third of the run: its children must die with it; ``up`` again completes the run."""
    data, log = root / "arena", root / "up.log"
    figures = Figures("kill -9 up + rerun", battles)
    start = time.monotonic()
    first = _up(data, battles, log)
    children: set[int] = set()
    try:
        while not (data / "arena.yaml").exists():  # the first one holds the directory by now
            if first.poll() is not None or time.monotonic() - start > timeout:
                raise RuntimeError(f"up did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        intruder = _up(data, battles, root / "up-second.log")
        code = _wait_exit(intruder, 60, "a second up on the same directory", figures.extra_problems)
        figures.faults["second up on the same directory"] += 1
        if code == 0 or first.poll() is not None:
            figures.extra_problems.append(
                f"a second up on the same directory exited {code} (expected a refusal); "
                f"first up {'running' if first.poll() is None else 'gone'}"
            )
        _wait_samples(first, data / "samples", max(battles // 3, 1), timeout)
        children = _descendants(first.pid)
        first.send_signal(signal.SIGKILL)
        first.wait()
        figures.faults["kill -9 up"] += 1
        end = time.monotonic() + die_within_s
        while (left := {p for p in children if _alive(p)}) and time.monotonic() < end:
            time.sleep(0.2)
        figures.notes["children_gone_after_s"] = time.monotonic() - (end - die_within_s)
        if left:
            figures.extra_problems.append(
                f"{len(left)} of up's {len(children)} processes outlived it by {die_within_s:g}s"
            )
            _kill_all(left)
    finally:
        if first.poll() is None:
            _kill_all(_descendants(first.pid) | {first.pid})
        _kill_all({p for p in children if _alive(p)})
    figures.notes["samples_at_kill"] = at_kill = count_samples(data / "samples")
    if at_kill >= battles:
        figures.extra_problems.append("up finished before it was killed: nothing was tested")
    second = _up(data, battles, log)
    code = _wait_exit(second, timeout, "up rerun", figures.extra_problems)
    if code != 0:
        figures.extra_problems.append(f"rerun of up exited {code}: {log.read_text()[-2000:]}")
    figures.seconds = time.monotonic() - start
    figures.outcome = inspect_store(data, Expect(battles, _scoring(data)))
    return figures


def dump(figures: list[Figures], path: Path) -> None:
    """The figures as JSON (the long run's record)."""
    path.write_text(json.dumps([f.row() for f in figures], indent=2))
