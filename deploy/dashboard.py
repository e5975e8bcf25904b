#!/usr/bin/env python3
"""The Grafana dashboard of the arena, built with Grafana's ``grafana-foundation-sdk``.

Usage::

    python deploy/dashboard.py            # print the dashboard JSON
    python deploy/render.py               # write it (with the rest of what is generated)
    python deploy/render.py --check       # exit 1 if the committed JSON is stale

``charts/warriorcoder/files/dashboards/warriorcoder-arena.json`` is generated from this module:
change the panels here and re-run ``deploy/render.py``. Every query must return data from a real
arena (tests/deploy/test_dashboard.py runs one with a real Prometheus), so a panel names only
metrics that the services, Triton or the vLLM backend export.

The vLLM panels read the metrics that Triton's vLLM backend reports when the model config sets
``REPORT_CUSTOM_METRICS`` (the chart's triton.yaml does): triton-inference-server/vllm_backend
src/utils/metrics.py at 8de0c14 (2026-01) reports the token counters and the latency histograms,
labelled ``model`` and ``version``; it exports no gauge of running or waiting requests and none of
KV-cache usage, so "requests in the engine" is Little's law over the end-to-end latency histogram
and KV-cache pressure shows as time per output token and time to first token growing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_models

__all__ = [
    "DASHBOARD",
    "UID",
    "Panel",
    "Query",
    "Row",
    "build",
    "render",
    "rows",
]

DASHBOARD = (
    Path(__file__).resolve().parent.parent
    / "charts"
    / "warriorcoder"
    / "files"
    / "dashboards"
    / "warriorcoder-arena.json"
)
UID = "warriorcoder-arena"
_DATASOURCE = dashboard_models.DataSourceRef(type_val="prometheus", uid="${datasource}")
_RATE = "[$__rate_interval]"
_HEIGHT = 8  # grid units of every panel; rows take one


@dataclass(frozen=True, slots=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str
    width: int
    kind: Literal["timeseries", "stat"] = "timeseries"
    stacking: Literal["none", "normal", "percent"] = "none"
    fill: int = 10
    red_from: float | None = None  # stat: red at and above this value


@dataclass(frozen=True, slots=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def _q(expr: str, legend: str) -> Query:
    return Query(expr.replace("[$R]", _RATE), legend)


def _quantiles(metric: str, by: str, legend: str, qs: Sequence[float]) -> tuple[Query, ...]:
    """histogram_quantile of ``metric``'s buckets for each q, legend prefixed pNN."""
    group = f"{by}, le" if by else "le"
    return tuple(
        _q(
            f"histogram_quantile({q:g}, sum by ({group}) (rate({metric}_bucket[$R])))",
            f"p{round(q * 100)}{' ' + legend if legend else ''}",
        )
        for q in qs
    )


def _lag(subject: str, stage: str, legend: str) -> Query:
    return _q(
        f'sum(rate(warriorcoder_published_total{{subject="warriorcoder.v1.{subject}"}}[$R]))'
        f' - sum(rate(warriorcoder_messages_total{{stage="{stage}", '
        f'outcome=~"ack|dead_letter"}}[$R]))',
        legend,
    )


def _triton_per_request(metric: str, legend: str) -> Query:
    return _q(
        f"sum by (model) (rate({metric}[$R])) / "
        "clamp_min(sum by (model) (rate(nv_inference_request_success[$R])), 1e-9) / 1e6",
        f"{legend} {{{{model}}}}",
    )


