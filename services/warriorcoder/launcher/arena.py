"""An arena on one machine: nats-server, model backends and the four services, supervised.

Usage::

    with LocalArena(data_dir, mode="scripted", battles=6) as arena:
        while arena.samples() < 6:
            arena.supervise()       # restart a crashed service, top up the challenge budget
            time.sleep(0.5)

Backends, by ``mode``:

- ``scripted``: scripted test models on a real Triton Inference Server (PyTriton); fastest.
- ``demo``: tiny random-weight transformer models built on the spot, served through the same
  local Triton path as real Hugging Face models (transformers, batched, guided choices).
- ``config``: the user's arena config. Models with ``triton_url: local`` are served by a local
  Triton from their ``local.path`` (a directory or hub id); others use their Triton URL as is.

The JetStream store, logs, the resolved config and the samples all live in ``data_dir``; a second
run on the same directory resumes: unfinished work waits in the streams, and the arena-wide
challenge budget is set to what is still missing (target - samples on disk - work in flight), so
the run ends at exactly ``battles`` samples, with nothing lost and nothing written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

import yaml

from warriorcoder.launcher.processes import (
    ManagedProcess,
    start_nats,
    start_scripted_triton,
    start_service,
)
from warriorcoder.proto import subjects
from warriorcoder.stages.aggregator.dataset import SHARD_GLOB
from warriorcoder.testing.scripted import SCRIPTED_MODELS, load_models

__all__ = [
    "DEMO_NOTE",
    "SCRIPTED_MODELS",
    "SERVICES",
    "LocalArena",
    "count_samples",
    "own_template_file",
    "scripted_arena_config",
]

log = logging.getLogger(__name__)

SERVICES = ("aggregator", "judge", "responder", "challenger")  # started in this order
_PRESETS = ("chatml", "llama3", "deepseek-coder")  # distinct templates exercise each renderer
DEMO_NOTE = (
    "DEMO: the models are tiny transformers with RANDOM WEIGHTS built on this machine: their "
    "text is noise. The pipeline (templates, Triton, generation, judging) is real."
)
SCRIPTED_NOTE = "SCRIPTED: deterministic test models, not LLMs (use --demo or --config)."
Mode = Literal["scripted", "demo", "config"]

_SAMPLING = {
    "challenge": {"temperatures": [1.0, 1.2], "top_ps": [0.95, 0.99], "max_tokens": 256},
    "quality": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 128},
    "response": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 512},
    "judge": {"temperature": 1.0, "top_p": 0.995, "max_tokens": 256},
}
_DEMO_SAMPLING = {
    "challenge": {"temperatures": [1.0, 1.2], "top_ps": [0.95, 0.99], "max_tokens": 48},
    "quality": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 8},
    "response": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 64},
    "judge": {"temperature": 1.0, "top_p": 0.995, "max_tokens": 8},
}


def _merge(tree: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            tree[key] = _merge(dict(tree[key]), value)
        else:
            tree[key] = value
    return tree


def scripted_arena_config(
    names: list[str], *, triton_grpc: str, nats_url: str, data_dir: Path, **overrides: Any
) -> dict[str, Any]:
    """An arena config tree whose models are the scripted models on a local Triton."""
    tree: dict[str, Any] = {
        "models": {
            name: {
                "triton_url": triton_grpc,
                "triton_model": name,
                "chat_template": {"preset": _PRESETS[i % len(_PRESETS)]},
                "max_concurrency": 4,
                "timeout_s": 60,
            }
            for i, name in enumerate(names)
        },
        "competitors": names,
        "languages": ["Python"],
        "sampling": _SAMPLING,
        "challenger": {"low_water": 2, "high_water": 6, "concurrency": 2, "poll_interval_s": 0.2},
        "nats": {"url": nats_url, "ack_wait_s": 30, "retry_delay_s": 0.5},
        "service": {"log_format": "json", "drain_timeout_s": 10},
        "data_dir": str(data_dir / "samples"),
    }
    return _merge(tree, overrides)


def own_template_file(path: str) -> str:
    """The tokenizer config of a local model directory or hub id (from the Hub cache that
    loading the model filled)."""
    local = Path(path)
    if local.is_dir():
        return str(local / "tokenizer_config.json")
    from huggingface_hub import hf_hub_download

    return str(hf_hub_download(repo_id=path, filename="tokenizer_config.json"))


def count_samples(samples_dir: Path) -> int:
    """Complete sample lines in the shards of a data directory."""
    n = 0
    for path in samples_dir.glob(SHARD_GLOB):
        with path.open("rb") as f:
            n += sum(1 for line in f if line.endswith(b"\n") and line.strip())
    return n


class LocalArena:
    """Start everything in ``__enter__``, stop it in reverse (upstream services first)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        mode: Mode = "scripted",
        config_tree: dict[str, Any] | None = None,
        battles: int | None = None,
        config_overrides: dict[str, Any] | None = None,
        max_restarts: int = 5,
    ) -> None:
        if mode == "config" and config_tree is None:
            raise ValueError("mode 'config' needs a config tree")
        self.data_dir = data_dir.resolve()
        self.mode = mode
        self.config_tree = config_tree
        self.battles = battles
        self.overrides = config_overrides or {}
        self.max_restarts = max_restarts
        self.procs: dict[str, ManagedProcess] = {}
        self.events: list[str] = []
        self.note = {"demo": DEMO_NOTE, "scripted": SCRIPTED_NOTE}.get(mode, "")
        self._restarts: dict[str, deque[float]] = {}
        self._stack = ExitStack()
        self.config_path = self.data_dir / "arena.yaml"
        self.logs = self.data_dir / "logs"
        self.samples_dir = self.data_dir / "samples"

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> LocalArena:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.procs['nats-server'].ports['client']}"

    def _own(self, proc: ManagedProcess) -> ManagedProcess:
        self.procs[proc.name] = proc
        self._stack.callback(lambda: self.procs[proc.name].stop())
        return proc

    def _start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._own(start_nats(self.data_dir / "nats", log_path=self.logs / "nats-server.log"))
        tree = _merge(self._backends(), self.overrides)
        tree.setdefault("nats", {})["url"] = self.nats_url
        tree["data_dir"] = str(self.samples_dir)
        self.config_path.write_text(yaml.safe_dump(tree, sort_keys=False))
        if self.battles is not None:
            self._event(f"challenge budget set to {self.set_budget()}")
        for service in SERVICES:
            self._start_service(service)

    def _backends(self) -> dict[str, Any]:
        if self.mode == "scripted":
            names = [m.name for m in load_models(SCRIPTED_MODELS)]
            triton = self._own(
                start_scripted_triton(SCRIPTED_MODELS, names, log_path=self.logs / "triton.log")
            )
            return scripted_arena_config(
                names,
                triton_grpc=f"127.0.0.1:{triton.ports['grpc']}",
                nats_url="",
                data_dir=self.data_dir,
            )
        if self.mode == "demo":
            return self._demo_tree()
        assert self.config_tree is not None
        return self._resolve_local(self.config_tree)

    def _demo_tree(self) -> dict[str, Any]:
        from warriorcoder.localmodels.demo import build_demo_models

        demo = build_demo_models(self.data_dir / "demo-models")
        models = {
            m.name: {
                "triton_url": "local",
                "triton_model": m.name,
                "guided_choice": True,
                "max_concurrency": 8,
                "timeout_s": 300,
                "local": {"path": str(m.path), "device": "cpu", "max_batch_size": 8},
            }
            for m in demo
        }
        tree = {
            "models": models,
            "competitors": [m.name for m in demo],
            "sampling": _DEMO_SAMPLING,
            # Random text: keep every instruction that is not empty or debris.
            "challenger": {
                "low_water": 2,
                "high_water": 6,
                "concurrency": 2,
                "poll_interval_s": 0.2,
                "min_chars": 1,
                "max_chars": 100_000,
                "decontamination": {"enabled": False},
                "near_dup": {"enabled": False},
                "quality": {"threshold": 1},
            },
            "nats": {"ack_wait_s": 120, "retry_delay_s": 0.5},
            "service": {"log_format": "json", "drain_timeout_s": 20},
        }
        # Tiny models on a shared CPU: one torch thread each is several times faster.
        return self._resolve_local(tree, threads=1)

    def _resolve_local(self, tree: dict[str, Any], *, threads: int = 0) -> dict[str, Any]:
        """Serve the ``triton_url: local`` models on a local Triton and point the config at it."""
        tree = yaml.safe_load(yaml.safe_dump(tree))  # a deep copy
        local = {n: m for n, m in tree.get("models", {}).items() if m.get("triton_url") == "local"}
        if not local:
            return tree
        from warriorcoder.localmodels.hf_server import start_hf_triton

        spec = {
            "models": [
                {
                    "name": m.get("triton_model", n),
                    "path": m["local"]["path"],
                    "device": m["local"].get("device", "auto"),
                    "dtype": m["local"].get("dtype", "auto"),
                    "max_batch_size": m["local"].get("max_batch_size", 8),
                }
                for n, m in local.items()
            ]
        }
        models_file = self.data_dir / "local-models.yaml"
        models_file.write_text(yaml.safe_dump(spec, sort_keys=False))
        triton = self._own(
            start_hf_triton(
                models_file,
                [e["name"] for e in spec["models"]],
                log_path=self.logs / "triton.log",
                threads=threads,
            )
        )
        for m in local.values():
            m["triton_url"] = f"127.0.0.1:{triton.ports['grpc']}"
            template = m.get("chat_template") or {}
            if not template.get("preset") and not template.get("file"):
                # The model's own template, from the tokenizer config beside its weights.
                m["chat_template"] = {**template, "file": own_template_file(m["local"]["path"])}
            del m["local"]
        return tree

    def _start_service(self, service: str) -> None:
        proc = start_service(service, self.config_path, log_path=self.logs / f"{service}.log")
        if service in self.procs:
            self.procs[service] = proc  # a restart: the stop callback looks the name up
        else:
            self._own(proc)

    # -- running --------------------------------------------------------------------------------

    def _event(self, text: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {text}"
        self.events.append(stamped)
        with (self.logs / "supervisor.log").open("a") as f:
            f.write(stamped + "\n")

    def samples(self) -> int:
        return count_samples(self.samples_dir)

    def dead(self) -> list[str]:
        return [name for name, p in self.procs.items() if not p.alive()]

    def supervise(self) -> None:
        """Restart crashed services (a crash loop raises); keep the challenge budget topped up."""
        for name in self.dead():
            code = self.procs[name].proc.returncode
            if name not in SERVICES:
                raise RuntimeError(f"{name} exited ({code}):\n{self.procs[name].log_tail()}")
            recent = self._restarts.setdefault(name, deque(maxlen=self.max_restarts))
            if len(recent) == self.max_restarts and time.monotonic() - recent[0] < 60:
                raise RuntimeError(
                    f"{name} keeps crashing ({self.max_restarts} restarts in a minute):\n"
                    f"{self.procs[name].log_tail()}"
                )
            recent.append(time.monotonic())
            self._event(f"{name} exited with code {code}; restarting it")
            self._start_service(name)
        if self.battles is not None:
            self._top_up()

    def set_budget(self) -> int:
        """Budget = target - samples on disk - battles already in the pipeline."""
        assert self.battles is not None
        pending = asyncio.run(self._pending())
        budget = max(self.battles - self.samples() - pending, 0)
        asyncio.run(self._write_budget(budget))
        return budget

    def _top_up(self) -> None:
        # Work lost on the way (a battle without a valid vote, a dead letter) leaves the run
        # short once the pipeline is idle: mine what is missing.
        missing = self.battles - self.samples() if self.battles is not None else 0
        if missing <= 0:
            return
        budget, pending = asyncio.run(self._budget_and_pending())
        if budget == 0 and pending == 0 and self.samples() < (self.battles or 0):
            self._event(f"pipeline idle {missing} samples short: mining {missing} more")
            asyncio.run(self._write_budget(missing))

    async def _pending(self) -> int:
        return (await self._budget_and_pending())[1]

    async def _budget_and_pending(self) -> tuple[int | None, int]:
        from nats.js.errors import NotFoundError

        from warriorcoder.runtime.bus import Bus, connect
        from warriorcoder.runtime.settings import NatsSettings
        from warriorcoder.stages.challenger.filters import Budget

        cfg = NatsSettings(url=self.nats_url)
        nc = await connect(cfg, name="warriorcoder-up", persistent=False)
        try:
            bus = Bus(nc, cfg, stage="up")
            pending = 0
            for stream in (
                subjects.STREAM_CHALLENGES,
                subjects.STREAM_BATTLES,
                subjects.STREAM_JUDGEMENTS,
            ):
                with contextlib.suppress(NotFoundError):
                    pending += await bus.backlog(stream)
            budget = await Budget(await bus.kv(subjects.KV_SCHEDULE)).remaining()
            return budget, pending
        finally:
            await nc.close()

    async def _write_budget(self, n: int) -> None:
        from warriorcoder.runtime.bus import Bus, connect
        from warriorcoder.runtime.settings import NatsSettings
        from warriorcoder.stages.challenger.filters import Budget

        cfg = NatsSettings(url=self.nats_url)
        nc = await connect(cfg, name="warriorcoder-up", persistent=False)
        try:
            await Budget(await Bus(nc, cfg, stage="up").kv(subjects.KV_SCHEDULE)).set(n)
        finally:
            await nc.close()

    def wait_for_samples(self, n: int, *, timeout: float, poll_s: float = 0.5) -> int:
        """Block until the data directory holds ``n`` samples, supervising meanwhile."""
        deadline = time.monotonic() + timeout
        while (count := self.samples()) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count}/{n} samples after {timeout:g}s")
            self.supervise()
            time.sleep(poll_s)
        return count
