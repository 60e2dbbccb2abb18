"""Options shared by several commands: ``--debug``, the run flags, the metrics endpoint."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from bulksend.campaign.render import Campaign
from bulksend.cli.output import warn
from bulksend.cli.state import tls_state_path
from bulksend.config import CampaignConfig, is_fqdn
from bulksend.config.values import parse_nameserver
from bulksend.delivery.run import RunOptions, ehlo_hostname
from bulksend.delivery.shard import Shard, read_placement
from bulksend.errors import ConfigError, JournalError
from bulksend.journal.postgres_schema import parse_url
from bulksend.routing import system_nameservers
from bulksend.store_urls import is_postgres_url
from bulksend.throttles.location import THROTTLE_PASSWORD_ENV, StoreLocation, parse_store_url

DEBUG_KEY: Final = "bulksend.debug"


class JournalParam(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.3
    """A journal: a SQLite file (a path) or a PostgreSQL journal's
    ``postgresql://user@host:port/db?campaign=NAME`` URL (kept as text). A URL holding a
    password is refused: it would show in process lists and shell history."""

    name = "journal"

    def __init__(self, *, exists: bool = False) -> None:
        self._path = click.Path(exists=exists, dir_okay=False, path_type=Path)

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Path | str:
        if isinstance(value, str) and is_postgres_url(value):
            try:
                parse_url(value)
            except JournalError as e:
                self.fail(str(e), param, ctx)
            return value
        path: Path = self._path.convert(value, param, ctx)
        return path


_F = TypeVar("_F", bound=Callable[..., Any])


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[DEBUG_KEY] = True
        logging.basicConfig(
            level=logging.DEBUG, format="%(asctime)s %(name)s: %(message)s", force=True
        )
    return value


def debug_option(f: _F) -> _F:
    return click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_debug,
        help="Show tracebacks and debug logging.",
    )(f)


@dataclass(frozen=True)
class RunFlags:
    """The options of a run as given (``send``, ``resume``, ``demo``)."""

    metrics_port: int | None
    metrics_host: str
    limit: int | None
    force: bool
    accounting: Path | None
    nameservers: tuple[str, ...]
    dns_port: int
    smtp_port: int
    ehlo_hostname: str | None
    grace: float
    quiet: bool
    keep_serving: bool = False
    shard: Shard | None = None
    placement: Path | None = None  # --placement, with --shard
    retry_unrendered: bool = False
    exit_zero_when_complete: bool = False
    throttle: StoreLocation | None = None
    lease: float | None = None
    events_stdout: bool = False  # --events stdout

    def options(self, journal: Path | str, campaign: Campaign) -> RunOptions:
        ehlo = ehlo_hostname(campaign.config, self.ehlo_hostname)
        if not is_fqdn(ehlo):
            warn(not_fqdn(ehlo))
        placement = None
        if self.placement is not None:
            if self.shard is None:
                raise click.UsageError("--placement goes with --shard I/N")
            placement = read_placement(self.placement, self.shard.count)
        return RunOptions(
            journal=journal,
            shard=self.shard,
            placement=placement,
            nameservers=run_nameservers(self.nameservers, campaign),
            dns_port=self.dns_port,
            smtp_port=self.smtp_port,
            ehlo_hostname=ehlo,
            force=self.force,
            limit=self.limit,
            grace=self.grace,
            retry_unrendered=self.retry_unrendered,
            throttle=None if self.throttle is None else self.throttle.url,
            throttle_password=None if self.throttle is None else self.throttle.password(os.environ),
            lease=self.lease,
            tls_state=tls_state_path(),
        )


def not_fqdn(name: str) -> str:
    return (
        f"the EHLO name {name!r} is not a fully qualified domain name; receivers may refuse "
        "or distrust the mail: set [campaign] ehlo_hostname (or --ehlo-hostname) to this "
        "host's public name"
    )


def run_nameservers(given: tuple[str, ...], campaign: Campaign) -> tuple[str, ...]:
    if given:
        return given
    if campaign.config.routing.nameservers:
        return ()
    try:
        return system_nameservers()
    except ConfigError:
        return ()  # routing names the problem if it needs DNS


def metrics_options(f: _F, *, default_port: int | None = None) -> _F:
    f = click.option(
        "--metrics-host",
        default="127.0.0.1",
        show_default=True,
        help="Address the metrics endpoint listens on (0.0.0.0 exposes it on every interface).",
    )(f)
    return click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        default=default_port,
        help="Serve Prometheus metrics on this port (0: any free port; the URL is printed)."
        + (" Off by default." if default_port is None else ""),
    )(f)


def run_options(f: _F) -> _F:
    decorators = [
        click.option(
            "--limit",
            type=click.IntRange(min=1),
            help="Stop after this many recipients have an outcome in this run (exit 3).",
        ),
        click.option(
            "--force",
            is_flag=True,
            help="Resume even though the campaign's content (message, sender, templates, "
            "recipients file) changed; policy changes need no --force.",
        ),
        click.option(
            "--accounting",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Append one JSON line per delivery attempt to this file (created 0600).",
        ),
        dns_options("DNS resolver to ask (repeatable); default the campaign's, else the system's."),
        click.option(
            "--smtp-port",
            type=click.IntRange(1, 65535),
            default=25,
            hidden=True,
            help="SMTP port of every MX host (test servers).",
        ),
        click.option(
            "--ehlo-hostname",
            help="Our name in EHLO; default the campaign's ehlo_hostname, else this host's FQDN.",
        ),
        click.option(
            "--grace",
            type=click.FloatRange(min=0),
            default=30.0,
            show_default=True,
            help="Seconds in-flight transactions get to finish when stopping.",
        ),
        click.option("--quiet", "-q", is_flag=True, help="No progress display."),
        click.option(
            "--events",
            type=click.Choice(["stdout"]),
            help="Also write each outcome as a JSON event line to stdout (docs/cli.md); "
            "the summary then goes to stderr.",
        ),
        click.option(
            "--shard",
            callback=_parse_shard,
            metavar="INDEX/COUNT",
            help="Run one shard of COUNT (0-based INDEX; sites are divided, not domains); "
            "its journal is JOURNAL with INDEXofCOUNT in its name.",
        ),
        click.option(
            "--placement",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="With --shard: put the largest sites on the shards as FILE says (made once "
            "for every shard by `bulksend plan`), the others by hash. Default: all by hash.",
        ),
        click.option(
            "--throttle",
            callback=_check_throttle,
            metavar="URL",
            help="Share site limits (rates, connection caps, backoff, pause) with every "
            "worker of the campaign through Redis/Valkey: redis://host:port/db (rediss:// "
            "for TLS); its password from ?password_file=PATH or "
            f"${THROTTLE_PASSWORD_ENV}. Default: this process.",
        ),
        click.option(
            "--keep-serving",
            is_flag=True,
            help="After the run, keep the metrics endpoint up until SIGINT/SIGTERM.",
        ),
        click.option(
            "--exit-zero-when-complete",
            is_flag=True,
            help="Exit 0, not 4, when the campaign completed with bounces or expiries "
            "(for orchestrators: a Kubernetes Job, systemd).",
        ),
        debug_option,
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return metrics_options(f)


def flags_from(kw: dict[str, Any]) -> RunFlags:
    return RunFlags(
        metrics_port=kw.pop("metrics_port"),
        metrics_host=kw.pop("metrics_host"),
        limit=kw.pop("limit"),
        force=kw.pop("force"),
        accounting=kw.pop("accounting"),
        nameservers=tuple(kw.pop("nameservers")),
        dns_port=kw.pop("dns_port"),
        smtp_port=kw.pop("smtp_port"),
        ehlo_hostname=kw.pop("ehlo_hostname"),
        grace=kw.pop("grace"),
        quiet=kw.pop("quiet"),
        keep_serving=kw.pop("keep_serving"),
        shard=kw.pop("shard"),
        placement=kw.pop("placement"),
        exit_zero_when_complete=kw.pop("exit_zero_when_complete"),
        throttle=kw.pop("throttle"),
        events_stdout=kw.pop("events") == "stdout",
    )


def dns_options(help_text: str) -> Callable[[_F], _F]:
    """``--nameserver`` (repeatable, ``help_text``) and the hidden ``--dns-port`` of a command
    that looks things up in DNS."""

    def add(f: _F) -> _F:
        f = click.option("--dns-port", type=click.IntRange(1, 65535), default=53, hidden=True)(f)
        return click.option(
            "--nameserver",
            "nameservers",
            multiple=True,
            callback=check_nameservers,
            help=help_text,
        )(f)

    return add


def check_nameservers(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """``--nameserver``: the rule of the campaign's ``[routing] nameservers``."""
    for value in values:
        try:
            parse_nameserver(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return values


def _parse_shard(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Shard | None:
    if value is None:
        return None
    try:
        return Shard.parse(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _check_throttle(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> StoreLocation | None:
    if value is None:
        return None
    try:
        return parse_store_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def campaign_journal(given: Path | str | None, config: CampaignConfig) -> Path | str:
    """The journal of a run: ``--journal``, else the campaign's ``[journal] url``, else
    ``<campaign id>.journal.sqlite3`` beside the campaign file."""
    return given or config.journal_url or config.source.parent / f"{config.id}.journal.sqlite3"


def load_campaign(path: Path) -> Campaign:
    campaign = Campaign.load(path, os.environ)
    for warning in campaign.warnings:
        warn(warning)
    return campaign


def demo_metrics_options(f: _F) -> _F:
    return metrics_options(f, default_port=0)
