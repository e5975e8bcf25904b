"""The page's HTTP surface without NATS: static files with a strict CSP, the snapshot JSON, clear
errors for bad battle queries, and the judges' family bias on the board (numbers by hand)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from tests.helpers import arena_tree
from tests.unit.test_web_views import make_sample, vote
from warriorcoder.cli import main
from warriorcoder.launcher.status import Snapshot
from warriorcoder.launcher.web import CSP, board, build_app, families_of, family_bias
from warriorcoder.proto.messages import Sample, Vote
from warriorcoder.runtime.settings import parse_settings


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


# -- the judges' family bias on the board -------------------------------------------------------

FAMILIES = {"alpha": "qwen", "beta": "llama", "gamma": None, "qj": "qwen", "n1": None, "n2": None}
AD = ["attacker", "defender"]
FOR = {"attacker": ["A", "B"], "defender": ["B", "A"]}  # both orders' verdicts for a role


def _v(judge: str, winner: str) -> Vote:
    return vote(judge, winner, AD, FOR.get(winner, ["invalid", "invalid"]))


def _bias_samples() -> list[Sample]:
    """qj (qwen) backs alpha (qwen) against beta in 3 of the 4 battles where the neutral n1 and
    n2 both pick beta, and sides with them in both battles without a qwen fighter; in battle 7
    qj's vote is invalid and the neutrals split."""
    out = [
        make_sample(n, "alpha", "beta", winner_role="defender",
                    votes=[_v("qj", "attacker" if n < 4 else "defender"),
                           _v("n1", "defender"), _v("n2", "defender")])
        for n in range(1, 5)
    ]  # fmt: skip
    out += [
        make_sample(n, "beta", "gamma", votes=[_v(j, "attacker") for j in ("qj", "n1", "n2")])
        for n in (5, 6)
    ]
    out.append(
        make_sample(7, "alpha", "beta",
                    votes=[_v("qj", "invalid"), _v("n1", "attacker"), _v("n2", "defender")])
    )  # fmt: skip
    return out


def test_family_bias_by_hand():
    bias = family_bias(_bias_samples(), FAMILIES)
    assert bias["known"] is True and bias["families"] == FAMILIES
    assert list(bias["judges"]) == ["n1", "n2", "qj"]
    qj = bias["judges"]["qj"]
    # 6 valid votes (7's is invalid), 4 on battles with alpha: all 4 had the panel (n1, n2) on
    # beta and qj backed alpha in 3. Battles 5, 6 (no qwen fighter): qj with the panel, 0 of 2.
    assert (qj["family"], qj["votes"], qj["own_family_battles"]) == ("qwen", 6, 4)
    same, other = qj["same_family"], qj["other_family"]
    assert (same["hits"], same["trials"], same["rate"]) == (3, 4, 0.75)
    # Wilson, z = 1.96: 3 of 4 -> [0.3006, 0.9544]; 0 of 2 -> [0, 0.6576].
    assert (same["lower"], same["upper"]) == pytest.approx((0.3006, 0.9544), abs=1e-4)
    assert (other["hits"], other["trials"], other["rate"]) == (0, 2, 0.0)
    assert (other["lower"], other["upper"]) == pytest.approx((0.0, 0.6576), abs=1e-4)
    # Newcombe: 0.75 - sqrt((0.75 - 0.3006)^2 + 0.6576^2), 0.75 + sqrt((0.9544 - 0.75)^2 + 0).
    assert qj["bias"] == 0.75
    assert (qj["bias_lower"], qj["bias_upper"]) == pytest.approx((-0.0465, 0.9544), abs=1e-4)
    # n1: no family, so no same-family rate and no bias. Its panel is n2 where alpha fights (qj
    # is qwen) and n2 + qj in 5, 6: it went against the panel only in 7, 1 of 7 -> [0.0257, 0.5131].
    n1 = bias["judges"]["n1"]
    assert (n1["family"], n1["votes"], n1["own_family_battles"]) == (None, 7, 0)
    assert n1["same_family"] == {"hits": 0, "trials": 0, "rate": None, "lower": None, "upper": None}
    assert (n1["other_family"]["hits"], n1["other_family"]["trials"]) == (1, 7)
    assert (n1["other_family"]["lower"], n1["other_family"]["upper"]) == pytest.approx(
        (0.0257, 0.5131), abs=1e-4
    )
    assert n1["bias"] is None and n1["bias_lower"] is None and n1["bias_upper"] is None
    assert bias["judges"]["n2"]["other_family"]["hits"] == 1  # against n1's attacker in 7


def test_the_board_says_when_families_are_unknown():
    samples = _bias_samples()
    assert family_bias(samples, None) == {"known": False, "families": None, "judges": {}}
    assert board(Snapshot(), None)["bias"] == {"known": False, "families": None, "judges": {}}
    known = board(Snapshot(), None, families=FAMILIES)["bias"]  # no battle window: no rows
    assert known == {"known": True, "families": FAMILIES, "judges": {}}
    nobody = family_bias(samples, {})  # a config without families: every judge is neutral
    assert nobody["known"] and nobody["judges"]["qj"]["same_family"]["trials"] == 0
    assert nobody["judges"]["qj"]["other_family"]["trials"] == 6


async def test_api_board_carries_the_families():
    async with TestClient(TestServer(build_app(Snapshot, None, families=FAMILIES))) as client:
        bias = (await (await client.get("/api/board")).json())["bias"]
        assert bias == {"known": True, "families": FAMILIES, "judges": {}}
        html = await (await client.get("/")).text()
        assert '<table id="bias">' in html and 'id="bias-note"' in html
    async with TestClient(TestServer(build_app(Snapshot, None))) as client:
        assert (await (await client.get("/api/board")).json())["bias"]["known"] is False


def test_families_of_the_config():
    tree = arena_tree()
    tree["models"]["alpha"]["family"] = "qwen"
    families = families_of(parse_settings(tree))
    assert families == {"alpha": "qwen", "beta": None, "gamma": None, "garbler": None, "slow": None}
    assert families_of(None) is None


def test_web_config_is_checked_before_serving(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    nats = "nats://127.0.0.1:1"  # never reached: the config fails first
    assert main(["web", "--nats", nats, "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    tree = arena_tree()
    tree["models"]["alpha"]["family"] = "Qwen 2"  # not a family name
    bad = tmp_path / "arena.yaml"
    bad.write_text(yaml.safe_dump(tree))
    assert main(["web", "--nats", nats, "--config", str(bad)]) == 2
    assert "family" in capsys.readouterr().err
