"""The ``warriorcoder`` command.

Usage::

    warriorcoder serve judge --config arena.yaml      # one service (a process per service)
    warriorcoder up --demo --battles 6                # an arena on this machine
    warriorcoder web --nats nats://nats:4222          # the page of a deployed arena
    warriorcoder schema [--check]                     # regenerate / check the generated schemas
    warriorcoder check-config --config arena.yaml     # validate a config and exit
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from warriorcoder.runtime.settings import ConfigError, load_settings
from warriorcoder.stages import STAGES

SERVICE_NAMES = tuple(STAGES)


def _cmd_serve(args: argparse.Namespace) -> int:
    # Imported here so `warriorcoder schema` does not load tritonclient and the stages.
    from warriorcoder.runtime.logs import setup_logging
    from warriorcoder.runtime.service import serve
    from warriorcoder.stages import load

    try:
        settings = load_settings(args.config, os.environ)
    except ConfigError as exc:
        print(f"warriorcoder: {exc}", file=sys.stderr)
        return 2
    stage = load(args.service)
    for name in stage.models(settings):
        if settings.models[name].is_local:
            print(
                f"warriorcoder: `$.models.{name}.local`: a local model is served by "
                "`warriorcoder up`; a service needs `triton_url: host:port` of a running Triton",
                file=sys.stderr,
            )
            return 2
    setup_logging(settings.service.log_level, settings.service.log_format, service=args.service)
    return serve(stage, settings, http_port=args.http_port)


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, os.environ)
    except ConfigError as exc:
        print(f"warriorcoder: {exc}", file=sys.stderr)
        return 2
    from warriorcoder.runtime.templates import ChatTemplate, TemplateError

    for name, model in settings.models.items():
        tpl = model.chat_template
        if model.is_local and tpl.file is None and tpl.preset is None:
            continue  # its own template, found by `warriorcoder up` beside the weights
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
    from warriorcoder.proto import schema_gen

    if args.check:
        stale = schema_gen.stale()
        if stale:
            print(
                f"stale generated schema: {', '.join(stale)} (run `warriorcoder schema`)",
                file=sys.stderr,
            )
            return 1
        print("proto/warriorcoder/proto/schema is up to date")
        return 0
    for path in schema_gen.write():
        print(f"wrote {path}")
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

    from warriorcoder.data.commands import register as register_data_commands

    register_data_commands(sub)  # ratings, export

    from warriorcoder.launcher.command import register as register_up

    register_up(sub)

    from warriorcoder.launcher.web_command import register as register_web

    register_web(sub)  # the page for a deployed arena
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
