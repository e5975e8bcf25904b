"""The arena's web page: leaderboard with intervals, ratings over time, win rates, the rejection
funnel, judge statistics and a battle browser, served read-only by ``warriorcoder up`` and by
``warriorcoder web``.

Usage::

    families = families_of(settings)  # {model: family}; None: families unknown
    async with serve_leaderboard(
        "127.0.0.1", 8787, lambda: snapshot, nats_url=url, families=families
    ) as port: ...

Routes: ``GET /`` the page (static HTML, its script and style under ``/static/``), ``GET
/api/status`` the snapshot as JSON, ``GET /api/board`` the snapshot with the charts' data,
``GET /api/battles`` a page of battles (``model``, ``winner``, ``disagree``, ``tested``, ``q``,
``before``, ``limit``), ``GET /api/battles/{seq}`` one battle in full. The page polls the JSON
routes, so it updates without a reload.

The board's ``bias`` is each judge's family bias over the battle window
(``warriorcoder.data.judge_bias``), which needs every model's family from the arena config:
``up`` passes its run's, ``warriorcoder web`` reads ``--config``; without them ``bias.known`` is
false and the page says that families are unknown.

Answers and judge replies are untrusted: the JSON carries them as strings, the page's script
puts them into the document as text only, and every response carries a Content-Security-Policy
that runs no script but the page's own file (no inline script, no other origin).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from warriorcoder.data.judge_bias import bias_to_json, judge_bias
from warriorcoder.launcher.battle_index import BattleIndex
from warriorcoder.launcher.battle_views import (
    BattleQuery,
    battle_detail,
    battle_summary,
    rating_history,
    win_matrix,
)
from warriorcoder.launcher.judge_stats import judge_stats
from warriorcoder.launcher.status import NATS_DOWN, Snapshot
from warriorcoder.proto.messages import Sample
from warriorcoder.runtime.http import serve_app

if TYPE_CHECKING:
    from warriorcoder.runtime.settings import ArenaSettings

__all__ = ["CSP", "board", "build_app", "families_of", "family_bias", "serve_leaderboard"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_STATIC = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
}
_MAX_LIMIT = 100


def families_of(settings: ArenaSettings | None) -> dict[str, str | None] | None:
    """Every model's ``family`` in the arena's settings (None without settings: unknown)."""
    if settings is None:
        return None
    return {name: settings.family_of(name) for name in settings.models}


def family_bias(
    samples: Sequence[Sample], families: Mapping[str, str | None] | None
) -> dict[str, Any]:
    """The board's ``bias``: ``{"known", "families", "judges"}`` with ``judges`` as
    ``bias_to_json`` writes it (by judge name, None where undefined). Unknown families
    (``families`` None) give no rows rather than rates that would treat every judge as neutral."""
    if families is None:
        return {"known": False, "families": None, "judges": {}}
    return {
        "known": True,
        "families": dict(families),
        "judges": bias_to_json(judge_bias(samples, families)),
    }


def board(
    snapshot: Snapshot,
    index: BattleIndex | None,
    *,
    families: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """Everything the page's charts draw: the snapshot, and from the battle window the win-rate
    matrix, the ratings over time, the judges' statistics and their family bias."""
    samples = [s for _, s in index.recent()] if index is not None else []
    return {
        "status": snapshot.to_json(),
        "matrix": win_matrix(samples),
        "history": rating_history(samples),
        "judges": [asdict(j) for j in judge_stats(samples)],
        "bias": family_bias(samples, families),
        "window": {
            "battles": len(samples),
            "first_seq": index.first_seq if index is not None else 0,
            "last_seq": index.last_seq if index is not None else 0,
            "error": index.error if index is not None else "no NATS connection for battles",
        },
    }


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


@web.middleware
async def _headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    resp = await handler(request)
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


def build_app(
    current: Callable[[], Snapshot],
    index: BattleIndex | None,
    *,
    families: Mapping[str, str | None] | None = None,
) -> web.Application:
    """The page's aiohttp application over a snapshot source and a battle index; ``families``
    (model to family, None: unknown) for the judges' family bias."""
    static = {
        name: (resources.files("warriorcoder.launcher").joinpath("static", name).read_bytes(), ct)
        for name, ct in _STATIC.items()
    }
    cache: dict[str, Any] = {}

    async def refreshed() -> None:
        if index is not None:
            await index.refresh()

    async def page(_: web.Request) -> web.Response:
        body, ct = static["index.html"]
        return web.Response(body=body, content_type=ct, charset="utf-8")

    async def asset(request: web.Request) -> web.Response:
        found = static.get(request.match_info["name"])
        if found is None or found[1] == "text/html":
            raise web.HTTPNotFound()
        return web.Response(body=found[0], content_type=found[1], charset="utf-8")

    async def status(_: web.Request) -> web.Response:
        return _json(current().to_json())

    async def board_json(_: web.Request) -> web.Response:
        await refreshed()
        snap = current()
        key = (id(snap), index.version if index is not None else 0)
        if cache.get("key") != key:  # the charts change only with the snapshot or the window
            cache["key"], cache["body"] = key, orjson.dumps(board(snap, index, families=families))
        return web.Response(body=cache["body"], content_type="application/json")

    async def battles(request: web.Request) -> web.Response:
        try:
            query = BattleQuery.parse(request.query)
            before = int(request.query["before"]) if request.query.get("before") else None
            limit = min(int(request.query.get("limit", "20")), _MAX_LIMIT)
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        if limit < 1:
            return _json({"error": f"`limit` must be at least 1, not {limit}"}, 400)
        if index is None:
            return _json({"battles": [], "next_before": None})
        await refreshed()
        try:
            rows, next_before = await index.search(query, before=before, limit=limit)
        except NATS_DOWN as exc:
            return _json({"error": f"NATS unreachable: {exc!r}"}, 503)
        return _json(
            {"battles": [battle_summary(q, s) for q, s in rows], "next_before": next_before}
        )

    async def battle(request: web.Request) -> web.Response:
        try:
            seq = int(request.match_info["seq"])
        except ValueError:
            return _json({"error": "a battle is addressed by its stream sequence"}, 400)
        found = None
        if index is not None:
            try:
                found = await index.get(seq)
            except NATS_DOWN as exc:
                return _json({"error": f"NATS unreachable: {exc!r}"}, 503)
        if found is None:
            return _json({"error": f"no battle at sequence {seq}"}, 404)
        return _json(battle_detail(seq, found))

    app = web.Application(middlewares=[_headers])
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", asset)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/board", board_json)
    app.router.add_get("/api/battles", battles)
    app.router.add_get("/api/battles/{seq}", battle)
    return app


@asynccontextmanager
async def serve_leaderboard(
    host: str,
    port: int,
    current: Callable[[], Snapshot],
    *,
    nats_url: str | None = None,
    window: int = 1000,
    families: Mapping[str, str | None] | None = None,
) -> AsyncIterator[int]:
    """Serve the page on ``host:port`` (0: a free port, yielded); with ``nats_url`` the battle
    browser reads the newest ``window`` samples from the samples stream; ``families`` (model to
    family, None: unknown) for the judges' family bias."""
    async with AsyncExitStack() as stack:
        index = None
        if nats_url is not None:
            index = await stack.enter_async_context(BattleIndex(nats_url, window=window))
        bound = await stack.enter_async_context(
            serve_app(build_app(current, index, families=families), host, port)
        )
        yield bound
