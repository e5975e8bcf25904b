"""Running one service process: resources in dependency order, readiness, graceful drain.

Usage (the entry point is the only caller)::

    exit_code = serve("judge", settings)

Resources are entered into one ``AsyncExitStack`` in dependency order (NATS, JetStream topology,
Triton clients, HTTP endpoints) and closed in reverse. SIGTERM or SIGINT sets the stop event: the
service stops fetching, finishes or releases in-flight messages, then NATS is drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TypeVar

from warriorcoder.about import __version__
from warriorcoder.runtime import metrics
from warriorcoder.runtime.bus import Bus, connect
from warriorcoder.runtime.http import serve_http
from warriorcoder.runtime.settings import ArenaSettings
from warriorcoder.runtime.triton import TritonPool

__all__ = ["Deps", "Handler", "ServiceSpec", "run_service", "serve"]

log = logging.getLogger(__name__)


T = TypeVar("T")
Handler = Callable[[T], Awaitable[None]]  # handles one decoded message of a stage


@dataclass(frozen=True, slots=True)
class Deps:
    """What a service's ``run()`` receives: its settings and its clients."""

    settings: ArenaSettings
    bus: Bus
    triton: TritonPool

    async def consume(
        self, stream: str, durable: str, type_: type[T], handler: Handler[T], stop: asyncio.Event
    ) -> None:
        """Run ``handler`` on the stage's work stream until ``stop``, within the service's
        in-flight and drain limits."""
        svc = self.settings.service
        await self.bus.consume(
            stream,
            durable,
            type_,
            handler,
            stop=stop,
            max_in_flight=svc.max_in_flight,
            drain_timeout_s=svc.drain_timeout_s,
        )


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    run: Callable[[Deps, asyncio.Event], Awaitable[None]]
    models: Callable[[ArenaSettings], list[str]]  # the Triton models the service calls


async def run_service(
    spec: ServiceSpec,
    settings: ArenaSettings,
    stop: asyncio.Event,
    *,
    http_port: int | None = None,
) -> None:
    """Run ``spec`` until ``stop`` is set (or its ``run()`` returns), then drain."""
    metrics.INFO.labels(service=spec.name, version=__version__).set(1)
    async with AsyncExitStack() as stack:
        nc = await connect(settings.nats, name=f"warriorcoder-{spec.name}")

        async def _drain() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), timeout=settings.service.drain_timeout_s)

        stack.push_async_callback(_drain)
        bus = Bus(nc, settings.nats, stage=spec.name)
        await bus.ensure_topology()
        triton = await stack.enter_async_context(
            TritonPool(settings.models, names=spec.models(settings))
        )

        async def ready() -> list[str]:
            problems = [] if nc.is_connected else ["nats: not connected"]
            for model, ok in (await triton.ready()).items():
                if not ok:
                    problems.append(f"triton: model {model!r} not ready")
            return problems

        port = await stack.enter_async_context(
            serve_http(
                settings.service.http_host,
                settings.service.http_port if http_port is None else http_port,
                ready=ready,
                service=spec.name,
            )
        )
        log.info("service started", extra={"http_port": port, "models": triton.names})
        await spec.run(Deps(settings=settings, bus=bus, triton=triton), stop)
        log.info("service stopping: draining")


def serve(spec: ServiceSpec, settings: ArenaSettings, *, http_port: int | None = None) -> int:
    """Process entry: install signal handlers, run until SIGTERM/SIGINT, return an exit code."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_service(spec, settings, stop, http_port=http_port)

    try:
        asyncio.run(main())
    except Exception:
        log.exception("service failed")
        return 1
    return 0
