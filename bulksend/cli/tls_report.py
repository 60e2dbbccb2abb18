"""``bulksend tls-report``: one day's SMTP TLS report (RFC 8460) from the TLS state file.

The state file (``--state``, ``$BULKSEND_TLS_STATE``, by default
``$XDG_STATE_HOME/bulksend/tls-state.sqlite3``) is where every run keeps its cached MTA-STS
policies and counts its TLS sessions; this command only reads it. With ``--submit`` each
policy domain's own report also goes where its ``_smtp._tls`` record asks
(:mod:`bulksend.tlspolicy.submit`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import click
import trio

from bulksend.cli.options import debug_option, dns_options
from bulksend.cli.output import EXIT_UNDELIVERED, info, warn
from bulksend.cli.progress import site_labels
from bulksend.cli.state import TLS_STATE_ENV, tls_state_path
from bulksend.config.loader import load_campaign
from bulksend.delivery.run import RunOptions, ehlo_hostname, routing_config, verified_context
from bulksend.errors import ConfigError
from bulksend.files import write_private_bytes
from bulksend.routing import RoutingConfig, system_nameservers
from bulksend.routing.mx import MXResolver
from bulksend.text import printable, write_table
from bulksend.tlspolicy import TlsState
from bulksend.tlspolicy.submit import Submission, report_destinations
from bulksend.tlspolicy.tlsrpt import aggregate_report


def _day(_ctx: click.Context, _param: click.Parameter, value: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a day: write YYYY-MM-DD") from None


@click.command("tls-report")
@click.option("--day", required=True, callback=_day, metavar="YYYY-MM-DD", help="The UTC day.")
@click.option("--domain", help="Only this policy domain (the report its rua would receive).")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the JSON here (created 0600); default standard output.",
)
@click.option(
    "--state",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=TLS_STATE_ENV,
    help="The TLS state file; default $XDG_STATE_HOME/bulksend/tls-state.sqlite3.",
)
@click.option("--organization", help="organization-name; default this host's FQDN.")
@click.option("--contact", help="contact-info; default postmaster@ this host's FQDN.")
@click.option(
    "--submit",
    is_flag=True,
    help="Also send each policy domain its own report, where its _smtp._tls TXT record's rua "
    "asks: https (POST) or mailto (through the campaign's [routing.smarthost]).",
)
@click.option(
    "--campaign",
    "campaign_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --submit: use this campaign's [routing] nameservers and smarthost, [tls] "
    "ca_file and ehlo_hostname (the submitter).",
)
@dns_options("With --submit: DNS resolver (repeatable); default the campaign's, else the system's.")
@debug_option
def tls_report(
    *,
    day: datetime.date,
    domain: str | None,
    output: Path | None,
    state: Path | None,
    organization: str | None,
    contact: str | None,
    submit: bool,
    campaign_file: Path | None,
    nameservers: tuple[str, ...],
    dns_port: int,
) -> None:
    """Write the RFC 8460 TLS report (JSON) of one day's sessions under MTA-STS or DANE."""
    path = state or tls_state_path()
    if not path.exists():
        raise ConfigError(f"no TLS state file at {str(path)!r}: give it with --state")
    store = TlsState(path)
    try:
        counts = store.sessions(day.isoformat())
    finally:
        store.close()
    config = None if campaign_file is None else load_campaign(campaign_file, os.environ)
    host = socket.getfqdn() if config is None else ehlo_hostname(config, None)
    organization = organization or host
    contact = contact or f"postmaster@{host}"
    wanted = None if domain is None else domain.lower().rstrip(".")

    def report_of(policy_domain: str | None) -> dict[str, Any]:
        return aggregate_report(
            day, counts, organization=organization, contact=contact, domain=policy_domain
        )

    report = report_of(wanted)
    text = json.dumps(report, indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        write_private_bytes(output, text.encode())
    if not submit:
        return
    routing = RoutingConfig(dns_port=dns_port)
    if config is not None:  # its smarthost, private addresses, nameservers
        routing = routing_config(config, RunOptions(journal="", dns_port=dns_port))
    servers = nameservers or routing.nameservers or system_nameservers()
    routing = dataclasses.replace(routing, nameservers=servers)
    submission = Submission(
        MXResolver(routing),
        verified_context(None if config is None else config.tls.ca_certs),
        submitter=host,
        sender=contact if "@" in contact and ":" not in contact else f"postmaster@{host}",
        ehlo_hostname=host,
        smarthost=routing.smarthost,
        allow_private=routing.allow_private,
    )
    domains = sorted({k.domain for k, _n in counts} if wanted is None else {wanted})

    async def send_all() -> bool:
        ok = True
        for policy_domain in domains:
            ok &= await _submit(submission, policy_domain, report_of)
        return ok

    if not trio.run(send_all):
        raise SystemExit(EXIT_UNDELIVERED)


async def _submit(
    submission: Submission, domain: str, report_of: Callable[[str], dict[str, Any]]
) -> bool:
    """Send ``domain`` its report where it asks; False if a destination failed."""
    destinations = await report_destinations(submission.resolver, domain)
    if not destinations:
        info(f"{domain}: publishes no TLS-RPT destination (_smtp._tls TXT rua): not sent")
        return True
    report = report_of(domain)
    ok = True
    for destination in destinations:
        sent = await submission.send(report, domain, destination)
        shown = printable(destination)  # from DNS: anyone's text, escapes included
        if sent.ok:
            info(f"{domain}: report {report['report-id']} sent to {shown}: {sent.detail}")
        else:
            warn(f"{domain}: report not sent to {shown}: {printable(sent.detail)}")
            ok = False
    return ok


def write_tls_sites(sites: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    """``status``'s TLS lines: each site under MTA-STS or DANE, or with a TLS failure, its
    policy in force and its last TLS failure (remote text escaped); nothing if none."""
    shown = [
        s
        for s in sites
        if s.get("tls_failure") or s.get("tls_policy") not in (None, "", "opportunistic", "none")
    ]
    if not shown:
        return
    labels = site_labels(str(s["site"]) for s in sites)
    out.write("TLS:\n")
    rows = [
        [labels[str(s["site"])], str(s.get("tls_policy") or "-"),
         printable(str(s.get("tls_failure") or ""))]
        for s in shown
    ]  # fmt: skip
    write_table([["site", "policy", "last TLS failure"], *rows], out)
