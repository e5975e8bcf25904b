"""A service as its own OS process: config errors, health endpoints, metrics, SIGTERM drain."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers import arena_tree
from warriorcoder.launcher.processes import start_service, wait_http

pytestmark = pytest.mark.integration


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_bad_config_stops_start_up_naming_the_key(tmp_path: Path):
    tree = arena_tree()
    tree["judge"] = {"position_mode": "sometimes"}
    path = tmp_path / "arena.yaml"
    path.write_text(yaml.safe_dump(tree))
    result = subprocess.run(
        [sys.executable, "-m", "warriorcoder.cli", "serve", "judge", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "$.judge.position_mode" in result.stderr


def test_check_config_command(tmp_path: Path):
    path = tmp_path / "arena.yaml"
    path.write_text(yaml.safe_dump(arena_tree()))
    ok = subprocess.run(
        [sys.executable, "-m", "warriorcoder.cli", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "3 competitors" in ok.stdout


def test_service_health_readiness_metrics_and_drain(tmp_path, nats_url, triton_url):
    path = tmp_path / "arena.yaml"
    path.write_text(yaml.safe_dump(arena_tree(triton_url, nats_url)))
    proc = start_service("judge", path, log_path=tmp_path / "judge.log")
    base = f"http://127.0.0.1:{proc.ports['http']}"
    try:
        wait_http(f"{base}/readyz", proc, 60)
        status, body = get(f"{base}/healthz")
        assert status == 200 and json.loads(body)["service"] == "judge"
        status, body = get(f"{base}/readyz")
        assert status == 200 and json.loads(body) == {
            "ready": True,
            "service": "judge",
            "problems": [],
        }
        status, body = get(f"{base}/metrics")
        text = body.decode()
        assert status == 200
        assert 'warriorcoder_service_info{service="judge"' in text
        assert "warriorcoder_inference_seconds" in text
    finally:
        start = time.monotonic()
        code = proc.stop(timeout=30)
    assert code == 0, proc.log_tail()
    assert time.monotonic() - start < 15
    log = (tmp_path / "judge.log").read_text()
    assert '"msg":"service stopping: draining"' in log


def test_readiness_names_a_model_triton_does_not_serve(tmp_path, nats_url, triton_url):
    """A model that is down degrades the service (/statusz, a gauge) but keeps it Ready: its
    calls wait, and unready pods would block node drains behind the disruption budgets."""
    tree = arena_tree(triton_url, nats_url)
    tree["models"]["gamma"]["triton_model"] = "not_loaded"
    path = tmp_path / "arena.yaml"
    path.write_text(yaml.safe_dump(tree))
    proc = start_service("responder", path, log_path=tmp_path / "responder.log")
    base = f"http://127.0.0.1:{proc.ports['http']}"
    try:
        wait_http(f"{base}/healthz", proc, 60)
        status, body = get(f"{base}/readyz")
        assert status == 200, body
        status, body = get(f"{base}/statusz")
        assert status == 200
        assert json.loads(body)["status"] == "degraded"
        assert json.loads(body)["degraded"] == ["triton: model 'gamma' not ready"]
        text = get(f"{base}/metrics")[1].decode()
        assert 'warriorcoder_model_ready{model="gamma",service="responder"} 0.0' in text
        assert 'warriorcoder_model_ready{model="alpha",service="responder"} 1.0' in text
    finally:
        proc.stop()


def test_sigterm_with_nats_gone_still_exits_within_the_grace(tmp_path, nats_server, triton_url):
    """Shutdown is bounded even when NATS died first and every call is still retrying."""
    nats_url = f"nats://127.0.0.1:{nats_server.ports['client']}"
    tree = arena_tree(triton_url, nats_url)
    tree["service"] = {"drain_timeout_s": 3, "log_format": "json"}
    path = tmp_path / "arena.yaml"
    path.write_text(yaml.safe_dump(tree))
    proc = start_service("challenger", path, log_path=tmp_path / "challenger.log")
    wait_http(f"http://127.0.0.1:{proc.ports['http']}/healthz", proc, 60)
    time.sleep(2)  # mining: KV, publishes and backlog reads in flight
    nats_server.stop()
    time.sleep(1)
    start = time.monotonic()
    code = proc.stop(timeout=60)
    elapsed = time.monotonic() - start
    # drain_timeout_s (3) + the runner's slack (5) + process exit; far below the 60 s NATS retries
    assert elapsed < 15, (elapsed, proc.log_tail())
    assert code == 0, proc.log_tail()
