"""``bulksend top JOURNAL``: a live view of a running campaign, per site.

How this works: every ``--interval`` it asks the run for its ``status`` over the control
socket (:mod:`bulksend.control`; the one data source), turns two consecutive answers into
one row per site (:func:`site_rows`: counts, and per-second rates from the difference), and
draws them: on a terminal with rich (a table that fits the terminal's width, redrawn in
place), otherwise as plain text, one table per interval, for logs and pipes.

The columns are one table (:data:`COLUMNS`): a per-source column (egress) is one more
entry, and a narrow terminal leaves out the columns that need a wider one (60 columns show
site, queued, delivered per second, connections and state).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any, Final

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from bulksend.cli.ctl import live_status
from bulksend.cli.options import JournalParam, debug_option
from bulksend.cli.output import info
from bulksend.cli.progress import format_duration, short_site
from bulksend.config.values import parse_duration
from bulksend.control.client import NotRunning
from bulksend.text import write_table


@dataclass(frozen=True, slots=True)
class SiteRow:
    """One site, as ``top`` shows it."""

    site: str
    queued: int
    in_flight: int
    delivered_per_s: float
    deferred_per_s: float
    bounced: int
    connections: int
    max_connections: int
    rate_used: float  # transactions a second, measured
    rate_cap: float | None
    state: str  # ok, backoff, suspended 0:20, paused, paused 4:59
    reason: str
    last_error: str


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    cell: Callable[[SiteRow], str]
    sort: Callable[[SiteRow], Any] | None = None  # descending; None: not a sort key
    width: int = 0  # shown on terminals at least this wide
    numeric: bool = True


def _rate(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


COLUMNS: Final[dict[str, Column]] = {
    "site": Column("site", lambda r: short_site(r.site), lambda r: r.site, numeric=False),
    "queued": Column("queued", lambda r: f"{r.queued:,}", lambda r: r.queued),
    "flight": Column("flight", lambda r: str(r.in_flight), lambda r: r.in_flight, width=80),
    "delivered": Column("dlv/s", lambda r: _rate(r.delivered_per_s), lambda r: r.delivered_per_s),
    "deferred": Column(
        "dfr/s", lambda r: _rate(r.deferred_per_s), lambda r: r.deferred_per_s, width=80
    ),
    "bounced": Column("bnc", lambda r: f"{r.bounced:,}", lambda r: r.bounced, width=80),
    "connections": Column(
        "conn", lambda r: f"{r.connections}/{r.max_connections}", lambda r: r.connections
    ),
    "rate": Column(
        "rate/cap",
        lambda r: f"{_rate(r.rate_used)}/{'-' if r.rate_cap is None else f'{r.rate_cap:g}'}",
        lambda r: r.rate_used,
        width=70,
    ),
    "state": Column("state", lambda r: r.state, lambda r: r.state != "ok", numeric=False),
    "reason": Column("reason", lambda r: r.reason, width=100, numeric=False),
    "error": Column("last error", lambda r: r.last_error, width=100, numeric=False),
}
SORT_KEYS: Final = tuple(name for name, column in COLUMNS.items() if column.sort is not None)


def _state(site: Mapping[str, Any]) -> str:
    paused = float(site.get("paused_for", 0.0))
    if paused > 0:
        return "paused" if math.isinf(paused) else f"paused {format_duration(paused)}"
    if site["suspended_for"] > 0:
        return f"suspended {format_duration(site['suspended_for'])}"
    return "backoff" if site["backed_off"] else "ok"


_ATTEMPTS: Final = ("delivered", "deferred", "bounced", "in_doubt")


def _per_second(
    now: Mapping[str, int], old: Mapping[str, int], kinds: Sequence[str], elapsed: float
) -> float:
    done = sum(now.get(k, 0) - old.get(k, 0) for k in kinds)
    return done / elapsed if elapsed > 0 else 0.0


def site_rows(now: Mapping[str, Any], before: Mapping[str, Any] | None) -> list[SiteRow]:
    """The rows of a ``status`` answer; rates over the time since ``before`` (0 without it)."""
    earlier = {s["site"]: s["outcomes"] for s in before["sites"]} if before else {}
    elapsed = now["time"] - before["time"] if before else 0.0
    rows = []
    for site in now["sites"]:
        outcomes = site["outcomes"]
        old = earlier.get(site["site"], {})

        rows.append(
            SiteRow(
                site=site["site"],
                queued=site["queued"],
                in_flight=site["in_flight"],
                delivered_per_s=_per_second(outcomes, old, ("delivered",), elapsed),
                deferred_per_s=_per_second(outcomes, old, ("deferred",), elapsed),
                bounced=outcomes.get("bounced", 0),
                connections=site["connections"],
                max_connections=site["max_connections"],
                rate_used=_per_second(outcomes, old, _ATTEMPTS, elapsed),
                rate_cap=site["rate"],
                state=_state(site),
                reason="paused by bulksend ctl" if site.get("paused_for") else site["reason"],
                last_error=site["last_error"],
            )
        )
    return rows


def sort_rows(rows: Sequence[SiteRow], key: str) -> list[SiteRow]:
    """``rows`` by column ``key``, largest first (the site name: alphabetically)."""
    sort = COLUMNS[key].sort
    assert sort is not None
    return sorted(rows, key=sort, reverse=key != "site")


def _columns(width: int) -> list[Column]:
    return [c for c in COLUMNS.values() if width >= c.width]


#: The columns that are cut (with an ellipsis) to fit, at most this wide.
_SHRINKING: Final = {"site": 24, "reason": 24, "last error": 80}


def rich_table(rows: Sequence[SiteRow], width: int, title: str) -> Table:
    """The table for a terminal ``width`` columns wide (cells cut with an ellipsis)."""
    table = Table(
        title=title,
        title_justify="left",
        expand=False,
        box=None,
        padding=(0, 1, 0, 0),
        pad_edge=False,
    )
    columns = _columns(width)
    cells = [[column.cell(row) for column in columns] for row in rows]
    natural = [
        max([len(column.header), *(len(line[i]) for line in cells)])
        for i, column in enumerate(columns)
    ]
    # Numbers and the state keep their width; the site, then the reason and the error, share
    # what is left (one space between columns), each cut with an ellipsis.
    room = (
        width
        - (len(columns) - 1)
        - sum(n for n, c in zip(natural, columns, strict=True) if c.header not in _SHRINKING)
    )
    widths = list(natural)
    for i, column in enumerate(columns):
        if column.header in _SHRINKING:
            widths[i] = max(min(natural[i], _SHRINKING[column.header], room), len(column.header))
            room -= widths[i]
    for column, size in zip(columns, widths, strict=True):
        table.add_column(
            column.header,
            justify="right" if column.numeric else "left",
            no_wrap=True,
            overflow="ellipsis",
            width=size,
        )
    for line in cells:
        table.add_row(*line)
    return table


def plain_table(rows: Sequence[SiteRow], title: str) -> str:
    """The table as plain text (every column; for pipes and logs)."""
    columns = list(COLUMNS.values())
    out = StringIO()
    out.write(title + "\n")
    cells = [[c.header for c in columns]] + [[c.cell(r) or "-" for c in columns] for r in rows]
    write_table(cells, out, indent="")
    return out.getvalue()


def _title(status: Mapping[str, Any], journal: Path | str) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(status["time"]))
    state = "stopping" if status["stopping"] else "sending"
    unrouted = f", {status['unrouted']:,} waiting for a route" if status["unrouted"] else ""
    name = journal.name if isinstance(journal, Path) else journal
    return f"{name} {stamp}: {state}, {len(status['sites'])} sites{unrouted}"


@click.command()
@click.argument("journal", type=JournalParam())
@click.option("--interval", default="1s", show_default=True, help="Time between refreshes.")
@click.option(
    "--sort", "sort_key", type=click.Choice(SORT_KEYS), default="queued", show_default=True
)
@click.option("--once", is_flag=True, help="Show one view (rates over one interval) and exit.")
@debug_option
def top(journal: Path | str, interval: str, sort_key: str, once: bool) -> None:
    """A live view of a running campaign, per site (plain text when not a terminal).

    Queued, in flight, delivered and deferred per second, bounced, connections and rate with
    their caps, backoff or pause and why, the last error. Ctrl-C ends it.
    """
    try:
        every = parse_duration(interval)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--interval") from None
    every = max(every, 0.1)
    console = Console()
    status: Mapping[str, Any] | None = live_status(journal)

    def view(current: Mapping[str, Any], before: Mapping[str, Any] | None) -> list[SiteRow]:
        return sort_rows(site_rows(current, before), sort_key)

    if once or not console.is_terminal:
        while True:
            time.sleep(every)
            before, status = status, _next(journal)
            if status is None:
                info("the run ended")
                return
            sys.stdout.write(plain_table(view(status, before), _title(status, journal)) + "\n")
            sys.stdout.flush()
            if once:
                return
    with Live(console=console, auto_refresh=False, screen=False) as live:
        before = None
        while status is not None:
            rows = view(status, before)
            live.update(rich_table(rows, console.width, _title(status, journal)), refresh=True)
            time.sleep(every)
            before, status = status, _next(journal)
    console.print("the run ended")


def _next(journal: Path | str) -> Mapping[str, Any] | None:
    """The run's next status; None once it has ended."""
    try:
        return live_status(journal)
    except NotRunning:
        return None
