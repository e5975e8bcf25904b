"""The supervisor's decisions: restart back-off, the crash-loop limit, the challenge budget."""

import pytest

from warriorcoder.launcher.policy import CrashLoop, RestartPolicy, budget_for, top_up


def test_first_restart_is_immediate_then_back_off_doubles_up_to_the_cap():
    p = RestartPolicy(max_restarts=10, window_s=60, base_s=0.5, cap_s=3)
    delays = [p.next_delay(now=float(t)) for t in range(6)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_too_many_restarts_within_the_window_is_a_crash_loop():
    p = RestartPolicy(max_restarts=3, window_s=60)
    for t in (0.0, 1.0, 2.0):
        p.next_delay(now=t)
    with pytest.raises(CrashLoop, match="3 restarts in 60s"):
        p.next_delay(now=3.0)


def test_crashes_older_than_the_window_are_forgotten():
    p = RestartPolicy(max_restarts=2, window_s=10)
    p.next_delay(now=0.0)
    p.next_delay(now=5.0)
    # The first crash left the window: one restart counts, so this is the second, backed off.
    assert p.next_delay(now=10.5) == p.base_s
    with pytest.raises(CrashLoop):
        p.next_delay(now=11.0)


@pytest.mark.parametrize(
    ("target", "samples", "pending", "budget"),
    [(40, 0, 0, 40), (40, 12, 3, 25), (40, 38, 5, 0), (40, 41, 0, 0)],
)
def test_budget_is_what_neither_disk_nor_pipeline_will_deliver(target, samples, pending, budget):
    assert budget_for(target, samples, pending) == budget


def test_top_up_only_when_the_pipeline_is_idle_and_short():
    assert top_up(target=40, samples=38, budget=0, pending=0) == 2
    assert top_up(target=40, samples=38, budget=0, pending=1) == 0  # a battle still on its way
    assert top_up(target=40, samples=38, budget=2, pending=0) == 0  # challenges still to mine
    assert top_up(target=40, samples=38, budget=None, pending=0) == 0  # no limit: nothing to add
    assert top_up(target=40, samples=40, budget=0, pending=0) == 0
