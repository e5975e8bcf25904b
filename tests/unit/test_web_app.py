"""The page's HTTP surface without NATS: static files with a strict CSP, the snapshot JSON, and
clear errors for bad battle queries."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from warriorcoder.launcher.status import Snapshot
from warriorcoder.launcher.web import CSP, build_app


async def test_routes_headers_and_errors():
    snap = Snapshot(samples=3, target=10, rejections={"duplicate": 2})
    async with TestClient(TestServer(build_app(lambda: snap, None))) as client:
        page = await client.get("/")
        assert page.headers["Content-Security-Policy"] == CSP
        assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
        html = await page.text()
        assert '<script src="/static/app.js" defer></script>' in html and "<table>" in html
        assert "<script>" not in html  # no inline script for the CSP to allow
        js = await client.get("/static/app.js")
        assert js.content_type == "text/javascript" and "textContent" in await js.text()
        assert "innerHTML" not in await js.text()  # model text never goes in as HTML
        assert (await client.get("/static/index.html")).status == 404
        assert (await client.get("/static/../web.py")).status == 404
        status = await (await client.get("/api/status")).json()
        assert (status["samples"], status["target"]) == (3, 10)
        board = await (await client.get("/api/board")).json()
        assert board["status"]["rejections"] == {"duplicate": 2}
        assert board["matrix"] == {"models": [], "rate": [], "games": []}
        assert board["window"]["battles"] == 0 and board["window"]["error"]
        assert await (await client.get("/api/battles")).json() == {
            "battles": [],
            "next_before": None,
        }
        bad = await client.get("/api/battles?disagree=perhaps")
        assert bad.status == 400 and "`disagree`" in (await bad.json())["error"]
        assert (await client.get("/api/battles?limit=-1")).status == 400
        assert (await client.get("/api/battles/1")).status == 404
