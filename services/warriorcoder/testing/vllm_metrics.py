"""A stand-in for the vLLM metrics that Triton's vLLM backend reports, served over HTTP.

Usage::

    from warriorcoder.testing.vllm_metrics import VllmMetricsExporter

    exporter = VllmMetricsExporter(["alpha", "beta"])
    exporter.start()          # serves /metrics on 127.0.0.1:<exporter.port>
    exporter.record("alpha", prompt_tokens=18, generation_tokens=48, ttft_s=0.05,
                    tpot_s=0.02, e2e_s=1.0)
    exporter.stop()

It follows triton-inference-server/vllm_backend at 8de0c14 (2026-01), ``src/utils/metrics.py``
(``TritonMetrics``): the same metric names (with the ``vllm:`` prefix), kinds, bucket boundaries
and labels (``model``, ``version``; ``src/model.py`` ``_setup_metrics``), which Triton exposes
on its metrics port once the model config sets ``REPORT_CUSTOM_METRICS``. The request-size
histograms use ``build_1_2_5_buckets(max_model_len)`` upstream, here with max_model_len 4096. That
version reports no gauges (running or waiting requests, KV-cache usage), so neither does this.

A scripted Triton (PyTriton) cannot report these (its models run outside Triton's Python
backend), so the deploy checks scrape this beside it. With ``interval_s`` set, a background
thread records one simulated request per model per interval, so rates are never empty.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["BACKEND_VERSION", "METRICS", "VllmMetricsExporter", "build_1_2_5_buckets"]

BACKEND_VERSION = "triton-inference-server/vllm_backend@8de0c148 src/utils/metrics.py"

_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_E2E_BUCKETS = (1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)
_N_BUCKETS = (1, 2, 5, 10, 20)
_LABELS = ("model", "version")


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """vLLM's ``build_1_2_5_buckets``: 1, 2, 5, 10, 20, 50, ... up to ``max_value``."""
    if max_value < 1:
        raise ValueError(f"max_value must be at least 1, got {max_value}")
    buckets: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(value)
        exponent += 1


# Exposed name (as Prometheus sees it) → kind; histograms add _bucket/_sum/_count.
METRICS: dict[str, str] = {
    "vllm:prompt_tokens_total": "counter",
    "vllm:generation_tokens_total": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:time_per_output_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_prompt_tokens": "histogram",
    "vllm:request_generation_tokens": "histogram",
    "vllm:request_params_n": "histogram",
}


class _WithoutCreated(Collector):
    """The metrics of ``registry`` less prometheus_client's ``*_created`` samples, which
    Triton's exposition (prometheus-cpp) does not have."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


def _handler(registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    """GET /metrics in Prometheus' text format 0.0.4, the only one Triton serves. (Not
    prometheus_client's negotiating server: its OpenMetrics answer escapes ``vllm:`` names to
    ``vllm_``, which Triton's never does.)"""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics")
                return
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every second: keep the test logs quiet

    return Handler


class VllmMetricsExporter:
    """vLLM backend metrics of ``models`` (Triton model names, version "1") on one port."""

    def __init__(
        self,
        models: Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        interval_s: float | None = None,
        max_model_len: int = 4096,
        seed: int = 0,
    ) -> None:
        if not models:
            raise ValueError("VllmMetricsExporter needs at least one model name")
        self.models = tuple(models)
        self.host = host
        self.port = port
        self._interval_s = interval_s
        self._random = random.Random(seed)
        self.registry = CollectorRegistry()
        r = self.registry
        sizes = build_1_2_5_buckets(max_model_len)
        # prometheus_client appends _total to counters, as Triton's exposition shows them.
        self._prompt = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", _LABELS, registry=r
        )
        self._generation = Counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            _LABELS,
            registry=r,
        )
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            _LABELS,
            registry=r,
            buckets=_TTFT_BUCKETS,
        )
        self._tpot = Histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            _LABELS,
            registry=r,
            buckets=_TPOT_BUCKETS,
        )
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.",
            _LABELS,
            registry=r,
            buckets=_E2E_BUCKETS,
        )
        self._prompt_size = Histogram(
            "vllm:request_prompt_tokens",
            "Number of prefill tokens processed.",
            _LABELS,
            registry=r,
            buckets=sizes,
        )
        self._generation_size = Histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            _LABELS,
            registry=r,
            buckets=sizes,
        )
        self._n = Histogram(
            "vllm:request_params_n",
            "Histogram of the n request parameter.",
            _LABELS,
            registry=r,
            buckets=_N_BUCKETS,
        )
        self._server: ThreadingHTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._tick_thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def address(self) -> str:
        """host:port of /metrics (after ``start``)."""
        return f"{self.host}:{self.port}"

    def record(
        self,
        model: str,
        *,
        prompt_tokens: int,
        generation_tokens: int,
        ttft_s: float,
        tpot_s: float,
        e2e_s: float,
        n: int = 1,
    ) -> None:
        """One finished request, as the backend's ``VllmStatLogger.record`` logs it."""
        if model not in self.models:
            raise ValueError(f"unknown model {model!r}; serving {', '.join(self.models)}")
        labels = (model, "1")
        # Upstream skips zero increments (_log_counter), which prometheus_client accepts anyway.
        self._prompt.labels(*labels).inc(prompt_tokens)
        self._generation.labels(*labels).inc(generation_tokens)
        self._ttft.labels(*labels).observe(ttft_s)
        # One inter-token latency per generated token after the first.
        for _ in range(max(generation_tokens - 1, 0)):
            self._tpot.labels(*labels).observe(tpot_s)
        self._e2e.labels(*labels).observe(e2e_s)
        self._prompt_size.labels(*labels).observe(prompt_tokens)
        self._generation_size.labels(*labels).observe(generation_tokens)
        self._n.labels(*labels).observe(n)

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("VllmMetricsExporter already started")
        exposed = CollectorRegistry(auto_describe=False)
        exposed.register(_WithoutCreated(self.registry))
        self._server = ThreadingHTTPServer((self.host, self.port), _handler(exposed))
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever, name="vllm-metrics-http", daemon=True
        )
        self._serve_thread.start()
        self.port = int(self._server.server_port)
        if self._interval_s is not None:
            self._stop.clear()
            self._tick_thread = threading.Thread(
                target=self._tick, name="vllm-metrics-stand-in", daemon=True
            )
            self._tick_thread.start()

    def _tick(self) -> None:
        assert self._interval_s is not None
        rnd = self._random
        while not self._stop.wait(self._interval_s):
            for model in self.models:
                generated = rnd.randint(16, 256)
                ttft, tpot = rnd.uniform(0.02, 0.4), rnd.uniform(0.01, 0.05)
                self.record(
                    model,
                    prompt_tokens=rnd.randint(32, 512),
                    generation_tokens=generated,
                    ttft_s=ttft,
                    tpot_s=tpot,
                    e2e_s=ttft + tpot * (generated - 1),
                )

    def stop(self) -> None:
        """Stop the simulation thread and the HTTP server, and wait for both."""
        self._stop.set()
        if self._tick_thread is not None:
            self._tick_thread.join()
            self._tick_thread = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._serve_thread is not None:
            self._serve_thread.join()
            self._serve_thread = None
