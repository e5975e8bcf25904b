"""Operational HTTP endpoints of a service: ``/metrics``, ``/healthz`` and ``/readyz``.

Usage::

    async with serve_http(host, port, ready=check, service="judge") as bound_port:
        ...

``/healthz`` answers while the event loop runs; ``/readyz`` calls the service's readiness check
(NATS connected, the Triton models it needs ready) and answers 503 with the reasons otherwise.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

__all__ = ["ReadyCheck", "serve_app", "serve_http"]

# Returns the list of problems; empty means ready.
ReadyCheck = Callable[[], Awaitable[list[str]]]


def _app(ready: ReadyCheck, service: str) -> web.Application:
    started = time.time()

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        body = {"status": "ok", "service": service, "uptime_s": round(time.time() - started, 1)}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def readyz(_: web.Request) -> web.Response:
        problems = await ready()
        body = {"ready": not problems, "service": service, "problems": problems}
        return web.Response(
            body=orjson.dumps(body),
            status=503 if problems else 200,
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
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
    host: str, port: int, *, ready: ReadyCheck, service: str
) -> AsyncIterator[int]:
    """Serve the endpoints until the context exits; yields the bound port (0 picks a free one)."""
    async with serve_app(_app(ready, service), host, port) as bound:
        yield bound
