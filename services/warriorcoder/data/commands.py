"""The ``ratings`` and ``export`` subcommands of ``warriorcoder``.

Usage::

    warriorcoder ratings --votes battles.jsonl [--bootstrap 1000] [--seed 0] [--json]
    warriorcoder export --format sft --out out/sft.jsonl --data-dir data [--card]
    warriorcoder export --format votes --out out/votes.parquet --nats nats://127.0.0.1:4222
    warriorcoder export --format dpo --out out/dpo.jsonl --data-dir data --verified-only --card
    warriorcoder export --format trl --out out/trl.parquet --data-dir data --where config_hash=HASH
    warriorcoder export --format hf --out out/dataset --data-dir data --where models.alpha.version=2
    warriorcoder judges --bias --config arena.yaml --data-dir data [--json | --csv bias.csv]

Wired into the CLI with ``warriorcoder.data.commands.register(subparsers)``. Each command returns an
exit code: 0, or 2 with a one-line ``warriorcoder: ...`` message on stderr for a bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["cmd_export", "cmd_judges", "cmd_ratings", "register", "shard_dir"]


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _fail(message: str) -> int:
    print(f"warriorcoder: {message}", file=sys.stderr)
    return 2


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``ratings`` and ``export`` to the CLI's subparsers."""
    from warriorcoder.data.export import FORMATS

    p = sub.add_parser(
        "ratings",
        help="leaderboard from Chatbot Arena votes: online Elo and Bradley–Terry with 95%% CIs",
    )
    p.add_argument(
        "--votes",
        required=True,
        metavar="FILE",
        help='JSONL, one {"model_a", "model_b", "winner"} per line',
    )
    p.add_argument(
        "--bootstrap", type=_count, default=1000, metavar="N", help="resamples (0: no CIs)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument(
        "--json",
        action="store_true",
        help="print {model: {elo, bt, bt_lower, bt_upper, votes}} instead of a table",
    )
    p.set_defaults(func=cmd_ratings)

    p = sub.add_parser(
        "leaderboard", help="the live leaderboard of a running arena (Elo, BT with 95%% CIs)"
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", metavar="FILE", help="the arena config (NATS URL, credentials)")
    where.add_argument("--nats", metavar="URL", help="NATS URL of the arena")
    p.add_argument(
        "--bootstrap", type=_count, default=1000, metavar="N", help="resamples (0: no CIs)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser(
        "judges",
        help="per-judge statistics of an arena's samples: --bias, each judge's family bias "
        "against the neutral panel with 95%% intervals",
    )
    p.add_argument(
        "--bias",
        action="store_true",
        required=True,
        help="same-family vs other-family rates against the panel majority, and their difference",
    )
    p.add_argument(
        "--config", required=True, metavar="FILE", help="the arena config: the models' families"
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--data-dir", metavar="DIR", help="the aggregator's JSONL shards (or the arena's data dir)"
    )
    source.add_argument(
        "--nats", metavar="URL", help="read the samples stream of this NATS (default: the config's)"
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON instead of a table")
    out.add_argument("--csv", metavar="FILE", help="write the rows as CSV to FILE")
    p.set_defaults(func=cmd_judges)

    p = sub.add_parser(
        "export", help="export samples as sft, dpo, battles, votes, trl data or a datasets folder"
    )
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    p.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="output file: .jsonl or .parquet; with --format hf a folder (Dataset.save_to_disk, "
        "with the dataset card as its README.md)",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the aggregator's JSONL shards, or the arena's data directory that holds them in "
        "samples/ (the same DIR as `warriorcoder up --data-dir`)",
    )
    source.add_argument("--nats", metavar="URL", help="read the samples stream of this NATS")
    p.add_argument("--card", action="store_true", help="write a dataset card README.md beside it")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="the arena config: its models' families give the card a judge family bias section",
    )
    p.add_argument(
        "--verified-only",
        action="store_true",
        help="only test-backed samples: the chosen answer passed strictly more of the "
        "challenge's unit tests than the rejected one (needs the verifier)",
    )
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only samples whose provenance has KEY=VALUE, e.g. config_hash=66bce4057e765db2 or "
        "models.alpha.triton_model=qwen (dotted keys; repeat a key for any of its values, give "
        "several keys for all of them)",
    )
    p.add_argument(
        "--filter-stats",
        metavar="FILE",
        help="JSON {reason: rejected count} to include in the card (default with --nats: the "
        "arena's own rejection counts)",
    )
    p.set_defaults(func=cmd_export)


