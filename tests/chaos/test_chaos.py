"""The chaos suite, CI-sized: real arenas under faults, each checked afterwards on disk, in the
streams and in KV (``tests/chaos/checks.py``). The long run is ``benchmarks/chaos/run.py``.

Each scenario asserts the issue's invariants: exactly N samples on disk and in the samples
stream, no duplicate, the ratings equal to a replay of the samples' votes, every dead letter
explained (and none for the arena's own work), plus the scenario's own target (no service crash
in a cluster election, the first sample within 10 s of Triton being back, ``up`` refusing a
second run on its directory, its children dying with it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import scenarios
from tests.chaos.scenarios import Figures

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(480)]

TIMEOUT = 300  # per scenario, well above a passing run (30-70 s on 2 cores)


def passed(figures: Figures) -> None:
    print("\n" + figures.report())
    assert not figures.problems, figures.report()
    assert figures.lost == 0


def test_kill_storm_of_the_services(tmp_path: Path, triton_url: str):
    passed(scenarios.kill_storm(tmp_path, triton_grpc=triton_url, battles=150, seed=1, kills=12,
                                max_stall_s=20, timeout=TIMEOUT))  # fmt: skip


def test_nats_server_killed_and_restarted(tmp_path: Path, triton_url: str):
    passed(scenarios.nats_restart(tmp_path, triton_grpc=triton_url, battles=90, restarts=2,
                                  timeout=TIMEOUT))  # fmt: skip


def test_a_node_of_a_3_node_cluster_killed_and_restarted(tmp_path: Path, triton_url: str):
    passed(scenarios.cluster_node(tmp_path, triton_grpc=triton_url, battles=90, kills=2,
                                  down_s=5, timeout=TIMEOUT))  # fmt: skip


def test_triton_down_pauses_the_arena(tmp_path: Path):
    passed(scenarios.triton_outage(tmp_path, battles=60, down_s=20, timeout=TIMEOUT))


def test_poison_on_every_subject(tmp_path: Path, triton_url: str):
    passed(scenarios.poison(tmp_path, triton_grpc=triton_url, battles=90, messages=300, seed=7,
                            timeout=TIMEOUT))  # fmt: skip


def test_sigterm_then_resume(tmp_path: Path):
    passed(scenarios.sigterm_resume(tmp_path, battles=150, timeout=TIMEOUT))


def test_kill_9_of_up_then_rerun(tmp_path: Path):
    passed(scenarios.kill_up(tmp_path, battles=150, timeout=TIMEOUT))
