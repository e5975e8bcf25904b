"""Builders shared by the tests."""

from __future__ import annotations

from typing import Any

from msgspec.structs import replace

from warriorcoder.arena.instructions import normalise
from warriorcoder.arena.invariants import orders_for
from warriorcoder.proto.messages import (
    Answer,
    Battle,
    Challenge,
    Judgement,
    SamplingParams,
    Vote,
    battle_id,
)
from warriorcoder.runtime.settings import ArenaSettings, parse_settings

SP = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=128)
PRESETS = {"alpha": "chatml", "beta": "llama3", "gamma": "deepseek-coder"}


def arena_tree(
    triton_url: str = "127.0.0.1:1", nats_url: str = "nats://127.0.0.1:4222", **changes: Any
) -> dict[str, Any]:
    """A config tree over the scripted test models (tests/data/scripted-models.yaml)."""
    models = {
        name: {
            "triton_url": triton_url,
            "triton_model": name,
            "chat_template": {"preset": PRESETS.get(name, "chatml")},
            "timeout_s": 30,
        }
        for name in ("alpha", "beta", "gamma", "garbler", "slow")
    }
    tree: dict[str, Any] = {
        "models": models,
        "competitors": ["alpha", "beta", "gamma"],
        "nats": {"url": nats_url, "max_deliver": 3, "retry_delay_s": 0.05, "ack_wait_s": 10},
    }
    for key, value in changes.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    return tree


def arena_settings(
    triton_url: str = "127.0.0.1:1", nats_url: str = "nats://127.0.0.1:4222", **changes: Any
) -> ArenaSettings:
    return parse_settings(arena_tree(triton_url, nats_url, **changes))


def challenge(attacker: str = "alpha", defender: str = "beta", text: str = "") -> Challenge:
    text = text or f"Write a Python function that reverses a linked list ({attacker}>{defender})."
    return Challenge(
        id=battle_id(attacker, defender, normalise(text)),
        attacker=attacker,
        defender=defender,
        language="Python",
        instruction=text,
        sampling=SP,
        created_at=1.0,
    )


def battle(
    attacker_text: str = "ok\nquality=9",
    defender_text: str = "meh\nquality=2",
    **kw: Any,
) -> Battle:
    ch = challenge(**kw)
    return Battle(
        id=ch.id,
        challenge=ch,
        attacker_answer=Answer(
            model=ch.attacker, role="attacker", text=attacker_text, latency_s=0.1, sampling=SP
        ),
        defender_answer=Answer(
            model=ch.defender, role="defender", text=defender_text, latency_s=0.1, sampling=SP
        ),
        answered_at=2.0,
    )


def judgement(winners: list[str], **kw: Any) -> Judgement:
    b = battle(**kw)
    votes = [
        Vote(
            judge=f"judge{i}",
            orders=["attacker", "defender"],
            verdicts=["A", "B"],
            winner=w,
            asked=2,
        )  # type: ignore[arg-type]
        for i, w in enumerate(winners)
    ]
    return Judgement(id=b.id, battle=b, votes=votes, position_mode="both", judged_at=3.0)


def arena_vote(judge: str, winner: str, orders: list[str] | None = None) -> Vote:
    """A consistent vote: verdicts that combine to ``winner`` in ``orders`` (default both)."""
    orders = orders or ["attacker", "defender"]
    first = {"attacker": "A", "defender": "B"}
    if winner == "invalid":
        verdicts = ["invalid"] * len(orders)
    elif winner == "tie":
        verdicts = ["tie"] * len(orders)
    else:  # the label that puts the winner's answer first, per order
        verdicts = [first[winner] if o == "attacker" else first[_other(winner)] for o in orders]
    return Vote(judge=judge, orders=orders, verdicts=verdicts, winner=winner, asked=len(orders))  # type: ignore[arg-type]


def arena_judgement(
    b: Battle, settings: ArenaSettings, winners: list[str] | None = None
) -> Judgement:
    """The judgement ``settings``' arena gives ``b``: a consistent vote by each of its judges
    (``winners`` in ``judges_for`` order; the attacker wins by default), in its position mode,
    each with the weight the arena gives its judge (``vote_weight``)."""
    ch = b.challenge
    judges = settings.judges_for(ch.attacker, ch.defender)
    winners = winners or ["attacker"] * len(judges)
    orders = list(orders_for(settings.judge.position_mode, b.id))
    votes = [
        replace(arena_vote(j, w, orders), weight=settings.vote_weight(j, ch.attacker, ch.defender))
        for j, w in zip(judges, winners, strict=True)
    ]
    mode = settings.judge.position_mode
    return Judgement(id=b.id, battle=b, votes=votes, position_mode=mode, judged_at=3.0)


def _other(role: str) -> str:
    return "defender" if role == "attacker" else "attacker"


# Three near-duplicates of one task (unigram Jaccard >= 0.5 pairwise): the de-dup tests' race.
NEAR = [
    "Write a Python function that merges overlapping intervals in a list and returns the merged "
    "list sorted by start.",
    "Write a Python function that merges overlapping intervals in a list and returns the merged "
    "list.",
    "write a python function that merges overlapping intervals in a list, returning the merged "
    "list sorted by start",
]


async def band_members(kv: Any) -> list[str]:
    """Every (band, id) membership held in a FakeKV de-dup bucket, as ``<band key>/<id>``."""
    from warriorcoder.proto.state import BandMembers, decode_state

    out = []
    for key in kv.held_keys():
        if key.startswith("lsh."):
            band = decode_state((await kv.get(key)).value, BandMembers)
            out += [f"{key}/{i}" for i in band.ids]
    return out
