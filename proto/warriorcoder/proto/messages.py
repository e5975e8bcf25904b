"""Every message on the WarriorCoder bus, as frozen msgspec Structs.

Usage::

    from warriorcoder.proto.messages import Challenge, decode, encode
    data = encode(challenge)           # bytes for NATS
    msg = decode(data, Challenge)      # validated, typed

Wire schemas evolve openly: decoders ignore unknown fields, new fields get defaults, types never
change. Each message carries a namespaced, versioned ``type`` tag set once on its class. The
documents kept in KV buckets and shards (ratings, cursor, budget, rejection counts, shard lines)
live beside these in ``warriorcoder.proto.state``.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta

__all__ = [
    "AdmittedEmbedding",
    "Answer",
    "Battle",
    "Challenge",
    "ChallengeTests",
    "DeadLetter",
    "Execution",
    "Judgement",
    "Message",
    "ModelStamp",
    "Provenance",
    "RunResult",
    "Sample",
    "SamplingParams",
    "ScoreCard",
    "StageStamp",
    "Turn",
    "Vote",
    "battle_id",
    "decode",
    "encode",
]

ModelName = Annotated[
    str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
MessageId = Annotated[str, Meta(pattern=r"^[0-9a-f]{32}$")]
Timestamp = Annotated[float, Meta(ge=0)]  # seconds since the Unix epoch
Role = Literal["attacker", "defender"]


def battle_id(attacker: str, defender: str, normalised_instruction: str) -> str:
    """Deterministic id of a battle: every later message reuses it (``Nats-Msg-Id``)."""
    h = hashlib.sha256()
    for part in (attacker, defender, normalised_instruction):
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()[:32]


class _Base(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=False
):
    """Base of every wire message: frozen, keyword-only, tagged by ``type``."""


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    """Sampling used for one LLM call (as sent to the backend)."""

    temperature: Annotated[float, Meta(ge=0)]
    top_p: Annotated[float, Meta(gt=0, le=1)]
    max_tokens: Annotated[int, Meta(ge=1)]
    seed: int | None = None


class ModelStamp(msgspec.Struct, frozen=True, kw_only=True):
    """One model as a stage called it: the Triton model name, the version Triton served and the
    chat template the prompts were rendered with."""

    triton_model: str
    # The model version Triton reported serving (its response's ``model_version``); None when
    # no call of this process got one back (the server's version policy chose, unrecorded).
    version: str | None = None
    chat_template: str | None = None  # "sha256:<16 hex>" of the template as sent (None: not used)


class StageStamp(msgspec.Struct, frozen=True, kw_only=True):
    """What one stage knew when it produced a message: its config, code and prompts, the models
    it called for this message and the sampling of calls recorded nowhere else (the quality
    score's). ``config_hash`` is ``warriorcoder.runtime.provenance.config_hash`` of the stage's
    arena config."""

    stage: str
    config_hash: str
    project_version: str
    prompt_set: str
    models: dict[str, ModelStamp] = {}
    sampling: dict[str, SamplingParams] = {}


class Provenance(msgspec.Struct, frozen=True, kw_only=True):
    """The versions that made a sample, assembled by the aggregator from every stage's stamp.

    ``config_hash``, ``project_version`` and ``prompt_set`` are the value every stage agreed on,
    or ``"mixed"`` when stages ran under different ones (a rollout): ``stages`` then says which
    ran what. ``models``: every model that took part (miner, quality scorer, both fighters, the
    test writer, the judges). ``sampling``: every call, by what it was for (``mining``,
    ``quality``, ``attacker``, ``defender``, ``tests``, ``judge.<model>``).
    """

    config_hash: str
    project_version: str
    prompt_set: str
    judge_mode: str
    models: dict[str, ModelStamp] = {}
    sampling: dict[str, SamplingParams] = {}
    stages: dict[str, StageStamp] = {}


class Challenge(_Base, tag="warriorcoder.v1.challenge", frozen=True, kw_only=True):
    """An instruction mined from the attacker's own chat-template prefix."""

    id: MessageId
    attacker: ModelName
    defender: ModelName
    language: str
    instruction: Annotated[str, Meta(min_length=1)]
    sampling: SamplingParams
    created_at: Timestamp
    quality: int | None = None  # the quality scorer's 1-10 rating, when scoring is on
    quality_scorer: ModelName | None = None
    stamp: StageStamp | None = None  # the challenger's (provenance)


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """One competitor's answer to a challenge."""

    model: ModelName
    role: Role
    text: str
    latency_s: Annotated[float, Meta(ge=0)]
    sampling: SamplingParams
    # vLLM's finish reason when the backend reports it: "length" means the answer was cut at
    # sampling.max_tokens (truncated), "stop" that the model ended it; None when unknown.
    finish_reason: str | None = None
    output_tokens: Annotated[int, Meta(ge=0)] | None = None  # generated tokens, when reported

    @property
    def truncated(self) -> bool:
        """The answer was cut at ``sampling.max_tokens``, not finished by the model."""
        return self.finish_reason == "length"


class ChallengeTests(msgspec.Struct, frozen=True, kw_only=True):
    """Unit tests for a challenge, written by a model that fights in neither corner.

    ``code`` is one test module (pytest functions for Python) that imports the answer's code as
    ``from solution import *``; ``tests`` names its test functions. ``usable`` is False when the
    writer gave no parseable tests after its re-ask: the battle goes on, unverified.
    """

    writer: ModelName
    language: str
    framework: Literal["pytest"] = "pytest"
    code: str
    tests: list[str]
    usable: bool
    asked: Annotated[int, Meta(ge=1)]  # LLM calls made, re-ask included
    sampling: SamplingParams | None = None


RunStatus = Literal["ran", "no_code", "timeout", "sandbox_error"]


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    """One answer's code run against the challenge's tests in the sandbox.

    ``status``: "ran" (the test run finished; counts are meaningful), "no_code" (no code block
    in the answer), "timeout" (killed at the wall or CPU limit), "sandbox_error" (the sandbox
    itself failed: not the answer's fault, never counted against it). ``stdout``/``stderr`` are
    cut at the sandbox's output limit (``output_truncated``).
    """

    status: RunStatus
    passed: Annotated[int, Meta(ge=0)] = 0
    failed: Annotated[int, Meta(ge=0)] = 0
    errored: Annotated[int, Meta(ge=0)] = 0  # collection or fixture errors, tests not run
    total: Annotated[int, Meta(ge=0)] = 0
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = False
    wall_s: Annotated[float, Meta(ge=0)] = 0.0
    cpu_s: Annotated[float, Meta(ge=0)] = 0.0


class Execution(msgspec.Struct, frozen=True, kw_only=True):
    """Both answers run against the challenge's tests, by the verifier."""

    attacker: RunResult
    defender: RunResult
    sandbox: str  # the isolation used, e.g. "bubblewrap 0.8.0"
    verified_at: Timestamp
    stamp: StageStamp | None = None  # the verifier's (provenance)


class Battle(_Base, tag="warriorcoder.v1.battle", frozen=True, kw_only=True):
    """A challenge with both answers (and, with the verifier on, its tests and their results)."""

    id: MessageId
    challenge: Challenge
    attacker_answer: Answer
    defender_answer: Answer
    answered_at: Timestamp
    tests: ChallengeTests | None = None  # written by an uninvolved model (verifier on)
    execution: Execution | None = None  # set by the verifier
    stamp: StageStamp | None = None  # the responder's (provenance)


Verdict = Literal["A", "B", "tie", "invalid"]
Winner = Literal["attacker", "defender", "tie", "invalid"]


class Vote(msgspec.Struct, frozen=True, kw_only=True):
    """One judge's vote on a battle, with the raw verdict of every order it judged.

    ``orders`` lists which answer was shown first for each verdict ("attacker" means the attacker's
    answer was Assistant A). ``winner`` is the combined vote: orders that disagree make a tie; an
    order with no parseable verdict after one re-ask makes the vote invalid.
    """

    judge: ModelName
    orders: list[Role]
    verdicts: list[Verdict]
    winner: Winner
    asked: Annotated[int, Meta(ge=1)]  # LLM calls made, re-asks included
    # The judge's raw reply per order (its reasoning and verdict), aligned with ``orders``; a
    # re-asked order keeps its last reply. Empty in votes of earlier versions.
    reasons: list[str] = []
    sampling: SamplingParams | None = None  # the judge call's sampling
    # The vote's weight in the tallies t_A/t_B and in its Elo update: ``judge.same_family_weight``
    # for a judge of a fighter's family under ``judge.family_policy: weight``, else 1.
    weight: Annotated[float, Meta(ge=0, le=1)] = 1.0


class Judgement(_Base, tag="warriorcoder.v1.judgement", frozen=True, kw_only=True):
    """A battle with every uninvolved judge's vote."""

    id: MessageId
    battle: Battle
    votes: list[Vote]
    position_mode: Literal["both", "alternate"]
    judged_at: Timestamp
    stamp: StageStamp | None = None  # the judge's (provenance)


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    """One chat message in the format SFT trainers take."""

    role: Literal["system", "user", "assistant"]
    content: str


class ScoreCard(msgspec.Struct, frozen=True, kw_only=True):
    """How the winner was chosen (PAPER.md: local score, Elo expectation, final score)."""

    attacker_votes: float  # t_A: judge votes for the attacker, a tie giving each 0.5
    defender_votes: float
    local_attacker: float  # x(A>B)
    elo_expected_attacker: float  # E(A>B) from the ratings before this battle
    final_attacker: float  # e_A = alpha * E(A>B) + (1 - alpha) * x(A>B)
    final_defender: float
    alpha: float
    # With an execution weight w > 0 (scoring.execution.weight) and comparable test results,
    # x_exec(A>B) (1, 0 or 0.5 as the attacker passed more, fewer or as many tests) and w; the
    # final scores then use x' = (1 - w) * x + w * x_exec in place of x. Ratings never do.
    execution_attacker: float | None = None
    execution_weight: float = 0.0


class Sample(_Base, tag="warriorcoder.v1.sample", frozen=True, kw_only=True):
    """A training sample: SFT messages, a preference pair and the battle's audit fields."""

    id: MessageId
    messages: list[Turn]
    prompt: str
    chosen: str
    rejected: str
    language: str
    winner: ModelName
    loser: ModelName
    winner_role: Role
    attacker: ModelName
    defender: ModelName
    votes: list[Vote]
    score: ScoreCard
    ratings_before: dict[str, float]
    ratings_after: dict[str, float]
    created_at: Timestamp
    # The battle's place in the arena's rating history (the ratings document's ``battles`` after
    # it was applied): votes replayed in this order give the live Elo ratings exactly.
    rating_seq: Annotated[int, Meta(ge=1)] | None = None
    # Execution evidence (verifier on): the tests, both runs, and whether the preference is
    # backed by them (the chosen answer passed strictly more tests than the rejected one).
    tests: ChallengeTests | None = None
    execution: Execution | None = None
    test_backed: bool = False
    decided_by: Literal["votes", "execution"] = "votes"  # execution: it broke a tie
    # The versions that made the sample (config hash, models, templates, prompts, sampling of
    # every call); None in samples of earlier versions.
    provenance: Provenance | None = None


class DeadLetter(_Base, tag="warriorcoder.v1.dead_letter", frozen=True, kw_only=True):
    """A message no stage could process, kept with the reason."""

    stage: str
    reason: str
    error: str
    subject: str
    deliveries: int
    payload: str  # the original bytes (or a prefix: payload_truncated), UTF-8 with replacement
    message_id: str | None = None
    failed_at: Timestamp
    # The original message's size and SHA-256 (hex), so a truncated payload can be matched.
    payload_bytes: int | None = None
    payload_sha256: str | None = None
    payload_truncated: bool = False


class AdmittedEmbedding(_Base, tag="warriorcoder.v1.embedding", frozen=True, kw_only=True):
    """The sentence embedding of an admitted instruction, shared by the challengers' diversity
    gates (unit length, so a dot product is the cosine similarity)."""

    id: MessageId
    model: str
    vector: list[float]


Message = Challenge | Battle | Judgement | Sample | DeadLetter | AdmittedEmbedding

_encoder = msgspec.json.Encoder()
_decoders: dict[object, msgspec.json.Decoder] = {}
T = TypeVar("T")


def encode(msg: msgspec.Struct) -> bytes:
    """Encode a wire message as JSON bytes."""
    return _encoder.encode(msg)


def decode(data: bytes | str, type_: type[T]) -> T:
    """Decode and validate ``data`` as ``type_`` (raises ``msgspec.ValidationError``)."""
    dec = _decoders.get(type_)
    if dec is None:
        dec = _decoders[type_] = msgspec.json.Decoder(type_)
    return dec.decode(data)
