"""End to end with the verifier on: nats-server, the scripted Triton and the five services as
separate OS processes, the sandbox real (bubblewrap).

The arena: alpha (strength 9, correct code), beta (6, correct) and gamma (6, wrong code: passes 2
of the 4 scripted tests). The challenger mines ``MINED`` challenges; the test also sends one
challenge per kind of hostile code (``[[hostile:<kind>]]`` in the instruction turns both
answerers hostile: ``warriorcoder.testing.scripted_code``). What must hold:

- correct answers pass every test, wrong ones fail some, in every battle;
- the judges receive the execution summary: beta and gamma answer with equal quality, so a
  scripted judge can only tell them apart by the "Execution results" in its prompt (without them
  it votes a tie), and every vote between them goes to beta;
- the test-backed winner is chosen: those samples pick beta and say ``test_backed``;
- hostile code is contained: every escape fails (nothing reaches the host's nats-server, no file
  appears on the host, the host's secret is not read), the limits stop the rest, and the verifier
  keeps serving: every battle becomes a sample, nothing is dead-lettered, no service dies.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
import yaml

from tests.helpers import arena_tree
from warriorcoder.arena.instructions import normalise
from warriorcoder.launcher.processes import (
    ManagedProcess,
    start_nats,
    start_scripted_triton,
    start_service,
    wait_http,
)
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Challenge, RunResult, Sample, SamplingParams, battle_id
from warriorcoder.runtime.bus import Bus, connect
from warriorcoder.runtime.settings import parse_settings
from warriorcoder.runtime.shards import read_samples
from warriorcoder.runtime.stores import Budget
from warriorcoder.testing.scripted_code import HOSTILE_KINDS, PASSES, TESTS_TOTAL

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

MINED = 12  # two rounds of the 6 ordered pairs of three competitors
TIMEOUT_S = 10  # the sandbox's wall limit here (20 s by default): room for a loaded CI machine
MAX_OUTPUT = 8192
MODELS = {
    "models": [
        {"name": "alpha", "strength": 9, "skill": "correct"},
        {"name": "beta", "strength": 6, "skill": "correct"},
        {"name": "gamma", "strength": 6, "skill": "wrong"},
    ]
}
MODELS_SKILL = {m["name"]: m["skill"] for m in MODELS["models"]}
SERVICES = ("aggregator", "judge", "verifier", "responder", "challenger")  # downstream first


@dataclass
class Run:
    samples: list[Sample]
    hostile: dict[str, str]  # kind -> battle id
    host: dict[str, Path]  # what the hostile code aims at on the host
    dead_letters: int
    procs: dict[str, ManagedProcess]
    seconds: float


def hostile_challenge(kind: str, arg: str | None) -> Challenge:
    marker = f"[[hostile:{kind}:{arg}]]" if arg else f"[[hostile:{kind}]]"
    text = (
        f"Write a Python function `distinct_{kind}` that returns the sorted distinct items of a "
        f"list. {marker}"
    )
    return Challenge(
        id=battle_id("alpha", "gamma", normalise(text)),
        attacker="alpha",
        defender="gamma",
        language="Python",
        instruction=text,
        sampling=SamplingParams(temperature=1.0, top_p=0.95, max_tokens=1024),
        created_at=time.time(),
    )


async def seed(nats_url: str, challenges: list[Challenge]) -> None:
    """The challenge budget, then the hostile challenges straight onto the work stream."""
    s = parse_settings(arena_tree(nats_url=nats_url))
    nc = await connect(s.nats)
    bus = Bus(nc, s.nats, stage="test")
    await bus.ensure_topology()
    await Budget(await bus.kv(subjects.KV_SCHEDULE)).set(MINED)
    for ch in challenges:
        await bus.publish(subjects.CHALLENGES, ch, msg_id=ch.id)
    await nc.drain()


async def dead_letters(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    n = (await nc.jetstream().stream_info(subjects.STREAM_DLQ)).state.messages
    await nc.close()
    return n


def config(tmp: Path, triton_url: str, nats_url: str) -> Path:
    tree = arena_tree(
        triton_url,
        nats_url,
        verifier={
            "enabled": True,
            "concurrency": 2,
            "sandbox": {
                "timeout_s": TIMEOUT_S,
                "cpu_s": 5,
                "memory_mb": 512,
                "max_output_bytes": MAX_OUTPUT,
            },
        },
        service={"log_format": "json"},
        data_dir=str(tmp / "samples"),
    )
    tree["models"] = {m: tree["models"][m] for m in ("alpha", "beta", "gamma")}
    path = tmp / "arena.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("verified")
    secret = tmp / "host-secret.txt"
    secret.write_text("host secret 7f3a")
    host = {"write": tmp / "escaped.txt", "read": secret}
    (tmp / "models.yaml").write_text(yaml.safe_dump(MODELS))
    procs: dict[str, ManagedProcess] = {}
    start = time.monotonic()
    try:
        procs["nats"] = start_nats(tmp / "jetstream", log_path=tmp / "nats-server.log")
        nats_url = f"nats://127.0.0.1:{procs['nats'].ports['client']}"
        procs["triton"] = start_scripted_triton(
            tmp / "models.yaml", ["alpha", "beta", "gamma"], log_path=tmp / "triton.log"
        )
        triton_url = f"127.0.0.1:{procs['triton'].ports['grpc']}"
        args = {
            "socket": f"127.0.0.1:{procs['nats'].ports['client']}",  # a host service, listening
            "write": str(host["write"]),
            "read": str(secret),
        }
        hostile = {k: hostile_challenge(k, args.get(k)) for k in HOSTILE_KINDS}
        asyncio.run(seed(nats_url, list(hostile.values())))
        path = config(tmp, triton_url, nats_url)
        for name in SERVICES:
            procs[name] = start_service(name, path, log_path=tmp / f"{name}.log")
        for name in SERVICES:
            wait_http(f"http://127.0.0.1:{procs[name].ports['http']}/readyz", procs[name], 120)
        n = MINED + len(hostile)
        deadline = time.monotonic() + 300
        while (count := len(read_samples(tmp / "samples"))) < n:
            dead = [name for name, p in procs.items() if not p.alive()]
            assert not dead, {name: procs[name].log_tail() for name in dead}
            assert time.monotonic() < deadline, f"{count}/{n} samples"
            time.sleep(0.5)
        seconds = time.monotonic() - start
        print(f"\nverified e2e: {n} battles -> {n} samples in {seconds:.1f}s (incl. start-up)")
        yield Run(
            samples=read_samples(tmp / "samples"),
            hostile={k: ch.id for k, ch in hostile.items()},
            host=host,
            dead_letters=asyncio.run(dead_letters(nats_url)),
            procs=procs,
            seconds=seconds,
        )
    finally:
        for name in (*SERVICES, "triton", "nats"):
            if name in procs:
                procs[name].stop()


def mined(run: Run) -> list[Sample]:
    hostile = set(run.hostile.values())
    return [s for s in run.samples if s.id not in hostile]


def runs(s: Sample) -> dict[str, RunResult]:
    """Each fighter's run, by model."""
    assert s.execution is not None and s.tests is not None and s.tests.usable, s.id
    return {s.attacker: s.execution.attacker, s.defender: s.execution.defender}


