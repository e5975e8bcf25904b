"""What a running arena knows: its samples, its online Elo and its filter statistics.

Usage::

    state = await read_live(settings.nats)
    rows = live_leaderboard(state, bootstrap_n=1000)
    print(leaderboard_table(rows, pass_rates(state.samples)))

Reads the samples stream, the ratings KV document and the rejection counts the challengers keep,
without consuming anything. With execution results in the samples (verifier on), the table gains
each model's ``pass%`` (share of its answers run that passed every test) and ``runs``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from warriorcoder.data.bradley_terry import Row, format_table, leaderboard
from warriorcoder.data.export import connect_briefly, samples_from_nats
from warriorcoder.data.pass_rates import PassRate
from warriorcoder.data.votes import votes_from_samples
from warriorcoder.proto import subjects
from warriorcoder.proto.messages import Sample
from warriorcoder.proto.state import Ratings, decode_state
from warriorcoder.runtime.settings import NatsSettings

__all__ = [
    "LiveState",
    "format_pass_rate",
    "leaderboard_table",
    "live_leaderboard",
    "read_live",
]


@dataclass(frozen=True, slots=True)
class LiveState:
    samples: list[Sample]
    ratings: Ratings
    rejections: dict[str, int]


async def read_live(cfg: NatsSettings) -> LiveState:
    from warriorcoder.runtime.stores import RejectionStats

    samples = await samples_from_nats(settings=cfg)
    nc = await connect_briefly(cfg)
    try:
        js = nc.jetstream()
        try:
            kv = await js.key_value(subjects.KV_RATINGS)
            ratings = decode_state((await kv.get(subjects.RATINGS_KEY)).value, Ratings)
        except (BucketNotFoundError, NotFoundError, KeyNotFoundError):
            ratings = Ratings()
        try:
            rejections = await RejectionStats.read(await js.key_value(subjects.KV_STATS))
        except (BucketNotFoundError, NotFoundError):
            rejections = {}
    finally:
        await nc.close()
    return LiveState(samples=samples, ratings=ratings, rejections=rejections)


def live_leaderboard(state: LiveState, *, bootstrap_n: int, seed: int = 0) -> list[Row]:
    """BT with CIs over every judge vote so far, with the arena's own online Elo (applied once per
    battle by the aggregators) in the ``elo`` column."""
    rows = leaderboard(votes_from_samples(state.samples), bootstrap_n=bootstrap_n, seed=seed)
    live = state.ratings.ratings
    return [dataclasses.replace(r, elo=live.get(r.model, r.elo)) for r in rows]


def format_pass_rate(rate: PassRate | None) -> str:
    """A model's pass rate for people: ``62.5%``, or ``-`` without runs."""
    value = None if rate is None else rate.pass_rate
    return "-" if value is None else f"{100 * value:.1f}%"


def leaderboard_table(rows: Sequence[Row], rates: Mapping[str, PassRate]) -> str:
    """``format_table`` of the rows, plus ``pass%`` and ``runs`` columns when any model's answers
    ran against tests (``rates`` from ``pass_rates``); exactly ``format_table`` otherwise."""
    if not rates:
        return format_table(rows)

    def cells(r: Row) -> tuple[str, str]:
        return format_pass_rate(rates.get(r.model)), str(
            rates[r.model].runs if r.model in rates else 0
        )

    return format_table(rows, (("pass%", "runs"), cells))
