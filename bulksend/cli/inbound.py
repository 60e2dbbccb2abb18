"""``bulksend inbound``: bounces and complaints into the suppression store, from a mailbox
(``inbound ingest PATH``) or over SMTP (``inbound --listen HOST:PORT``)."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from bulksend.campaign.render import Campaign
from bulksend.cli.options import JournalParam, debug_option, metrics_options
from bulksend.cli.serving import listen_address, serve_until_stopped
from bulksend.cli.suppress import open_store, store_options
from bulksend.cli.unsubscribe import file_keys, strong_key
from bulksend.config import SuppressionConfig, load_campaign
from bulksend.errors import ConfigError
from bulksend.inbound.ingest import OUTCOMES, CampaignRecipients, Ingest, messages
from bulksend.inbound.parse import Verp
from bulksend.inbound.receiver import Receiver, ReceiverLimits
from bulksend.journal.feedback_log import open_feedback_logs
from bulksend.journal.reports import JournalSet
from bulksend.metrics import FeedbackMetrics
from bulksend.suppression.rules import Rules
from bulksend.text import printable, write_table

_F = TypeVar("_F", bound=Callable[..., Any])


def _feedback_options(f: _F) -> _F:
    """--sender, --mailto and --journal: how reports are matched to recipients."""
    f = click.option(
        "--journal",
        "journals",
        multiple=True,
        type=JournalParam(exists=True),
        help="The campaign's journal, a file or a postgresql:// URL (repeatable, for shards): "
        "only its recipients are suppressed, a report without a token is matched by "
        "Message-ID (needs --campaign), and bounces, complaints and unsubscribes are recorded "
        "in it for `bulksend report`.",
    )(f)
    f = click.option(
        "--verp-key-file",
        "verp_key_files",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A VERP signing key (repeatable: keep the old key during a rotation; the "
        "--campaign's [bounces] key is used too): only reports whose return-path tag "
        "verifies are acted on.",
    )(f)
    f = click.option(
        "--mailto",
        help="Mail to this address unsubscribes its sender (default: the campaign's "
        "[unsubscribe] mailto).",
    )(f)
    return click.option(
        "--sender",
        help="The VERP return path, e.g. 'bounces+{token}@example.org' "
        "(default: the campaign's [envelope] sender).",
    )(f)


def _verp_keys(campaign: Path | None, files: tuple[Path, ...]) -> list[bytes]:
    """The VERP signing keys: the campaign's ``[bounces]`` key, then ``--verp-key-file``'s."""
    keys = []
    if campaign is not None:
        key = load_campaign(campaign, os.environ).verp_key
        if key is not None:
            keys.append(strong_key(key.reveal(), f"{campaign}: [bounces] key"))
    return keys + file_keys(files)


@contextlib.contextmanager
def _applying(
    store: Path | str | None,
    campaign: Path | None,
    sender: str | None,
    mailto: str | None,
    journals: tuple[Path | str, ...],
    *,
    verp_keys: Sequence[bytes],
    metrics: FeedbackMetrics | None = None,
) -> Iterator[Ingest]:
    """The ingest into the store ``--store``/``--campaign`` name (:func:`open_store`): the
    campaign's rules, VERP template, unsubscribe address and, given its journals, its
    recipients and where to record what comes back; all closed on leaving."""
    loaded = None if campaign is None else Campaign.load(campaign, os.environ)
    template = sender or (None if loaded is None else loaded.config.envelope_sender)
    unsubscribe = None if loaded is None else loaded.config.unsubscribe
    mailto = mailto or (None if unsubscribe is None else unsubscribe.mailto) or ""
    if verp_keys and template is None:
        raise click.UsageError("a VERP key needs the return path: give --sender or --campaign")
    verp = None if template is None else Verp.from_template(template, verp_keys)
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
    feedback_id = (None if loaded is None else loaded.config.message.feedback_id) or ""
    with open_store(store, campaign, journals) as opened, contextlib.ExitStack() as closing:
        logs = open_feedback_logs(journals, closing)
        yield Ingest(
            opened, rules, verp, recipients, mailto, metrics, journals=logs, feedback_id=feedback_id
        )


def _server_tls(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """The receiver's TLS context for STARTTLS, or None without a certificate."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise click.UsageError("STARTTLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{cert}, {key}: cannot load the certificate and its key ({exc}); give PEM files, "
            "the key matching the certificate"
        ) from None
    return context


