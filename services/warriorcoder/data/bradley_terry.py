"""Leaderboard ratings from pairwise votes: online Elo and Bradley–Terry with bootstrap CIs.

Usage::

    votes = read_votes(Path("battles.jsonl"))
    rows = leaderboard(votes, bootstrap_n=1000, seed=0)
    print(format_table(rows))

``online_elo`` replays the votes in order with the arena's own Elo update (K 40, scale 400,
base 10), each vote its own battle. ``bradley_terry`` is the maximum-likelihood Bradley–Terry fit
the LMSYS Chatbot Arena uses: a logistic regression without intercept on ±1 design columns (model A
+1, model B −1), a tie counted as half a win for each side, reported on the Elo scale, so that two
models ``d`` points apart have P(A beats B) = 1 / (1 + base^(−d / scale)). Ratings are centred so
their mean is ``initial`` (LMSYS instead anchors one reference model; only differences matter).

No false precision. The maximum-likelihood ratings exist only where the votes do not separate
the models: within a group of models that met, every model must have scored (won or tied)
against the rest of the group and the rest against it — the "scored against" graph must be
strongly connected (Zermelo 1929; Ford 1957). Where it is not, the likelihood keeps rising as the
separated models drift apart, and any finite number would be set by the solver's regulariser, not
by the votes. Those models are reported as unbounded: ``bt_status`` is ``above`` for a model
nobody outside its strongly connected group ever scored against (rating +inf), ``below`` for one
that never scored against anybody outside its group (-inf), ``undetermined`` for one in between
(NaN: only its order is known), and ``finite`` otherwise. Rows are ordered by status, then by the
regularised fit, so the ranking stays meaningful. Bootstrap intervals are honest in the same way:
a replicate where a model is separated contributes +-inf, so an interval reaches infinity when
more than 2.5% of the replicates leave it unbounded; percentiles are taken as observed values
(lower and higher), never interpolated towards infinity. Models in groups that never met are
rated within their group, each group centred at ``initial`` (their offset is not identifiable).

Solver: Newton's method with a backtracking line search on the aggregated pair counts (the
likelihood depends on the votes only through wins per pair), batched over bootstrap replicates.
A tiny L2 penalty ``l2 / 2 * |u|^2`` on the natural-log strengths ``u`` (default 1e-6) keeps the
iteration defined when the MLE does not exist; it moves a finite estimate by a negligible amount
(well under 0.01 points in the tests) and is never reported for a separated model.

``bootstrap`` resamples the votes with replacement. The per-(pair, outcome) counts of a resample
of N votes are multinomial(N, observed frequencies), so each replicate is drawn as such counts
directly (the same distribution as drawing N vote indices, without materialising them) and every
replicate reuses one design matrix.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from warriorcoder.arena.scoring import EloParams, Outcome, elo_update
from warriorcoder.data.votes import ArenaVote

__all__ = [
    "DEFAULT_L2",
    "BtStatus",
    "Row",
    "bootstrap",
    "bradley_terry",
    "format_rating",
    "format_table",
    "leaderboard",
    "online_elo",
    "rows_to_json",
]

DEFAULT_L2 = 1e-6
_OUTCOME: dict[str, Outcome] = {"model_a": "attacker", "model_b": "defender", "tie": "tie"}
_BOOTSTRAP_CHUNK = 256

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

BtStatus = Literal["finite", "above", "below", "undetermined"]
_STATUS: tuple[BtStatus, ...] = ("finite", "above", "below", "undetermined")
_STATUS_ORDER = {"above": 0, "finite": 1, "undetermined": 2, "below": 3}


@dataclass(frozen=True, slots=True)
class Row:
    """One leaderboard line; ``bt_lower``/``bt_upper`` are None without a bootstrap."""

    model: str
    elo: float
    bt: float  # +inf / -inf / NaN when bt_status is above / below / undetermined
    bt_lower: float | None
    bt_upper: float | None
    votes: int
    bt_status: BtStatus = "finite"


# -- online Elo ---------------------------------------------------------------------------------


def online_elo(
    votes: Sequence[ArenaVote],
    k: float = 40.0,
    scale: float = 400.0,
    base: float = 10.0,
    initial: float = 1000.0,
) -> dict[str, float]:
    """Elo ratings after one zero-sum update per vote, in order (each vote its own battle), each
    scaled by the vote's ``weight`` as the arena's own update is."""
    params = EloParams(k=k, scale=scale, base=base)
    ratings: dict[str, float] = {}
    for v in votes:
        r_a = ratings.get(v.model_a, initial)
        r_b = ratings.get(v.model_b, initial)
        outcome, weight = [_OUTCOME[v.winner]], [v.weight]  # weight: a same-family judge's vote
        ratings[v.model_a], ratings[v.model_b] = elo_update(
            r_a, r_b, outcome, params, weights=weight
        )
    return ratings


# -- Bradley–Terry ------------------------------------------------------------------------------


class _Design:
    """Models, the pairs that met, the ±1 design matrix and the votes as (pair, outcome) cells.

    Pairs are stored with i < j (model indices in name order); outcome 0: i won, 1: j won, 2: tie.
    """

    def __init__(self, votes: Sequence[ArenaVote]) -> None:
        self.models = sorted({m for v in votes for m in (v.model_a, v.model_b)})
        index = {m: i for i, m in enumerate(self.models)}
        pairs: dict[tuple[int, int], int] = {}
        cells = np.empty(len(votes), dtype=np.int64)
        for n, v in enumerate(votes):
            a, b = index[v.model_a], index[v.model_b]
            outcome = 2 if v.winner == "tie" else (0 if v.winner == "model_a" else 1)
            if a > b:
                a, b = b, a
                outcome = {0: 1, 1: 0, 2: 2}[outcome]
            p = pairs.setdefault((a, b), len(pairs))
            cells[n] = 3 * p + outcome
        m, n_pairs = len(self.models), len(pairs)
        self.i = np.array([a for a, _ in pairs], dtype=np.int64)
        self.j = np.array([b for _, b in pairs], dtype=np.int64)
        self.design = np.zeros((n_pairs, m))
        self.design[np.arange(n_pairs), self.i] = 1.0
        self.design[np.arange(n_pairs), self.j] = -1.0
        self.cells = cells
        self.counts = np.bincount(cells, minlength=3 * n_pairs).astype(np.float64)

    def fit(self, counts: FloatArray, l2: float) -> FloatArray:
        """Penalised MLE strengths u (natural log-odds), one row per row of ``counts`` (B, 3P)."""
        c = counts.reshape(counts.shape[0], -1, 3)
        w_i = c[..., 0] + 0.5 * c[..., 2]
        w_j = c[..., 1] + 0.5 * c[..., 2]
        return _newton(self.design, self.i, self.j, w_i, w_j, l2)

    def status(self, counts: FloatArray) -> IntArray:
        """(B, M) index into ``_STATUS`` per row of ``counts``: whether each model's rating is
        identified by the votes (see the module docstring)."""
        c = counts.reshape(counts.shape[0], -1, 3)
        b, m = c.shape[0], len(self.models)
        scored = np.zeros((b, m, m), dtype=bool)  # scored[r, x, y]: x won or tied against y
        met = np.zeros((b, m, m), dtype=bool)
        scored[:, self.i, self.j] = (c[..., 0] + c[..., 2]) > 0
        scored[:, self.j, self.i] = (c[..., 1] + c[..., 2]) > 0
        met[:, self.i, self.j] = met[:, self.j, self.i] = c.sum(axis=-1) > 0
        reach = _closure(scored | np.eye(m, dtype=bool))
        group = _closure(met | np.eye(m, dtype=bool))
        mutual = reach & reach.transpose(0, 2, 1)
        outside = group & ~mutual  # same group, not in my strongly connected part
        into_me = (reach.transpose(0, 2, 1) & outside).any(axis=-1)  # someone outside reaches me
        from_me = (reach & outside).any(axis=-1)  # I reach someone outside
        status = np.zeros((b, m), dtype=np.int64)
        status[from_me & ~into_me] = 1
        status[into_me & ~from_me] = 2
        status[into_me & from_me] = 3
        return status

    def played(self, counts: FloatArray) -> npt.NDArray[np.bool_]:
        """(B, M): whether each model has at least one vote in each row of ``counts``."""
        per_pair = counts.reshape(counts.shape[0], -1, 3).sum(axis=-1) > 0
        return (per_pair.astype(np.float64) @ np.abs(self.design)) > 0


def _closure(adjacency: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Transitive closure of (B, M, M) reflexive boolean adjacency matrices, by squaring."""
    reach = adjacency.astype(np.int64)
    for _ in range(max(1, math.ceil(math.log2(max(adjacency.shape[-1], 2))))):
        reach = np.minimum(reach @ reach, 1)
    return reach.astype(bool)


