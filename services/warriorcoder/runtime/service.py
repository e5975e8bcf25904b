"""Running one service process: resources in dependency order, readiness, graceful drain.

Usage (the entry point is the only caller)::

    from warriorcoder.stages import load
    exit_code = serve(load("judge"), settings)

Resources are entered into one ``AsyncExitStack`` in dependency order (NATS, JetStream topology,
Triton clients, HTTP endpoints, the stage's own ``setup``) and closed in reverse. SIGTERM or SIGINT
sets the stop event: the service stops fetching, finishes or releases in-flight messages, then NATS
is drained (a drain that fails is logged and the connection closed).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import AsyncExitStack
from typing import Any

from nats.aio.client import Client as NATS

from warriorcoder.about import __version__
from warriorcoder.runtime import metrics
from warriorcoder.runtime.bus import Bus, connect
from warriorcoder.runtime.http import serve_http
from warriorcoder.runtime.settings import ArenaSettings
from warriorcoder.runtime.stage import Deps, Stage
from warriorcoder.runtime.triton import TritonPool

__all__ = ["run_service", "serve"]

log = logging.getLogger(__name__)


async def run_service(
    stage: Stage[Any],
    settings: ArenaSettings,
    stop: asyncio.Event,
    *,
    http_port: int | None = None,
) -> None:
    """Run ``stage`` until ``stop`` is set (or its ``run()`` returns), then drain."""
    metrics.INFO.labels(service=stage.name, version=__version__).set(1)
    svc = settings.service
    async with AsyncExitStack() as stack:
        nc = await connect(settings.nats, name=f"warriorcoder-{stage.name}")
        stack.push_async_callback(_drain, nc, svc.drain_timeout_s)
        bus = Bus(nc, settings.nats, stage=stage.name)
        await bus.ensure_topology()
        names = stage.models(settings)
        triton = await stack.enter_async_context(TritonPool(settings.models, names=names))

        # Ready = able to serve: NATS connected and not draining. A model that is down only
        # degrades the service (its calls wait, their messages stay held): making every pod
        # unready then would block node drains behind the PodDisruptionBudgets.
        async def ready() -> list[str]:
            problems = [] if nc.is_connected else ["nats: not connected"]
            if stop.is_set():
                problems.append("service: draining")
            return problems

        async def degraded() -> list[str]:
            problems = []
            for model, ok in (await triton.ready()).items():
                circuit_open = not triton.available(model)
                metrics.MODEL_READY.labels(service=stage.name, model=model).set(ok)
                metrics.MODEL_CIRCUIT_OPEN.labels(service=stage.name, model=model).set(circuit_open)
                if not ok:
                    problems.append(f"triton: model {model!r} not ready")
                elif circuit_open:
                    problems.append(f"triton: model {model!r} circuit open (calls waiting)")
            return problems

        port = await stack.enter_async_context(
            serve_http(
                svc.http_host,
                svc.http_port if http_port is None else http_port,
                ready=ready,
                service=stage.name,
                degraded=degraded,
            )
        )
        deps = Deps.build(settings, names, inference=triton, bus=bus)
        log.info("service started", extra={"http_port": port, "models": triton.names})
        if stage.run is not None:
            await stage.run(deps, stop)
        elif stage.consumes is not None and stage.setup is not None:
            c = stage.consumes
            handler = await stack.enter_async_context(stage.setup(deps))
            await bus.consume(
                c.stream,
                c.durable,
                c.type,
                handler,
                stop=stop,
                max_in_flight=svc.max_in_flight,
                drain_timeout_s=svc.drain_timeout_s,
                max_ack_pending=c.max_ack_pending,
            )
        log.info("service stopping: draining")


async def _drain(nc: NATS, timeout_s: float) -> None:
    """Drain NATS (flush what we published, unsubscribe); close it when the drain fails."""
    try:
        await asyncio.wait_for(nc.drain(), timeout=timeout_s)
    except Exception as exc:
        log.warning("nats drain failed: closing the connection", extra={"error": repr(exc)})
        if not nc.is_closed:
            try:
                await nc.close()
            except Exception as close_exc:
                log.warning("nats close failed", extra={"error": repr(close_exc)})


def serve(stage: Stage[Any], settings: ArenaSettings, *, http_port: int | None = None) -> int:
    """Process entry: install signal handlers, run until SIGTERM/SIGINT, return an exit code.

    Shutdown is bounded: once stopped, the service gets ``drain_timeout_s`` plus a few seconds to
    drain (longer when NATS or a backend is down and calls are still retrying), then whatever is
    left is cancelled, so a stopped service always exits within the pod's grace period.
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        service = asyncio.create_task(run_service(stage, settings, stop, http_port=http_port))
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({service, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not service.done():
                grace = settings.service.drain_timeout_s + _SHUTDOWN_SLACK_S
                done, _ = await asyncio.wait({service}, timeout=grace)
                if not done:
                    log.warning("shutdown exceeded %.0fs: cancelling what is left", grace)
                    service.cancel()
        finally:
            stopped.cancel()
            await asyncio.gather(stopped, return_exceptions=True)
        try:
            await service
        except asyncio.CancelledError:
            if not stop.is_set():
                raise

    try:
        asyncio.run(main())
    except Exception:
        log.exception("service failed")
        return 1
    return 0


# Beyond the drain itself: closing the Triton channels and the HTTP endpoints.
_SHUTDOWN_SLACK_S = 5.0
