"""Shared harness of the arena benchmarks (``saturation.py``, ``scale_out.py``).

Usage::

    backend = Backend(capacity=16, base_step_s=0.03, per_seq_step_s=0.006)
    with serve_backend(backend, tmp_dir) as (url, record):
        settings = arena_settings(url, {"service.max_in_flight": 16})
        streamed, ended = asyncio.run(streaming(settings, 60, tmp_dir / "arena", record))
        work = [r for r in read_records(record) if r["end"] <= ended]
        offline = asyncio.run(replay(url, work, 60))

A five-model arena (five competitors: every battle has three uninvolved judges) on the
continuous-batching test backend (``warriorcoder.testing.continuous_batching``), one engine per
model. ``streaming`` runs nats-server and the services as processes (``LocalArena``, mode
``config``, the verifier off) until N samples are on disk; ``replay`` sends the very requests the
streaming run made straight to Triton, the way the paper's offline scripts work: phase after phase
(mining, quality scores, answers, judgements), each phase's requests all at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml

from warriorcoder.launcher.arena import LocalArena
from warriorcoder.launcher.processes import ManagedProcess, start_local_triton, start_service
from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime.settings import ArenaSettings, ModelSettings
from warriorcoder.runtime.triton import TritonPool

__all__ = [
    "NAMES",
    "PHASES",
    "PRODUCTION_VALUES",
    "Backend",
    "Run",
    "arena_settings",
    "production_overrides",
    "read_records",
    "replay",
    "serve_backend",
    "streaming",
]

MODULE = "warriorcoder.testing.continuous_batching"
NAMES = ("alpha", "beta", "gamma", "delta", "epsilon")
_STRENGTHS = (9, 7, 5, 3, 2)
_PRESETS = ("chatml", "llama3", "deepseek-coder")
PHASES = ("miner", "scorer", "answerer", "judge")  # the roles of the backend's records, in order
PRODUCTION_VALUES = Path(__file__).parents[1] / "charts/warriorcoder/values-production.yaml"
_ROLE = {"miner": "challenge", "scorer": "quality", "answerer": "response", "judge": "judge"}


@dataclass(frozen=True)
class Backend:
    """The timing of every model (``BatchedModel``'s fields)."""

    capacity: int = 16
    base_step_s: float = 0.03
    per_seq_step_s: float = 0.006
    lengths: str = "text"

    def models(self) -> list[dict[str, Any]]:
        return [
            {"name": n, "strength": s, "capacity": self.capacity, "base_step_s": self.base_step_s,
             "per_seq_step_s": self.per_seq_step_s, "lengths": self.lengths, "seed": i}
            for i, (n, s) in enumerate(zip(NAMES, _STRENGTHS, strict=True))
        ]  # fmt: skip

    def peak_tokens_per_s(self) -> float:
        step = self.base_step_s + self.per_seq_step_s * self.capacity
        return len(NAMES) * self.capacity / step


@contextlib.contextmanager
def serve_backend(backend: Backend, tmp: Path) -> Iterator[tuple[str, Path]]:
    """The backend on a local Triton: its gRPC URL and the file it records requests in."""
    tmp.mkdir(parents=True, exist_ok=True)
    models_file, record = tmp / "batched-models.yaml", tmp / "requests.jsonl"
    models_file.write_text(yaml.safe_dump({"models": backend.models()}, sort_keys=False))
    proc = start_local_triton(
        MODULE,
        models_file,
        list(NAMES),
        extra_args=["--record", str(record)],
        log_path=tmp / "triton.log",
    )
    try:
        yield f"127.0.0.1:{proc.ports['grpc']}", record
    finally:
        proc.stop()


def arena_settings(url: str, overrides: Mapping[str, Any] | None = None) -> ArenaSettings:
    """The shipped defaults for five models on ``url``, then ``overrides`` (dotted keys:
    ``service.max_in_flight``, ``challenger.high_water``, ``models.*.max_concurrency``...)."""
    models = {
        n: {"triton_url": url, "triton_model": n, "chat_template": {"preset": _PRESETS[i % 3]}}
        for i, n in enumerate(NAMES)
    }
    tree: dict[str, Any] = {"models": models, "competitors": list(NAMES)}
    for key, value in (overrides or {}).items():
        _set(tree, key.split("."), value)
    settings = msgspec.convert(tree, ArenaSettings)
    settings.validate()
    return settings


def production_overrides(values: Path = PRODUCTION_VALUES) -> dict[str, Any]:
    """The arena settings the production chart ships (its ``arena`` section), as overrides: each
    model's own keys but its template (given to all five test models alike, which the chart gives
    every expert), and every other section but ``nats.stream_replicas`` (one nats-server here)."""
    arena = yaml.safe_load(values.read_text())["arena"]
    out: dict[str, Any] = {}
    per_model = [
        {k: v for k, v in m.items() if k != "chat_template"} for m in arena["models"].values()
    ]
    for key in per_model[0]:
        out[f"models.*.{key}"] = max(m[key] for m in per_model)
    for section, keys in arena.items():
        if section == "models":
            continue
        for key, value in keys.items():
            if (section, key) != ("nats", "stream_replicas"):
                out[f"{section}.{key}"] = value
    return out


def _set(tree: dict[str, Any], path: list[str], value: Any) -> None:
    head, rest = path[0], path[1:]
    targets = list(tree) if head == "*" else [head]
    for key in targets:
        if not rest:
            tree[key] = value
        else:
            _set(tree.setdefault(key, {}), rest, value)


@dataclass(frozen=True)
class Run:
    """One run's figures."""

    battles: int
    window_s: float  # from the first model request to the N-th battle done
    tokens: int  # model-side tokens generated in the window
    requests: int
    request_s: float  # the requests' summed latencies: / window_s = mean requests in flight
    steady_battles_per_s: float | None = None  # from the N/4-th sample to the N-th

    @property
    def battles_per_s(self) -> float:
        return self.battles / self.window_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.window_s

    def line(self, label: str) -> str:
        return (
            f"{label}: {self.battles} battles, {self.requests} requests, {self.tokens} tokens in "
            f"{self.window_s:.1f}s: {self.tokens_per_s:.0f} tokens/s, "
            f"{self.battles_per_s:.2f} battles/s, {self.request_s / self.window_s:.1f} requests "
            "in flight on average"
            + (
                f", steady {self.steady_battles_per_s:.2f} battles/s"
                if self.steady_battles_per_s
                else ""
            )
        )


async def streaming(
    settings: ArenaSettings,
    battles: int,
    data_dir: Path,
    record: Path,
    *,
    replicas: int = 1,
) -> tuple[Run, float]:
    """The arena through NATS and the services until ``battles`` samples are on disk; the run and
    when it ended (wall clock). ``replicas`` > 1 starts that many processes of every service."""
    options: dict[str, Any] = {"mode": "config", "settings": settings, "battles": battles}
    if "verifier" in inspect.signature(LocalArena).parameters:
        options["verifier"] = "off"  # the work: no execution checks
    extra: list[ManagedProcess] = []
    async with LocalArena(data_dir, **options) as arena:
        try:
            services = _services(arena)
            for i in range(1, replicas):
                for service in services:
                    log = arena.logs / f"{service}-{i}.log"
                    extra.append(start_service(service, arena.config_path, log_path=log))
            marks = await _sample_times(arena, battles)
            ended = marks[battles]
        finally:
            await asyncio.gather(*(asyncio.to_thread(p.stop) for p in extra))
    lines = [r for r in read_records(record) if r["end"] <= ended]
    start = min(r["end"] - r["took_s"] for r in lines)
    tokens, busy = sum(r["tokens"] for r in lines), sum(r["took_s"] for r in lines)
    # steady state: from the sample of the first quarter (pipeline filled) to the last
    first = battles // 4
    steady = (battles - first) / (ended - marks[first]) if first else None
    run = Run(battles, ended - start, tokens, len(lines), busy, steady)
    return run, ended


async def _sample_times(arena: LocalArena, battles: int) -> dict[int, float]:
    """When (wall clock) the data directory first held each count of samples, up to ``battles``."""
    marks: dict[int, float] = {}
    seen = 0
    async with asyncio.timeout(1800):
        while seen < battles:
            count = min(await arena.samples(), battles)
            now = time.time()
            for k in range(seen + 1, count + 1):
                marks[k] = now
            seen = max(seen, count)
            await asyncio.sleep(0.05)
    return marks


def _services(arena: LocalArena) -> list[str]:
    from warriorcoder.launcher.arena import SERVICES

    return [s for s in SERVICES if s in arena.procs]


def read_records(record: Path, after: float | None = None) -> list[dict[str, Any]]:
    """The backend's request records (those that ended after ``after``, wall clock)."""
    lines = [json.loads(x) for x in record.read_text().splitlines() if x]
    return [r for r in lines if after is None or r["end"] > after]


async def replay(url: str, records: list[dict[str, Any]], battles: int) -> Run:
    """The recorded requests sent straight to Triton, phase after phase, each phase at once."""
    fixed: dict[str, Any] = {"max_concurrency": max(1, len(records))}
    if "adaptive_concurrency" in ModelSettings.__struct_fields__:
        fixed["adaptive_concurrency"] = False  # everything in flight, as an offline script
    models = {
        n: msgspec.convert(
            {"triton_url": url, "triton_model": n, "chat_template": {"preset": "chatml"}, **fixed},
            ModelSettings,
        )
        for n in NAMES
    }
    tokens, busy = 0, 0.0
    async with TritonPool(models) as pool:
        started = time.monotonic()
        for phase in PHASES:
            todo = [r for r in records if r["role"] == phase]
            gens = await asyncio.gather(*(_send(pool, r) for r in todo))
            tokens += sum(g.output_tokens or 0 for g in gens)
            busy += sum(g.latency_s for g in gens)
        took = time.monotonic() - started
    return Run(battles, took, tokens, len(records), busy)


async def _send(pool: TritonPool, record: Mapping[str, Any]) -> Any:
    sp = json.loads(record["sampling"])
    params = SamplingParams(
        temperature=sp["temperature"], top_p=sp["top_p"], max_tokens=sp["max_tokens"],
        seed=sp.get("seed"),
    )  # fmt: skip
    stop = sp.get("stop") or None
    return await pool.generate(
        record["model"], record["prompt"], params, stop=stop, role=_ROLE[record["role"]]
    )
