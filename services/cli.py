"""The ``warriorcoder`` command.

Usage::

    warriorcoder serve judge --config arena.yaml      # one service (a process per service)
    warriorcoder up --battles 6                       # an arena on this machine (scripted models)
    warriorcoder schema [--check]                     # regenerate / check proto/schema
    warriorcoder check-config --config arena.yaml     # validate a config and exit
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from services.runtime.settings import ConfigError, load_settings

if TYPE_CHECKING:
    from services.runtime.service import ServiceSpec

SERVICE_NAMES = ("challenger", "responder", "judge", "aggregator")


def _spec(name: str) -> ServiceSpec:
    # Imported here so `warriorcoder schema` does not load tritonclient and friends.
    if name == "challenger":
        from services.challenger import SPEC
    elif name == "responder":
        from services.responder import SPEC
    elif name == "judge":
        from services.judge import SPEC
    else:
        from services.aggregator import SPEC
    return SPEC


def _cmd_serve(args: argparse.Namespace) -> int:
    from services.runtime.logs import setup_logging
    from services.runtime.service import serve

    try:
        settings = load_settings(args.config, os.environ)
    except ConfigError as exc:
        print(f"warriorcoder: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.service.log_level, settings.service.log_format, service=args.service)
    return serve(_spec(args.service), settings, http_port=args.http_port)


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, os.environ)
    except ConfigError as exc:
        print(f"warriorcoder: {exc}", file=sys.stderr)
        return 2
    from services.runtime.templates import ChatTemplate, TemplateError

    for name, model in settings.models.items():
        try:
            ChatTemplate.from_settings(model.chat_template).magpie_prefix("check")
        except TemplateError as exc:
            print(f"warriorcoder: `$.models.{name}.chat_template`: {exc}", file=sys.stderr)
            return 2
    print(
        f"{args.config}: ok ({len(settings.competitors)} competitors, "
        f"{len(settings.judge_pool)} judges)"
    )
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from proto import schema_gen

    if args.check:
        stale = schema_gen.stale()
        if stale:
            print(
                f"stale generated schema: {', '.join(stale)} (run `warriorcoder schema`)",
                file=sys.stderr,
            )
            return 1
        print("proto/schema is up to date")
        return 0
    for path in schema_gen.write():
        print(f"wrote {path}")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from services.devtools.local_arena import LocalArena, count_samples

    data_dir = Path(args.data_dir)
    already = count_samples(data_dir / "samples")
    if already >= args.battles:
        print(f"{data_dir / 'samples'} already holds {already} samples (>= {args.battles})")
        return 0
    print("warriorcoder up: scripted test models (no real LLM) on a local Triton Inference Server")
    print(f"data directory: {data_dir.resolve()}  (logs in {data_dir / 'logs'})")
    start = time.monotonic()
    # Mine only what is missing, so the run ends at N samples instead of overshooting.
    overrides = {"challenger": {"max_challenges": args.battles - already}}
    try:
        with LocalArena(data_dir, config_overrides=overrides) as arena:
            print(
                f"arena running: nats-server, tritonserver and 4 services; "
                f"{already} samples already in the data directory"
            )

            def progress(n: int) -> None:
                rate = (n - already) / max(time.monotonic() - start, 1e-9)
                print(f"  samples {n}/{args.battles}  ({rate:.2f}/s)", flush=True)

            n = arena.wait_for_samples(args.battles, timeout=args.timeout, progress=progress)
            print(
                f"done: {n} samples in {arena.samples_dir} after "
                f"{time.monotonic() - start:.1f}s; stopping"
            )
    except KeyboardInterrupt:
        print("interrupted: stopped all processes", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError) as exc:
        print(f"warriorcoder up failed: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warriorcoder", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run one service until SIGTERM")
    p.add_argument("service", choices=SERVICE_NAMES)
    p.add_argument("--config", required=True, help="arena config (YAML)")
    p.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="port of /metrics, /healthz, /readyz (default: service.http_port)",
    )
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("check-config", help="validate an arena config and its chat templates")
    p.add_argument("--config", required=True)
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("schema", help="generate the JSON Schema and AsyncAPI of the bus")
    p.add_argument("--check", action="store_true", help="fail when the files are stale")
    p.set_defaults(func=_cmd_schema)

    from services.data.commands import register as register_data_commands

    register_data_commands(sub)  # ratings, export

    p = sub.add_parser("up", help="run an arena on this machine (scripted models) until N samples")
    p.add_argument("--data-dir", default="arena-data")
    p.add_argument("--battles", type=int, default=6, help="stop once this many samples exist")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    p.set_defaults(func=_cmd_up)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