def cmd_ratings(args: argparse.Namespace) -> int:
    from warriorcoder.data.bradley_terry import format_table, leaderboard, rows_to_json
    from warriorcoder.data.votes import VoteFormatError, read_votes

    try:
        votes = read_votes(Path(args.votes))
    except VoteFormatError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot read {args.votes}: {exc.strerror or exc}")
    rows = leaderboard(votes, bootstrap_n=args.bootstrap, seed=args.seed)
    if args.json:
        print(json.dumps(rows_to_json(rows), indent=2))
    else:
        print(format_table(rows))
    return 0


def _read_stats(path: str) -> dict[str, int]:
    from warriorcoder.data.export import ExportError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ExportError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in data.items()
    ):
        raise ExportError(f"{path}: expected a JSON object of reason -> integer count")
    return data


def cmd_export(args: argparse.Namespace) -> int:
    from warriorcoder.data.card import write_card
    from warriorcoder.data.export import (
        HF_FORMAT,
        ExportError,
        export,
        hf_folder,
        only_test_backed,
        output_suffix,
        samples_from_dir,
        samples_from_nats,
    )
    from warriorcoder.data.provenance import parse_where, select

    out = Path(args.out)
    try:
        if args.fmt == HF_FORMAT:  # checked before reading the samples
            hf_folder(out)
        else:
            output_suffix(out)
        where = parse_where(args.where)
        stats = _read_stats(args.filter_stats) if args.filter_stats else None
        families = _families(args.config) if args.config else None  # the card's bias section
        if args.nats:
            samples = asyncio.run(samples_from_nats(args.nats))
            source = args.nats
            if stats is None and args.card:
                stats = asyncio.run(_live(args.nats)).rejections
        else:
            shards = shard_dir(Path(args.data_dir))
            samples = samples_from_dir(shards)
            source = str(shards)
        if not samples:
            raise ExportError(
                f"no samples in {source}: nothing to export (is the arena running, or is this the "
                "right directory?)"
            )
        if where:
            matched = select(samples, where)
            if not matched:
                raise ExportError(
                    f"no sample of the {len(samples)} in {source} matches --where "
                    f"{' '.join(args.where)} (the dataset card lists their provenance)"
                )
            samples = matched
            source = f"{source}, where {' '.join(args.where)}"
        kept = only_test_backed(samples) if args.verified_only else samples
        if not kept:
            ran = sum(1 for s in samples if s.execution is not None)
            raise ExportError(
                f"none of the {len(samples)} samples in {source} is test-backed ({ran} have "
                "execution results): nothing to export with --verified-only (is the verifier on?)"
            )
        count = export(kept, args.fmt, out)
        taken = (
            f"{len(kept)} test-backed of {len(samples)} samples"
            if args.verified_only
            else f"{len(samples)} samples"
        )
        print(f"wrote {count} {args.fmt} records from {taken} ({source}) to {out}")
        if args.card or args.fmt == HF_FORMAT:  # a datasets folder always has its card
            verified_from = len(samples) if args.verified_only else None
            readme = write_card(
                out / "README.md" if args.fmt == HF_FORMAT else out,
                kept,
                stats,
                fmt=args.fmt,
                verified_from=verified_from,
                data_files=[] if args.fmt == HF_FORMAT else None,
                families=families,
            )
            print(f"wrote dataset card {readme}")
    except ExportError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot write {out}: {exc}")
    return 0


def shard_dir(path: Path) -> Path:
    """The folder holding the sample shards: ``path`` itself, or ``path/samples`` when ``path`` is
    an arena's data directory (``warriorcoder up --data-dir``)."""
    from warriorcoder.data.export import ExportError
    from warriorcoder.runtime.shards import SHARD_GLOB

    if not path.is_dir():
        raise ExportError(f"no such data directory: {path}")
    nested = path / "samples"
    if not any(path.glob(SHARD_GLOB)) and nested.is_dir():
        return nested
    return path


