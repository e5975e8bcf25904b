"""A Hugging Face Hub dataset card (README.md) for an export of arena samples.

Usage::

    export(samples, "sft", Path("out/sft.jsonl"))
    write_card(Path("out/sft.jsonl"), samples, stats={"too_short": 12}, fmt="sft")

``target`` may be a data file (the card goes beside it and its ``configs`` point at that file),
a directory (every ``.jsonl``/``.parquet`` file in it becomes a config) or a ``.md`` path. The card
has the YAML front matter the Hub reads (``configs``, ``license``, ``task_categories``, ``tags``,
``size_categories``), then counts (samples, winners, languages, battles per pair, votes), the
leaderboard (online Elo and Bradley–Terry with bootstrap 95% CIs from the judges' votes), the
execution evidence when the verifier ran answers (per model: answers run, passed all, mean pass
fraction; the share of test-backed samples; what decided the winners), the models, the
provenance (samples per config hash with their project and prompt-set versions and judge mode;
each model's Triton name, chat template and served versions; the sampling of every call) and the
filter statistics when given (reason → rejected count). Given the models' ``families``
(``ModelSettings.family``), a judge family bias section (``warriorcoder.data.judge_bias``: each
judge's same-family and other-family rates against the neutral panel, with 95% intervals, and
the votes counted below weight 1 under ``judge.family_policy: weight``). ``verified_from`` (the
samples before ``--verified-only`` kept the test-backed ones) makes the card say so. The output
depends only on its inputs (no clock), so re-running an export gives the same card.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from warriorcoder.data.bradley_terry import format_rating, leaderboard
from warriorcoder.data.export import SUFFIXES, has_evidence
from warriorcoder.data.judge_bias import BIAS_HEADER, bias_table_rows, judge_bias
from warriorcoder.data.pass_rates import execution_stats
from warriorcoder.data.votes import votes_from_samples
from warriorcoder.proto.messages import Sample

__all__ = ["render_card", "write_card"]

_FIELDS = {
    "sft": "`id`, `messages` (a user turn with the challenge and an assistant turn with the "
    "winning answer; the conversational format of TRL's `SFTTrainer`)",
    "dpo": "`id`, `prompt`, `chosen` (the winning answer), `rejected` (the losing one); the "
    "preference format of TRL's `DPOTrainer`",
    "battles": "the full battle record: `messages`, `prompt`, `chosen`, `rejected`, `language`, "
    "`winner`, `loser`, `winner_role`, `attacker`, `defender`, every judge's `votes`, the "
    "`score` card, `ratings_before`, `ratings_after`, `created_at`; with execution evidence "
    "also `tests`, `execution` (both answers' runs with their output), `test_backed` and "
    "`decided_by`",
    "votes": "`model_a` (attacker), `model_b` (defender), `winner` (`model_a`, `model_b` or "
    "`tie`), `judge`, `battle_id`, `weight` (the vote's weight in the Elo ratings: below 1 for "
    "a judge of a fighter's family under `judge.family_policy: weight`): one line per valid "
    "judge vote (Chatbot Arena format)",
    "trl": "`id`, `prompt` (the user turn), `chosen` and `rejected` (the winning and the losing "
    "answer as assistant turns), `test_backed`: the conversational preference format of TRL's "
    "`DPOTrainer`, which applies the chat template itself",
    "hf": "a Hugging Face `datasets` folder (`datasets.load_from_disk`), one row per sample: "
    "`id`, `messages` (for TRL's `SFTTrainer`), `prompt`, `chosen`, `rejected` (conversational, "
    "for TRL's `DPOTrainer`), `test_backed`, `language`, `winner`, `loser`, `config_hash`; "
    "pick a trainer's columns with `Dataset.select_columns`",
}
_EVIDENCE_FIELDS = (
    "With execution evidence, each record also has `test_backed` (the chosen answer passed "
    "strictly more tests than the rejected one), `decided_by` (`votes`, or `execution` when "
    "the test results chose a winner the votes alone did not), `tests` (the unit-test module "
    "`code`, its test `names`, its `writer`, `language`, `framework`, `usable`) and "
    "`execution` (the `sandbox` and, for the `chosen` and the `rejected` answer, `status`, "
    "`passed`, `failed`, `errored`, `total`, `exit_code`, `wall_s`, `cpu_s`, "
    "`output_truncated` and the `summary` the judges saw). To re-run the tests, save the "
    "answer's code as `solution.py` beside the test module and run `pytest` on it."
)


def _size_category(n: int) -> str:
    bounds = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ]
    for bound, name in bounds:
        if n < bound:
            return name
    return "10M<n<100M"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _front_matter(data_files: Sequence[str], n: int, license: str) -> str:
    if len(data_files) == 1:
        configs: list[dict[str, Any]] = [
            {"config_name": "default", "data_files": [{"split": "train", "path": data_files[0]}]}
        ]
    else:
        configs = []
        for k, name in enumerate(data_files):
            config: dict[str, Any] = {
                "config_name": Path(name).stem,
                "data_files": [{"split": "train", "path": name}],
            }
            if k == 0:
                config["default"] = True
            configs.append(config)
    front: dict[str, Any] = {
        "license": license,
        "task_categories": ["text-generation"],
        "tags": ["code", "warriorcoder", "synthetic"],
        "size_categories": [_size_category(n)],
        "pretty_name": "WarriorCoder Arena samples",
    }
    if configs:
        front["configs"] = configs
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n"


def render_card(
    samples: Sequence[Sample],
    stats: Mapping[str, int] | None = None,
    *,
    data_files: Sequence[str] = (),
    fmt: str | None = None,
    license: str = "apache-2.0",
    bootstrap_n: int = 1000,
    seed: int = 0,
    verified_from: int | None = None,
    families: Mapping[str, str | None] | None = None,
) -> str:
    """The card's Markdown text (front matter included); ``verified_from``: the number of
    samples the test-backed ones were kept from (``--verified-only``); ``families``: each
    model's family, for the judge family bias section (left out without)."""
    n = len(samples)
    lines = [_front_matter(data_files, n, license)]
    lines += [
        "# WarriorCoder Arena samples",
        "",
        "Code instructions and answers grown from battles between expert LLMs (the WarriorCoder "
        "method, arXiv 2412.17395): an attacker model writes a coding challenge from its own "
        "chat-template prefix, attacker and defender answer it, the uninvolved models judge both "
        "answers, and the answer with the higher final score (judges' votes combined with Elo "
        "ratings) is kept. The answers are model outputs: check the competitors' own licenses "
        "before use.",
        "",
    ]
    if data_files:
        lines += ["## Files", ""]
        lines += [f"- `{name}`" for name in data_files]
        lines.append("")
    if verified_from is not None:
        lines += [
            f"Only test-backed samples: the {n} of {verified_from} samples whose chosen answer "
            "passed strictly more of the challenge's unit tests than the rejected one.",
            "",
        ]
    if fmt is not None and fmt in _FIELDS:
        lines += ["## Fields", "", f"`{fmt}`: {_FIELDS[fmt]}.", ""]
        if fmt in ("sft", "dpo", "trl", "hf") and has_evidence(samples):
            lines += [_EVIDENCE_FIELDS, ""]

    all_votes = [v for s in samples for v in s.votes]
    invalid = sum(1 for v in all_votes if v.winner == "invalid")
    ties = sum(1 for v in all_votes if v.winner == "tie")
    lines += ["## Counts", ""]
    summary: list[tuple[str, object]] = [
        ("samples (battles)", n),
        ("judge votes", len(all_votes)),
        ("valid votes", len(all_votes) - invalid),
        ("invalid votes", invalid),
        ("tie votes", ties),
    ]
    if samples:
        first = min(s.created_at for s in samples)
        last = max(s.created_at for s in samples)
        summary.append(("judged between (UTC)", f"{_utc(first)} and {_utc(last)}"))
    lines += _table(["what", "count"], summary)
    lines.append("")

    if samples:
        won = Counter(s.winner for s in samples)
        won_attacking = Counter(s.winner for s in samples if s.winner_role == "attacker")
        fought = Counter(m for s in samples for m in (s.attacker, s.defender))
        lines += ["### Winners", ""]
        lines += _table(
            ["model", "samples won", "as attacker", "as defender", "battles fought"],
            [
                (m, won[m], won_attacking[m], won[m] - won_attacking[m], fought[m])
                for m in sorted(fought, key=lambda m: (-won[m], m))
            ],
        )
        roles = Counter(s.winner_role for s in samples)
        lines += [
            "",
            f"Winning answer by role: attacker {roles['attacker']}, defender {roles['defender']}.",
            "",
        ]
        lines += ["### Languages", ""]
        languages = Counter(s.language for s in samples)
        by_language = sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))
        lines += _table(["language", "samples"], by_language)
        lines.append("")
        attackers = sorted({s.attacker for s in samples})
        defenders = sorted({s.defender for s in samples})
        pairs = Counter((s.attacker, s.defender) for s in samples)
        lines += ["### Battles by attacker (rows) and defender (columns)", ""]
        lines += _table(
            ["attacker \\ defender", *defenders],
            [(a, *(pairs[a, d] for d in defenders)) for a in attackers],
        )
        lines.append("")

    votes = votes_from_samples(samples)
    lines += ["## Leaderboard", ""]
    if votes:
        rows = leaderboard(votes, bootstrap_n=bootstrap_n, seed=seed)
        lines += [
            f"From the {len(votes)} valid judge votes (attacker as model A, defender as model B). "
            "`bt`: Bradley–Terry maximum-likelihood rating (Elo scale, mean 1000) with its "
            f"bootstrap 95% interval ({bootstrap_n} resamples of the votes, seed {seed}); "
            "`+inf`/`-inf`: the votes separate the model (it never lost, or never won, against "
            "the others), so no finite rating is supported; "
            "`elo`: online Elo replaying the votes in order (K 40).",
            "",
        ]
        lines += _table(
            ["rank", "model", "bt", "95% CI", "elo", "votes"],
            [
                (
                    k,
                    r.model,
                    format_rating(r.bt),
                    "-"
                    if r.bt_lower is None or r.bt_upper is None
                    else f"{format_rating(r.bt_lower)} .. {format_rating(r.bt_upper)}",
                    f"{r.elo:.1f}",
                    r.votes,
                )
                for k, r in enumerate(rows, 1)
            ],
        )
    else:
        lines.append("No valid judge votes.")
    lines.append("")

    lines += _execution_section(samples)
    if families is not None:
        lines += _bias_section(samples, families)

    competitors = sorted({m for s in samples for m in (s.attacker, s.defender)})
    judges = sorted({v.judge for v in all_votes})
    lines += ["## Models", ""]
    lines.append(f"- competitors: {', '.join(competitors) or '-'}")
    lines.append(f"- judges: {', '.join(judges) or '-'}")
    lines.append("")

    lines += _provenance_section(samples)

    if stats is not None:
        lines += ["## Filter statistics", "", "Challenges rejected before battle, by reason:", ""]
        items = sorted(stats.items(), key=lambda kv: (-kv[1], kv[0]))
        lines += _table(["reason", "rejected"], [*items, ("total", sum(stats.values()))])
        lines.append("")
    return "\n".join(lines)


