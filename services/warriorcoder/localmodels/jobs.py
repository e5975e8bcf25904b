"""What a local model server asks of a model: jobs in, outcomes out (shared by server and engine).

Usage::

    job = Job("<|im_start|>user\\nHi<|im_end|>\\n", {"max_tokens": 32}, choices=None)
    outcomes = engine.run_batch([job])  # per job: its n completions, or the ValueError
    [done] = outcomes[0]  # Completion(text, finish_reason, tokens)

``Engine`` is the blocking side (``warriorcoder.localmodels.hf_engine.HFEngine``); the server's
``Batcher`` (``warriorcoder.localmodels.batching``) feeds it from the event loop. Neither imports
the other: both speak these types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from warriorcoder.runtime.vllm import Completion

__all__ = ["Completion", "Engine", "Job", "Outcome", "RunBatch", "ShuttingDown"]


@dataclass(frozen=True)
class Job:
    """One request for a model: a raw prompt, validated sampling params, guided choices."""

    prompt: str
    params: Mapping[str, Any] = field(default_factory=dict)
    choices: tuple[str, ...] | None = None


# A request's n completions (text, vLLM's finish reason, tokens), or why it cannot be served.
Outcome = list[Completion] | ValueError
RunBatch = Callable[[Sequence[Job]], list[Outcome]]


class ShuttingDown(RuntimeError):
    """A batch was cut short because the server is stopping (the client may retry elsewhere)."""


class Engine(Protocol):
    """What the server needs of a model (``warriorcoder.localmodels.hf_engine.HFEngine``)."""

    def run_batch(self, jobs: Sequence[Job]) -> list[Outcome]: ...
    def abort(self) -> None: ...
