"""``bulksend inbound ingest PATH``: bounces and complaints from a mailbox into the store."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from bulksend.campaign.render import Campaign
from bulksend.cli.options import debug_option
from bulksend.cli.suppress import open_store, store_options
from bulksend.config import SuppressionConfig
from bulksend.errors import ConfigError
from bulksend.inbound.ingest import OUTCOMES, CampaignRecipients, Ingest, messages
from bulksend.inbound.parse import Verp
from bulksend.journal.reports import JournalSet
from bulksend.suppression.rules import Rules
from bulksend.text import printable, write_table


@click.group()
def inbound() -> None:
    """What comes back to the return path: bounces, complaints (docs/suppression.md)."""


@inbound.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--sender",
    help="The VERP return path, e.g. 'bounces+{token}@example.org' "
    "(default: the campaign's [envelope] sender).",
)
@click.option(
    "--journal",
    "journals",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The campaign's journal (repeatable, for shards): only its recipients are "
    "suppressed, and a report without a token is matched by Message-ID (needs --campaign).",
)
@click.option("--verbose", "-v", is_flag=True, help="One line per message.")
@store_options
@debug_option
def ingest(
    path: Path,
    *,
    sender: str | None,
    journals: tuple[Path, ...],
    verbose: bool,
    store: Path | None,
    campaign: Path | None,
) -> None:
    """Apply the bounces and complaints in a maildir, an mbox or a folder of .eml files.

    Hard bounces and complaints suppress their address; soft bounces count towards the
    campaign's limit; delays, auto-replies and anything unreadable change nothing.
    """
    loaded = None if campaign is None else Campaign.load(campaign, os.environ)
    template = sender or (None if loaded is None else loaded.config.envelope_sender)
    verp = None if template is None else Verp.from_template(template)
    if template is not None and verp is None:
        raise ConfigError(f"{template!r} has no {{token}}: no recipient can be found by VERP")
    rules = Rules(SuppressionConfig() if loaded is None else loaded.config.suppression)
    recipients = None
    if journals:
        if loaded is None:
            raise click.UsageError("--journal needs --campaign (to match Message-IDs)")
        with JournalSet(journals) as j:
            addresses = (state.address for state in j.iter_states())
            recipients = CampaignRecipients(addresses, loaded.message_id)
    with open_store(store, campaign) as opened:
        applying = Ingest(opened, rules, verp, recipients)
        for name, data in messages(path):
            outcomes = applying.message(data, now=time.time())
            if verbose:
                click.echo(f"{printable(name)}: {', '.join(outcomes)}")
    rows = [[outcome, str(applying.counts[outcome])] for outcome in OUTCOMES]
    write_table([r for r in rows if r[1] != "0"] or [["nothing", "0"]], sys.stdout, indent="")
