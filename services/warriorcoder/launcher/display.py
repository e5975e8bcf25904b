"""The live terminal display of ``warriorcoder up`` (rich), or plain lines when not on a terminal.

Usage::

    with Display(enabled=sys.stdout.isatty()) as display:
        display.update(snapshot)
"""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from warriorcoder.data.live import format_pass_rate
from warriorcoder.launcher.status import Snapshot

__all__ = ["Display", "crash_loop_line", "render"]


def _num(x: float | None, fmt: str = ".0f") -> str:
    return "-" if x is None else format(x, fmt)


def crash_loop_line(s: Snapshot) -> str:
    """The warning for children in a crash loop ("" when none is)."""
    if not s.crash_looping:
        return ""
    return (
        f"CRASH LOOP: {', '.join(s.crash_looping)} keep dying; restarted with back-off (up to a "
        "minute), see logs/supervisor.log and the child's own log"
    )


def render(s: Snapshot) -> Group:
    parts: list[object] = []
    if s.demo_note:
        parts.append(Text(s.demo_note, style="bold yellow"))
    if warning := crash_loop_line(s):
        parts.append(Text(warning, style="bold red"))
    head = Table.grid(padding=(0, 2))
    head.add_column()
    head.add_column()
    total = s.target or max(s.samples, 1)
    head.add_row(
        ProgressBar(total=total, completed=min(s.samples, total), width=40),
        Text(
            f"{s.samples}/{s.target if s.target else '∞'} samples   "
            f"{s.samples_per_s:.2f} samples/s   {s.battles_rated} battles rated"
        ),
    )
    parts.append(head)

    pipe = Table(title="backlog per stage", title_justify="left", expand=False)
    for col in ("responder", "judge", "aggregator", "dead letters", "challenges to mine"):
        pipe.add_column(col, justify="right")
    pipe.add_row(
        *(str(s.backlog.get(k, 0)) for k in ("responder", "judge", "aggregator")),
        str(s.dead_letters),
        "∞" if s.budget is None else str(s.budget),
    )
    parts.append(pipe)

    if s.rejections:
        rej = Table(title="rejected challenges", title_justify="left")
        rej.add_column("reason")
        rej.add_column("count", justify="right")
        for reason, n in sorted(s.rejections.items(), key=lambda kv: -kv[1]):
            rej.add_row(reason, str(n))
        parts.append(rej)

    board = Table(title="leaderboard", title_justify="left")
    columns = [
        ("#", "right"),
        ("model", "left"),
        ("elo", "right"),
        ("bt", "right"),
        ("95% ci", "right"),
        ("votes", "right"),
    ]
    if s.pass_rates:  # the verifier ran answers: each model's pass rate over its runs
        columns += [("pass%", "right"), ("runs", "right")]
    for col, just in columns:
        board.add_column(col, justify=just)  # type: ignore[arg-type]
    for i, r in enumerate(s.leaderboard, 1):
        ci = f"{_num(r.bt_lower)} .. {_num(r.bt_upper)}" if r.bt_lower is not None else "-"
        cells = [str(i), r.model, _num(s.elo.get(r.model, r.elo)), _num(r.bt), ci, str(r.votes)]
        if s.pass_rates:
            rate = s.pass_rates.get(r.model)
            cells += [format_pass_rate(rate), str(0 if rate is None else rate.runs)]
        board.add_row(*cells)
    if not s.leaderboard:
        board.add_row("", "no votes yet", *([""] * (len(columns) - 2)))
    parts.append(board)
    if s.events:
        parts.append(Panel("\n".join(s.events[-5:]), title="events", title_align="left"))
    return Group(*parts)  # type: ignore[arg-type]


class Display:
    """A rich Live view on a terminal; otherwise a line whenever the sample count changes."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._live: Live | None = None
        self._last = -1
        self._events = 0
        self._looping: list[str] = []

    def __enter__(self) -> Display:
        if self.enabled:
            self._live = Live(console=Console(), refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)

    def update(self, s: Snapshot) -> None:
        if self._live is not None:
            self._live.update(render(s))
            return
        for event in s.events[self._events :]:
            print(f"  event: {event}", flush=True)
        self._events = len(s.events)
        if s.crash_looping != self._looping:
            self._looping = list(s.crash_looping)
            print(f"  {crash_loop_line(s) or 'crash loop over: every child stays up'}", flush=True)
        if s.samples != self._last:
            self._last = s.samples
            top = s.leaderboard[0].model if s.leaderboard else "-"
            print(
                f"  samples {s.samples}/{s.target or '∞'}  {s.samples_per_s:.2f}/s  backlog "
                f"{sum(s.backlog.values())}  rejected {sum(s.rejections.values())}  leader {top}",
                file=sys.stdout,
                flush=True,
            )
