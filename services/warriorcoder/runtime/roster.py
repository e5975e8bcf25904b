"""The models a service calls, each with its chat template, sampling per role and guided choice.

Usage::

    roster = Roster.from_settings(settings, settings.judge_pool)
    judge = roster["qwen"]
    prompt = judge.template.render(messages, add_generation_prompt=True)
    params = judge.sampling["judge"]
    choices = VERDICT_CHOICES if judge.guided else None

Each chat template is built once per process, here, in its form for the backend: vLLM tokenizes
the prompt text *with* special tokens (Triton's vLLM backend passes ``text_input`` to
``engine.generate`` as a plain prompt), so a tokenizer that adds a BOS (Llama 3, DeepSeek) would
put a second one before the template's own. Unless the model says its tokenizer adds none
(``tokenizer_adds_bos: false``), the template's leading BOS is therefore left out of everything
it renders (``render``, ``conversation``, ``magpie_prefix``); the model then sees exactly one BOS.
The sampling of the response, judge, quality and tests roles comes from ``settings.sampling``;
mining samples a temperature x top-p grid and stays with the challenger.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from warriorcoder.proto.messages import SamplingParams
from warriorcoder.runtime.settings import ArenaSettings, RoleSampling
from warriorcoder.runtime.templates import ChatTemplate

__all__ = ["ROLES", "Roster", "RosterModel", "SamplingRole", "backend_template"]

SamplingRole = Literal["response", "judge", "quality", "tests"]
ROLES: tuple[SamplingRole, ...] = ("response", "judge", "quality", "tests")


@dataclass(frozen=True, slots=True)
class RosterModel:
    """One model as a stage uses it."""

    name: str
    template: ChatTemplate
    sampling: Mapping[SamplingRole, SamplingParams]
    guided: bool  # the backend takes vLLM's guided choice (verdicts, quality scores)


class Roster(Mapping[str, RosterModel]):
    """The models of one service by name; a read-only mapping."""

    def __init__(self, models: Iterable[RosterModel]) -> None:
        self._models = {m.name: m for m in models}

    @classmethod
    def from_settings(cls, settings: ArenaSettings, names: Iterable[str]) -> Roster:
        """The roster of ``names`` (the models a stage calls), as configured in ``settings``."""
        sampling = {role: _params(getattr(settings.sampling, role)) for role in ROLES}
        return cls(
            RosterModel(
                name=name,
                template=backend_template(
                    ChatTemplate.from_settings(settings.models[name].chat_template),
                    tokenizer_adds_bos=settings.models[name].tokenizer_adds_bos,
                ),
                sampling=sampling,
                guided=settings.models[name].guided_choice,
            )
            for name in dict.fromkeys(names)
        )

    def __getitem__(self, name: str) -> RosterModel:
        return self._models[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)


class _BackendTemplate(ChatTemplate):
    """A chat template whose renderings leave out its leading BOS (the tokenizer adds it)."""

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
        text = super().render(messages, add_generation_prompt=add_generation_prompt)
        return text.removeprefix(self.bos_token) if self.bos_token else text


def backend_template(template: ChatTemplate, *, tokenizer_adds_bos: bool) -> ChatTemplate:
    """``template`` as prompts for a vLLM backend need it: without its leading BOS when the
    model's tokenizer adds one (``template`` itself is left as it is)."""
    if not tokenizer_adds_bos or not template.bos_token:
        return template
    stripped = _BackendTemplate.__new__(_BackendTemplate)
    stripped.__dict__.update(template.__dict__)  # the compiled template and tokens, shared
    return stripped


def _params(cfg: RoleSampling) -> SamplingParams:
    return SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
