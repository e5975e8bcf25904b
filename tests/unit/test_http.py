"""The operational endpoints: readiness fails only on what stops the service serving; degraded
dependencies are reported by /statusz and never fail /readyz."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client import Gauge

from warriorcoder.runtime.http import serve_http, status


class _Checks:
    """What the service's checks return, changed by the test between requests."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.degraded: list[str] = []
        self.degraded_calls = 0

    async def ready(self) -> list[str]:
        return list(self.problems)

    async def down(self) -> list[str]:
        self.degraded_calls += 1
        return list(self.degraded)


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def test_a_degraded_model_keeps_the_service_ready_and_is_reported() -> None:
    checks = _Checks()
    async with (
        serve_http("127.0.0.1", 0, ready=checks.ready, service="judge", degraded=checks.down) as p,
        aiohttp.ClientSession(f"http://127.0.0.1:{p}") as s,
    ):
        assert await _get(s, "/readyz") == (
            200,
            {"ready": True, "service": "judge", "problems": []},
        )
        assert (await _get(s, "/statusz"))[1]["status"] == "ok"

        checks.degraded = ["triton: model 'qwen' not ready"]
        code, body = await _get(s, "/readyz")
        assert code == 200 and body["ready"] is True
        code, body = await _get(s, "/statusz")
        assert code == 200
        assert body == {
            "status": "degraded",
            "ready": True,
            "service": "judge",
            "problems": [],
            "degraded": ["triton: model 'qwen' not ready"],
        }

        checks.problems = ["nats: not connected", "service: draining"]
        code, body = await _get(s, "/readyz")
        assert code == 503
        assert body["problems"] == ["nats: not connected", "service: draining"]
        code, body = await _get(s, "/statusz")
        assert code == 200  # it reports; the probe decides
        assert body["status"] == "unready" and body["ready"] is False
        assert body["degraded"] == ["triton: model 'qwen' not ready"]

        code, _ = await _get(s, "/healthz")
        assert code == 200  # liveness is only the event loop


async def test_each_scrape_refreshes_what_the_degraded_check_sets() -> None:
    checks = _Checks()
    gauge = Gauge("test_http_dependency_up", "a gauge the degraded check sets", ["model"])

    async def down() -> list[str]:
        gauge.labels(model="qwen").set(0 if checks.degraded else 1)
        return await checks.down()

    async with (
        serve_http("127.0.0.1", 0, ready=checks.ready, service="judge", degraded=down) as p,
        aiohttp.ClientSession(f"http://127.0.0.1:{p}") as s,
    ):
        _, text = await _get(s, "/metrics")
        assert 'test_http_dependency_up{model="qwen"} 1.0' in text
        checks.degraded = ["triton: model 'qwen' not ready"]
        _, text = await _get(s, "/metrics")
        assert 'test_http_dependency_up{model="qwen"} 0.0' in text
        assert checks.degraded_calls == 2


async def test_without_a_degraded_check_nothing_is_degraded() -> None:
    checks = _Checks()
    async with (
        serve_http("127.0.0.1", 0, ready=checks.ready, service="verifier") as p,
        aiohttp.ClientSession(f"http://127.0.0.1:{p}") as s,
    ):
        code, body = await _get(s, "/statusz")
    assert code == 200 and body["status"] == "ok" and body["degraded"] == []


def test_status_names_the_worst_state() -> None:
    assert status("judge", [], [])["status"] == "ok"
    assert status("judge", [], ["x"])["status"] == "degraded"
    assert status("judge", ["nats: not connected"], ["x"])["status"] == "unready"
