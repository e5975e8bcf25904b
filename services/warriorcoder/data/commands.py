"""The ``ratings`` and ``export`` subcommands of ``warriorcoder``.

Usage::

    warriorcoder ratings --votes battles.jsonl [--bootstrap 1000] [--seed 0] [--json]
    warriorcoder export --format sft --out out/sft.jsonl --data-dir data [--card]
    warriorcoder export --format votes --out out/votes.parquet --nats nats://127.0.0.1:4222
    warriorcoder export --format dpo --out out/dpo.jsonl --data-dir data --verified-only --card

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

__all__ = ["cmd_export", "cmd_ratings", "register", "shard_dir"]


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

    p = sub.add_parser("export", help="export samples as sft, dpo, battles or votes data")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    p.add_argument("--out", required=True, metavar="FILE", help="output file: .jsonl or .parquet")
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
        "--verified-only",
        action="store_true",
        help="only test-backed samples: the chosen answer passed strictly more of the "
        "challenge's unit tests than the rejected one (needs the verifier)",
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
        ExportError,
        export,
        only_test_backed,
        output_suffix,
        samples_from_dir,
        samples_from_nats,
    )

    out = Path(args.out)
    try:
        output_suffix(out)
        stats = _read_stats(args.filter_stats) if args.filter_stats else None
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
        if args.card:
            verified_from = len(samples) if args.verified_only else None
            readme = write_card(out, kept, stats, fmt=args.fmt, verified_from=verified_from)
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