def rows() -> tuple[Row, ...]:
    """Every row of the dashboard with its panels, top to bottom (panels fill 24 columns)."""
    p50_90_99 = (0.5, 0.9, 0.99)
    return (
        Row(
            "Throughput",
            (
                Panel(
                    "Battles / s",
                    "Battles answered by both competitors (responder), and battles that got no "
                    "valid judge vote.",
                    (
                        _q("sum(rate(warriorcoder_battles_total[$R]))", "battles answered"),
                        _q(
                            "sum(rate(warriorcoder_battles_undecided_total[$R]))",
                            "undecided (no valid vote)",
                        ),
                    ),
                    "ops",
                    6,
                ),
                Panel(
                    "Served tokens / s by model",
                    "Tokens the vLLM engines generated per second, by Triton model "
                    "(vllm:generation_tokens_total; the chart turns the backend's "
                    "REPORT_CUSTOM_METRICS on): the GPU work behind the battles beside it.",
                    (_q("sum by (model) (rate(vllm:generation_tokens_total[$R]))", "{{model}}"),),
                    "short",
                    6,
                    stacking="normal",
                ),
                Panel(
                    "Samples / s by winner",
                    "Training samples written by the aggregator, by winning model.",
                    (_q("sum by (winner) (rate(warriorcoder_samples_total[$R]))", "{{winner}}"),),
                    "ops",
                    6,
                    stacking="normal",
                ),
                Panel(
                    "Samples in the last hour",
                    "Samples written in the last hour (all aggregator replicas).",
                    (_q("sum(increase(warriorcoder_samples_total[1h]))", "samples"),),
                    "short",
                    3,
                    kind="stat",
                ),
                Panel(
                    "Dead letters in the last hour",
                    "Messages sent to WARRIORCODER_V1_DLQ in the last hour.",
                    (_q("sum(increase(warriorcoder_dead_letters_total[1h]))", "dead letters"),),
                    "short",
                    3,
                    kind="stat",
                    red_from=1,
                ),
            ),
        ),
        Row(
            "Pipeline: latency, backlog and lag",
            (
                Panel(
                    "Stage latency (p50 / p90 / p99)",
                    "Time to handle one message in each stage (responder: both answers; judge: "
                    "every vote; aggregator: ratings and sample).",
                    _quantiles("warriorcoder_stage_seconds", "stage", "{{stage}}", p50_90_99),
                    "s",
                    12,
                ),
                Panel(
                    "Messages / s by stage and outcome",
                    "ack: done; retry: nak'ed with back-off; dead_letter: sent to the DLQ; "
                    "released: given back on shutdown.",
                    (
                        _q(
                            "sum by (stage, outcome) (rate(warriorcoder_messages_total[$R]))",
                            "{{stage}} {{outcome}}",
                        ),
                    ),
                    "ops",
                    12,
                ),
                Panel(
                    "Backlog per stream (consumer lag of each stage)",
                    "Messages waiting in the challenges work-queue stream, as seen by the "
                    "challenger (kept between challenger.low_water and high_water). In a work "
                    "queue every stored message is pending for the responder's consumer, so this "
                    "is its lag.",
                    (_q("max by (stream) (warriorcoder_backlog_messages)", "{{stream}}"),),
                    "short",
                    8,
                ),
                Panel(
                    "Consumer lag growth (in − out, msg/s)",
                    "Messages published into each work stream minus messages the consuming "
                    "stage finished (acked or dead-lettered). Above zero for long: the stage's "
                    "consumer lag grows; add replicas (KEDA scales on the lag itself).",
                    (
                        _lag("challenges", "responder", "responder (challenges)"),
                        _lag("answered", "verifier", "verifier (answered)"),
                        _lag("battles", "judge", "judge (battles)"),
                        _lag("judgements", "aggregator", "aggregator (judgements)"),
                    ),
                    "ops",
                    8,
                ),
                Panel(
                    "In flight by stage",
                    "Messages being handled now, all replicas (at most service.max_in_flight per "
                    "replica).",
                    (_q("sum by (stage) (warriorcoder_in_flight)", "{{stage}}"),),
                    "short",
                    8,
                ),
            ),
        ),
        Row(
            "Inference",
            (
                Panel(
                    "Inference latency (p50 / p90 / p99) by model and role",
                    "Latency of one generation on Triton as the services see it, by model and "
                    "role (challenge, response, judge).",
                    _quantiles(
                        "warriorcoder_inference_seconds",
                        "model, role",
                        "{{model}} {{role}}",
                        p50_90_99,
                    ),
                    "s",
                    12,
                ),
                Panel(
                    "Generated characters / s by model and role",
                    "Characters of generated text (the vLLM contract returns text only; the "
                    "engine's tokens are in 'Served tokens / s' and the vLLM row).",
                    (
                        _q(
                            "sum by (model, role) "
                            "(rate(warriorcoder_generated_characters_total[$R]))",
                            "{{model}} {{role}}",
                        ),
                    ),
                    "short",
                    12,
                    stacking="normal",
                ),
                Panel(
                    "Inference requests / s by model and outcome",
                    "ok, timeout, retryable_error (Triton unavailable or overloaded), error "
                    "(permanent).",
                    (
                        _q(
                            "sum by (model, outcome) "
                            "(rate(warriorcoder_inference_requests_total[$R]))",
                            "{{model}} {{outcome}}",
                        ),
                    ),
                    "reqps",
                    12,
                ),
                Panel(
                    "Concurrent generations by model",
                    "Average concurrent generations per model (Little's law: seconds of "
                    "inference per second).",
                    (
                        _q(
                            "sum by (model) (rate(warriorcoder_inference_seconds_sum[$R]))",
                            "{{model}}",
                        ),
                    ),
                    "short",
                    12,
                ),
            ),
        ),
        Row(
            "Inference engine (vLLM)",
            (
                Panel(
                    "Requests in the engine by model (running + waiting)",
                    "Average requests inside each vLLM engine, running or waiting for a batch "
                    "slot (Little's law over vllm:e2e_request_latency_seconds: seconds of "
                    "requests per second), and requests finished per second. The vLLM backend "
                    "exports no running/waiting gauges, and Triton's pending count stays near "
                    "zero for it (its execute() returns at once): this is the engine's load. "
                    "Growing while finished/s is flat: the GPU is saturated; add Triton "
                    "replicas.",
                    (
                        _q(
                            "sum by (model) (rate(vllm:e2e_request_latency_seconds_sum[$R]))",
                            "in engine {{model}}",
                        ),
                        _q(
                            "sum by (model) (rate(vllm:e2e_request_latency_seconds_count[$R]))",
                            "finished/s {{model}}",
                        ),
                    ),
                    "short",
                    6,
                ),
                Panel(
                    "Time to first token (p50 / p90 / p99) by model",
                    "From arrival in the vLLM engine to its first generated token "
                    "(vllm:time_to_first_token_seconds): queueing for a batch slot plus "
                    "prefill. It grows first when requests wait.",
                    _quantiles("vllm:time_to_first_token_seconds", "model", "{{model}}", p50_90_99),
                    "s",
                    6,
                ),
                Panel(
                    "Generation and prompt tokens / s by model",
                    "Tokens generated (decode) and prompt tokens processed (prefill) per second "
                    "by each vLLM engine.",
                    (
                        _q(
                            "sum by (model) (rate(vllm:generation_tokens_total[$R]))",
                            "generated {{model}}",
                        ),
                        _q(
                            "sum by (model) (rate(vllm:prompt_tokens_total[$R]))",
                            "prompt {{model}}",
                        ),
                    ),
                    "short",
                    6,
                ),
                Panel(
                    "Time per output token (p50 / p99) by model",
                    "Decode time between two tokens of one request "
                    "(vllm:time_per_output_token_seconds). It grows with the running batch and "
                    "with KV-cache pressure (preempted requests are recomputed); the backend "
                    "exports no KV-cache usage gauge.",
                    _quantiles(
                        "vllm:time_per_output_token_seconds", "model", "{{model}}", (0.5, 0.99)
                    ),
                    "s",
                    6,
                ),
            ),
        ),
        Row(
            "Judging",
            (
                Panel(
                    "Verdict mix",
                    "Judge votes by outcome: attacker, defender, tie (orders disagree) or "
                    "invalid (no verdict after the re-ask).",
                    (_q("sum by (outcome) (rate(warriorcoder_votes_total[$R]))", "{{outcome}}"),),
                    "short",
                    8,
                    stacking="percent",
                    fill=60,
                ),
                Panel(
                    "Invalid verdicts and re-asks by judge",
                    "Votes without a parseable [[A]]/[[B]]/[[Tie]] after the re-ask (excluded "
                    "from scoring), and re-asks.",
                    (
                        _q(
                            "sum by (judge) "
                            '(rate(warriorcoder_votes_total{outcome="invalid"}[$R]))',
                            "invalid {{judge}}",
                        ),
                        _q(
                            "sum by (judge) (rate(warriorcoder_judge_reasks_total[$R]))",
                            "re-asked {{judge}}",
                        ),
                    ),
                    "ops",
                    8,
                ),
                Panel(
                    "Votes / s by judge",
                    "Votes cast by each judge model.",
                    (_q("sum by (judge) (rate(warriorcoder_votes_total[$R]))", "{{judge}}"),),
                    "ops",
                    8,
                    stacking="normal",
                ),
            ),
        ),
        Row(
            "Execution checks (verifier)",
            (
                Panel(
                    "Execution pass rate by model",
                    "Share of the battle tests each model's answers passed in the sandbox "
                    "(warriorcoder_verifier_tests_passed_total / "
                    "warriorcoder_verifier_tests_total): over the rate window, and over the "
                    "last hour. An answer without code, or one killed at a limit, counts all "
                    "its battle's tests as failed; sandbox errors count none. Empty while the "
                    "verifier is off or no battle had usable tests.",
                    (
                        _q(
                            "sum by (model) (rate(warriorcoder_verifier_tests_passed_total[$R]))"
                            " / sum by (model) (rate(warriorcoder_verifier_tests_total[$R]))",
                            "{{model}}",
                        ),
                        _q(
                            "sum by (model) "
                            "(increase(warriorcoder_verifier_tests_passed_total[1h])) / "
                            "sum by (model) (increase(warriorcoder_verifier_tests_total[1h]))",
                            "{{model}} (1h)",
                        ),
                    ),
                    "percentunit",
                    8,
                ),
                Panel(
                    "Verifier throughput: sandboxed runs / s by outcome, battles / s",
                    "Answers run in the sandbox per second by outcome (passed: every test "
                    "passed; failed, no_code, timeout, sandbox_error), and battles the verifier "
                    "passed on per second, verified (tests ran) or unverified (no usable tests). "
                    "The verifier is CPU-bound: divide by its replicas' cores for runs per "
                    "second per core.",
                    (
                        _q(
                            "sum by (outcome) (rate(warriorcoder_verifier_runs_total[$R]))",
                            "runs {{outcome}}",
                        ),
                        _q(
                            "sum by (result) (rate(warriorcoder_verifier_battles_total[$R]))",
                            "battles {{result}}",
                        ),
                    ),
                    "ops",
                    8,
                ),
                Panel(
                    "Sandboxed run time (p50 / p90 / p99)",
                    "Wall time of one sandboxed test run (runs that used the sandbox: ran or "
                    "timed out; the limit is verifier.sandbox.timeout_s). The verifier's whole "
                    "added latency per battle is its stage latency in 'Stage latency' "
                    "(stage=verifier): both answers run at once.",
                    _quantiles("warriorcoder_verifier_sandbox_seconds", "", "", p50_90_99),
                    "s",
                    8,
                ),
            ),
        ),
        Row(
            "Errors and filtering",
            (
                Panel(
                    "Dead letters / s by stage and reason",
                    "Messages sent to warriorcoder.v1.dlq.<stage>: undecodable, "
                    "retries_exhausted, handler_error or a permanent error.",
                    (
                        _q(
                            "sum by (stage, reason) (rate(warriorcoder_dead_letters_total[$R]))",
                            "{{stage}} {{reason}}",
                        ),
                    ),
                    "ops",
                    12,
                ),
                Panel(
                    "Rejected challenges / s by reason",
                    "Mined instructions the challenger dropped, by reason (too short, too long, "
                    "template debris, duplicate, ...).",
                    (
                        _q(
                            "sum by (reason) (rate(warriorcoder_challenges_rejected_total[$R]))",
                            "{{reason}}",
                        ),
                    ),
                    "ops",
                    12,
                    stacking="normal",
                ),
            ),
        ),
        Row(
            "Ratings",
            (
                Panel(
                    "Elo ratings",
                    "Online Elo rating of each model (K 40, scale 400, base 10), as the "
                    "aggregator last applied it.",
                    (_q("max by (model) (warriorcoder_elo_rating)", "{{model}}"),),
                    "none",
                    24,
                ),
            ),
        ),
        Row(
            "Triton Inference Server",
            (
                Panel(
                    "Triton requests / s by model",
                    "Triton's own request counters (nv_inference_request_success / _failure).",
                    (
                        _q(
                            "sum by (model) (rate(nv_inference_request_success[$R]))",
                            "success {{model}}",
                        ),
                        _q(
                            "sum by (model) (rate(nv_inference_request_failure[$R]))",
                            "failure {{model}}",
                        ),
                    ),
                    "reqps",
                    8,
                ),
                Panel(
                    "Triton time per request (queue, compute, total)",
                    "Average queue, compute and end-to-end time per successful request inside "
                    "Triton. For a model of the vLLM backend these miss vLLM's own queue (its "
                    "execute() hands the request to the engine and returns): read the vLLM row "
                    "(requests in the engine, time to first token) to decide on Triton replicas.",
                    (
                        _triton_per_request("nv_inference_queue_duration_us", "queue"),
                        _triton_per_request("nv_inference_compute_infer_duration_us", "compute"),
                        _triton_per_request("nv_inference_request_duration_us", "total"),
                    ),
                    "s",
                    8,
                ),
                Panel(
                    "Triton inferences / s and pending requests",
                    "Inferences executed per second (nv_inference_count) and requests waiting "
                    "in Triton (nv_inference_pending_request_count).",
                    (
                        _q(
                            "sum by (model) (rate(nv_inference_count[$R]))",
                            "inferences/s {{model}}",
                        ),
                        _q(
                            "sum by (model) (nv_inference_pending_request_count)",
                            "pending {{model}}",
                        ),
                    ),
                    "short",
                    8,
                ),
            ),
        ),
    )


