"""Provenance: the versions that made each message, stamped by the stage that produced it.

Usage::

    stamper = Stamper("judge", settings, roster, prompt_set=PROMPT_SET_VERSION)
    inference = stamper.watch(deps.inference)   # records the model versions Triton serves
    stamp = stamper.stamp(["qwen", "llama"])     # a StageStamp for one message
    provenance = assemble(judgement, stamper.stamp([]))   # the aggregator: the sample's

Each stage stamps what it knows on the message it produces (``Challenge.stamp``,
``Battle.stamp``: the responder's, ``Execution.stamp``: the verifier's, when it ran the tests,
``Judgement.stamp``); the aggregator assembles them with its own into ``Sample.provenance``.
Stamps are per stage because a rollout may run stages under different configs or versions at
once: a sample's top-level ``config_hash`` is the one hash every stage agreed on, else
``"mixed"``.

A model's ``version`` is the one Triton named in its latest response to this process
(``ModelInferResponse.model_version``, copied to ``runtime.triton.Generation.model_version``):
the stamp is made right after the message's own calls, so it is theirs except while a model's
version changes under concurrent calls; None until a response named one (Triton then picked by
its version policy, which the config does not state).

``config_hash`` is the SHA-256 (first 16 hex digits) of the arena config as the stage parsed it
(defaults filled in, environment overrides applied), canonical JSON with sorted keys, leaving
out secrets and what only says how to run, not what data is made: ``nats``, ``service``,
``data_dir``, ``shard_max_samples``, each model's endpoint, concurrency, timeouts, outage
probing, DNS re-resolution and local device or batch size, the template file's path (the
template's content is hashed on its own, per model), the challenger's workers and backlog marks,
the verifier's concurrency and the deprecated ``scoring.idempotency_window``. Two replicas
reading the same file under different addresses or scale therefore agree; a change of model,
template preset, sampling, filter, judging or scoring setting changes it. A new project version
that adds a setting changes it too (the defaults are part of the config the data was made
under).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import msgspec

from warriorcoder.proto.messages import (
    Judgement,
    ModelStamp,
    Provenance,
    SamplingParams,
    StageStamp,
)
from warriorcoder.runtime.ports import Generation, Inference
from warriorcoder.runtime.roster import Roster
from warriorcoder.runtime.settings import ArenaSettings, Secret
from warriorcoder.runtime.templates import ChatTemplate

__all__ = [
    "MIXED",
    "OPERATIONAL_KEYS",
    "PROJECT_VERSION",
    "Stamper",
    "assemble",
    "config_hash",
    "template_hash",
]

MIXED = "mixed"  # a sample's value when its stages disagree

try:
    PROJECT_VERSION = version("warriorcoder")
except PackageNotFoundError:  # a source tree that was never installed
    PROJECT_VERSION = "0+unknown"

# Dotted paths left out of the config hash ("*": every model); see the module docstring.
OPERATIONAL_KEYS: tuple[str, ...] = (
    "nats",
    "service",
    "data_dir",
    "shard_max_samples",
    "models.*.triton_url",
    "models.*.max_concurrency",
    "models.*.adaptive_concurrency",
    "models.*.min_concurrency",
    "models.*.initial_concurrency",
    "models.*.latency_tolerance",
    "models.*.timeout_s",
    "models.*.max_outage_s",
    "models.*.probe_interval_s",
    "models.*.resolve_interval_s",
    "models.*.chat_template.file",
    "models.*.local.device",
    "models.*.local.max_batch_size",
    "challenger.concurrency",
    "challenger.low_water",
    "challenger.high_water",
    "challenger.poll_interval_s",
    "verifier.concurrency",
    "scoring.idempotency_window",
)


def _secretless(obj: Any) -> Any:
    if isinstance(obj, Secret):
        return None  # never hashed: a hash of a short secret could be brute-forced
    raise NotImplementedError(f"cannot hash a {type(obj).__name__}")


def _drop(tree: Any, path: list[str]) -> None:
    if not isinstance(tree, dict) or not path:
        return
    head, rest = path[0], path[1:]
    keys = list(tree) if head == "*" else [head]
    for key in keys:
        if key not in tree:
            continue
        if rest:
            _drop(tree[key], rest)
        else:
            del tree[key]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def config_hash(settings: ArenaSettings) -> str:
    """The hash of the data-making part of ``settings`` (16 hex digits; module docstring)."""
    tree = msgspec.to_builtins(settings, enc_hook=_secretless, str_keys=True)
    for key in OPERATIONAL_KEYS:
        _drop(tree, key.split("."))
    return _digest(json.dumps(tree, sort_keys=True, separators=(",", ":")).encode())


def template_hash(template: ChatTemplate) -> str:
    """``sha256:<16 hex>`` of a chat template as prompts are rendered with it: its Jinja source,
    special tokens and whether its leading BOS is left out (``roster.backend_template``)."""
    # roster.backend_template returns a subclass that leaves the BOS out, else the template
    stripped = type(template) is not ChatTemplate
    parts = [
        template.source,
        template.bos_token,
        template.eos_token,
        sorted(template.special_tokens.items()),
        stripped,
    ]
    return "sha256:" + _digest(json.dumps(parts).encode())


class _Watched:
    """An ``Inference`` that records the model version each generation was served by."""

    def __init__(self, inner: Inference, versions: dict[str, str]) -> None:
        self._inner = inner
        self._versions = versions

    def guided(self, model: str) -> bool:
        return self._inner.guided(model)

    def available(self, model: str) -> bool:
        return self._inner.available(model)

    async def wait_available(self, model: str) -> None:
        await self._inner.wait_available(model)

    async def generate(
        self,
        model: str,
        prompt: str,
        params: SamplingParams,
        *,
        stop: list[str] | None = None,
        choices: list[str] | None = None,
        role: str,
    ) -> Generation:
        gen = await self._inner.generate(
            model, prompt, params, stop=stop, choices=choices, role=role
        )
        # Triton's response names the version that served it (runtime.triton.Generation);
        # a backend or fake that does not say leaves the last known one.
        served = getattr(gen, "model_version", None)
        if served:
            self._versions[model] = str(served)
        return gen


class Stamper:
    """Builds one stage's ``StageStamp``s: its config hash, project and prompt-set versions,
    and the models it called with the versions Triton served them at (``watch``)."""

    def __init__(
        self, stage: str, settings: ArenaSettings, roster: Roster, *, prompt_set: str
    ) -> None:
        self.stage = stage
        self.settings = settings
        self.config_hash = config_hash(settings)
        self.prompt_set = prompt_set
        self.versions: dict[str, str] = {}
        self._templates = {name: template_hash(m.template) for name, m in roster.items()}

    def watch(self, inference: Inference) -> Inference:
        """``inference``, recording the version each model was served at for later stamps."""
        return _Watched(inference, self.versions)

    def model(self, name: str) -> ModelStamp:
        """The stamp of model ``name`` as this stage knows it now."""
        cfg = self.settings.models.get(name)
        if cfg is None:
            raise KeyError(f"model {name!r} is not configured under `$.models`")
        return ModelStamp(
            triton_model=cfg.triton_model,
            version=self.versions.get(name),
            chat_template=self._templates.get(name),
        )

    def stamp(
        self, models: Iterable[str], *, sampling: Mapping[str, SamplingParams] | None = None
    ) -> StageStamp:
        """This stage's stamp of a message made with ``models`` (``sampling``: calls recorded
        nowhere else in the message, by what they were for)."""
        return StageStamp(
            stage=self.stage,
            config_hash=self.config_hash,
            project_version=PROJECT_VERSION,
            prompt_set=self.prompt_set,
            models={m: self.model(m) for m in dict.fromkeys(models)},
            sampling=dict(sampling or {}),
        )


def _agreed(values: Iterable[str]) -> str:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else MIXED


def assemble(j: Judgement, aggregator: StageStamp) -> Provenance:
    """The provenance of the sample of ``j``: every stage's stamp (stages of earlier versions
    stamp nothing and are missing) and the sampling of every call the battle records."""
    b = j.battle
    ch = b.challenge
    verifier = None if b.execution is None else b.execution.stamp
    stamps = [s for s in (ch.stamp, b.stamp, verifier, j.stamp) if s is not None]
    stamps.append(aggregator)
    models: dict[str, ModelStamp] = {}
    for s in stamps:
        for name, m in s.models.items():
            known = models.get(name)
            if known is None or (known.version is None and m.version is not None):
                models[name] = m
    sampling: dict[str, SamplingParams] = {"mining": ch.sampling}
    for s in stamps:
        sampling.update(s.sampling)
    sampling["attacker"] = b.attacker_answer.sampling
    sampling["defender"] = b.defender_answer.sampling
    if b.tests is not None and b.tests.sampling is not None:
        sampling["tests"] = b.tests.sampling
    for v in j.votes:
        if v.sampling is not None:
            sampling[f"judge.{v.judge}"] = v.sampling
    return Provenance(
        config_hash=_agreed(s.config_hash for s in stamps),
        project_version=_agreed(s.project_version for s in stamps),
        prompt_set=_agreed(s.prompt_set for s in stamps),
        judge_mode=j.position_mode,
        models=models,
        sampling=sampling,
        stages={s.stage: s for s in stamps},
    )
