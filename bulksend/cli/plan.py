"""``plan CAMPAIGN --shards N``: where the largest sites go, for ``send --shard I/N`` on N
machines (see :mod:`bulksend.delivery.shard`)."""

from __future__ import annotations

from pathlib import Path

import click
import trio

from bulksend.cli.options import (
    campaign_journal,
    debug_option,
    dns_options,
    load_campaign,
    run_nameservers,
)
from bulksend.cli.output import info
from bulksend.delivery.run import RunOptions, plan_shards
from bulksend.delivery.shard import placement_text


@click.command()
@click.argument("campaign_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--shards", type=click.IntRange(2, 4096), required=True, help="How many shards.")
@dns_options("DNS resolver to ask (repeatable); default the campaign's, else the system's.")
@click.option("--smtp-port", type=click.IntRange(1, 65535), default=25, hidden=True)
@debug_option
def plan(
    *, campaign_file: Path, shards: int, nameservers: tuple[str, ...], dns_port: int, smtp_port: int
) -> None:
    """Route every domain of the recipients once and print, as JSON, the shard of each of the
    largest sites (largest first onto the least loaded shard), for every machine's
    `send --shard I/N --placement FILE`: N machines then share the big providers as
    `send --workers N` shares them among its processes. See docs/cli.md."""
    campaign = load_campaign(campaign_file)
    options = RunOptions(
        journal=campaign_journal(None, campaign.config),  # not opened
        nameservers=run_nameservers(nameservers, campaign),
        dns_port=dns_port,
        smtp_port=smtp_port,
    )
    made = trio.run(plan_shards, campaign, options, shards, None)
    click.echo(placement_text(made.placed, shards))
    for index in range(shards):
        sites = sorted(site for site, shard in made.placed.items() if shard == index)
        info(
            f"shard {index}/{shards}: {len(sites)} of the largest sites: {', '.join(sites) or '-'}"
        )