# -- SDK builders --------------------------------------------------------------------------------

_STACKING = {
    "none": common.StackingMode.NONE,
    "normal": common.StackingMode.NORMAL,
    "percent": common.StackingMode.PERCENT,
}


def _targets(panel: Panel) -> list[prometheus.Dataquery]:
    return [
        prometheus.Dataquery()
        .datasource(_DATASOURCE)
        .ref_id(chr(ord("A") + i))
        .expr(q.expr)
        .legend_format(q.legend)
        .range()
        for i, q in enumerate(panel.queries)
    ]


def _timeseries(panel: Panel) -> timeseries.Panel:
    builder = (
        timeseries.Panel()
        .draw_style(common.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(panel.fill)
        .show_points(common.VisibilityMode.NEVER)
        .stacking(common_builders.StackingConfig().mode(_STACKING[panel.stacking]).group("A"))
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    return builder


def _stat(panel: Panel) -> stat.Panel:
    builder = (
        stat.Panel()
        .reduce_options(
            common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)
        )
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.AREA)
        .text_mode(common.BigValueTextMode.AUTO)
    )
    if panel.red_from is not None:
        builder = builder.thresholds(
            dashboard_builders.ThresholdsConfig()
            .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
            .steps(
                [
                    dashboard_models.Threshold(color="green", value=None),
                    dashboard_models.Threshold(color="red", value=panel.red_from),
                ]
            )
        )
    return builder


