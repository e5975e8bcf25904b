"""The supervisor's decisions: restart back-off, crash loops, the challenge budget, settling."""

import pytest

from warriorcoder.launcher.policy import RestartPolicy, budget_for, settled, top_up


def test_first_restart_is_immediate_then_back_off_doubles_up_to_the_cap():
    p = RestartPolicy(max_restarts=10, window_s=60, base_s=0.5, cap_s=3)
    delays = [p.next_delay(now=float(t)) for t in range(6)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_past_the_limit_it_is_a_crash_loop_restarted_ever_later_never_given_up():
    p = RestartPolicy(max_restarts=3, window_s=60, base_s=0.5, cap_s=4, loop_cap_s=30)
    delays = [p.next_delay(now=float(t)) for t in range(3)]
    assert delays == [0.0, 0.5, 1.0] and not p.crash_looping(now=3.0)
    # The 4th in a minute: a crash loop; the back-off jumps to the cap, then doubles to 30 s.
    assert [p.next_delay(now=t) for t in (3.0, 10.0, 20.0, 50.0, 90.0)] == [4, 8, 16, 30, 30]
    assert p.crash_looping(now=91.0) and p.restarts == 8


def test_a_crash_loop_ends_once_the_child_stays_up_for_a_window():
    p = RestartPolicy(max_restarts=2, window_s=10, base_s=0.5, cap_s=1, loop_cap_s=5)
    for t in (0.0, 1.0, 2.0):
        delay = p.next_delay(now=t)
    assert delay == 1 and p.crash_looping(now=2.5)  # restarted at 3.0
    assert p.crash_looping(now=12.9) and not p.crash_looping(now=13.0)
    # Long after: a crash is a first crash again, restarted at once.
    assert p.next_delay(now=100.0) == 0.0 and not p.crash_looping(now=100.0)


def test_a_slow_crash_loop_stays_a_loop_though_its_back_offs_spread_the_crashes():
    p = RestartPolicy(max_restarts=2, window_s=10, base_s=0.5, cap_s=1, loop_cap_s=8)
    t = 0.0
    for _ in range(8):  # crashes 1 s after every start: never up for a whole window
        t += p.next_delay(now=t) + 1.0
    assert p.crash_looping(now=t) and p.next_delay(now=t) == 8


def test_crashes_older_than_the_window_are_forgotten():
    p = RestartPolicy(max_restarts=2, window_s=10)
    p.next_delay(now=0.0)
    p.next_delay(now=5.0)
    # The first crash left the window: one restart counts, so this is the second, backed off.
    assert p.next_delay(now=10.5) == p.base_s
    assert not p.crash_looping(now=10.5)
    p.next_delay(now=11.0)
    assert p.crash_looping(now=11.0)


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


def test_done_only_when_nothing_is_in_flight_and_the_stream_holds_what_the_disk_holds():
    assert settled(disk=300, streamed=300, pending=0)
    assert not settled(disk=300, streamed=299, pending=1)  # an unacked judgement: redelivered
    assert not settled(disk=300, streamed=299, pending=0)
    assert not settled(disk=300, streamed=300, pending=1)
