"""``bulksend ctl JOURNAL ...``: control a running campaign (see :mod:`bulksend.control`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from bulksend.cli.options import JournalParam, debug_option
from bulksend.config.values import parse_duration, parse_rate
from bulksend.control.client import ControlError, request
from bulksend.control.commands import Command, CommandError


def _duration(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--for") from None
    if seconds <= 0:
        raise click.BadParameter(f"{value!r}: a duration must be positive", param_hint="--for")
    return seconds


def _scope(site: str | None, domain: str | None) -> tuple[str, str]:
    if site is not None and domain is not None:
        raise click.UsageError("give --site or --domain, not both")
    if site is not None:
        return "site", site
    if domain is not None:
        return "domain", domain
    return "campaign", ""


def _send(journal: Path | str, command: Command) -> dict[str, Any]:
    try:
        command = Command.from_json(command.to_json())  # checked here as the run checks it
    except CommandError as exc:
        raise click.UsageError(str(exc)) from None
    if isinstance(journal, Path):
        return request(journal, command)
    # A PostgreSQL journal: through the journal, to every worker (psycopg is optional).
    from bulksend.control.shared import change  # noqa: PLC0415

    try:
        return {"ok": True, "changed": change(journal, command)}
    except CommandError as exc:
        raise ControlError(str(exc)) from None


def live_status(journal: Path | str) -> dict[str, Any]:
    """The live state of the run (or of every worker of a PostgreSQL journal), as ``ctl
    status`` prints it.

    Raises:
        NotRunning: no run, or no worker, tells its state.
    """
    if isinstance(journal, Path):
        return request(journal, Command("status"))["status"]  # type: ignore[no-any-return]
    from bulksend.control.shared import status  # noqa: PLC0415

    return status(journal)


def _done(journal: Path | str, command: Command) -> None:
    click.echo(_send(journal, command)["changed"])


#: The RATE or CONNECTIONS that puts a site back on its configured limit.
_DEFAULT = "default"

_site = click.option(
    "--site", help="A site: its MX host names as `status` shows them, or a suffix."
)
_domain = click.option("--domain", help="A recipient domain.")
_for = click.option("--for", "duration", metavar="DURATION", help="For a while (30s, 5m, 2h).")


@click.group()
@click.argument("journal", type=JournalParam())
@click.pass_context
def ctl(ctx: click.Context, journal: Path | str) -> None:
    """Control a running campaign: pause, resume, cancel, bounce, change a site's limits.

    JOURNAL is the run's SQLite journal (the run listens on JOURNAL.ctl, mode 0600), or a
    PostgreSQL journal's URL (every worker reads the commands from the journal).
    """
    ctx.obj = journal


@ctl.command()
@click.pass_obj
@_site
@_domain
@_for
@debug_option
def pause(journal: Path | str, site: str | None, domain: str | None, duration: str | None) -> None:
    """Pause the campaign, a site or a domain (until resumed, or --for a while)."""
    scope, target = _scope(site, domain)
    _done(journal, Command("pause", scope, target, duration=_duration(duration)))


@ctl.command()
@click.pass_obj
@_site
@_domain
@debug_option
def resume(journal: Path | str, site: str | None, domain: str | None) -> None:
    """Resume what was paused."""
    scope, target = _scope(site, domain)
    _done(journal, Command("resume", scope, target))


@ctl.command()
@click.pass_obj
@click.option("--domain", required=True, help="The recipient domain to cancel.")
@debug_option
def cancel(journal: Path | str, domain: str) -> None:
    """End every waiting recipient of a domain `cancelled`: never sent."""
    _done(journal, Command("cancel", "domain", domain))


@ctl.command(name="bounce-now")
@click.pass_obj
@click.option("--domain", required=True, help="The recipient domain to bounce.")
@debug_option
def bounce_now(journal: Path | str, domain: str) -> None:
    """End every waiting recipient of a domain `bounced` at once: never sent, no attempt."""
    _done(journal, Command("bounce", "domain", domain))


@ctl.command()
@click.pass_obj
@click.argument("site")
@click.argument("rate")
@_for
@debug_option
def rate(journal: Path | str, site: str, rate: str, duration: str | None) -> None:
    """Set SITE's message rate (20/s, 600/m) until the run ends, or --for a while;
    `default`: back to the configured rate."""
    try:
        per_second = None if rate == _DEFAULT else parse_rate(rate)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="RATE") from None
    _done(journal, Command("rate", "site", site, per_second, _duration(duration)))


@ctl.command()
@click.pass_obj
@click.argument("site")
@click.argument("connections")
@_for
@debug_option
def connections(journal: Path | str, site: str, connections: str, duration: str | None) -> None:
    """Set SITE's connection cap until the run ends, or --for a while; `default`: back to
    the configured cap."""
    cap = None
    if connections != _DEFAULT:
        cap = int(connections) if connections.isascii() and connections.isdigit() else 0
        if cap < 1:
            raise click.BadParameter(
                f"{connections!r}: a whole number of at least 1, or `default`",
                param_hint="CONNECTIONS",
            )
    _done(journal, Command("connections", "site", site, cap, _duration(duration)))


@ctl.command(name="status")
@click.pass_obj
@debug_option
def status_(journal: Path | str) -> None:
    """The run's live state, as JSON (what `bulksend top` shows)."""
    json.dump(live_status(journal), sys.stdout, indent=1)
    sys.stdout.write("\n")