def _bias_section(samples: Sequence[Sample], families: Mapping[str, str | None]) -> list[str]:
    """Each judge's family bias (``warriorcoder.data.judge_bias``) and the down-weighted votes."""
    lines = ["## Judge family bias", ""]
    known = sorted({f for f in families.values() if f is not None})
    lines += [
        f"Model families: {', '.join(known) or 'none set'}. For each judge, `same-family`: of its "
        "votes on battles where exactly one fighter is of its family and the neutral panel (the "
        "battle's other judges of neither fighter's family) chose the other fighter, the share "
        "it gave its own family's fighter; `other-family`: of its votes on battles without a "
        "fighter of its family, the share against the panel's choice. `bias` is their "
        "difference (about 0 for a fair judge). Wilson 95% intervals, Newcombe's for the "
        "difference; (hits/trials). A judge kept out of its family's battles "
        "(`judge.family_policy: exclude`) has no same-family trials.",
        "",
    ]
    rows = judge_bias(samples, families)
    if not rows:
        return [*lines, "No valid judge votes.", ""]
    lines += _table(BIAS_HEADER, bias_table_rows(rows))
    weighted = [v for s in samples for v in s.votes if v.weight != 1.0]
    if weighted:
        weights = ", ".join(f"{w:g}" for w in sorted({v.weight for v in weighted}))
        lines += [
            "",
            f"{len(weighted)} votes by judges of a fighter's family counted with weight "
            f"{weights} (`judge.family_policy: weight`) in the tallies and the Elo ratings.",
        ]
    lines.append("")
    return lines


