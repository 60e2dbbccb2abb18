"""``policy show``: the effective limits and rules of one destination, and their origins."""

from __future__ import annotations

import os
from pathlib import Path

import click
import trio

from bulksend.cli.options import debug_option, dns_options
from bulksend.config import SendingPolicy, load_campaign
from bulksend.config.egress import EgressConfig
from bulksend.egress.explain import explain
from bulksend.egress.rules import shipped_providers
from bulksend.errors import ConfigError
from bulksend.routing import (
    MXResolver,
    RoutingConfig,
    RoutingError,
    Site,
    normalize_domain,
    system_nameservers,
)
from bulksend.text import printable


@click.group()
def policy() -> None:
    """Inspect sending policy."""


@policy.command()
@click.argument("target")
@click.argument(
    "campaign_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--no-dns", is_flag=True, help="Take TARGET as the MX host; look nothing up.")
@dns_options(
    "DNS resolver for the MX lookup (repeatable); default the campaign's [routing] "
    "nameservers, else the system's."
)
@debug_option
def show(
    *,
    target: str,
    campaign_file: Path | None,
    no_dns: bool,
    nameservers: tuple[str, ...],
    dns_port: int,
) -> None:
    """Print the limits and rules for TARGET (a domain or an MX host), and where each comes
    from: default, shipped, provider, site, domain. See docs/cli.md."""
    try:
        domain = normalize_domain(target)
    except RoutingError as exc:
        raise ConfigError(f"{target!r} is not a domain or host name ({exc.text}).") from None
    policy_, egress = SendingPolicy(), EgressConfig()
    servers = tuple(nameservers)
    where = None
    if campaign_file is not None:
        config = load_campaign(campaign_file, os.environ)
        policy_, egress, where = config.policy, config.egress, config.source
        servers = servers or config.routing.nameservers
    if no_dns:
        names: tuple[str, ...] = (domain,)
    else:
        names = trio.run(_mx_names, domain, servers or system_nameservers(), dns_port)
    lines = explain(
        policy_,
        egress,
        shipped_providers(),
        domain=domain,
        site=Site.of(names),
        campaign_file=where,
    )
    for line in lines:
        click.echo(printable(line))


async def _mx_names(domain: str, servers: tuple[str, ...], port: int) -> tuple[str, ...]:
    """The domain's MX host names; the domain itself when it has none or DNS fails."""
    config = RoutingConfig(nameservers=servers, dns_port=port, allow_private=True)
    try:
        return (await MXResolver(config).resolve(domain)).names
    except RoutingError as exc:
        click.echo(f"note: MX lookup of {domain}: {exc.text}; taking it as an MX host name")
        return (domain,)
