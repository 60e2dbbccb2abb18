"""``validate``: a campaign's configuration, templates, recipients and DNS records."""

from __future__ import annotations

import collections
import itertools
import os
import time
from collections.abc import Generator
from pathlib import Path

import click
import trio

from bulksend.campaign.authcheck import Finding, check_authentication
from bulksend.campaign.recipients import Reject
from bulksend.campaign.render import Campaign, RenderError
from bulksend.cli.options import debug_option, dns_options, not_fqdn
from bulksend.cli.output import EXIT_OK, EXIT_UNDELIVERED
from bulksend.config import is_fqdn
from bulksend.delivery.run import ehlo_hostname
from bulksend.egress.reverse import check_sources
from bulksend.errors import ConfigError
from bulksend.files import write_private_bytes
from bulksend.routing import RoutingConfig, system_nameservers
from bulksend.text import printable
from bulksend.tlspolicy.survey import survey

#: The largest recipient domains (of the sample) whose TLS policy validate shows.
TLS_SURVEY_DOMAINS = 5
TLS_SURVEY_TIMEOUT = 5.0  # seconds for one of its DNS lookups, as for SPF/DKIM/DMARC


@click.command()
@click.argument("campaign_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Render this many recipients (the first ones).",
)
@click.option(
    "--previews",
    type=click.IntRange(min=0),
    default=0,
    help="Write this many rendered messages as .eml files (0600).",
)
@click.option(
    "--preview-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where previews go; default <campaign dir>/previews.",
)
@click.option("--no-dns", is_flag=True, help="Skip the SPF, DKIM and DMARC lookups.")
@dns_options(
    "DNS resolver for the lookups (repeatable); default the campaign's [routing] "
    "nameservers, else the system's (/etc/resolv.conf)."
)
@debug_option
def validate(
    *,
    campaign_file: Path,
    sample: int,
    previews: int,
    preview_dir: Path | None,
    no_dns: bool,
    nameservers: tuple[str, ...],
    dns_port: int,
) -> None:
    """Check a campaign: config, templates, recipients, DKIM key, SPF/DKIM/DMARC in DNS,
    reverse DNS of its egress sources."""
    campaign = Campaign.load(campaign_file, os.environ)
    campaign.check_recipients(sample)
    config = campaign.config
    findings = [Finding("ok", f"campaign {config.id}: configuration and templates load")]
    findings += [Finding("warning", w) for w in campaign.warnings]
    findings += [Finding("ok", f"template {name}: {engine}") for name, engine in campaign.engines()]
    for signer in campaign.signers:
        findings.append(
            Finding(
                "ok",
                f"DKIM key loaded: {signer.algorithm.value} "
                f"{signer.selector}._domainkey.{signer.domain}",
            )
        )
    ehlo = ehlo_hostname(config, None)
    findings.append(
        Finding("ok", f"EHLO name: {ehlo}") if is_fqdn(ehlo) else Finding("warning", not_fqdn(ehlo))
    )
    rejects: list[Reject] = []
    rendered = 0
    kept: list[bytes] = []  # only the previews: each message may be max_message_size
    failures: list[str] = []
    now = time.time()
    keep = max(sample, previews)
    reader = iter(campaign.recipients(rejects.append))
    for recipient in reader:
        if rendered + len(failures) >= keep:
            break
        try:
            data = campaign.render(recipient, now=now).data
        except RenderError as exc:
            failures.append(str(exc))
            continue
        rendered += 1
        if len(kept) < previews:
            kept.append(data)
    if isinstance(reader, Generator):
        reader.close()  # the file it reads
    tried = rendered + len(failures)
    if failures:
        findings += [Finding("warning", f"render failure: {f}") for f in failures[:5]]
    findings.append(
        Finding(
            "ok" if tried and not failures else "warning",
            f"recipients: {rendered:,} of the first {tried:,} rendered"
            + (f"; {len(rejects):,} rows rejected before them" if rejects else ""),
        )
    )
    for reject in rejects[:5]:
        findings.append(
            Finding(
                "warning", f"rejected row: line {reject.line}: {reject.raw_email}: {reject.reason}"
            )
        )
    if previews:
        directory = preview_dir or config.source.parent / "previews"
        directory.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(kept, 1):
            write_private_bytes(directory / f"preview-{i:03d}.eml", data)
        findings.append(Finding("ok", f"{len(kept)} previews in {directory}"))
    if not no_dns:
        servers = tuple(nameservers) or config.routing.nameservers or _system_or_none()
        if servers:
            largest = _largest_domains(campaign, sample)
            findings += trio.run(_dns_findings, campaign, ehlo, servers, dns_port, largest)
        else:
            findings.append(Finding("warning", "no nameserver: SPF, DKIM and DMARC not checked"))
    for f in findings:
        click.echo(printable(f"{f.level}: {f.text}"))  # DNS text is anyone's
    warnings = sum(1 for f in findings if f.level != "ok")
    click.echo(f"{warnings} warning(s)" if warnings else "campaign looks good")
    raise SystemExit(EXIT_UNDELIVERED if warnings else EXIT_OK)


def _largest_domains(campaign: Campaign, sample: int) -> list[str]:
    """The recipient domains with the most recipients among the first ``sample`` (a few)."""
    reader = iter(campaign.recipients())
    try:
        domains = collections.Counter(
            r.address.rpartition("@")[2] for r in itertools.islice(reader, sample)
        )
    finally:
        if isinstance(reader, Generator):
            reader.close()  # the file it reads
    return [d for d, _ in domains.most_common(TLS_SURVEY_DOMAINS)]


async def _dns_findings(
    campaign: Campaign, ehlo: str, servers: tuple[str, ...], dns_port: int, largest: list[str]
) -> list[Finding]:
    """SPF, DKIM and DMARC, the egress sources' reverse DNS, and the TLS policies of the
    ``largest`` recipient domains, looked up at the same time (a silent resolver costs one
    timeout, not three)."""
    routing = campaign.config.routing
    config = RoutingConfig(
        nameservers=servers,
        dns_port=dns_port,
        timeout=TLS_SURVEY_TIMEOUT,
        allow_private=routing.allow_private_addresses,
        dnssec=routing.dnssec,
    )
    found: dict[str, list[Finding]] = {}

    async def authentication() -> None:
        found["auth"] = await check_authentication(campaign, servers, dns_port)

    async def tls() -> None:
        lines = await survey(config, largest)
        found["tls"] = [Finding("ok", f"TLS policy: {line}") for line in lines]

    async def sources() -> None:
        found["sources"] = await check_sources(campaign.config.egress, ehlo, servers, dns_port)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(authentication)
        nursery.start_soon(sources)
        nursery.start_soon(tls)
    return found["auth"] + found["sources"] + found["tls"]


def _system_or_none() -> tuple[str, ...]:
    try:
        return system_nameservers()
    except ConfigError:
        return ()
