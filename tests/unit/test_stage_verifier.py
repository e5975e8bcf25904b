"""The verifier's handler over a fake sandbox: both answers run at once against the battle's tests,
results attached and published to the judges; no usable tests or no code handled without running
anything; a sandbox failing on both answers is retried; invariants checked first; metrics with
hand-checked numbers; start-up refuses a missing sandbox tool with the key to change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from msgspec.structs import replace

from tests.helpers import arena_settings, battle
from warriorcoder.errors import PoisonError, RetryableError
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Battle, ChallengeTests, Execution, RunResult
from warriorcoder.runtime import metrics
from warriorcoder.runtime.stage import Deps
from warriorcoder.stages import load
from warriorcoder.stages.verifier import service
from warriorcoder.stages.verifier.service import STAGE, counted_tests, make_handler, runnable
from warriorcoder.testing.fakes import FakeBuckets, FakeInference, FakePublisher

SANDBOX = "fake-sandbox 1.0"
TEST_CODE = (
    "from solution import *\n\n"
    "def test_small():\n    assert add(1, 2) == 3\n\n"
    "def test_zero():\n    assert add(0, 0) == 0\n\n"
    "def test_negative():\n    assert add(-1, -2) == -3\n"
)
TESTS = ChallengeTests(
    writer="gamma",
    language="Python",
    code=TEST_CODE,
    tests=["test_small", "test_zero", "test_negative"],
    usable=True,
    asked=1,
)
RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"


def answer(code: str, quality: int = 5) -> str:
    return f"Here it is.\n\n```python\n{code}```\n\nquality={quality}"


def verified_battle(attacker_code: str | None, defender_code: str | None, **kw) -> Battle:
    texts = [answer(c) if c is not None else "I cannot write code.\nquality=1"
             for c in (attacker_code, defender_code)]  # fmt: skip
    return replace(battle(*texts, attacker="alpha", defender="beta", **kw), tests=TESTS)


class FakeSandbox:
    """Stand-in for ``warriorcoder.sandbox.Sandbox`` (services/warriorcoder/sandbox/, this
    project): ``run_pytest(solution, tests)`` returns the ``RunResult`` of one run and never
    raises for the answer's faults. Here the result is ``results(solution, tests)``; calls are
    recorded, and ``barrier`` calls must be in flight at once before any returns (the two answers
    of a battle are run concurrently)."""

    def __init__(
        self, results: Callable[[str, str], RunResult] | None = None, *, barrier: int = 0
    ) -> None:
        self.results = results or _pytest_like
        self.calls: list[tuple[str, str]] = []
        self.description = SANDBOX
        self.closed = False
        self._barrier = barrier
        self._arrived = asyncio.Event()

    async def run_pytest(self, solution: str, tests: str) -> RunResult:
        self.calls.append((solution, tests))
        if self._barrier:
            if len(self.calls) >= self._barrier:
                self._arrived.set()
            await asyncio.wait_for(self._arrived.wait(), timeout=1.0)
        return self.results(solution, tests)

    async def close(self) -> None:
        self.closed = True


def _pytest_like(solution: str, tests: str) -> RunResult:
    """What pytest reports for TEST_CODE: RIGHT passes all three tests, WRONG (a - b) only
    test_zero (0 - 0 == 0)."""
    if solution.strip() == RIGHT.strip():
        return RunResult(status="ran", passed=3, total=3, exit_code=0, wall_s=0.4, cpu_s=0.3)
    return RunResult(status="ran", passed=1, failed=2, total=3, exit_code=1, wall_s=0.5)


async def verified(
    b: Battle, sandbox: FakeSandbox | None = None, **settings
) -> tuple[Battle, FakeSandbox]:
    sandbox = sandbox or FakeSandbox()
    publisher = FakePublisher()
    await make_handler(arena_settings(**settings), sandbox, publisher, description=SANDBOX)(b)
    [out] = publisher.messages(subjects.BATTLES)
    assert publisher.published[0].msg_id == b.id
    return out, sandbox


def value(counter, **labels) -> float:
    return counter.labels(**labels)._value.get()


async def test_both_answers_run_at_once_and_their_results_go_to_the_judges():
    b = verified_battle(RIGHT, WRONG)
    out, sandbox = await verified(b, FakeSandbox(barrier=2))
    assert sorted(sandbox.calls) == sorted([(RIGHT, TEST_CODE), (WRONG, TEST_CODE)])
    assert replace(out, execution=None) == b  # nothing else changed
    ex = out.execution
    assert isinstance(ex, Execution) and ex.sandbox == SANDBOX and ex.verified_at > 0
    assert (ex.attacker.status, ex.attacker.passed, ex.attacker.total) == ("ran", 3, 3)
    assert (ex.defender.passed, ex.defender.failed, ex.defender.exit_code) == (1, 2, 1)


async def test_an_answer_without_code_is_no_code_and_never_reaches_the_sandbox():
    out, sandbox = await verified(verified_battle(None, RIGHT))
    assert sandbox.calls == [(RIGHT, TEST_CODE)]
    assert out.execution is not None
    assert out.execution.attacker == RunResult(status="no_code")
    assert out.execution.defender.passed == 3


@pytest.mark.parametrize(
    "tests",
    [
        None,
        replace(TESTS, usable=False, code="", tests=[]),
        replace(TESTS, code="   \n"),
        replace(TESTS, language="Rust"),  # the sandbox runs Python tests only
    ],
)
async def test_a_battle_without_runnable_tests_goes_on_unverified(tests):
    forged = Execution(
        attacker=RunResult(status="ran", passed=9, total=9),
        defender=RunResult(status="ran", total=9, failed=9),
        sandbox="trust me",
        verified_at=1.0,
    )
    b = replace(verified_battle(RIGHT, WRONG), tests=tests, execution=forged)
    before = value(metrics.VERIFIER_BATTLES, result="unverified")
    out, sandbox = await verified(b)
    assert sandbox.calls == []
    assert out == replace(b, execution=None)  # unchanged, the forged result dropped
    assert value(metrics.VERIFIER_BATTLES, result="unverified") - before == 1


async def test_a_sandbox_failing_on_both_answers_is_retried_and_nothing_published():
    broken = FakeSandbox(lambda s, t: RunResult(status="sandbox_error", stderr="bwrap: no ns"))
    publisher = FakePublisher()
    handle = make_handler(arena_settings(), broken, publisher, description=SANDBOX)
    with pytest.raises(RetryableError, match="bwrap: no ns") as exc:
        await handle(verified_battle(RIGHT, WRONG))
    assert exc.value.retryable
    assert len(broken.calls) == 2 and publisher.published == []


async def test_a_sandbox_error_on_one_answer_is_recorded_and_the_battle_goes_on():
    def one_broken(solution: str, tests: str) -> RunResult:
        if solution.strip() == WRONG.strip():
            return RunResult(status="sandbox_error", stderr="scratch full")
        return _pytest_like(solution, tests)

    out, _ = await verified(verified_battle(RIGHT, WRONG), FakeSandbox(one_broken))
    assert out.execution is not None
    assert out.execution.attacker.status == "ran"
    assert out.execution.defender.status == "sandbox_error"


async def test_a_battle_breaking_the_invariants_is_poison_before_anything_runs():
    b = verified_battle(RIGHT, WRONG)
    sandbox = FakeSandbox()
    handle = make_handler(arena_settings(), sandbox, FakePublisher(), description=SANDBOX)
    forged = replace(b, defender_answer=replace(b.defender_answer, model="gamma"))
    with pytest.raises(PoisonError) as exc:
        await handle(forged)
    assert exc.value.reason == "answer_mismatch"
    assert sandbox.calls == []


async def test_metrics_count_runs_tests_passed_timeouts_and_sandbox_time():
    """alpha passes 3 of 3; beta's code times out (3 tests counted, none passed); then beta
    gives no code (3 more counted) and alpha's wrong code passes 1 of 3."""

    def results(solution: str, tests: str) -> RunResult:
        if "while True" in solution:
            return RunResult(status="timeout", exit_code=-9, wall_s=20.0)
        return _pytest_like(solution, tests)

    loop = "def add(a, b):\n    while True:\n        pass\n"
    before = {
        "alpha_tests": value(metrics.VERIFIER_TESTS, model="alpha"),
        "alpha_passed": value(metrics.VERIFIER_TESTS_PASSED, model="alpha"),
        "beta_tests": value(metrics.VERIFIER_TESTS, model="beta"),
        "beta_passed": value(metrics.VERIFIER_TESTS_PASSED, model="beta"),
        "beta_timeouts": value(metrics.VERIFIER_TIMEOUTS, model="beta"),
        "alpha_runs_passed": value(metrics.VERIFIER_RUNS, model="alpha", outcome="passed"),
        "alpha_runs_failed": value(metrics.VERIFIER_RUNS, model="alpha", outcome="failed"),
        "beta_no_code": value(metrics.VERIFIER_RUNS, model="beta", outcome="no_code"),
        "verified": value(metrics.VERIFIER_BATTLES, result="verified"),
    }
    hist_count = _histogram_count()
    await verified(verified_battle(RIGHT, loop), FakeSandbox(results))
    await verified(verified_battle(WRONG, None), FakeSandbox(results))
    after = {
        "alpha_tests": value(metrics.VERIFIER_TESTS, model="alpha"),
        "alpha_passed": value(metrics.VERIFIER_TESTS_PASSED, model="alpha"),
        "beta_tests": value(metrics.VERIFIER_TESTS, model="beta"),
        "beta_passed": value(metrics.VERIFIER_TESTS_PASSED, model="beta"),
        "beta_timeouts": value(metrics.VERIFIER_TIMEOUTS, model="beta"),
        "alpha_runs_passed": value(metrics.VERIFIER_RUNS, model="alpha", outcome="passed"),
        "alpha_runs_failed": value(metrics.VERIFIER_RUNS, model="alpha", outcome="failed"),
        "beta_no_code": value(metrics.VERIFIER_RUNS, model="beta", outcome="no_code"),
        "verified": value(metrics.VERIFIER_BATTLES, result="verified"),
    }
    delta = {k: after[k] - before[k] for k in before}
    assert delta == {
        "alpha_tests": 6,  # 3 + 3
        "alpha_passed": 4,  # 3 + 1: alpha's pass rate 4/6
        "beta_tests": 6,  # the timeout's 3 + no code's 3
        "beta_passed": 0,
        "beta_timeouts": 1,
        "alpha_runs_passed": 1,
        "alpha_runs_failed": 1,
        "beta_no_code": 1,
        "verified": 2,
    }
    assert _histogram_count() - hist_count == 3  # three runs used the sandbox; no_code did not


