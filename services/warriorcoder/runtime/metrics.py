"""Prometheus metrics of every service: ``warriorcoder_`` prefix, base units, no per-battle labels.

Usage::

    from warriorcoder.runtime import metrics
    metrics.MESSAGES.labels(stage="judge", outcome="ack").inc()

All metrics live in the default registry, served on ``/metrics`` by ``warriorcoder.runtime.http``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Up to ten minutes: a long LLM generation on a busy backend.
_LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)

INFO = Gauge("warriorcoder_service_info", "Running service", ["service", "version"])

MESSAGES = Counter(
    "warriorcoder_messages_total",
    "Messages handled by a stage, by outcome (ack, retry, dead_letter)",
    ["stage", "outcome"],
)
STAGE_SECONDS = Histogram(
    "warriorcoder_stage_seconds",
    "Time to handle one message in a stage",
    ["stage"],
    buckets=_STAGE_BUCKETS,
)
IN_FLIGHT = Gauge("warriorcoder_in_flight", "Messages being handled now", ["stage"])
DEAD_LETTERS = Counter(
    "warriorcoder_dead_letters_total",
    "Messages sent to the dead-letter stream",
    ["stage", "reason"],
)
DEAD_LETTER_FAILURES = Counter(
    "warriorcoder_dead_letter_failures_total",
    "Messages terminated although their dead letter could not be published (logged instead)",
    ["stage"],
)
NATS_RETRIES = Counter(
    "warriorcoder_nats_retries_total",
    "JetStream calls retried while JetStream was unavailable (leader election, restart)",
    ["op"],
)
PUBLISHED = Counter("warriorcoder_published_total", "Messages published, by subject", ["subject"])

INFERENCE_SECONDS = Histogram(
    "warriorcoder_inference_seconds",
    "Latency of one LLM generation on Triton",
    ["model", "role"],
    buckets=_LLM_BUCKETS,
)
INFERENCE_REQUESTS = Counter(
    "warriorcoder_inference_requests_total",
    "LLM generation requests, by outcome (ok, timeout, retryable_error, error)",
    ["model", "role", "outcome"],
)
GENERATED_CHARS = Counter(
    "warriorcoder_generated_characters_total",
    "Characters of generated text",
    ["model", "role"],
)
GENERATED_TOKENS = Counter(
    "warriorcoder_generated_tokens_total",
    "Tokens generated, as the backend counts them (where it reports them: vLLM backend 24.12+)",
    ["model", "role"],
)
INFERENCE_CONCURRENCY_LIMIT = Gauge(
    "warriorcoder_inference_concurrency_limit",
    "Requests a replica may have in flight to one model endpoint now (adaptive, capped by "
    "max_concurrency)",
    ["model", "endpoint"],
)
INFERENCE_IN_FLIGHT = Gauge(
    "warriorcoder_inference_in_flight",
    "Requests a replica has in flight to one model endpoint now",
    ["model", "endpoint"],
)
MODEL_READY = Gauge(
    "warriorcoder_model_ready",
    "Whether Triton reports a model this service calls ready (1) or it is down (0); a down model "
    "degrades the service (/statusz) without making it unready",
    ["service", "model"],
)
MODEL_CIRCUIT_OPEN = Gauge(
    "warriorcoder_model_circuit_open",
    "Whether a model's circuit is open (1: its calls wait for the backend to come back)",
    ["service", "model"],
)

CHALLENGES_MINED = Counter(
    "warriorcoder_challenges_mined_total", "Instructions mined from attackers", ["attacker"]
)
CHALLENGES_REJECTED = Counter(
    "warriorcoder_challenges_rejected_total",
    "Mined instructions rejected, by reason",
    ["reason"],
)
CHALLENGES_PUBLISHED = Counter(
    "warriorcoder_challenges_published_total", "Challenges published", ["attacker"]
)
QUALITY_SCORES = Histogram(
    "warriorcoder_challenge_quality_score",
    "Quality scores given to mined instructions (0: unparseable)",
    buckets=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
)
BACKLOG = Gauge("warriorcoder_backlog_messages", "Messages waiting in a work stream", ["stream"])

BATTLES = Counter("warriorcoder_battles_total", "Battles answered by both competitors")
VOTES = Counter(
    "warriorcoder_votes_total", "Judge votes, by judge and outcome", ["judge", "outcome"]
)
JUDGE_POSITION = Counter(
    "warriorcoder_judge_position_total",
    "Judges' two-order verdicts: consistent (same winner both ways) or inconsistent",
    ["judge", "result"],
)
REASKS = Counter("warriorcoder_judge_reasks_total", "Judge calls repeated for a verdict", ["judge"])

SAMPLES = Counter("warriorcoder_samples_total", "Training samples written", ["winner"])
BATTLES_UNDECIDED = Counter(
    "warriorcoder_battles_undecided_total", "Battles with no valid judge vote (no sample)"
)
DUPLICATES = Counter(
    "warriorcoder_duplicates_total", "Redelivered battles recognised and not applied again"
)
RATING_CONFLICTS = Counter(
    "warriorcoder_rating_conflicts_total", "Optimistic-concurrency retries on the ratings"
)
ELO = Gauge("warriorcoder_elo_rating", "Online Elo rating", ["model"])

# Sandboxed test runs take up to the sandbox's wall limit (default 20 s), most well under one.
_SANDBOX_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60)

VERIFIER_BATTLES = Counter(
    "warriorcoder_verifier_battles_total",
    "Battles the verifier passed on to the judges: verified (tests run) or unverified (no "
    "usable tests)",
    ["result"],
)
VERIFIER_RUNS = Counter(
    "warriorcoder_verifier_runs_total",
    "Answers run against their battle's tests, by model and outcome (passed: every test "
    "passed; failed, no_code, timeout, sandbox_error)",
    ["model", "outcome"],
)
VERIFIER_TESTS = Counter(
    "warriorcoder_verifier_tests_total",
    "Tests run against a model's answers (a run without code or killed at a limit counts every "
    "test, none passed; sandbox errors count none): the pass rate's denominator",
    ["model"],
)
VERIFIER_TESTS_PASSED = Counter(
    "warriorcoder_verifier_tests_passed_total",
    "Tests a model's answers passed: the pass rate's numerator",
    ["model"],
)
VERIFIER_TIMEOUTS = Counter(
    "warriorcoder_verifier_timeouts_total",
    "Answers killed at the sandbox's wall-clock or CPU limit",
    ["model"],
)
VERIFIER_SANDBOX_SECONDS = Histogram(
    "warriorcoder_verifier_sandbox_seconds",
    "Wall time of one sandboxed test run (runs that used the sandbox: ran or timed out)",
    buckets=_SANDBOX_BUCKETS,
)