def test_every_battle_is_verified_and_becomes_a_sample(run: Run):
    assert len(run.samples) == MINED + len(HOSTILE_KINDS)
    assert len({s.id for s in run.samples}) == len(run.samples)
    assert run.dead_letters == 0
    assert all(p.alive() for p in run.procs.values())
    for s in run.samples:
        assert s.tests is not None and s.tests.writer not in (s.attacker, s.defender)
        assert s.execution is not None and s.execution.sandbox.startswith("bubblewrap")


def test_correct_answers_pass_and_wrong_ones_fail(run: Run):
    for s in mined(run):
        for model, r in runs(s).items():
            skill = MODELS_SKILL[model]
            assert (r.status, r.total) == ("ran", TESTS_TOTAL), (s.id, model, r)
            assert r.passed == PASSES[skill], (s.id, model, r)
            assert r.failed == TESTS_TOTAL - PASSES[skill], (s.id, model, r)


def test_judges_see_the_results_and_the_test_backed_winner_is_chosen(run: Run):
    twins = [s for s in mined(run) if {s.attacker, s.defender} == {"beta", "gamma"}]
    assert twins  # the round-robin gives them a few battles (a rejected challenge skips one)
    for s in twins:
        # Equal quality: only the execution summary in the prompt lets the judge prefer beta
        # (in both orders, so the vote is not the tie of two disagreeing orders).
        role = "attacker" if s.attacker == "beta" else "defender"
        assert [v.winner for v in s.votes] == [role], s.votes
        assert s.winner == "beta" and s.test_backed, s.id
        assert s.decided_by == "votes"  # the judges decided; the tiebreak was not needed
    for s in mined(run):
        if "alpha" in (s.attacker, s.defender):  # the stronger model wins by quality
            assert s.winner == "alpha", s.id
            other = s.loser
            assert s.test_backed == (PASSES[MODELS_SKILL[other]] < TESTS_TOTAL), s.id


def test_hostile_code_is_contained_and_the_verifier_keeps_serving(run: Run):
    by_id = {s.id: s for s in run.samples}
    assert not run.host["write"].exists()
    for kind, sid in run.hostile.items():
        s = by_id[sid]
        for model, r in runs(s).items():
            assert r.passed == 0, (kind, model, r)
            output = r.stdout + r.stderr
            assert "host secret 7f3a" not in output, (kind, model)
            if kind in ("socket", "write", "read"):
                assert r.status == "ran" and f"hostile {kind}: blocked" in output, (kind, r)
            elif kind == "memory":  # stopped by the memory limit, or by the clock first
                assert r.status in ("ran", "timeout"), r
                assert r.status == "timeout" or "hostile memory: stopped at" in output, r
            elif kind == "output":
                # pytest captures what the module prints into a file in the scratch dir: the
                # scratch size stops it there and the clock ends the run; what reaches the
                # sandbox's pipes is cut at the output limit
                assert r.status == "timeout" or r.output_truncated, r
                assert len(r.stdout.encode()) <= MAX_OUTPUT >= len(r.stderr.encode()), r
            else:  # fork, sleep, spin: only the limits stop them
                assert r.status == "timeout", (kind, r)
                assert r.wall_s < TIMEOUT_S + 5, (kind, r)
    assert run.procs["verifier"].alive()
