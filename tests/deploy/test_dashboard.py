"""The Grafana dashboard: its queries name real metrics and each returns data from a real arena.

A real Prometheus (the Debian package) scrapes the five services (the verifier on, so the
execution panels have data) and Triton of the secured arena every second; every query of
files/dashboards/warriorcoder-arena.json, with Grafana's ``$__rate_interval`` replaced by 30s,
must return a non-empty result. An undecodable battle is
injected so that the dead-letter panels have data; the garbler judge gives invalid votes.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import nats
from prometheus_client import REGISTRY

import warriorcoder.runtime.metrics  # noqa: F401  (registers every metric of the services)
from tests.deploy.helpers import (
    DASHBOARD,
    SecuredArena,
    dashboard_queries,
    for_prometheus,
    prometheus_query,
)
from warriorcoder.proto import subjects
from warriorcoder.testing.vllm_metrics import METRICS as VLLM_METRICS

QUERIES = list(dashboard_queries())
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_request_duration_us",
    "nv_inference_pending_request_count",
}
_METRIC = re.compile(r"\b((?:warriorcoder|nv)_[a-z0-9_]+|vllm:[a-z0-9_]+)")


def _service_metric_names() -> set[str]:
    names = set()
    for metric in REGISTRY.collect():
        if not metric.name.startswith("warriorcoder_"):
            continue
        names.add(metric.name)
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
        }.get(metric.type, ())
        names.update(metric.name + s for s in suffixes)
    return names


def test_dashboard_is_a_grafana_dashboard_with_the_issue_s_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "warriorcoder-arena"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and p.get("description"), p["title"]
    exprs = " ".join(expr for _, _, expr in QUERIES)
    for needle in (
        "warriorcoder_battles_total",
        "warriorcoder_samples_total",
        "histogram_quantile(0.99, sum by (stage, le) (rate(warriorcoder_stage_seconds_bucket",
        "warriorcoder_backlog_messages",
        "histogram_quantile(0.9, sum by (model, role, le) (rate(warriorcoder_inference_seconds",
        "sum by (model, role) (rate(warriorcoder_generated_characters_total",
        "sum by (outcome) (rate(warriorcoder_votes_total",
        'warriorcoder_votes_total{outcome="invalid"}',
        "warriorcoder_dead_letters_total",
        "sum by (reason) (rate(warriorcoder_challenges_rejected_total",
        "warriorcoder_elo_rating",
        "nv_inference_request_success",
        "nv_inference_queue_duration_us",
    ):
        assert needle in exprs, needle


def test_dashboard_shows_the_verifier_s_pass_rates_throughput_and_latency() -> None:
    joined = " ".join(expr for _, _, expr in QUERIES)
    for needle in (
        "sum by (model) (rate(warriorcoder_verifier_tests_passed_total[$__rate_interval])) / "
        "sum by (model) (rate(warriorcoder_verifier_tests_total[$__rate_interval]))",
        "sum by (outcome) (rate(warriorcoder_verifier_runs_total",
        "sum by (result) (rate(warriorcoder_verifier_battles_total",
        "histogram_quantile(0.99, sum by (le) (rate(warriorcoder_verifier_sandbox_seconds_bucket",
        'warriorcoder_published_total{subject="warriorcoder.v1.answered"}',
    ):
        assert needle in joined, needle
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert "Execution checks (verifier)" in rows
    # No two panels overlap on the grid (the new row shifted the ones below it).
    cells = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, p["title"]
        cells |= mine


def test_every_query_uses_metrics_that_exist() -> None:
    vllm = {
        name + suffix
        for name, kind in VLLM_METRICS.items()
        for suffix in (("_bucket", "_sum", "_count") if kind == "histogram" else ("",))
    }
    known = _service_metric_names() | TRITON_METRICS | vllm
    for title, ref, expr in QUERIES:
        used = set(_METRIC.findall(expr))
        assert used, (title, ref)
        assert used <= known, f"{title} {ref}: unknown {used - known}"


async def _inject_dead_letter(arena: SecuredArena) -> None:
    nc = await nats.connect(arena.nats_url, user="admin", password=arena.passwords["admin"])
    try:
        await nc.jetstream().publish(
            subjects.BATTLES, b"\x00 undecodable", headers={"Nats-Msg-Id": "dashboard-poison"}
        )
    finally:
        await nc.close()


def test_every_dashboard_query_returns_data(secured_arena: SecuredArena, prometheus: str) -> None:
    asyncio.run(_inject_dead_letter(secured_arena))
    pending = {(title, ref): for_prometheus(expr) for title, ref, expr in QUERIES}
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        for key, expr in list(pending.items()):
            if prometheus_query(prometheus, expr):
                del pending[key]
        if pending:
            assert not secured_arena.dead(), secured_arena.dead()
            time.sleep(1)
    assert not pending, "queries without data:\n" + "\n".join(
        f"{title} [{ref}]: {expr}" for (title, ref), expr in pending.items()
    )