def _unbounded(ratings: FloatArray, status: IntArray) -> FloatArray:
    """Ratings with separated models replaced by +inf, -inf or NaN."""
    out = ratings.copy()
    out[status == 1] = math.inf
    out[status == 2] = -math.inf
    out[status == 3] = math.nan
    return out


def _objective(
    u: FloatArray, design: FloatArray, w_i: FloatArray, w_j: FloatArray, l2: float
) -> FloatArray:
    d = u @ design.T
    nll = (w_i * np.logaddexp(0.0, -d) + w_j * np.logaddexp(0.0, d)).sum(axis=-1)
    penalty: FloatArray = 0.5 * l2 * (u * u).sum(axis=-1)
    return nll + penalty


def _newton(
    design: FloatArray,
    i: IntArray,
    j: IntArray,
    w_i: FloatArray,
    w_j: FloatArray,
    l2: float,
    max_iter: int = 200,
) -> FloatArray:
    """Minimise sum_p w_i log(1+e^-d) + w_j log(1+e^d) + l2/2 |u|^2, d = u_i - u_j, per row."""
    b, m = w_i.shape[0], design.shape[1]
    u = np.zeros((b, m))
    f = _objective(u, design, w_i, w_j, l2)
    rows = np.arange(b)[:, None]
    flat = [(i * m + i, 1.0), (j * m + j, 1.0), (i * m + j, -1.0), (j * m + i, -1.0)]
    eye = np.eye(m)
    for _ in range(max_iter):
        d = u @ design.T
        with np.errstate(over="ignore"):
            s = 1.0 / (1.0 + np.exp(-d))  # P(i beats j)
            sc = 1.0 / (1.0 + np.exp(d))  # 1 - s without cancellation
        grad = -(w_i * sc - w_j * s) @ design + l2 * u
        h = (w_i + w_j) * s * sc
        hess = np.zeros((b, m * m))
        for idx, sign in flat:
            np.add.at(hess, (rows, idx[None, :]), sign * h)
        hess = hess.reshape(b, m, m) + l2 * eye
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        decrement = (grad * step).sum(axis=-1)  # Newton decrement squared, >= 0
        if float(decrement.max(initial=0.0)) < 1e-20:
            break
        t = np.ones(b)
        for _ in range(60):
            new_f = _objective(u - t[:, None] * step, design, w_i, w_j, l2)
            ok = new_f <= f - 1e-4 * t * decrement + 1e-12 * np.abs(f)
            if ok.all():
                break
            t = np.where(ok, t, 0.5 * t)
        u = u - t[:, None] * step
        f = _objective(u, design, w_i, w_j, l2)
    return u


