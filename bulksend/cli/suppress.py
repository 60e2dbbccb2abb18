"""``bulksend suppress add|remove|list|check|import|export``: the suppression store by hand.

Every subcommand takes the store with ``--store PATH`` (or ``BULKSEND_SUPPRESSION_STORE``),
or ``--campaign FILE`` to use that campaign's store (its ``[suppression] store``, or the
default one beside it). The CSV that ``export`` writes, ``import`` reads back (docs/suppression.md):
``address,reason,source,first_seen,last_seen,count,expires,detail``; times are ISO 8601 UTC,
an empty ``expires`` means never. ``import`` needs only the ``address`` (or ``email``)
column: a recipients file or an export of another tool will do.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO, TypeVar

import click

from bulksend.campaign.recipients import numbered_rows
from bulksend.cli.options import campaign_journal, debug_option
from bulksend.cli.output import EXIT_UNDELIVERED, open_output, warn
from bulksend.config import SuppressionConfig, SuppressionReason, load_campaign
from bulksend.errors import ConfigError
from bulksend.store_urls import is_postgres_url, split_store_url
from bulksend.suppression.backend import AnyStore, campaign_store, open_suppression_store
from bulksend.suppression.rules import Rules
from bulksend.suppression.store import Entry, Source, normalise_key
from bulksend.text import printable, write_table

CSV_FIELDS: Final = (
    "address",
    "reason",
    "source",
    "first_seen",
    "last_seen",
    "count",
    "expires",
    "detail",
)
_FORMULA: Final = ("=", "+", "-", "@", "\t", "\r")
_REASONS: Final = [reason.value for reason in SuppressionReason]
_F = TypeVar("_F", bound=Callable[..., Any])


class StoreParam(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.3
    """A suppression store: a SQLite file (a path) or a ``postgresql://`` URL (kept as text,
    refused if it holds a password)."""

    name = "store"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Path | str:
        if isinstance(value, Path) or not is_postgres_url(value):
            return Path(value)
        try:
            split_store_url(value)
        except ValueError:
            self.fail("the URL holds a password: use password_file=PATH or PGPASSWORD", param, ctx)
        return str(value)


def store_options(f: _F) -> _F:
    f = click.option(
        "--campaign",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Use this campaign's store ([suppression] store, or suppression.sqlite3 beside it).",
    )(f)
    return click.option(
        "--store",
        type=StoreParam(),
        envvar="BULKSEND_SUPPRESSION_STORE",
        help="The suppression store: a SQLite file (created if missing) or a "
        "postgresql://USER@HOST/DB URL. Env: BULKSEND_SUPPRESSION_STORE.",
    )(f)


def open_store(
    store: Path | str | None, campaign: Path | None, journals: Sequence[Path | str] = ()
) -> AnyStore:
    """The store named by ``--store``, or ``--campaign``'s store (see :func:`campaign_store`:
    beside the first of ``journals``, the ``--journal`` a command was given, if any)."""
    if store is None and campaign is not None:
        config = load_campaign(campaign, os.environ)
        journal = journals[0] if journals else campaign_journal(None, config)
        store = campaign_store(config, journal)
        unsure = isinstance(journal, Path) and not journals and not journal.exists()
        if unsure and store is not None and config.suppression.store is None:
            # No run of it here: it may have been sent with --journal elsewhere.
            warn(
                f"{campaign} names no store: this is {store}, beside its default journal; "
                "a run given --journal elsewhere keeps its store beside that journal "
                "(give --store, or --journal where the command has it)"
            )
        if store is None:
            raise ConfigError(f"{campaign}: the campaign uses no suppression store (store = false)")
    if store is None:
        raise click.UsageError("name the store: --store PATH or --campaign FILE")
    return open_suppression_store(store)


def _key(text: str) -> str:
    try:
        return normalise_key(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _when(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe(entry: Entry) -> str:
    expires = f", expires {_when(entry.expires_at)}" if entry.expires_at is not None else ""
    return (
        f"{entry.reason.value} via {entry.source.value}, {entry.count}x, "
        f"last {_when(entry.last_at)}{expires}"
    )


@click.group()
def suppress() -> None:
    """The suppression store: addresses and domains no campaign may mail (docs/suppression.md)."""


@suppress.command()
@click.argument("keys", nargs=-1, required=True)
@click.option(
    "--reason",
    type=click.Choice(_REASONS),
    default=SuppressionReason.MANUAL.value,
    show_default=True,
)
@click.option("--detail", default="", help="A note kept with the entry.")
@store_options
@debug_option
def add(
    keys: tuple[str, ...], reason: str, detail: str, store: Path | str | None, campaign: Path | None
) -> None:
    """Suppress addresses, or whole domains (``example.com`` or ``@example.com``)."""
    normalised = [_key(k) for k in keys]
    why = SuppressionReason(reason)
    now = time.time()
    expires_at = Rules(SuppressionConfig()).expires_at(why, now)
    with open_store(store, campaign) as opened:
        for key in normalised:
            entry = opened.add(key, why, Source.CLI, now=now, expires_at=expires_at, detail=detail)
            click.echo(f"{key}: {_describe(entry)}")


@suppress.command()
@click.argument("keys", nargs=-1, required=True)
@store_options
@debug_option
def remove(keys: tuple[str, ...], store: Path | str | None, campaign: Path | None) -> None:
    """Lift the suppression of addresses or domains."""
    normalised = [_key(k) for k in keys]
    with open_store(store, campaign) as opened:
        for key in normalised:
            click.echo(f"{key}: {'removed' if opened.remove(key) else 'was not suppressed'}")


@suppress.command()
@click.argument("addresses", nargs=-1, required=True)
@store_options
@debug_option
def check(addresses: tuple[str, ...], store: Path | str | None, campaign: Path | None) -> None:
    """Tell whether addresses are suppressed (by their own entry or their domain's).

    Exit status 0 when every one is, 4 when one is not.
    """
    free = 0
    with open_store(store, campaign) as opened:
        for address in addresses:
            entry = opened.check(address)
            if entry is None:
                free += 1
                click.echo(f"{printable(address)}: not suppressed")
                continue
            scope = f" (domain {entry.key})" if entry.is_domain else ""
            click.echo(f"{printable(address)}: suppressed{scope}: {_describe(entry)}")
    if free:
        sys.exit(EXIT_UNDELIVERED)


@suppress.command(name="list")
@click.option("--reason", type=click.Choice(_REASONS), help="Only entries for this reason.")
@click.option("--all", "everything", is_flag=True, help="Include expired entries.")
@store_options
@debug_option
def list_(
    reason: str | None, everything: bool, store: Path | str | None, campaign: Path | None
) -> None:
    """List the suppressed addresses and domains (active ones, unless --all)."""
    with open_store(store, campaign) as opened:
        rows = [["key", "reason", "source", "count", "last seen", "expires"]]
        for entry in _entries(opened, reason, everything):
            rows.append(
                [
                    entry.key,
                    entry.reason.value,
                    entry.source.value,
                    str(entry.count),
                    _when(entry.last_at),
                    _when(entry.expires_at) or "never",
                ]
            )
    write_table(rows, sys.stdout, indent="")
    click.echo(f"bulksend: {len(rows) - 1} entries", err=True)


def _entries(store: AnyStore, reason: str | None, everything: bool) -> Iterator[Entry]:
    for entry in store.entries(now=None if everything else time.time()):
        if reason is None or entry.reason.value == reason:
            yield entry


@suppress.command(name="export")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here (created 0600) instead of stdout.",
)
@click.option("--reason", type=click.Choice(_REASONS), help="Only entries for this reason.")
@click.option("--all", "everything", is_flag=True, help="Include expired entries.")
@store_options
@debug_option
def export(
    output: Path | None,
    reason: str | None,
    everything: bool,
    store: Path | str | None,
    campaign: Path | None,
) -> None:
    """Write the store as CSV (the format ``import`` reads)."""
    with open_store(store, campaign) as opened, open_output(output) as out:
        writer = csv.writer(out)
        writer.writerow(CSV_FIELDS)
        for entry in _entries(opened, reason, everything):
            detail = printable(entry.detail)
            writer.writerow(
                [
                    entry.key,
                    entry.reason.value,
                    entry.source.value,
                    _when(entry.first_at),
                    _when(entry.last_at),
                    entry.count,
                    _when(entry.expires_at),
                    "'" + detail if detail.startswith(_FORMULA) else detail,
                ]
            )


@suppress.command(name="import")
@click.argument("file", type=click.File("r", encoding="utf-8-sig"))
@click.option(
    "--reason",
    type=click.Choice(_REASONS),
    default=SuppressionReason.MANUAL.value,
    show_default=True,
    help="For rows without a reason column.",
)
@store_options
@debug_option
def import_(file: TextIO, reason: str, store: Path | str | None, campaign: Path | None) -> None:
    """Add the rows of a CSV file (``-``: stdin) to the store, merging with what is there.

    A row that cannot be used is named on stderr and skipped.
    """
    now = time.time()
    entries: list[Entry] = []
    refused = 0
    for line, row in _csv_rows(file):
        try:
            if isinstance(row, csv.Error):
                raise ValueError(f"unreadable CSV ({row})")
            entries.append(_row_entry(row, SuppressionReason(reason), now))
        except ValueError as exc:
            refused += 1
            warn(f"{file.name}: line {line}: {exc}; skipped")
    with open_store(store, campaign) as opened:
        opened.merge(entries)
    click.echo(f"bulksend: imported {len(entries)} entries, skipped {refused}", err=True)


def _csv_rows(file: TextIO) -> Iterator[tuple[int, dict[str, str] | csv.Error]]:
    reader = csv.reader(file)
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as exc:
        raise ConfigError(f"{file.name}: line 1: unreadable header ({exc})") from None
    if "address" not in header:
        if "email" not in header:
            raise ConfigError(f"{file.name}: line 1: no 'address' (or 'email') column")
        header[header.index("email")] = "address"
    for start, row in numbered_rows(reader):
        if isinstance(row, csv.Error):
            yield start, row
        elif any(cell.strip() for cell in row):
            yield start, dict(zip(header, row, strict=False))


def _row_entry(row: dict[str, str], default_reason: SuppressionReason, now: float) -> Entry:
    """An imported row as an entry. Raises ValueError naming what is wrong."""
    key = normalise_key(row.get("address", ""))
    reason = SuppressionReason(row.get("reason") or default_reason)
    source = Source(row.get("source") or Source.CLI)
    last = _parse_time(row.get("last_seen"), "last_seen") or now
    first = _parse_time(row.get("first_seen"), "first_seen") or last
    count = int(row.get("count") or 1)
    if count < 1:
        raise ValueError(f"count {count} is below 1")
    if "expires" in row:
        expires = _parse_time(row["expires"], "expires")
    else:
        expires = Rules(SuppressionConfig()).expires_at(reason, last)
    detail = row.get("detail") or ""
    if detail.startswith("'") and detail[1:].startswith(_FORMULA):
        detail = detail[1:]
    return Entry(key, reason, source, first, last, count, expires, detail)


def _parse_time(text: str | None, name: str) -> float | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
