"""``bulksend tls-report``: one day's SMTP TLS report (RFC 8460) from the TLS state file.

The state file (``--state``, ``$BULKSEND_TLS_STATE``, by default
``$XDG_STATE_HOME/bulksend/tls-state.sqlite3``) is where every run keeps its cached MTA-STS
policies and counts its TLS sessions; this command only reads it.
"""

from __future__ import annotations

import datetime
import json
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import click

from bulksend.cli.options import debug_option
from bulksend.cli.progress import site_labels
from bulksend.cli.state import TLS_STATE_ENV, tls_state_path
from bulksend.errors import ConfigError
from bulksend.files import write_private_bytes
from bulksend.text import printable, write_table
from bulksend.tlspolicy import TlsState
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
@debug_option
def tls_report(
    *,
    day: datetime.date,
    domain: str | None,
    output: Path | None,
    state: Path | None,
    organization: str | None,
    contact: str | None,
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
    host = socket.getfqdn()
    report = aggregate_report(
        day,
        counts,
        organization=organization or host,
        contact=contact or f"postmaster@{host}",
        domain=None if domain is None else domain.lower().rstrip("."),
    )
    text = json.dumps(report, indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        write_private_bytes(output, text.encode())


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