def _to_elo(u: FloatArray, scale: float, base: float, initial: float) -> FloatArray:
    centred = u - u.mean(axis=-1, keepdims=True)
    return initial + scale * centred / math.log(base)


def bradley_terry(
    votes: Sequence[ArenaVote],
    scale: float = 400.0,
    base: float = 10.0,
    initial: float = 1000.0,
    *,
    l2: float = DEFAULT_L2,
) -> dict[str, float]:
    """Maximum-likelihood Bradley–Terry ratings on the Elo scale, mean ``initial``; +inf, -inf or
    NaN for a model the votes separate (see the module docstring)."""
    if not votes:
        return {}
    design = _Design(votes)
    counts = design.counts[None, :]
    ratings = _to_elo(design.fit(counts, l2), scale, base, initial)
    ratings = _unbounded(ratings, design.status(counts))[0]
    return {m: float(r) for m, r in zip(design.models, ratings, strict=True)}


def _bootstrap(
    design: _Design, n: int, seed: int, scale: float, base: float, initial: float, l2: float
) -> dict[str, tuple[float, float]]:
    total = int(design.counts.sum())
    rng = np.random.default_rng(seed)
    freqs = design.counts / total
    samples: list[FloatArray] = []
    for start in range(0, n, _BOOTSTRAP_CHUNK):
        size = min(_BOOTSTRAP_CHUNK, n - start)
        counts = rng.multinomial(total, freqs, size=size).astype(np.float64)
        ratings = _to_elo(design.fit(counts, l2), scale, base, initial)
        ratings = _unbounded(ratings, design.status(counts))
        # A model with no vote in a replicate has no estimate there (LMSYS: NaN, skipped).
        samples.append(np.where(design.played(counts), ratings, np.nan))
    stacked = np.concatenate(samples)
    out: dict[str, tuple[float, float]] = {}
    for col, model in enumerate(design.models):
        values = stacked[:, col]
        values = values[~np.isnan(values)]
        if values.size == 0:
            out[model] = (math.nan, math.nan)
            continue
        # Observed values, not interpolated: an interval may honestly reach +-inf.
        lower = np.percentile(values, 2.5, method="lower")
        upper = np.percentile(values, 97.5, method="higher")
        out[model] = (float(lower), float(upper))
    return out


