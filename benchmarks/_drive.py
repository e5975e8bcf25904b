"""One service as its real process, fed straight on its input stream: the per-service memory runs.

Usage::

    rig = Rig("judge", tmp_dir)   # nats-server, the scripted Triton, ``warriorcoder serve judge``
    with rig:
        points = asyncio.run(rig.drive(2000, every=100, log=True))  # [(done, RSS bytes), ...]

The service runs as ``warriorcoder serve <stage> --config <tmp>/arena.yaml`` with the scripted
arena's settings (``launcher.config.scripted_arena_settings``: alpha, beta and gamma on the
scripted PyTriton Triton of ``testing.scripted_server``; the aggregator asks no model, so it gets
no Triton). ``drive`` feeds the input stream with valid messages built from the real wire types
(each passes ``arena.invariants``: the id its content hashes to, the answers by their fighters,
one consistent vote per judge of ``settings.judges_for`` in the position mode's orders), in
chunks: a new chunk is published only when fewer than one chunk waits, so the input stream stays
small. The challenger needs no input: it gets a challenge budget of N and mines. The output
stream (no consumer here) is purged as it fills, so nats-server's own memory stays bounded too.
Progress is the output stream's last sequence number (purging keeps it). A dead letter, or a
service that exits, fails the run at once: the figures are of work done, not of errors.

``trace_at`` (a count of messages done) runs the service under tracemalloc (``_tracemem/
sitecustomize.py``, harness only: several times slower) and takes a snapshot there and at the
end; ``growth()`` then says which lines of code allocated the memory kept in between.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import tracemalloc
from pathlib import Path
from typing import Any

import msgspec
from nats.js.client import JetStreamContext

from warriorcoder.arena.instructions import normalise
from warriorcoder.arena.invariants import orders_for
from warriorcoder.arena.verdicts import combine
from warriorcoder.launcher.config import for_run, scripted_arena_settings, write_settings
from warriorcoder.launcher.processes import (
    ManagedProcess,
    start_nats,
    start_scripted_triton,
    start_service,
    wait_http,
)
from warriorcoder.launcher.status import StatusReader
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import (
    Answer,
    Battle,
    Challenge,
    Judgement,
    SamplingParams,
    Vote,
    battle_id,
    encode,
)
from warriorcoder.runtime.bus import connect
from warriorcoder.runtime.settings import ArenaSettings
from warriorcoder.testing.scripted import SCRIPTED_MODELS, load_models

__all__ = ["FLOW", "Rig", "battle", "challenge", "judgement", "rss_bytes"]

TRACE_SITE = Path(__file__).with_name("_tracemem")

# service -> (input subject, input stream, output stream); the challenger has no input
FLOW: dict[str, tuple[str | None, str | None, str]] = {
    "challenger": (None, None, subjects.STREAM_CHALLENGES),
    "responder": (subjects.CHALLENGES, subjects.STREAM_CHALLENGES, subjects.STREAM_BATTLES),
    "judge": (subjects.BATTLES, subjects.STREAM_BATTLES, subjects.STREAM_JUDGEMENTS),
    "aggregator": (subjects.JUDGEMENTS, subjects.STREAM_JUDGEMENTS, subjects.STREAM_SAMPLES),
}
SP = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=512)
_TASKS = ("reverses a linked list", "merges sorted lists", "parses a CSV line", "counts words")
# Answers shaped like the scripted answerers' (code, then the quality line the judges read).
_CODE = "```python\ndef {f}(data):\n    return sorted(set(data))\n```\n"


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def challenge(i: int, settings: ArenaSettings) -> Challenge:
    """The ``i``-th distinct challenge, over every ordered pair of competitors in turn."""
    pairs = [(a, d) for a in settings.competitors for d in settings.competitors if a != d]
    attacker, defender = pairs[i % len(pairs)]
    text = f"Write a Python function `task_{i}` that {_TASKS[i % len(_TASKS)]} (case {i})."
    return Challenge(
        id=battle_id(attacker, defender, normalise(text)),
        attacker=attacker,
        defender=defender,
        language=settings.languages[0],
        instruction=text,
        sampling=SP,
        created_at=time.time(),
        quality=8,
        quality_scorer=settings.judges_for(attacker, defender)[0],
    )


def battle(i: int, settings: ArenaSettings) -> Battle:
    """The ``i``-th challenge with an answer by each fighter (qualities that differ by ``i``)."""
    ch = challenge(i, settings)

    def answer(model: str, role: str, quality: int) -> Answer:
        text = f"Here is `task_{i}`.\n{_CODE.format(f=f'task_{i}')}quality={quality}"
        return Answer(
            model=model, role=role, text=text, latency_s=0.01, sampling=SP,  # type: ignore[arg-type]
            finish_reason="stop", output_tokens=len(text.split()),
        )  # fmt: skip

    return Battle(
        id=ch.id,
        challenge=ch,
        attacker_answer=answer(ch.attacker, "attacker", 2 + i % 7),
        defender_answer=answer(ch.defender, "defender", 2 + (i // 7) % 7),
        answered_at=time.time(),
    )


def judgement(i: int, settings: ArenaSettings) -> Judgement:
    """The ``i``-th battle with one consistent vote by each of its judges: winners cycle through
    attacker, defender and tie (so the ratings keep moving)."""
    b = battle(i, settings)
    mode = settings.judge.position_mode
    orders = orders_for(mode, b.id)
    label = {"attacker": "A", "defender": "B"}
    votes = []
    for k, judge in enumerate(settings.judges_for(b.challenge.attacker, b.challenge.defender)):
        winner = ("attacker", "defender", "tie")[(i + k) % 3]
        if winner == "tie":
            verdicts = ["tie"] * len(orders)
        else:  # the label that shows the winner's answer, per order
            verdicts = [label["attacker"] if o == winner else label["defender"] for o in orders]
        assert combine(orders, verdicts) == winner  # type: ignore[arg-type]
        vote = Vote(
            judge=judge, orders=list(orders), verdicts=verdicts, winner=winner,  # type: ignore[arg-type]
            asked=len(orders), reasons=[f"[[{v}]]" for v in verdicts], sampling=SP,
        )  # fmt: skip
        votes.append(vote)
    return Judgement(id=b.id, battle=b, votes=votes, position_mode=mode, judged_at=time.time())


_BUILD = {"responder": challenge, "judge": battle, "aggregator": judgement}


class Rig:
    """nats-server, the scripted Triton (for a model-calling stage) and one service process."""

    def __init__(
        self, service: str, tmp: Path, *, chunk: int = 500, trace_at: int | None = None
    ) -> None:
        if service not in FLOW:
            raise ValueError(f"unknown service {service!r}: one of {sorted(FLOW)}")
        self.service, self.tmp, self.chunk, self.trace_at = service, tmp, chunk, trace_at
        self.snapshots = tmp / "tracemalloc"
        self.procs: list[ManagedProcess] = []
        self.settings: ArenaSettings | None = None
        self.proc: ManagedProcess | None = None
        self.nats: ManagedProcess | None = None

    def __enter__(self) -> Rig:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()

    def _start(self) -> None:
        logs = self.tmp / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.nats = start_nats(self.tmp / "nats", log_path=logs / "nats-server.log")
        self.procs.append(self.nats)
        names = [m.name for m in load_models(SCRIPTED_MODELS)]
        grpc = "127.0.0.1:1"  # the aggregator asks no model
        if self.service != "aggregator":
            triton = start_scripted_triton(SCRIPTED_MODELS, names, log_path=logs / "triton.log")
            self.procs.append(triton)
            grpc = f"127.0.0.1:{triton.ports['grpc']}"
        base = scripted_arena_settings(names, triton_grpc=grpc, data_dir=self.tmp)
        # The challenger paces itself on its output's backlog, which this rig purges: water marks
        # that never close the gate between two purges.
        challenger = msgspec.structs.replace(base.challenger, low_water=1000, high_water=2000)
        url = f"nats://127.0.0.1:{self.nats.ports['client']}"
        self.settings = for_run(
            msgspec.structs.replace(base, challenger=challenger),
            nats_url=url,
            samples_dir=self.tmp / "samples",
        )
        config = self.tmp / "arena.yaml"
        write_settings(config, self.settings)
        env: dict[str, str] = {}
        if self.trace_at is not None:
            path = os.pathsep.join(p for p in (str(TRACE_SITE), os.environ.get("PYTHONPATH")) if p)
            env = {"PYTHONPATH": path, "WARRIORCODER_BENCH_TRACEMALLOC": str(self.snapshots)}
        self.proc = start_service(
            self.service, config, log_path=logs / f"{self.service}.log", env=env
        )
        self.procs.append(self.proc)
        wait_http(f"http://127.0.0.1:{self.proc.ports['http']}/healthz", self.proc, 180)

    async def drive(
        self, n: int, *, every: int, log: bool = False, max_s: float | None = None
    ) -> list[tuple[int, int]]:
        """Feed (or budget) ``n`` messages; (done, RSS) every ``every`` done, and at the end
        (``log``: a line per point, with nats-server's RSS and the rate so far). ``max_s``: stop
        at the first point past that many seconds, with fewer than ``n`` done."""
        assert self.settings is not None and self.proc is not None
        subject, source, sink = FLOW[self.service]
        nc = await connect(self.settings.nats, persistent=False)
        js = nc.jetstream()
        points: list[tuple[int, int]] = [(0, rss_bytes(self.proc.proc.pid))]
        sent, started = 0, time.monotonic()
        try:
            if self.service == "challenger":
                async with StatusReader(self.settings.nats.url, self.tmp / "samples") as state:
                    await state.set_budget(n)
            while True:
                if not self.proc.alive():
                    raise RuntimeError(f"{self.service} exited:\n{self.proc.log_tail()}")
                sink_state = (await js.stream_info(sink)).state
                done = min(sink_state.last_seq, n)
                if sink_state.messages >= self.chunk:
                    await js.purge_stream(sink)
                await self._check_dead_letters(js)
                while done >= points[-1][0] + every or (done == n and points[-1][0] < n):
                    mark = done if done == n else points[-1][0] + every
                    points.append((mark, rss_bytes(self.proc.proc.pid)))
                    if self.trace_at is not None and (
                        points[-2][0] < self.trace_at <= mark or mark == n
                    ):
                        await self._snapshot()
                    if log:
                        assert self.nats is not None
                        print(
                            f"{mark} {self.service}={points[-1][1] / 2**20:.1f}MiB "
                            f"nats-server={rss_bytes(self.nats.proc.pid) / 2**20:.1f}MiB "
                            f"{mark / (time.monotonic() - started):.1f}/s",
                            flush=True,
                        )
                if done >= n:
                    return points
                if max_s is not None and time.monotonic() - started > max_s:
                    if points[-1][0] < done:
                        points.append((done, rss_bytes(self.proc.proc.pid)))
                    if self.trace_at is not None:
                        await self._snapshot()  # the end's snapshot
                    return points
                if subject is not None and source is not None and sent < n:
                    waiting = (await js.stream_info(source)).state.messages
                    if waiting < self.chunk:
                        sent = await self._publish(js, subject, sent, min(n, sent + self.chunk))
                await asyncio.sleep(0.05)
        finally:
            await nc.close()

    async def _snapshot(self) -> None:
        """Have the service write its next tracemalloc snapshot, and wait until it is whole."""
        assert self.proc is not None
        k = len(list(self.snapshots.glob("snap-*.pickle")))
        self.proc.proc.send_signal(signal.SIGUSR2)
        async with asyncio.timeout(300):
            # another process writes it: nothing to await but the file
            while not (self.snapshots / f"snap-{k}.pickle").exists():  # noqa: ASYNC110
                await asyncio.sleep(0.2)

    def growth(self, top: int = 15) -> list[str]:
        """The lines that allocated the most memory kept from the first snapshot to the last."""
        snaps = sorted(self.snapshots.glob("snap-*.pickle"), key=lambda p: int(p.stem[5:]))
        if len(snaps) < 2:
            return []
        first, last = (tracemalloc.Snapshot.load(str(p)) for p in (snaps[0], snaps[-1]))
        keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
        diff = last.filter_traces(keep).compare_to(first.filter_traces(keep), "lineno")
        grew = sorted((d for d in diff if d.size_diff > 0), key=lambda d: -d.size_diff)
        return [str(d) for d in grew[:top]]

    async def _publish(self, js: JetStreamContext, subject: str, start: int, end: int) -> int:
        assert self.settings is not None
        build: Any = _BUILD[self.service]
        for i in range(start, end):
            msg = build(i, self.settings)
            await js.publish(subject, encode(msg), headers={"Nats-Msg-Id": msg.id})
        return end

    async def _check_dead_letters(self, js: JetStreamContext) -> None:
        try:
            dead = (await js.stream_info(subjects.STREAM_DLQ)).state.messages
        except Exception:  # the stream is created on first use
            return
        if dead:
            raise RuntimeError(f"{dead} dead letters: see {self.tmp}/logs/{self.service}.log")
