"""``import`` and ``worker``: one campaign sent by many processes on many machines.

``bulksend import CAMPAIGN --journal URL`` fills the journal and sends nothing; then any
number of ``bulksend worker --campaign CAMPAIGN --journal URL --throttle URL`` processes
take due recipients from it (PostgreSQL leases: nobody gets a recipient twice) and keep
every site's limits in total (the Redis/Valkey throttle store). A worker that starts before
the import is done waits for it (the import runs once, under a lock) and a worker that dies
leaves leases that expire back to the others (in doubt where a send may have started).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
import trio

from bulksend.cli.options import (
    JournalParam,
    campaign_journal,
    flags_from,
    load_campaign,
    run_options,
)
from bulksend.cli.output import counts_line, info, warn
from bulksend.cli.run import run_single
from bulksend.delivery.run import RunOptions, import_campaign
from bulksend.journal.postgres_schema import DEFAULT_LEASE

_CAMPAIGN = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("import")
@click.argument("campaign_file", type=_CAMPAIGN)
@click.option(
    "--journal",
    type=JournalParam(),
    help="The journal: a PostgreSQL journal's postgresql://USER@HOST:PORT/DB?campaign=NAME "
    "(the password from password_file=PATH, PGPASSFILE or PGPASSWORD), or a SQLite file; "
    "default the campaign's [journal] url, else <campaign id>.journal.sqlite3 next to the "
    "campaign file.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Import into a journal whose campaign content (templates, recipients file) changed.",
)
def import_(campaign_file: Path, journal: Path | str | None, force: bool) -> None:
    """Import a campaign's recipients into its journal; send nothing (then run workers)."""
    campaign = load_campaign(campaign_file)
    journal = campaign_journal(journal, campaign.config)
    options = RunOptions(journal=journal, force=force)
    imported, tally = trio.run(lambda: import_campaign(campaign, options))
    if imported is None:
        info(f"{journal}: the import was already complete")
    else:
        info(
            f"imported {imported.imported:,} recipients into {journal} "
            f"({imported.duplicates:,} duplicates left out)"
        )
    click.echo(f"recipients: {counts_line(tally.statuses)}")


@click.command()
@click.option(
    "--campaign",
    "campaign_file",
    type=_CAMPAIGN,
    required=True,
    help="The campaign file (the same on every worker: the journal refuses another).",
)
@click.option(
    "--journal",
    type=JournalParam(),
    help="The campaign's PostgreSQL journal: postgresql://USER@HOST:PORT/DB?campaign=NAME "
    "(the password from password_file=PATH, PGPASSFILE or PGPASSWORD); default the "
    "campaign's [journal] url.",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=1),
    default=DEFAULT_LEASE,
    show_default=True,
    metavar="SECONDS",
    help="How long this worker's claims are held without renewal (renewed while it runs): "
    "when a worker dies, its recipients go back to the others after this, in doubt. "
    "Also how long it waits for a lost database to come back.",
)
@run_options
def worker(campaign_file: Path, journal: Path | str | None, lease: float, **kw: Any) -> None:
    """Send an imported campaign's due recipients, beside other workers of the same journal."""
    flags = dataclasses.replace(flags_from(kw), lease=lease)
    campaign = load_campaign(campaign_file)
    journal = journal or campaign.config.journal_url
    if journal is None:
        raise click.UsageError(
            "which journal? give --journal postgresql://... or [journal] url in the campaign"
        )
    if not isinstance(journal, str):
        raise click.UsageError(
            "a worker needs a PostgreSQL journal (one campaign, shared by leases); to send "
            "a SQLite journal, use `bulksend send` or `bulksend resume`"
        )
    if flags.shard is not None:
        raise click.UsageError("workers share one journal: --shard is for SQLite journals")
    if flags.throttle is None:
        warn(
            "no --throttle: this worker keeps its own site limits, so N workers send up to N "
            "times a site's rate and connections; share them with --throttle redis://..."
        )
    raise SystemExit(run_single(campaign, journal, flags))