def _panel(panel: Panel, panel_id: int, pos: dashboard_models.GridPos) -> Any:
    builder: timeseries.Panel | stat.Panel = (
        _timeseries(panel) if panel.kind == "timeseries" else _stat(panel)
    )
    return (
        builder.id(panel_id)
        .title(panel.title)
        .description(panel.description)
        .datasource(_DATASOURCE)
        .unit(panel.unit)
        .targets(_targets(panel))  # type: ignore[arg-type]  # the SDK wants list[Builder[Dataquery]]
        .grid_pos(pos)
    )


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (a plain dict)."""
    board = (
        dashboard_builders.Dashboard("WarriorCoder Arena")
        .uid(UID)
        .description(
            "WarriorCoder Arena: battles, samples, stage and inference latency, backlog and lag, "
            "vLLM engine load, verdicts, execution checks, dead letters, Elo ratings and Triton."
        )
        .tags(["warriorcoder", "nats", "triton", "vllm"])
        .editable()
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("")
        .version(1)
        .with_variable(
            dashboard_builders.DatasourceVariable("datasource")
            .label("Prometheus")
            .type("prometheus")
        )
    )
    panel_id, y = 0, 0
    for row in rows():
        if sum(p.width for p in row.panels) % 24:
            raise ValueError(f"row {row.title!r}: panel widths must fill whole lines of 24")
        panel_id += 1
        board = board.with_row(
            dashboard_builders.Row(row.title)
            .id(panel_id)
            .collapsed(False)
            .grid_pos(dashboard_models.GridPos(h=1, w=24, x=0, y=y))
        )
        y, x = y + 1, 0
        for panel in row.panels:
            if x + panel.width > 24:
                y, x = y + _HEIGHT, 0
            panel_id += 1
            pos = dashboard_models.GridPos(h=_HEIGHT, w=panel.width, x=x, y=y)
            board = board.with_panel(_panel(panel, panel_id, pos))
            x += panel.width
        y += _HEIGHT
    doc: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    # Grafana's built-in annotations (alerts, annotations made in the UI), as Grafana saves every
    # dashboard with them; the SDK's AnnotationQuery builder cannot mark one built-in.
    doc["annotations"] = {
        "list": [
            {
                "builtIn": 1,
                "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True,
                "hide": True,
                "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts",
                "type": "dashboard",
            }
        ]
    }
    return doc


def render() -> str:
    """The dashboard file's exact content."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(render())