def _histogram_count() -> float:
    [family] = metrics.VERIFIER_SANDBOX_SECONDS.collect()
    return next(s.value for s in family.samples if s.name.endswith("_count"))


def test_runnable_tests_are_usable_python_pytest_with_code():
    assert runnable(TESTS)
    assert runnable(replace(TESTS, language="python"))
    assert not runnable(None)
    assert not runnable(replace(TESTS, usable=False))
    assert not runnable(replace(TESTS, code=""))
    assert not runnable(replace(TESTS, language="C++"))


def test_the_tests_a_run_counts_toward_the_pass_rate():
    assert counted_tests(RunResult(status="ran", passed=4, failed=1, total=5), TESTS) == 5
    # collection failed (total 0): every named test counts as not passed
    assert counted_tests(RunResult(status="ran", errored=1, total=0), TESTS) == 3
    assert counted_tests(RunResult(status="no_code"), TESTS) == 3
    assert counted_tests(RunResult(status="timeout"), TESTS) == 3
    assert counted_tests(RunResult(status="sandbox_error"), TESTS) == 0


def test_the_verifier_is_declared_on_the_answered_stream_and_calls_no_model():
    assert load("verifier") is STAGE
    c = STAGE.consumes
    assert c is not None
    assert (c.stream, c.durable, c.type) == (subjects.STREAM_ANSWERED, "verifier", Battle)
    assert STAGE.models(arena_settings(verifier={"enabled": True})) == []