@click.group(invoke_without_command=True)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Receive bounces and complaints over SMTP here (port 25 by default; 0: any free port).",
)
@click.option(
    "--domain",
    "domains",
    multiple=True,
    help="Accept mail for this domain (repeatable; default: the return path's domain and "
    "the unsubscribe address's).",
)
@click.option("--hostname", default=socket.getfqdn, help="Our name in the greeting.")
@click.option(
    "--max-size",
    type=click.IntRange(min=1024),
    default=ReceiverLimits().max_size,
    show_default=True,
    help="Refuse larger messages (bytes).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=ReceiverLimits().max_connections,
    show_default=True,
)
@click.option(
    "--max-per-peer",
    type=click.IntRange(min=1),
    default=ReceiverLimits().max_per_peer,
    show_default=True,
    help="Connections at once from one IP address.",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Offer STARTTLS with this certificate (PEM, the chain after it); needs --tls-key.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The private key of --tls-cert (PEM).",
)
@click.option(
    "--any-recipient",
    is_flag=True,
    help="Without --journal: suppress whatever address a report names (anyone can forge "
    "one, for any address).",
)
@_feedback_options
@metrics_options
@store_options
@debug_option
@click.pass_context
def inbound(
    ctx: click.Context,
    *,
    listen: str | None,
    metrics_host: str,
    metrics_port: int | None,
    domains: tuple[str, ...],
    hostname: str,
    max_size: int,
    max_connections: int,
    max_per_peer: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    any_recipient: bool,
    sender: str | None,
    mailto: str | None,
    journals: tuple[Path | str, ...],
    verp_key_files: tuple[Path, ...],
    store: Path | str | None,
    campaign: Path | None,
) -> None:
    """What comes back to the return path: bounces, complaints (docs/suppression.md).

    With --listen, an SMTP receiver that applies every report it is sent to the store.
    """
    if ctx.invoked_subcommand is not None:
        return
    if listen is None:
        raise click.UsageError("give --listen HOST:PORT, or a subcommand (ingest)")
    host, port = listen_address(listen, 25)
    tls = _server_tls(tls_cert, tls_key)
    keys = _verp_keys(campaign, verp_key_files)
    if not journals and not any_recipient and not keys:
        raise click.UsageError(
            "anyone can send the listener a forged report: give the campaign's --journal (only "
            "its recipients are suppressed), a VERP key (--verp-key-file or the campaign's "
            "[bounces] key: only signed reports count), or --any-recipient to suppress any "
            "address"
        )
    metrics = FeedbackMetrics()
    opening = _applying(store, campaign, sender, mailto, journals, verp_keys=keys, metrics=metrics)
    with opening as applying:
        accepted = list(domains)
        if not accepted and applying.verp is not None:
            accepted = [applying.verp.after.rpartition("@")[2]]
        if not domains and applying.mailto:
            accepted.append(applying.mailto.rpartition("@")[2])
        if not accepted:
            raise click.UsageError("name the domains to accept: --domain, --sender or --campaign")

        def deliver(data: bytes, recipients: list[str]) -> None:
            outcomes = applying.message(data, now=time.time(), envelope_to=recipients[0])
            click.echo(f"{printable(recipients[0])}: {', '.join(outcomes)}")

        limits = ReceiverLimits(
            max_size=max_size, max_connections=max_connections, max_per_peer=max_per_peer
        )
        receiver = Receiver(hostname, accepted, deliver, limits, tls)
        serve_until_stopped(
            receiver.serve,
            host,
            port,
            metrics=metrics,
            metrics_host=metrics_host,
            metrics_port=metrics_port,
        )


@inbound.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@_feedback_options
@click.option("--verbose", "-v", is_flag=True, help="One line per message.")
@store_options
@debug_option
def ingest(
    path: Path,
    *,
    sender: str | None,
    mailto: str | None,
    journals: tuple[Path | str, ...],
    verp_key_files: tuple[Path, ...],
    verbose: bool,
    store: Path | str | None,
    campaign: Path | None,
) -> None:
    """Apply the bounces and complaints in a maildir, an mbox or a folder of .eml files.

    Hard bounces and complaints suppress their address; soft bounces count towards the
    campaign's limit; delays, auto-replies and anything unreadable change nothing.
    """
    keys = _verp_keys(campaign, verp_key_files)
    with _applying(store, campaign, sender, mailto, journals, verp_keys=keys) as applying:
        for name, data in messages(path):
            outcomes = applying.message(data, now=time.time())
            if verbose:
                click.echo(f"{printable(name)}: {', '.join(outcomes)}")
    rows = [[outcome, str(applying.counts[outcome])] for outcome in OUTCOMES]
    write_table([r for r in rows if r[1] != "0"] or [["nothing", "0"]], sys.stdout, indent="")
    if journals:
        click.echo(f"recorded in the journal: {applying.recorded}")
