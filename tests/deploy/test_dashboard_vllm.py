"""The dashboard as code, its vLLM panels, and the vLLM metrics stand-in they are checked with.

- the committed JSON is exactly what deploy/dashboard.py (grafana-foundation-sdk) renders;
- the vLLM row and the served tokens beside battles per second;
- the chart's vLLM model config turns the backend's metrics on (REPORT_CUSTOM_METRICS);
- the stand-in exports what vllm_backend's src/utils/metrics.py (8de0c14) declares: names, kinds,
  labels and bucket boundaries, copied here by hand from that file.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.helpers import DASHBOARD, Rendered, dashboard_queries, of_kind, render
from warriorcoder.testing.vllm_metrics import VllmMetricsExporter, build_1_2_5_buckets

# vllm_backend@8de0c14 src/utils/metrics.py TritonMetrics: family name → (kind, buckets).
UPSTREAM: dict[str, tuple[str, list[float] | None]] = {
    "vllm:prompt_tokens_total": ("counter", None),
    "vllm:generation_tokens_total": ("counter", None),
    "vllm:time_to_first_token_seconds": (
        "histogram",
        [
            0.001,
            0.005,
            0.01,
            0.02,
            0.04,
            0.06,
            0.08,
            0.1,
            0.25,
            0.5,
            0.75,
            1.0,
            2.5,
            5.0,
            7.5,
            10.0,
        ],
    ),
    "vllm:time_per_output_token_seconds": (
        "histogram",
        [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5],
    ),
    "vllm:e2e_request_latency_seconds": (
        "histogram",
        [1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0],
    ),
    "vllm:request_prompt_tokens": ("histogram", [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]),
    "vllm:request_generation_tokens": (
        "histogram",
        [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000],
    ),
    "vllm:request_params_n": ("histogram", [1, 2, 5, 10, 20]),
}


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def test_the_committed_dashboard_is_what_the_sdk_module_renders() -> None:
    module = render.dashboard_module()
    assert module.DASHBOARD == DASHBOARD
    assert DASHBOARD.read_text() == module.render(), "stale: run python deploy/render.py"


def test_rows_fill_the_grid_and_a_misfit_row_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    module = render.dashboard_module()
    for row in module.rows():
        assert sum(p.width for p in row.panels) % 24 == 0, row.title
    bad = module.Row("bad", (module.Panel("x", "d", (module.Query("up", "u"),), "short", 10),))
    monkeypatch.setattr(module, "rows", lambda: (bad,))
    with pytest.raises(ValueError, match="row 'bad'"):
        module.build()


def test_served_tokens_per_model_sit_beside_battles_per_second() -> None:
    panels = _dashboard()["panels"]
    battles = next(p for p in panels if p["title"] == "Battles / s")
    tokens = next(p for p in panels if p["title"] == "Served tokens / s by model")
    assert tokens["gridPos"]["y"] == battles["gridPos"]["y"]
    assert tokens["gridPos"]["x"] == battles["gridPos"]["x"] + battles["gridPos"]["w"]
    (target,) = tokens["targets"]
    assert target["expr"] == "sum by (model) (rate(vllm:generation_tokens_total[$__rate_interval]))"


def test_the_vllm_row_shows_engine_load_first_token_tokens_and_decode_time() -> None:
    panels = _dashboard()["panels"]
    titles = [p["title"] for p in panels]
    start = titles.index("Inference engine (vLLM)")
    end = next(i for i in range(start + 1, len(panels)) if panels[i]["type"] == "row")
    exprs = " ".join(t["expr"] for p in panels[start + 1 : end] for t in p["targets"])
    for needle in (
        "sum by (model) (rate(vllm:e2e_request_latency_seconds_sum[$__rate_interval]))",
        "histogram_quantile(0.99, sum by (model, le) "
        "(rate(vllm:time_to_first_token_seconds_bucket[$__rate_interval])))",
        "sum by (model) (rate(vllm:generation_tokens_total[$__rate_interval]))",
        "sum by (model) (rate(vllm:prompt_tokens_total[$__rate_interval]))",
        "vllm:time_per_output_token_seconds_bucket",
    ):
        assert needle in exprs, needle
    # Every vLLM name the dashboard uses is one the backend exports.
    used = set(re.findall(r"vllm:[a-z0-9_]+", " ".join(e for _, _, e in dashboard_queries())))
    exported = {
        n + s
        for n, (kind, _) in UPSTREAM.items()
        for s in (("_bucket", "_sum", "_count") if kind == "histogram" else ("",))
    }
    assert used and used <= exported, used - exported


def test_the_chart_s_vllm_model_config_reports_the_backend_s_metrics(rendered: Rendered) -> None:
    maps = [
        cm
        for cm in of_kind(rendered["everything"], "ConfigMap")
        if "config.pbtxt" in cm.get("data", {})
    ]
    assert maps
    for cm in maps:
        pbtxt = cm["data"]["config.pbtxt"]
        if 'backend: "vllm"' not in pbtxt:
            continue
        # vllm_backend src/model.py: _get_bool_config_param("REPORT_CUSTOM_METRICS") is true
        # when parameters[key].string_value lower-cased is "true".
        m = re.search(
            r'parameters:\s*\{\s*key:\s*"REPORT_CUSTOM_METRICS"\s*'
            r'value:\s*\{\s*string_value:\s*"([^"]*)"\s*\}\s*\}',
            pbtxt,
        )
        assert m and m[1].lower() == "true", pbtxt
        engine = json.loads(cm["data"]["model.json"])
        assert engine.get("disable_log_stats", False) is False  # else the engine logs no stats


def test_build_1_2_5_buckets_matches_vllm() -> None:
    assert build_1_2_5_buckets(1) == [1]
    assert build_1_2_5_buckets(100) == [1, 2, 5, 10, 20, 50, 100]
    assert build_1_2_5_buckets(4096)[-1] == 2000
    with pytest.raises(ValueError, match="max_value"):
        build_1_2_5_buckets(0)


def _scrape(exporter: VllmMetricsExporter) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{exporter.address}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    families = {}
    for family in text_string_to_metric_families(text):
        # The parser names counters without _total; Triton's exposition has it.
        name = family.name + ("_total" if family.type == "counter" else "")
        families[name] = family
    return families


def test_the_stand_in_exports_the_backend_s_names_kinds_labels_and_buckets() -> None:
    exporter = VllmMetricsExporter(["alpha", "beta"])
    exporter.start()
    try:
        exporter.record(
            "alpha", prompt_tokens=18, generation_tokens=48, ttft_s=0.03, tpot_s=0.02, e2e_s=1.2
        )
        families = _scrape(exporter)
    finally:
        exporter.stop()
    assert set(families) == set(UPSTREAM)
    for name, (kind, buckets) in UPSTREAM.items():
        family = families[name]
        assert family.type == kind, name
        for sample in family.samples:
            labels = {k for k in sample.labels if k != "le"}
            assert labels == {"model", "version"}, (name, sample)
            assert sample.labels["version"] == "1"
        if buckets is not None:
            les = [
                float(s.labels["le"])
                for s in family.samples
                if s.name.endswith("_bucket") and s.labels["model"] == "alpha"
            ]
            assert les == [*map(float, buckets), float("inf")], name
    values = {(s.name, s.labels["model"]): s.value for f in families.values() for s in f.samples}
    # One request: the counters by its tokens, one inter-token latency per token after the first.
    assert values[("vllm:generation_tokens_total", "alpha")] == 48
    assert values[("vllm:prompt_tokens_total", "alpha")] == 18
    assert values[("vllm:time_per_output_token_seconds_count", "alpha")] == 47
    assert values[("vllm:e2e_request_latency_seconds_sum", "alpha")] == pytest.approx(1.2)
    assert ("vllm:time_to_first_token_seconds_count", "beta") not in values  # no request yet


def test_the_stand_in_simulates_requests_and_refuses_unknown_models() -> None:
    exporter = VllmMetricsExporter(["alpha"], interval_s=0.05)
    with pytest.raises(ValueError, match="unknown model 'zeta'"):
        exporter.record("zeta", prompt_tokens=1, generation_tokens=1, ttft_s=0, tpot_s=0, e2e_s=0)
    exporter.start()
    try:
        deadline, count = time.monotonic() + 10, 0.0
        while count < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            samples = _scrape(exporter)["vllm:e2e_request_latency_seconds"].samples
            count = sum(s.value for s in samples if s.name.endswith("_count"))
        assert count >= 2
    finally:
        exporter.stop()
