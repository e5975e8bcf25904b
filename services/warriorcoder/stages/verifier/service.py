"""Verifier service: runs both answers' code against the challenge's tests in a sandbox.

Usage::

    warriorcoder serve verifier --config arena.yaml

With ``verifier.enabled`` the responder publishes each battle, with the tests an uninvolved model
wrote for it, to ``subjects.ANSWERED``; the verifier takes it from there and publishes it to
``subjects.BATTLES`` for the judges (``Nats-Msg-Id`` = battle id), with ``Battle.execution`` set
when the battle has usable tests: each answer's code block run against them in a fresh sandbox
(``warriorcoder.sandbox``), both answers at once. An answer without a code block is recorded as
``no_code``; a battle without usable tests goes on unverified (``execution`` None). The verifier
calls no model: it is CPU-bound and scales on its own replicas, ``verifier.concurrency`` sandboxes
at once per replica.

Failures: a battle that breaks the arena's invariants is poison (dead-lettered before anything
runs). A sandbox that fails on BOTH answers (``sandbox_error``: the sandbox broke, not the
answer) raises ``RetryableError``: the battle is nak'ed and redelivered until ``nats.max_deliver``,
then dead-lettered (``retries_exhausted``), so a broken sandbox holds battles back instead of
passing them on unverified. A sandbox error on ONE answer while the other ran shows the sandbox
works: the battle goes on with that result recorded (it never counts against the answer: the
decision ignores ``sandbox_error``), since retrying a failure tied to one answer would only
dead-letter a battle the judges can still decide. Start-up fails with the reason when the
configured sandbox tool (``verifier.sandbox.tool``) is not usable on this machine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from msgspec.structs import replace

from warriorcoder.arena.code_blocks import solution_code
from warriorcoder.arena.invariants import check_battle
from warriorcoder.arena.prompts import PROMPT_SET_VERSION
from warriorcoder.errors import RetryableError
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Battle, ChallengeTests, Execution, RunResult
from warriorcoder.runtime import metrics
from warriorcoder.runtime.ports import Publisher
from warriorcoder.runtime.provenance import Stamper
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.settings import ArenaSettings
from warriorcoder.runtime.stage import Consumes, Deps, Handler, Stage, no_models
from warriorcoder.runtime.tasks import gather
from warriorcoder.sandbox import Sandbox, SandboxUnavailable

__all__ = ["STAGE", "Runner", "counted_tests", "make_handler", "runnable"]

log = logging.getLogger(__name__)


class Runner(Protocol):
    """What the handler needs of a sandbox (``warriorcoder.sandbox.Sandbox``): run one solution
    against one pytest module; the answer's faults come back as a ``RunResult``, never raised."""

    async def run_pytest(self, solution: str, tests: str) -> RunResult: ...


def runnable(tests: ChallengeTests | None) -> bool:
    """Whether the sandbox can run ``tests``: usable pytest tests in Python, the one language
    the sandbox's test runner supports (the interface is open to others)."""
    return (
        tests is not None
        and tests.usable
        and bool(tests.code.strip())
        and tests.framework == "pytest"
        and tests.language.lower() == "python"
    )


def counted_tests(run: RunResult, tests: ChallengeTests) -> int:
    """The tests a run counts toward its model's pass rate: pytest's count when the run
    collected any, else every test the module names (an answer without code, one killed at a
    limit or one whose module failed to import passed none of them). A sandbox error counts
    none: it is not the answer's fault."""
    if run.status == "sandbox_error":
        return 0
    if run.status == "ran" and run.total > 0:
        return run.total
    return len(tests.tests)