def _percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _execution_section(samples: Sequence[Sample]) -> list[str]:
    """Pass-rate statistics, when the verifier ran any answer ([] otherwise)."""
    stats = execution_stats(samples)
    if not stats.with_execution:
        return []
    lines = [
        "## Execution",
        "",
        "Each answer's code was run in a sandbox against unit tests for the challenge, written "
        "by a model that fought in neither corner. An answer counts as run unless the sandbox "
        "itself failed; it passed all when every test of a non-empty suite passed; its pass "
        "fraction is the share of tests passed (0 without code or on a timeout).",
        "",
    ]
    lines += _table(
        ["what", "count"],
        [
            ("samples with execution results", stats.with_execution),
            ("samples with usable tests", stats.with_tests),
            (
                "test-backed samples (share of those run)",
                f"{stats.test_backed} ({_percent(stats.test_backed_share)})",
            ),
            ("sandbox errors (runs left out)", stats.sandbox_errors),
            *((f"decided by {k}", v) for k, v in stats.decided_by.items()),
        ],
    )
    lines += ["", "### Pass rates", ""]
    lines += _table(
        ["model", "answers run", "passed all", "pass rate", "mean pass fraction"],
        [
            (
                r.model,
                r.runs,
                r.passed_all,
                _percent(r.pass_rate),
                "-" if r.mean_pass_fraction is None else f"{r.mean_pass_fraction:.3f}",
            )
            for r in sorted(stats.models.values(), key=lambda r: (-(r.pass_rate or 0), r.model))
        ],
    )
    lines.append("")
    return lines