def bootstrap(
    votes: Sequence[ArenaVote],
    n: int = 1000,
    seed: int = 0,
    *,
    scale: float = 400.0,
    base: float = 10.0,
    initial: float = 1000.0,
    l2: float = DEFAULT_L2,
) -> dict[str, tuple[float, float]]:
    """95% percentile intervals (2.5th, 97.5th) of Bradley–Terry ratings over ``n`` resamples."""
    if not votes or n <= 0:
        return {}
    return _bootstrap(_Design(votes), n, seed, scale, base, initial, l2)


def leaderboard(
    votes: Sequence[ArenaVote],
    bootstrap_n: int = 1000,
    seed: int = 0,
    *,
    k: float = 40.0,
    scale: float = 400.0,
    base: float = 10.0,
    initial: float = 1000.0,
    l2: float = DEFAULT_L2,
) -> list[Row]:
    """One row per model (online Elo, BT with its 95% CI, votes), best BT first."""
    if not votes:
        return []
    elo = online_elo(votes, k=k, scale=scale, base=base, initial=initial)
    design = _Design(votes)
    counts = design.counts[None, :]
    fit = _to_elo(design.fit(counts, l2), scale, base, initial)
    status = design.status(counts)
    bt = _unbounded(fit, status)[0]
    ci = _bootstrap(design, bootstrap_n, seed, scale, base, initial, l2) if bootstrap_n > 0 else {}
    votes_of: Counter[str] = Counter()
    for v in votes:
        votes_of[v.model_a] += 1
        votes_of[v.model_b] += 1
    rows = [
        Row(
            model=m,
            elo=elo[m],
            bt=float(r),
            bt_lower=ci[m][0] if m in ci else None,
            bt_upper=ci[m][1] if m in ci else None,
            votes=votes_of[m],
            bt_status=_STATUS[int(s)],
        )
        for m, r, s in zip(design.models, bt, status[0], strict=True)
    ]
    # By status, then by the regularised fit (which still orders separated models sensibly).
    order = {m: float(f) for m, f in zip(design.models, fit[0], strict=True)}
    rows.sort(key=lambda r: (_STATUS_ORDER[r.bt_status], -order[r.model], r.model))
    return rows


# -- presentation -------------------------------------------------------------------------------


def rows_to_json(rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
    """``{model: {elo, bt, bt_lower, bt_upper, votes, bt_status}}`` in leaderboard order; NaN and
    infinities become None (``bt_status`` says which unbounded side)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        item = asdict(r)
        del item["model"]
        out[r.model] = {
            key: None if isinstance(val, float) and not math.isfinite(val) else val
            for key, val in item.items()
        }
    return out


def format_rating(x: float | None) -> str:
    """A rating for people: one decimal, ``+inf``/``-inf`` when unbounded, ``-`` when unknown."""
    if x is None or math.isnan(x):
        return "-"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return f"{x:.1f}"


def _interval(r: Row) -> str:
    if r.bt_lower is None:
        return "-"
    return f"{format_rating(r.bt_lower)} .. {format_rating(r.bt_upper)}"


def format_table(
    rows: Sequence[Row],
    extra: tuple[Sequence[str], Callable[[Row], Sequence[str]]] | None = None,
) -> str:
    """A plain-text table: rank, model, BT, its 95% CI, online Elo, votes; ``extra`` adds columns
    (their headers, and a function giving a row's cells)."""
    header = ("rank", "model", "bt", "95% ci", "elo", "votes", *(extra[0] if extra else ()))
    body = [
        (
            str(n),
            r.model,
            format_rating(r.bt),
            "-"
            if r.bt_lower is None
            else f"{format_rating(r.bt_lower)} .. {format_rating(r.bt_upper)}",
            format_rating(r.elo),
            str(r.votes),
            *(extra[1](r) if extra else ()),
        )
        for n, r in enumerate(rows, 1)
    ]
    widths = [max(len(line[c]) for line in [header, *body]) for c in range(len(header))]
    lines = []
    for line in [header, *body]:
        cells = [
            cell.ljust(w) if c == 1 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
