"""Operational HTTP endpoints of a service: ``/metrics``, ``/healthz``, ``/readyz``, ``/statusz``.

Usage::

    async with serve_http(host, port, ready=check, service="judge", degraded=models) as bound_port:
        ...

``/healthz`` answers while the event loop runs (liveness). ``/readyz`` separates "cannot serve"
from "a dependency is degraded": it answers 503 only with what ``ready`` returns (NATS not
connected, the service draining), never because a model is down. A model that is down is waited
out (its calls pause, their messages stay held), so pods stay Ready through a model server's
restart and PodDisruptionBudgets do not block node drains. What ``degraded`` returns (models
down, circuits open) is reported by ``/statusz``, 200 in both cases, with ``status`` ``ok``,
``degraded`` or ``unready``; ``degraded`` is also awaited before each ``/metrics`` scrape, so the
per-model gauges it sets are current in every scrape.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

__all__ = ["ReadyCheck", "serve_app", "serve_http", "status"]

# Returns the list of problems; empty means ready (or, for ``degraded``, nothing degraded).
ReadyCheck = Callable[[], Awaitable[list[str]]]


async def _nothing() -> list[str]:
    return []


def status(service: str, problems: list[str], degraded: list[str]) -> dict[str, Any]:
    """The ``/statusz`` document: ``unready`` when there are problems, else ``degraded`` when
    something is degraded, else ``ok``."""
    state = "unready" if problems else "degraded" if degraded else "ok"
    return {
        "status": state,
        "ready": not problems,
        "service": service,
        "problems": problems,
        "degraded": degraded,
    }


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _app(ready: ReadyCheck, service: str, degraded: ReadyCheck) -> web.Application:
    started = time.time()

    async def metrics(_: web.Request) -> web.Response:
        await degraded()  # refreshes the per-dependency gauges before they are read
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return _json(
            {"status": "ok", "service": service, "uptime_s": round(time.time() - started, 1)}
        )

    async def readyz(_: web.Request) -> web.Response:
        problems = await ready()
        body = {"ready": not problems, "service": service, "problems": problems}
        return _json(body, 503 if problems else 200)

    async def statusz(_: web.Request) -> web.Response:
        # 200 even when unready: this reports, the probes decide.
        return _json(status(service, await ready(), await degraded()))

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/statusz", statusz)
    return app


@asynccontextmanager
async def serve_app(app: web.Application, host: str, port: int) -> AsyncIterator[int]:
    """Serve an aiohttp app until the context exits; yields the bound port (0 picks a free one)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        # Inside the cleanup scope: a port already in use must not leak the runner.
        await web.TCPSite(runner, host, port).start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serve_http(
    host: str,
    port: int,
    *,
    ready: ReadyCheck,
    service: str,
    degraded: ReadyCheck | None = None,
) -> AsyncIterator[int]:
    """Serve the endpoints until the context exits; yields the bound port (0 picks a free one).

    ``ready``: why the service cannot serve (``/readyz`` 503); ``degraded``: dependencies that
    are down while the service waits them out (``/statusz``; never fails ``/readyz``).
    """
    app = _app(ready, service, degraded if degraded is not None else _nothing)
    async with serve_app(app, host, port) as bound:
        yield bound
