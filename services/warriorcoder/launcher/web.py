"""The leaderboard page of ``warriorcoder up``: HTML that refreshes itself, and its JSON.

Usage::

    async with serve_leaderboard("127.0.0.1", 8787, lambda: snapshot) as port: ...

``GET /`` is the page, ``GET /api/status`` the snapshot as JSON.
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import orjson
from aiohttp import web

from warriorcoder.launcher.status import Snapshot
from warriorcoder.runtime.http import serve_app

__all__ = ["page", "serve_leaderboard"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { padding: .3rem .8rem; border-bottom: 1px solid #ddd; text-align: right; }
th:nth-child(2), td:nth-child(2) { text-align: left; }
.note { color: #a60; font-weight: bold; }
"""


def page(s: Snapshot) -> str:
    rows = "".join(
        "<tr>"
        f"<td>{i}</td><td>{html.escape(r['model'])}</td><td>{r['elo']}</td><td>{r['bt']}</td>"
        f"<td>{r['bt_lower'] if r['bt_lower'] is not None else '-'} .. "
        f"{r['bt_upper'] if r['bt_upper'] is not None else '-'}</td><td>{r['votes']}</td>"
        "</tr>"
        for i, r in enumerate(s.to_json()["leaderboard"], 1)
    )
    rejected = ", ".join(f"{html.escape(k)} {v}" for k, v in sorted(s.rejections.items())) or "-"
    backlog = ", ".join(f"{k} {v}" for k, v in s.backlog.items())
    note = f'<p class="note">{html.escape(s.demo_note)}</p>' if s.demo_note else ""
    target = s.target if s.target else "∞"
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta http-equiv='refresh' content='2'><title>WarriorCoder Arena</title>"
        f"<style>{_STYLE}</style></head><body><h1>WarriorCoder Arena</h1>{note}"
        f"<p>{s.samples}/{target} samples &middot; {s.samples_per_s:.2f} samples/s &middot; "
        f"{s.battles_rated} battles rated &middot; backlog: {backlog} &middot; "
        f"dead letters: {s.dead_letters}</p>"
        "<table><thead><tr><th>#</th><th>model</th><th>elo</th><th>bt</th><th>95% ci</th>"
        f"<th>votes</th></tr></thead><tbody>{rows}</tbody></table>"
        f"<p>rejected challenges: {rejected}</p></body></html>"
    )


@asynccontextmanager
async def serve_leaderboard(
    host: str, port: int, current: Callable[[], Snapshot]
) -> AsyncIterator[int]:
    async def index(_: web.Request) -> web.Response:
        return web.Response(text=page(current()), content_type="text/html")

    async def status(_: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(current().to_json()), content_type="application/json")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/api/status", status)
    async with serve_app(app, host, port) as bound:
        yield bound