def _deps(publisher: FakePublisher) -> Deps:
    s = arena_settings(verifier={"enabled": True, "concurrency": 3})
    return Deps(
        settings=s,
        roster=None,  # type: ignore[arg-type]  # the verifier uses no model
        inference=FakeInference([]),
        publisher=publisher,
        buckets=FakeBuckets(),
        bus=None,  # type: ignore[arg-type]
    )


async def test_setup_opens_and_closes_the_sandbox(monkeypatch):
    made: list[tuple[FakeSandbox, object, int]] = []

    def sandbox(cfg, *, concurrency):
        box = FakeSandbox()
        box.description = "bubblewrap 9.9"  # Sandbox probes the tool when it is made
        made.append((box, cfg, concurrency))
        return box

    monkeypatch.setattr(service, "Sandbox", sandbox)
    publisher = FakePublisher()
    deps = _deps(publisher)
    async with service.setup(deps) as handle:
        [(box, cfg, concurrency)] = made
        assert cfg == deps.settings.verifier.sandbox and concurrency == 3
        await handle(verified_battle(RIGHT, WRONG))
        assert not box.closed
    assert box.closed
    [out] = publisher.messages(subjects.BATTLES)
    assert out.execution.sandbox == "bubblewrap 9.9"


async def test_setup_without_the_sandbox_tool_fails_naming_the_key_and_the_fix(monkeypatch):
    def missing(cfg, *, concurrency):
        raise service.SandboxUnavailable("bwrap not found on PATH")

    monkeypatch.setattr(service, "Sandbox", missing)
    with pytest.raises(service.SandboxUnavailable) as exc:
        async with service.setup(_deps(FakePublisher())):
            pytest.fail("started without a sandbox")
    message = str(exc.value)
    assert "verifier.sandbox.tool" in message and "bwrap not found on PATH" in message
    assert "apt-get install bubblewrap" in message