def make_handler(
    settings: ArenaSettings, sandbox: Runner, publisher: Publisher, *, description: str
) -> Handler[Battle]:
    """Verify each battle in ``sandbox`` (``description``, e.g. "bubblewrap 0.8.0", is recorded
    in every ``Execution``) and publish it to the judges."""
    # provenance: the verifier's stamp, in each Execution it made
    stamper = Stamper("verifier", settings, Roster([]), prompt_set=PROMPT_SET_VERSION)

    async def run(b: Battle, role: str, tests: ChallengeTests) -> RunResult:
        answer = b.attacker_answer if role == "attacker" else b.defender_answer
        code = solution_code(answer.text, b.challenge.language)
        result = (
            RunResult(status="no_code")
            if code is None
            else await sandbox.run_pytest(code, tests.code)
        )
        _record(answer.model, result, tests)
        return result

    async def handle(b: Battle) -> None:
        check_battle(b, settings)
        tests = b.tests
        if tests is None or not runnable(tests):
            # No usable tests: the battle goes on unverified (a forged result is dropped).
            await publisher.publish(subjects.BATTLES, replace(b, execution=None), msg_id=b.id)
            metrics.VERIFIER_BATTLES.labels(result="unverified").inc()
            log.info("battle passed on unverified: no usable tests", extra={"id": b.id})
            return
        attacker, defender = await gather(run(b, "attacker", tests), run(b, "defender", tests))
        if attacker.status == defender.status == "sandbox_error":
            raise RetryableError(f"the sandbox failed on both answers: {attacker.stderr[-200:]!r}")
        execution = Execution(
            attacker=attacker,
            defender=defender,
            sandbox=description,
            verified_at=time.time(),
            stamp=stamper.stamp([]),
        )
        await publisher.publish(subjects.BATTLES, replace(b, execution=execution), msg_id=b.id)
        metrics.VERIFIER_BATTLES.labels(result="verified").inc()
        log.info(
            "battle verified",
            extra={
                "id": b.id,
                "attacker": _summary(attacker),
                "defender": _summary(defender),
            },
        )

    return handle


def _outcome(run: RunResult) -> str:
    if run.status == "ran":
        return "passed" if run.total > 0 and run.passed == run.total else "failed"
    return run.status


def _record(model: str, run: RunResult, tests: ChallengeTests) -> None:
    metrics.VERIFIER_RUNS.labels(model=model, outcome=_outcome(run)).inc()
    counted = counted_tests(run, tests)
    if counted:
        metrics.VERIFIER_TESTS.labels(model=model).inc(counted)
        metrics.VERIFIER_TESTS_PASSED.labels(model=model).inc(
            run.passed if run.status == "ran" else 0
        )
    if run.status == "timeout":
        metrics.VERIFIER_TIMEOUTS.labels(model=model).inc()
    if run.status in ("ran", "timeout"):  # the ones that used the sandbox's time
        metrics.VERIFIER_SANDBOX_SECONDS.observe(run.wall_s)


def _summary(run: RunResult) -> str:
    return f"{run.status} {run.passed}/{run.total}"


@asynccontextmanager
async def setup(deps: Deps) -> AsyncIterator[Handler[Battle]]:
    cfg = deps.settings.verifier
    if not cfg.enabled:
        log.warning(
            "verifier.enabled is false: the responders publish battles straight to the judges "
            "and this verifier gets none"
        )
    try:
        # Opening the sandbox probes it (one trivial sandboxed run): off the event loop.
        sandbox = await asyncio.to_thread(Sandbox, cfg.sandbox, concurrency=cfg.concurrency)
    except SandboxUnavailable as exc:
        raise SandboxUnavailable(
            f"`$.verifier.sandbox.tool` is {cfg.sandbox.tool!r}, which cannot run here: {exc}. "
            "Install it (Debian/Ubuntu: `apt-get install bubblewrap`; it needs unprivileged user "
            "namespaces, or root) or set `verifier.enabled: false` and stop the verifier"
        ) from exc
    description = sandbox.description
    log.info("sandbox ready", extra={"sandbox": description, "concurrency": cfg.concurrency})
    try:
        yield make_handler(deps.settings, sandbox, deps.publisher, description=description)
    finally:
        await sandbox.close()


STAGE = Stage(
    name="verifier",
    consumes=Consumes.declared("verifier", Battle),
    models=no_models,  # the verifier calls no model
    setup=setup,
)