def _versions(values: Counter[str | None]) -> str:
    return ", ".join(f"{v or 'unknown'} ({n})" for v, n in sorted(values.items(), key=str))


def _provenance_section(samples: Sequence[Sample]) -> list[str]:
    """The versions that made the samples: per config hash, the models, the sampling."""
    lines = ["## Provenance", ""]
    recorded = [s.provenance for s in samples if s.provenance is not None]
    if not recorded:
        return [*lines, "No provenance recorded (samples of an earlier version).", ""]
    lines += [
        "Every sample records the versions that made it (`provenance` in the `battles` "
        "format). `config_hash` is a hash of the arena config its stages ran under (defaults "
        "filled in; secrets, addresses, scale and timeouts left out), `mixed` when its stages "
        "ran under different ones (during a rollout; `stages` says which ran what). Export one "
        "setup's data with `warriorcoder export --where config_hash=<hash>`, or any dotted "
        "provenance key (e.g. `models.<model>.version`).",
        "",
    ]
    groups: dict[str, list[Any]] = {}
    for p in recorded:
        groups.setdefault(p.config_hash, []).append(p)
    rows: list[tuple[object, ...]] = [
        (
            f"`{h}`",
            len(ps),
            _versions(Counter(p.project_version for p in ps)),
            _versions(Counter(p.prompt_set for p in ps)),
            _versions(Counter(p.judge_mode for p in ps)),
        )
        for h, ps in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]
    if len(recorded) < len(samples):
        rows.append(("(none: an earlier version)", len(samples) - len(recorded), "-", "-", "-"))
    lines += _table(["config_hash", "samples", "project version", "prompt set", "judge mode"], rows)
    models: dict[tuple[str, str, str | None], Counter[str | None]] = {}
    for p in recorded:
        for name, m in p.models.items():
            models.setdefault((name, m.triton_model, m.chat_template), Counter())[m.version] += 1
    lines += ["", "### Models", ""]
    lines += _table(
        ["model", "Triton model", "chat template", "served versions (samples)"],
        [
            (name, triton, f"`{tpl}`" if tpl else "-", _versions(versions))
            for (name, triton, tpl), versions in sorted(models.items(), key=str)
        ],
    )
    calls: Counter[tuple[str, float, float, int]] = Counter()
    for p in recorded:
        for call, sp in p.sampling.items():
            calls[call, sp.temperature, sp.top_p, sp.max_tokens] += 1
    lines += ["", "### Sampling (every call, seeds aside)", ""]
    lines += _table(
        ["call", "temperature", "top_p", "max_tokens", "samples"],
        [(*key, n) for key, n in sorted(calls.items())],
    )
    lines.append("")
    return lines


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def write_card(
    target: Path | str,
    samples: Sequence[Sample],
    stats: Mapping[str, int] | None = None,
    *,
    fmt: str | None = None,
    data_files: Sequence[str] | None = None,
    license: str = "apache-2.0",
    bootstrap_n: int = 1000,
    seed: int = 0,
    verified_from: int | None = None,
    families: Mapping[str, str | None] | None = None,
) -> Path:
    """Write README.md for ``target`` (a data file, a directory or a .md path); returns its path.

    ``data_files`` (paths relative to the card) overrides the files the card points at.
    """
    target = Path(target)
    if target.is_dir() or not target.suffix:
        readme, files = target / "README.md", None
    elif target.suffix.lower() == ".md":
        readme, files = target, None
    else:
        readme, files = target.parent / "README.md", [target.name]
    if data_files is not None:
        files = list(data_files)
    elif files is None:
        directory = readme.parent
        files = sorted(
            p.name
            for p in directory.glob("*")
            if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
        )
    readme.parent.mkdir(parents=True, exist_ok=True)
    text = render_card(
        samples,
        stats,
        data_files=files,
        fmt=fmt,
        license=license,
        bootstrap_n=bootstrap_n,
        seed=seed,
        verified_from=verified_from,
        families=families,
    )
    readme.write_text(text, encoding="utf-8")
    return readme
