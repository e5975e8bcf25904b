"""An arena on one machine: nats-server, a local Triton with scripted models, the four services.

Usage::

    with LocalArena(data_dir) as arena:
        arena.wait_for_samples(6)

Interim form of ``warriorcoder up``: the model backends are scripted test models served by a real
Triton Inference Server (PyTriton), so the whole pipeline runs with no GPU and no model download.
The JetStream store, logs, config and samples all live in ``data_dir``; a second run on the same
directory resumes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

from services.aggregator.dataset import SHARD_GLOB
from services.devtools.launch import (
    ManagedProcess,
    start_nats,
    start_scripted_triton,
    start_service,
)
from services.devtools.scripted import load_models

__all__ = ["SCRIPTED_MODELS", "SERVICES", "LocalArena", "count_samples", "scripted_arena_config"]

SCRIPTED_MODELS = Path(__file__).with_name("scripted-arena-models.yaml")
SERVICES = ("aggregator", "judge", "responder", "challenger")
_PRESETS = ("chatml", "llama3", "deepseek-coder")  # distinct templates exercise each renderer


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
        "sampling": {
            "challenge": {"temperatures": [1.0, 1.2], "top_ps": [0.95, 0.99], "max_tokens": 256},
            "quality": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 128},
            "response": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 512},
            "judge": {"temperature": 1.0, "top_p": 0.995, "max_tokens": 256},
        },
        "challenger": {"low_water": 2, "high_water": 6, "concurrency": 2, "poll_interval_s": 0.2},
        "nats": {"url": nats_url, "ack_wait_s": 30, "retry_delay_s": 0.5},
        "service": {"log_format": "json", "drain_timeout_s": 10},
        "data_dir": str(data_dir / "samples"),
    }
    for key, value in overrides.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    return tree


def count_samples(samples_dir: Path) -> int:
    """Complete sample lines in the shards of a data directory."""
    n = 0
    for path in samples_dir.glob(SHARD_GLOB):
        with path.open("rb") as f:
            n += sum(1 for line in f if line.endswith(b"\n") and line.strip())
    return n


class LocalArena:
    """Start everything in ``__enter__``, stop it in reverse in ``__exit__``."""

    def __init__(self, data_dir: Path, *, config_overrides: dict[str, Any] | None = None):
        self.data_dir = data_dir.resolve()
        self.overrides = config_overrides or {}
        self.procs: dict[str, ManagedProcess] = {}
        self._stack = ExitStack()
        self.config_path = self.data_dir / "arena.yaml"

    @property
    def samples_dir(self) -> Path:
        return self.data_dir / "samples"

    def __enter__(self) -> LocalArena:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _own(self, proc: ManagedProcess) -> ManagedProcess:
        self.procs[proc.name] = proc
        self._stack.callback(proc.stop)
        return proc

    def _start(self) -> None:
        logs = self.data_dir / "logs"
        nats = self._own(start_nats(self.data_dir / "nats", log_path=logs / "nats-server.log"))
        names = [m.name for m in load_models(SCRIPTED_MODELS)]
        triton = self._own(
            start_scripted_triton(SCRIPTED_MODELS, names, log_path=logs / "triton.log")
        )
        tree = scripted_arena_config(
            names,
            triton_grpc=f"127.0.0.1:{triton.ports['grpc']}",
            nats_url=f"nats://127.0.0.1:{nats.ports['client']}",
            data_dir=self.data_dir,
            **self.overrides,
        )
        self.config_path.write_text(yaml.safe_dump(tree, sort_keys=False))
        for service in SERVICES:
            self._own(start_service(service, self.config_path, log_path=logs / f"{service}.log"))

    def dead(self) -> list[str]:
        return [name for name, p in self.procs.items() if not p.alive()]

    def wait_for_samples(
        self, n: int, *, timeout: float, progress: Any = None, poll_s: float = 0.5
    ) -> int:
        """Block until the data directory holds ``n`` samples; raise if a process dies."""
        deadline = time.monotonic() + timeout
        count = count_samples(self.samples_dir)
        while count < n:
            if dead := self.dead():
                tails = "\n".join(f"--- {d}\n{self.procs[d].log_tail()}" for d in dead)
                raise RuntimeError(f"process(es) exited: {', '.join(dead)}\n{tails}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count}/{n} samples after {timeout:g}s")
            time.sleep(poll_s)
            new = count_samples(self.samples_dir)
            if new != count and progress is not None:
                progress(new)
            count = new
        return count


@contextmanager
def local_arena(data_dir: Path, **kwargs: Any) -> Iterator[LocalArena]:
    with LocalArena(data_dir, **kwargs) as arena:
        yield arena