async def _live(url: str) -> Any:
    from warriorcoder.data.live import read_live
    from warriorcoder.runtime.settings import NatsSettings

    return await read_live(NatsSettings(url=url))


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from warriorcoder.data.bradley_terry import rows_to_json
    from warriorcoder.data.export import ExportError
    from warriorcoder.data.live import leaderboard_table, live_leaderboard, read_live
    from warriorcoder.data.pass_rates import pass_rates
    from warriorcoder.runtime.settings import ConfigError, NatsSettings, load_settings

    try:
        cfg = (
            load_settings(args.config, os.environ).nats
            if args.config
            else NatsSettings(url=args.nats)
        )
        state = asyncio.run(read_live(cfg))
    except (ConfigError, ExportError) as exc:
        return _fail(str(exc))
    rows = live_leaderboard(state, bootstrap_n=args.bootstrap, seed=args.seed)
    rates = pass_rates(state.samples)
    if args.json:
        models = rows_to_json(rows)
        for model, rate in rates.items():  # with execution results only
            if model in models:
                models[model].update(
                    runs=rate.runs,
                    passed_all=rate.passed_all,
                    pass_rate=rate.pass_rate,
                    mean_pass_fraction=rate.mean_pass_fraction,
                )
        print(
            json.dumps(
                {
                    "battles": state.ratings.battles,
                    "samples": len(state.samples),
                    "rejections": state.rejections,
                    "models": models,
                },
                indent=2,
            )
        )
        return 0
    print(f"battles rated: {state.ratings.battles}   samples: {len(state.samples)}")
    if state.rejections:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(state.rejections.items()))
        print(f"rejected challenges: {counts}")
    print(leaderboard_table(rows, rates) if rows else "no votes yet")
    return 0


def _families(config: str) -> dict[str, str | None]:
    """Each model's family in the arena config at ``config`` (``ModelSettings.family``)."""
    from warriorcoder.data.export import ExportError
    from warriorcoder.runtime.settings import ConfigError, load_settings

    try:
        settings = load_settings(config, os.environ)
    except ConfigError as exc:
        raise ExportError(str(exc)) from None
    return {name: m.family for name, m in settings.models.items()}


def cmd_judges(args: argparse.Namespace) -> int:
    """``warriorcoder judges --bias``: each judge's family bias over the arena's samples."""
    import csv

    from warriorcoder.data.export import ExportError, samples_from_dir, samples_from_nats
    from warriorcoder.data.judge_bias import (
        BIAS_CSV_FIELDS,
        bias_to_csv_rows,
        bias_to_json,
        format_bias_table,
        judge_bias,
    )
    from warriorcoder.runtime.settings import ConfigError, load_settings

    try:
        settings = load_settings(args.config, os.environ)
        families = {name: m.family for name, m in settings.models.items()}
        if args.data_dir:
            source = str(shard_dir(Path(args.data_dir)))
            samples = samples_from_dir(Path(source))
        elif args.nats:
            source = args.nats
            samples = asyncio.run(samples_from_nats(args.nats))
        else:  # the config's NATS, with its credentials
            source = settings.nats.url
            samples = asyncio.run(samples_from_nats(settings=settings.nats))
    except (ConfigError, ExportError) as exc:
        return _fail(str(exc))
    rows = judge_bias(samples, families)
    if args.json:
        print(json.dumps(bias_to_json(rows), indent=2))
    elif args.csv:
        try:
            with open(args.csv, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=BIAS_CSV_FIELDS)
                writer.writeheader()
                writer.writerows(bias_to_csv_rows(rows))
        except OSError as exc:
            return _fail(f"cannot write {args.csv}: {exc.strerror or exc}")
        print(f"wrote the bias of {len(rows)} judges over {len(samples)} samples to {args.csv}")
    else:
        print(f"judge family bias over {len(samples)} samples ({source})")
        print(format_bias_table(rows) if rows else "no valid judge votes")
    return 0
