"""Ask a model for a structured answer, re-asking when its reply cannot be parsed.

Usage::

    asked = await ask(
        inference,
        roster["qwen"],
        lambda reask: judge_messages(question, first, second, reask=reask),
        parse_verdict,
        role="judge",
        choices=VERDICT_CHOICES,
        max_reasks=1,
    )
    label, calls = asked.value, asked.calls   # value None: unparseable after every re-ask

The prompt is the model's own chat template over ``messages(reask)``; the sampling is the model's
for ``role``. ``choices`` are offered as a guided choice only to a model whose backend takes them,
so weak models still answer well-formed; others get free text and the parser. The judge (verdicts)
and the challenger's quality gate (scores) both ask this way; prompts and parsers stay in
``warriorcoder.arena``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from warriorcoder.runtime.ports import Inference
from warriorcoder.runtime.roster import RosterModel, SamplingRole

__all__ = ["Asked", "ask"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Asked(Generic[T]):
    value: T | None  # the parsed answer; None when no reply parsed
    calls: int  # generate calls made: 1 + the re-asks

    @property
    def reasks(self) -> int:
        return self.calls - 1


async def ask(
    inference: Inference,
    model: RosterModel,
    messages: Callable[[bool], list[dict[str, str]]],
    parse: Callable[[str], T | None],
    *,
    role: SamplingRole,
    choices: list[str] | None = None,
    max_reasks: int,
) -> Asked[T]:
    """Ask ``model`` up to ``1 + max_reasks`` times; ``messages(True)`` is the re-ask."""
    guided = choices if model.guided else None
    calls = 0
    for attempt in range(max_reasks + 1):
        prompt = model.template.render(messages(attempt > 0), add_generation_prompt=True)
        gen = await inference.generate(
            model.name, prompt, model.sampling[role], choices=guided, role=role
        )
        calls += 1
        value = parse(gen.text)
        if value is not None:
            return Asked(value, calls)
    return Asked(None, calls)
