"""The ``bulksend`` command line: the only place that reads argv, the environment and the terminal.

Commands: ``send``, ``resume``, ``status``, ``report``, ``validate``, ``sink`` and ``demo``
(see docs/cli.md). Every error a user can cause ends in one line on stderr,
``bulksend: error: ...``, and exit status 1; ``--debug`` shows the traceback instead.

Exit statuses (:data:`EXIT_OK` ...): 0 done; 1 error; 2 usage (click's); 3 stopped before
the campaign completed (a signal, ``--limit``): resumable; 4 done, but some recipients were
not delivered (bounced or expired; 0 with ``--exit-zero-when-complete``, for orchestrators),
or a dry run / validation found problems.

Signals during a run: the first SIGINT or SIGTERM stops gracefully (no new transaction;
in-flight ones get ``--grace`` seconds; the journal is flushed); a second aborts at once
(the run is cancelled; the journal stays consistent, and a message whose reply was owed is
counted in doubt on resume).
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import logging
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO, TypeVar

import click
import dns.asyncresolver
import dns.exception
import dns.resolver
import trio
from prometheus_client import CollectorRegistry

from bulksend.campaign.dkim import zone_txt
from bulksend.campaign.recipients import Reject
from bulksend.campaign.render import Campaign, RenderError
from bulksend.config import is_fqdn
from bulksend.delivery.run import (
    RunOptions,
    RunSummary,
    ehlo_hostname,
    routing_config,
    run_campaign,
)
from bulksend.delivery.scheduler import Scheduler
from bulksend.delivery.shard import Shard
from bulksend.delivery.workers import WorkerPool, WorkerState
from bulksend.errors import BulksendError, ConfigError
from bulksend.journal import CampaignTally, Journal, JournalPeek, JournalSet, Status
from bulksend.metrics import Metrics, MetricsServer, register_process_metrics
from bulksend.metrics import serve as serve_registry
from bulksend.progress import (
    SHOWN_KINDS,
    SNAPSHOT_STALE,
    AccountingLog,
    Progress,
    Tally,
    format_duration,
    iter_site_rows,
    open_private,
    read_snapshot,
    snapshot_path,
    write_private_bytes,
)
from bulksend.routing import Router, RoutingError, system_nameservers
from bulksend.text import printable

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_STOPPED",
    "EXIT_UNDELIVERED",
    "EXIT_USAGE",
    "campaign_sidecar",
    "main",
]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_STOPPED: Final = 3
EXIT_UNDELIVERED: Final = 4

_DEBUG_KEY: Final = "bulksend.debug"
_F = TypeVar("_F", bound=Callable[..., Any])

log = logging.getLogger("bulksend")


# --- errors and exit codes -----------------------------------------------------------------


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def _user_error(exc: BaseException) -> BaseException | None:
    """The error to report in one line, if ``exc`` is (or only wraps) a user-facing one."""
    leaves = _leaves(exc)
    known = [e for e in leaves if isinstance(e, BulksendError | OSError)]
    if known and all(isinstance(e, BulksendError | OSError | trio.Cancelled) for e in leaves):
        return known[0]
    return None


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc) or type(exc).__name__
    return " ".join(text.split()) if "\n" not in text else text.splitlines()[0]


def _stdout_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is stdout's reader going away (``bulksend report | head``)."""
    if not any(isinstance(e, BrokenPipeError) for e in _leaves(exc)):
        return False
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), 0)
    except (OSError, ValueError):
        return False  # not a file descriptor (tests' captured output)
    return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poll.poll(0))


def _end_by_sigpipe() -> None:
    """End as a Unix tool does when its reader leaves: killed by SIGPIPE, without a word."""
    with contextlib.suppress(OSError, ValueError):
        # Python flushes stdout at exit: point it at /dev/null so that flush cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)


class _Group(click.Group):
    """Turns errors into one line on stderr and exit status 1 (a traceback with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("bulksend: interrupted", err=True)
            ctx.exit(EXIT_STOPPED)
        except BaseException as exc:
            if isinstance(exc, SystemExit):
                raise
            if _stdout_gone(exc):
                _end_by_sigpipe()
            error = _user_error(exc)
            if ctx.meta.get(_DEBUG_KEY):
                traceback.print_exception(exc, file=sys.stderr)
                if error is None:
                    ctx.exit(EXIT_ERROR)
            if error is None:
                click.echo(
                    f"bulksend: error: unexpected {type(exc).__name__}: {_message(exc)} "
                    "(run with --debug for the traceback)",
                    err=True,
                )
                ctx.exit(EXIT_ERROR)
            click.echo(f"bulksend: error: {_message(error)}", err=True)
            ctx.exit(EXIT_ERROR)


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[_DEBUG_KEY] = True
        logging.basicConfig(
            level=logging.DEBUG, format="%(asctime)s %(name)s: %(message)s", force=True
        )
    return value


def _debug_option(f: _F) -> _F:
    return click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_debug,
        help="Show tracebacks and debug logging.",
    )(f)


def _warn(text: str) -> None:
    click.echo(f"bulksend: warning: {text}", err=True)


def _info(text: str) -> None:
    click.echo(f"bulksend: {text}", err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bulksend", prog_name="bulksend")
@_debug_option
def main() -> None:
    """bulksend: send one personalised message to every recipient of a list, straight to
    their mail exchangers, resumably. See docs/cli.md."""
    # --debug (eager) has configured logging already; otherwise only errors are logged.
    logging.basicConfig(level=logging.ERROR, format="bulksend: %(message)s")


# --- shared run options --------------------------------------------------------------------


@dataclass
class _RunFlags:
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
    retry_unrendered: bool = False
    exit_zero_when_complete: bool = False

    def options(self, journal: Path, campaign: Campaign) -> RunOptions:
        ehlo = ehlo_hostname(campaign.config, self.ehlo_hostname)
        if not is_fqdn(ehlo):
            _warn(_not_fqdn(ehlo))
        return RunOptions(
            journal=journal,
            shard=self.shard,
            nameservers=_nameservers(self.nameservers, campaign),
            dns_port=self.dns_port,
            smtp_port=self.smtp_port,
            ehlo_hostname=ehlo,
            force=self.force,
            limit=self.limit,
            grace=self.grace,
            retry_unrendered=self.retry_unrendered,
        )


def _not_fqdn(name: str) -> str:
    return (
        f"the EHLO name {name!r} is not a fully qualified domain name; receivers may refuse "
        "or distrust the mail: set [campaign] ehlo_hostname (or --ehlo-hostname) to this "
        "host's public name"
    )


def _serve_metrics(registry: CollectorRegistry, flags: _RunFlags) -> MetricsServer:
    assert flags.metrics_port is not None
    try:
        return serve_registry(registry, flags.metrics_port, flags.metrics_host)
    except OSError as exc:
        raise ConfigError(
            f"--metrics-port {flags.metrics_port}: cannot listen on {flags.metrics_host}:"
            f"{flags.metrics_port} ({exc.strerror or exc}); choose another port, or 0 for any "
            "free one"
        ) from None


def _nameservers(given: tuple[str, ...], campaign: Campaign) -> tuple[str, ...]:
    if given:
        return given
    if campaign.config.routing.nameservers:
        return ()
    try:
        return system_nameservers()
    except ConfigError:
        return ()  # routing names the problem if it needs DNS


def _metrics_options(f: _F, *, default_port: int | None = None) -> _F:
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


def _run_options(f: _F) -> _F:
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
        click.option(
            "--nameserver",
            "nameservers",
            multiple=True,
            help="DNS resolver to ask (repeatable); default the campaign's, else the system's.",
        ),
        click.option(
            "--dns-port", type=click.IntRange(1, 65535), default=53, hidden=True, help="DNS port."
        ),
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
            "--shard",
            callback=_parse_shard,
            metavar="INDEX/COUNT",
            help="Run one shard of COUNT (0-based INDEX; sites are divided, not domains); "
            "its journal is JOURNAL with INDEXofCOUNT in its name.",
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
        _debug_option,
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return _metrics_options(f)


def _flags(kw: dict[str, Any]) -> _RunFlags:
    return _RunFlags(
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
        exit_zero_when_complete=kw.pop("exit_zero_when_complete"),
    )


def _parse_shard(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Shard | None:
    if value is None:
        return None
    try:
        return Shard.parse(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def campaign_sidecar(journal: Path) -> Path:
    """The file next to a journal that names its campaign file (for ``resume``)."""
    return journal.with_name(journal.name + ".campaign")


def _load_campaign(path: Path) -> Campaign:
    campaign = Campaign.load(path, os.environ)
    for warning in campaign.warnings:
        _warn(warning)
    return campaign


# --- running a campaign --------------------------------------------------------------------


@dataclass
class RunResult:
    """How a run ended: its summary, or None when aborted by a second signal."""

    summary: RunSummary | None
    signalled: bool = False
    sending: bool = True  # False: stopped before sending began (during the import)
    metrics_server: MetricsServer | None = None


@dataclass
class _RunControl:
    scheduler: Scheduler | None = None
    signals: int = 0
    abort: trio.CancelScope = field(default_factory=trio.CancelScope)

    def on_start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        if self.signals:
            scheduler.stop()

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        else:
            self.abort.cancel()  # nothing sent yet (importing): stop at once


async def _watch_signals(
    control: _RunControl,
    grace: float,
    progress: Progress,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            control.signals += 1
            name = signal.Signals(signum).name
            if control.signals == 1 and control.scheduler is None:
                progress.message(f"bulksend: {name}: stopping before sending began")
                control.stop()
            elif control.signals == 1:
                progress.message(
                    f"bulksend: {name}: stopping; in-flight messages get up to {grace:g}s "
                    "(signal again to abort at once)"
                )
                control.stop()
            else:
                progress.message(f"bulksend: {name}: aborting")
                control.abort.cancel()


async def execute_run(
    campaign: Campaign,
    options: RunOptions,
    *,
    flags: _RunFlags,
    campaign_path: Path | None,
    stream: TextIO,
    metrics: Metrics | None = None,
    metrics_server: MetricsServer | None = None,
    tally: Tally | None = None,
    watch: Callable[[Scheduler, Progress], Any] | None = None,
) -> RunResult:
    """Run a campaign with signals, progress, status snapshot, accounting and metrics.

    ``watch(scheduler, progress)``, if given, is started as a task once sending begins (the
    demo uses it to end its run).
    """
    metrics = metrics or Metrics()
    if metrics_server is None and flags.metrics_port is not None:
        metrics_server = _serve_metrics(metrics.registry, flags)
        _info(f"metrics at {metrics_server.url}")
    tally = tally or Tally()
    if flags.accounting is not None:
        tally.accounting = AccountingLog(flags.accounting)
    tty = stream.isatty()
    progress = Progress(
        tally,
        stream,
        tty=tty,
        journal=options.journal_path,
        campaign=campaign_path,
        quiet=flags.quiet,
        metrics=metrics,
    )
    control = _RunControl()
    summary: RunSummary | None = None
    state = "aborted"
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_watch_signals, control, options.grace, progress)
            await nursery.start(progress.run)

            def on_start(scheduler: Scheduler) -> None:
                control.on_start(scheduler)
                progress.attach(scheduler)
                if watch is not None:
                    nursery.start_soon(watch, scheduler, progress)

            with control.abort:
                summary = await run_campaign(
                    campaign,
                    options,
                    metrics=metrics,
                    on_start=on_start,
                    on_outcome=tally,
                    on_journal=_show_changes,
                    on_import=progress.importing,
                )
            nursery.cancel_scope.cancel()
        if summary is not None:
            state = "finished" if summary.complete else "stopped"
    finally:
        progress.finish(state)
        if tally.accounting is not None:
            tally.accounting.close()
    return RunResult(
        summary,
        control.signals > 0,
        control.scheduler is not None,
        metrics_server=metrics_server,
    )


def _show_changes(journal: Journal) -> None:
    """Say what changed in the campaign since its journal was written (a resume goes on)."""
    if "policy" in journal.changes:
        _info(f"sending policy changed since the last run: {journal.changes['policy']}")
    if "content" in journal.changes:
        _warn(f"campaign content changed (--force): {journal.changes['content']}")


def _exit_code(result: RunResult, flags: _RunFlags) -> int:
    summary = result.summary
    if summary is not None and summary.halted:
        return EXIT_ERROR
    if summary is None:
        return EXIT_STOPPED
    return _completion_code(summary.complete, summary.counts, flags)


def _completion_code(complete: bool, counts: Mapping[Status, int], flags: _RunFlags) -> int:
    """3 stopped; 4 complete with recipients undelivered (0 with --exit-zero-when-complete)."""
    if not complete:
        return EXIT_STOPPED
    if _undelivered(counts) and not flags.exit_zero_when_complete:
        return EXIT_UNDELIVERED
    return EXIT_OK


def _undelivered(counts: Mapping[Status, int]) -> int:
    """Recipients that will not get the message (unless a fixed campaign retries them)."""
    return counts[Status.BOUNCED] + counts[Status.EXPIRED] + counts[Status.NOT_RENDERED]


def _say_halted(summaries: Iterable[RunSummary | None]) -> bool:
    """Print why a run stopped itself (renders failing systematically), if one did."""
    for summary in summaries:
        if summary is not None and summary.halted:
            click.echo(f"bulksend: error: {summary.halted}; nothing was bounced", err=True)
            return True
    return False


def _counts_line(counts: Mapping[Status, int] | Mapping[str, int]) -> str:
    return "  ".join(f"{str(s).replace('_', ' ')} {n:,}" for s, n in counts.items())


def print_summary(
    result: RunResult, journal: Path, out: TextIO, *, rejects: Path | None = None
) -> None:
    """The lines a run ends with (stdout)."""
    summary = result.summary
    if summary is None and not result.sending:
        out.write(f"stopped before sending began: continue with: bulksend resume {journal}\n")
        return
    if summary is None:
        out.write(f"aborted: the journal is consistent; continue with: bulksend resume {journal}\n")
        return
    _write_tally(
        out,
        state="complete" if summary.complete else "stopped before completion",
        elapsed=summary.elapsed,
        outcomes=summary.outcomes,
        tally=summary.tally,
        rejects=[] if rejects is None else [rejects],
    )
    if summary.requeued:
        out.write(f"  requeued:  {summary.requeued:,} recipients not rendered before\n")
    if summary.in_doubt_recovered:
        out.write(
            f"  recovered: {summary.in_doubt_recovered:,} recipients in doubt from an "
            "interrupted run\n"
        )
    if not summary.complete:
        waiting = summary.counts[Status.PENDING] + summary.counts[Status.IN_DOUBT]
        out.write(
            f"  {waiting:,} recipients still waiting; continue with: bulksend resume {journal}\n"
        )
    if summary.counts[Status.NOT_RENDERED]:
        out.write(
            f"  {summary.counts[Status.NOT_RENDERED]:,} recipients not rendered (nothing was "
            f"sent to them); once the template is fixed: bulksend resume {journal} --force "
            "--retry-unrendered\n"
        )


def _attempts(outcomes: Mapping[str, int]) -> dict[str, int]:
    """A run's delivery attempts by kind (our own throttle's deferrals are not attempts)."""
    return {str(kind): outcomes.get(kind.value, 0) for kind in SHOWN_KINDS}


def _write_tally(
    out: TextIO,
    *,
    state: str,
    elapsed: float,
    outcomes: Mapping[str, int],
    tally: CampaignTally,
    rejects: Sequence[Path],
    how: str = "",
) -> None:
    """The summary's lines: this run's attempts and the campaign's tally (one or N workers)."""
    attempts = _attempts(outcomes)
    done = sum(attempts.values())
    rate = done / elapsed if elapsed > 0 else 0.0
    out.write(
        f"{state} after {format_duration(elapsed)}{how} "
        f"({done:,} delivery attempts, {rate:,.0f}/s)\n"
    )
    listed = [str(p) for p in rejects if p.is_file() and p.stat().st_size]
    out.write(
        f"  {_rows_line(tally)}"
        + (f" (listed in {', '.join(listed)})" if tally.rejected and listed else "")
        + "\n"
    )
    out.write(f"  this run:  {_counts_line(attempts)}\n")
    out.write(f"  campaign:  {_counts_line(tally.by_state())}\n")
    out.write(f"  sends in doubt (possibly duplicated): {tally.in_doubt_sends:,}\n")


def _rows_line(tally: CampaignTally) -> str:
    return (
        f"recipients file: {tally.rows:,} rows, {tally.rows - tally.rejected:,} to send, "
        f"{tally.rejected:,} rejected"
    )


def _serve_until_signal(server: MetricsServer) -> None:
    """Keep the process (and its metrics endpoint) up until SIGINT or SIGTERM."""

    async def wait() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                return

    _info(f"serving metrics at {server.url} until SIGINT/SIGTERM")
    trio.run(wait)


# --- send / resume -------------------------------------------------------------------------


@main.command()
@click.argument("campaign_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--journal",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The journal file; default <campaign id>.journal.sqlite3 next to the campaign file.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Render every recipient and route every domain; send nothing, write no journal.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Processes to run, one shard each (sites divided among them, one journal per "
    "shard); 0: one per core.",
)
@click.option(
    "--send-again",
    is_flag=True,
    help="Send a campaign id that was already sent with another journal (everyone again).",
)
@click.option(
    "--sent-record",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="BULKSEND_SENT_RECORD",
    help="The record of campaigns sent from this account; default "
    "$XDG_STATE_HOME/bulksend/sent.jsonl (~/.local/state/bulksend/sent.jsonl).",
)
@_run_options
def send(
    *,
    campaign_file: Path,
    journal: Path | None,
    dry_run: bool,
    workers: int,
    send_again: bool,
    sent_record: Path | None,
    **kw: Any,
) -> None:
    """Send a campaign (journaled: resumes where an earlier run on the journal stopped)."""
    flags = _flags(kw)
    campaign = _load_campaign(campaign_file)
    if dry_run:
        raise SystemExit(_dry_run(campaign, flags))
    journal = journal or campaign.config.source.parent / f"{campaign.config.id}.journal.sqlite3"
    record = SentRecord(sent_record or _default_sent_record())
    if workers == 0:
        workers = os.cpu_count() or 1
    if workers > 1:
        if flags.shard is not None:
            raise click.UsageError("--workers and --shard do not go together")
        # Each worker would apply these on its own (N times the limit, N logs racing on one
        # file): refuse rather than surprise.
        for given, option in ((flags.limit, "--limit"), (flags.accounting, "--accounting")):
            if given is not None:
                raise click.UsageError(
                    f"--workers and {option} do not go together: run the shards one at a "
                    f"time with --shard I/N and {option}"
                )
    shard = "" if flags.shard is None else str(flags.shard)
    own = journal if flags.shard is None else flags.shard.journal(journal)
    journals = (
        [Shard(i, workers).journal(journal) for i in range(workers)] if workers > 1 else [own]
    )
    if workers > 1:
        campaign.check_recipients()  # once here, not as N failing workers
    record.check_and_add(campaign.config.id, shard, own, journals, send_again=send_again)
    try:
        if workers > 1:
            code = run_workers(campaign, journal, flags, workers)
        else:
            code = _run(campaign, journal, flags)
    finally:
        if not any(j.exists() for j in journals):
            record.remove(campaign.config.id, shard, own)  # it sent nothing
    raise SystemExit(code)


def _default_sent_record() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "bulksend" / "sent.jsonl"


@dataclass
class SentRecord:
    """Which campaign ids this account has sent, and with which journal (JSON Lines, 0600).

    A second full send of the same campaign id (a new journal: not a resume) would mail
    everyone again; ``send`` refuses it unless ``--send-again``. Shards count separately.
    """

    path: Path

    def entries(self) -> list[dict[str, str]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(
                f"{self.path}: cannot read the record of sent campaigns ({exc.strerror}); "
                "give another with --sent-record"
            ) from None
        found = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    found.append({str(k): str(v) for k, v in entry.items()})
        return found

    def check_and_add(
        self,
        campaign_id: str,
        shard: str,
        journal: Path,
        journals: Sequence[Path],
        *,
        send_again: bool,
    ) -> None:
        """Refuse a second full send of ``campaign_id``; record this one.

        ``journals`` are the files this send writes: if one exists, this is a resume.
        """
        if any(j.exists() for j in journals):
            return
        journal = journal.resolve()
        for entry in self.entries():
            if send_again or entry.get("campaign") != campaign_id:
                continue
            if entry.get("shard", "") != shard:
                continue
            raise ConfigError(
                f"campaign {campaign_id!r}"
                + (f" (shard {shard})" if shard else "")
                + f" was already sent on {entry.get('at', '?')} with journal "
                f"{entry.get('journal')}: resume that journal (bulksend resume "
                f"{entry.get('journal')}), or give --send-again to mail everyone again "
                f"(recorded in {self.path})"
            )
        at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        line = {"campaign": campaign_id, "shard": shard, "journal": str(journal), "at": at}
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open_private(self.path, append=True) as out:
                out.write(json.dumps(line) + "\n")
        except OSError as exc:
            _warn(
                f"{self.path}: cannot record this send ({exc.strerror}); a second send of "
                "this campaign will not be caught (set --sent-record)"
            )

    def remove(self, campaign_id: str, shard: str, journal: Path) -> None:
        """Forget a send that left no journal (it sent nothing)."""
        journal = journal.resolve()
        keep = [
            e
            for e in self.entries()
            if (e.get("campaign"), e.get("shard", ""), e.get("journal"))
            != (campaign_id, shard, str(journal))
        ]
        with contextlib.suppress(OSError), open_private(self.path) as out:
            out.writelines(json.dumps(e) + "\n" for e in keep)


def _write_sidecar(campaign: Campaign, journal: Path) -> None:
    with open_private(campaign_sidecar(journal)) as out:
        out.write(str(campaign.config.source) + "\n")


def _forget_missing_journal(journal: Path) -> None:
    """After a run that left no journal (nothing imported), remove the files naming it."""
    if not journal.exists():
        campaign_sidecar(journal).unlink(missing_ok=True)
        snapshot_path(journal).unlink(missing_ok=True)


def _run(campaign: Campaign, journal: Path, flags: _RunFlags) -> int:
    options = flags.options(journal, campaign)
    _write_sidecar(campaign, options.journal_path)
    journal = options.journal_path

    async def go() -> RunResult:
        return await execute_run(
            campaign,
            options,
            flags=flags,
            campaign_path=campaign.config.source,
            stream=sys.stderr,
        )

    try:
        result = trio.run(go)
    except BaseException:
        _forget_missing_journal(journal)
        raise
    server = result.metrics_server
    try:
        print_summary(result, journal, sys.stdout, rejects=campaign.config.recipients.rejects)
        sys.stdout.flush()
        _say_halted([result.summary])
        if flags.keep_serving and server is not None and not result.signalled:
            _serve_until_signal(server)
    finally:
        if server is not None:
            server.close()
    return _exit_code(result, flags)


def run_workers(campaign: Campaign, journal: Path, flags: _RunFlags, count: int) -> int:
    """``send --workers N``: N shard processes, one progress line, one metrics endpoint."""
    options = flags.options(journal, campaign)
    for index in range(count):
        _write_sidecar(campaign, Shard(index, count).journal(journal))
    pool = WorkerPool(campaign.config.source, os.environ, options, count)
    server: MetricsServer | None = None
    if flags.metrics_port is not None:
        registry = CollectorRegistry()
        register_process_metrics(registry)
        registry.register(pool.collector())
        server = _serve_metrics(registry, flags)
        _info(f"metrics at {server.url} (all workers)")
    started = time.monotonic()

    async def go() -> tuple[list[WorkerState], int]:
        signals = 0
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                nonlocal signals
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                    async for signum in received:
                        signals += 1
                        if signals == 1:
                            _info(f"{signal.Signals(signum).name}: stopping every worker")
                            pool.stop()
                        else:
                            nursery.cancel_scope.cancel()

            async def report_progress() -> None:
                every = 1.0 if sys.stderr.isatty() else 5.0
                while True:
                    await trio.sleep(every)
                    if not flags.quiet:
                        _info(_workers_line(pool))

            nursery.start_soon(watch_signals)
            nursery.start_soon(report_progress)
            states = await pool.run()
            nursery.cancel_scope.cancel()
        return states, signals

    try:
        states, signals = trio.run(go)
        counts, complete = _workers_summary(
            pool, states, journal, started, sys.stdout, rejects=campaign.config.recipients.rejects
        )
        halted = _say_halted(st.summary for st in states)
        if flags.keep_serving and server is not None and not signals:
            _serve_until_signal(server)
    finally:
        if server is not None:
            server.close()
    if halted:
        return EXIT_ERROR
    return _completion_code(complete, counts, flags)


def _workers_summary(
    pool: WorkerPool,
    states: list[WorkerState],
    journal: Path,
    started: float,
    out: TextIO,
    *,
    rejects: Path,
) -> tuple[Mapping[Status, int], bool]:
    """Print the merged outcome of the shards; returns the counts and whether all are done."""
    with JournalSet([st.shard.journal(journal) for st in states]) as merged:
        tally = merged.tally()
    complete = all(st.summary is not None and st.summary.complete for st in states)
    _write_tally(
        out,
        state="complete" if complete else "stopped before completion",
        elapsed=time.monotonic() - started,
        outcomes=pool.outcomes(),
        tally=tally,
        rejects=[st.shard.journal(rejects) for st in states],
        how=f" with {len(states)} workers",
    )
    for st in states:
        if st.failed:
            out.write(
                f"  shard {st.shard} failed ({st.error or f'exit code {st.exitcode}'}); "
                f"continue it with: bulksend resume {st.shard.journal(journal)}\n"
            )
    return tally.statuses, complete


def _workers_line(pool: WorkerPool) -> str:
    backed_off = [s.site for s in pool.sites() if s.backed_off]
    line = "workers: " + _counts_line(_attempts(pool.outcomes()))
    if backed_off:
        line += f"  backed off: {', '.join(backed_off[:3])}"
        if len(backed_off) > 3:
            line += f" +{len(backed_off) - 3}"
    return line


@main.command()
@click.argument("journal", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--campaign",
    "campaign_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The campaign file; default the one `send` recorded next to the journal.",
)
@click.option(
    "--retry-unrendered",
    is_flag=True,
    help="Send again to the recipients whose message could not be made (`not rendered`), "
    "once the template is fixed.",
)
@_run_options
def resume(journal: Path, campaign_file: Path | None, retry_unrendered: bool, **kw: Any) -> None:
    """Continue an interrupted run from its journal."""
    flags = _flags(kw)
    flags.retry_unrendered = retry_unrendered
    if not journal.is_file():
        # A run stopped before its journal existed (or that had nothing to send) left none.
        raise ConfigError(
            f"no journal at {journal}: nothing to resume; start with `bulksend send CAMPAIGN`"
        )
    if campaign_file is None:
        sidecar = campaign_sidecar(journal)
        try:
            campaign_file = Path(sidecar.read_text(encoding="utf-8").strip())
        except FileNotFoundError:
            raise ConfigError(
                f"{sidecar} is missing, so the campaign of journal {journal} is unknown: "
                "give it with --campaign CAMPAIGN.toml"
            ) from None
    campaign = _load_campaign(campaign_file)
    # A shard's journal knows its shard: resume it as that shard.
    with Journal.open(journal, None) as j:
        recorded = j.identity.get("shard")
    if recorded is not None:
        shard = Shard.parse(recorded)
        if flags.shard is not None and flags.shard != shard:
            raise ConfigError(f"{journal} is the journal of shard {shard}, not {flags.shard}")
        flags.shard = shard
        journal = shard.base_journal(journal)
    raise SystemExit(_run(campaign, journal, flags))


# --- dry run -------------------------------------------------------------------------------


_DRY_RUN_REPORT_EVERY: Final = 5.0  # seconds between the dry run's progress lines


def _dry_run(campaign: Campaign, flags: _RunFlags) -> int:
    config = campaign.config
    rejected: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    domains: collections.Counter[str] = collections.Counter()
    read = rendered = 0

    def on_reject(reject: Reject) -> None:
        rejected[reject.kind.value] += 1

    now = time.time()
    report_at = time.monotonic() + _DRY_RUN_REPORT_EVERY
    for recipient in campaign.recipients(on_reject):
        read += 1
        if time.monotonic() >= report_at:
            report_at += _DRY_RUN_REPORT_EVERY
            _info(f"dry run: {read:,} recipients read, {rendered:,} rendered")
        try:
            campaign.render(recipient, now=now)
        except RenderError as exc:
            if len(failures) < 5:
                failures.append(str(exc))
            continue
        rendered += 1
        domains[recipient.address.rpartition("@")[2].lower()] += 1
    options = flags.options(Path(os.devnull), campaign)
    router = Router(routing_config(config, options))
    _info(f"dry run: {read:,} recipients read; routing {len(domains):,} domains")
    results = trio.run(_route_all, router, list(domains))
    unroutable = {d: e for d, e in results.items() if isinstance(e, RoutingError)}
    sites = {str(r.site) for r in results.values() if not isinstance(r, RoutingError)}
    lost = sum(domains[d] for d in unroutable)
    out = sys.stdout
    out.write(f"dry run: campaign {config.id} ({config.source})\n")
    total_rejected = sum(rejected.values())
    reasons = ", ".join(f"{k} {n:,}" for k, n in sorted(rejected.items()))
    out.write(
        f"  recipients: {read + total_rejected:,} rows, {rendered:,} renderable, "
        f"{read - rendered:,} render failures, {total_rejected:,} rejected"
        + (f" ({reasons})" if reasons else "")
        + "\n"
    )
    for failure in failures:
        out.write(f"    render failure: {failure}\n")
    out.write(
        f"  domains: {len(domains):,}, {len(domains) - len(unroutable):,} routable over "
        f"{len(sites):,} sites, {len(unroutable):,} unroutable ({lost:,} recipients)\n"
    )
    for domain, error in sorted(unroutable.items())[:10]:
        why = printable(f"{error.enhanced_code} {error.text}")
        out.write(f"    unroutable: {domain} ({domains[domain]:,} recipients): {why}\n")
    return EXIT_UNDELIVERED if unroutable or rendered < read else EXIT_OK


async def _route_all(router: Router, domains: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    limit = trio.Semaphore(64)

    async def one(domain: str) -> None:
        async with limit:
            try:
                results[domain] = await router.route(domain)
            except RoutingError as exc:
                results[domain] = exc

    async with trio.open_nursery() as nursery:
        for domain in domains:
            nursery.start_soon(one, domain)
    return results


# --- status --------------------------------------------------------------------------------


def _table(rows: Sequence[Sequence[str]], out: TextIO, *, indent: str = "  ") -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            c.rjust(w) if i and c[:1].isdigit() else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.write(indent + "  ".join(cells).rstrip() + "\n")


@main.command()
@click.argument(
    "journals", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per journal.")
@_debug_option
def status(journals: tuple[Path, ...], as_json: bool) -> None:
    """Where a campaign stands: journal counts, and per site state while it runs.

    Several journals (the shards of one campaign) are shown one after the other, then their
    total.
    """
    total: collections.Counter[str] = collections.Counter()
    for journal in journals:
        total.update(_status_of(journal, as_json))
    if len(journals) > 1 and not as_json:
        sys.stdout.write(f"all {len(journals)} journals: {_counts_line(dict(total))}\n")


def _status_of(journal: Path, as_json: bool) -> dict[str, int]:
    with JournalPeek(journal, check=True) as peek:
        counts = peek.counts()
        imported = peek.import_complete()
    snap = read_snapshot(snapshot_path(journal))
    age = time.time() - float(snap.get("updated_at", 0)) if snap else None
    running = bool(
        snap
        and snap.get("state") in ("running", "stopping", "starting")
        and age is not None
        and age < SNAPSHOT_STALE
    )
    if as_json:
        json.dump(
            {
                "journal": str(journal),
                "import_complete": imported,
                "counts": counts,
                "running": running,
                "snapshot": snap,
            },
            sys.stdout,
            indent=1,
        )
        sys.stdout.write("\n")
        return counts
    out = sys.stdout
    total = sum(counts.values())
    out.write(f"journal: {journal}\n")
    out.write(f"recipients: {total:,}\n")
    if not imported:
        out.write(f"import: not finished; `bulksend resume {journal}` continues it\n")
    _table([[s.replace("_", " "), f"{n:,}"] for s, n in counts.items()], out)
    if snap is None:
        out.write("not running (no status snapshot)\n")
        return counts
    assert age is not None
    if running:
        out.write(
            f"running: pid {snap.get('pid')}, {snap.get('state')}, snapshot "
            f"{age:.1f}s old, {snap.get('rate', 0):,.0f} outcomes/s\n"
        )
    else:
        out.write(f"not running: last run {snap.get('state')} {format_duration(age)} ago\n")
    this_run = snap.get("this_run") or {}
    out.write(f"this run: {_counts_line(this_run)}\n")
    sites = snap.get("sites") or []
    if sites:
        out.write("sites:" if running else "sites (at the last snapshot):")
        out.write("\n")
        header = ["site", "domains", "queued", "conn", "rate", "state", "last error"]
        _table([header, *iter_site_rows(sites)], out)
    return counts


# --- report --------------------------------------------------------------------------------


@main.command()
@click.argument(
    "journals",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "jsonl"]),
    default="table",
    show_default=True,
    help="table: counts per status, bounce category and domain; csv/jsonl: every outcome.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here (created 0600) instead of stdout.",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in Status]),
    help="csv/jsonl: only recipients in this status (repeatable).",
)
@click.option(
    "--domains",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="table: how many domains to list (the largest).",
)
@_debug_option
def report(
    journals: tuple[Path, ...],
    fmt: str,
    output: Path | None,
    statuses: tuple[str, ...],
    domains: int,
) -> None:
    """Report a campaign's outcomes from its journal, or its shards' journals merged.

    While a run holds a journal, its last committed state is read (`status` shows the run).
    """
    with JournalSet(journals) as j, _output(output) as out:
        for path in j.live:
            _info(f"{path} is in use by a run: reporting its last committed state")
        if fmt == "csv":
            j.export_csv(out, [Status(s) for s in statuses] or None)
        elif fmt == "jsonl":
            j.export_jsonl(out, [Status(s) for s in statuses] or None)
        else:
            write_report_table(j, out, top_domains=domains)


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    with open_private(path) as out:
        yield out


def write_report_table(
    journal: Journal | JournalSet, out: TextIO, *, top_domains: int = 20
) -> None:
    """The ``report --format table`` text."""
    tally = journal.tally()
    total = tally.rows
    out.write(f"campaign journal {journal.path}\n\n")
    rows = [["status", "recipients", "share"]]
    for state, n in tally.by_state().items():
        rows.append(
            [state.replace("_", " "), f"{n:,}", f"{100 * n / total:.1f}%" if total else "-"]
        )
    rows.append(["total", f"{total:,}", ""])
    _table(rows, out, indent="")
    out.write(f"\n{_rows_line(tally)}\n")
    out.write(f"sends in doubt (possibly duplicated): {tally.in_doubt_sends:,}\n")
    categories = journal.counts_by_category()
    if categories:
        out.write("\nbounces by category\n")
        _table(
            [["category", "recipients"]]
            + [[c.value, f"{n:,}"] for c, n in sorted(categories.items(), key=lambda x: -x[1])],
            out,
            indent="",
        )
    expired = journal.counts_by_category([Status.EXPIRED])
    if expired:
        out.write("\nexpired by category of the last reply\n")
        _table(
            [["category", "recipients"]]
            + [[c.value, f"{n:,}"] for c, n in sorted(expired.items(), key=lambda x: -x[1])],
            out,
            indent="",
        )
    by_domain = journal.counts_by_domain()
    if by_domain and top_domains:
        largest = sorted(by_domain.items(), key=lambda x: (-sum(x[1].values()), x[0]))
        shown = largest[:top_domains]
        more = len(largest) - len(shown)
        out.write(f"\ndomains ({len(by_domain):,}; the largest {len(shown)})\n")
        cols = [Status.DELIVERED, Status.BOUNCED, Status.EXPIRED]
        rows = [["domain", "recipients", "delivered", "bounced", "expired", "waiting", "other"]]
        for domain, c in shown:
            n = sum(c.values())
            waiting = c.get(Status.PENDING, 0) + c.get(Status.IN_DOUBT, 0)
            other = n - waiting - sum(c.get(s, 0) for s in cols)
            rows.append(
                [
                    domain,
                    f"{n:,}",
                    *(f"{c.get(s, 0):,}" for s in cols),
                    f"{waiting:,}",
                    f"{other:,}",
                ]
            )
        _table(rows, out, indent="")
        if more:
            out.write(f"... and {more:,} more domains\n")


# --- validate ------------------------------------------------------------------------------


@dataclass
class Finding:
    """One result of ``validate``: ``ok``, ``warning`` or ``error``."""

    level: str
    text: str


def judge_spf(domain: str, records: list[str] | None) -> list[Finding]:
    """SPF (RFC 7208) of the envelope sender's domain."""
    if records is None:
        return [Finding("warning", f"SPF: could not look up TXT {domain}")]
    spf = [r for r in records if r.lower().startswith("v=spf1")]
    if not spf:
        return [
            Finding(
                "warning",
                f"SPF: no v=spf1 TXT record at {domain}; receivers "
                "will treat the mail as unauthenticated",
            )
        ]
    if len(spf) > 1:
        return [
            Finding(
                "warning",
                f"SPF: {len(spf)} v=spf1 records at {domain} (a permerror, "
                "RFC 7208 §4.5): publish one",
            )
        ]
    terms = spf[0].lower().split()
    all_terms = [t for t in terms if t.lstrip("+-~?") == "all"]
    if not all_terms and not any(t.startswith("redirect=") for t in terms):
        return [Finding("warning", f"SPF: {domain}: {spf[0]!r} has no 'all' term")]
    if any(t in ("all", "+all") for t in all_terms):
        return [Finding("warning", f"SPF: {domain}: {spf[0]!r} allows every host (+all)")]
    if "?all" in all_terms:
        return [Finding("warning", f"SPF: {domain}: {spf[0]!r} is neutral (?all): weak")]
    return [Finding("ok", f"SPF: {domain}: {spf[0]}")]


def _txt_tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags[key.strip().lower()] = "".join(value.split())
    return tags


def judge_dkim(name: str, records: list[str] | None, expected: str) -> list[Finding]:
    """The DKIM key record at ``selector._domainkey.domain`` against the configured key."""
    if records is None:
        return [Finding("warning", f"DKIM: could not look up TXT {name}")]
    keys = [r for r in records if "p=" in r]
    if not keys:
        return [
            Finding(
                "warning", f"DKIM: no key record at {name}; publish: {zone_txt(name, expected)}"
            )
        ]
    published = _txt_tags(keys[0]).get("p", "")
    wanted = _txt_tags(expected)["p"]
    if not published:
        return [Finding("warning", f"DKIM: the key at {name} is revoked (empty p=)")]
    if published != wanted:
        return [
            Finding(
                "warning",
                f"DKIM: the key at {name} is not the configured key's "
                f"public key; publish: {zone_txt(name, expected)}",
            )
        ]
    return [Finding("ok", f"DKIM: {name} publishes the configured key")]


def _aligned(a: str, b: str) -> bool:
    """Relaxed DMARC alignment, approximated: one domain is the other or a subdomain of it."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def judge_dmarc(
    from_domain: str, records: list[str] | None, *, dkim_domains: Sequence[str], spf_domain: str
) -> list[Finding]:
    """DMARC (RFC 7489) of the From domain, and whether DKIM or SPF can align with it."""
    name = f"_dmarc.{from_domain}"
    findings: list[Finding] = []
    if records is None:
        findings.append(Finding("warning", f"DMARC: could not look up TXT {name}"))
    else:
        dmarc = [r for r in records if r.lower().replace(" ", "").startswith("v=dmarc1")]
        if not dmarc:
            findings.append(
                Finding(
                    "warning",
                    f"DMARC: no v=DMARC1 record at {name}; bulk "
                    "senders need one (Gmail, Yahoo 2024)",
                )
            )
        else:
            policy = _txt_tags(dmarc[0]).get("p", "").lower()
            if policy not in ("quarantine", "reject"):
                findings.append(
                    Finding(
                        "warning", f"DMARC: {name} policy p={policy or '?'} only monitors (weak)"
                    )
                )
            else:
                findings.append(Finding("ok", f"DMARC: {name} p={policy}"))
    if not any(_aligned(d, from_domain) for d in dkim_domains) and not _aligned(
        spf_domain, from_domain
    ):
        findings.append(
            Finding(
                "warning",
                f"DMARC: neither a DKIM domain ({', '.join(dkim_domains) or 'none'}) "
                f"nor the envelope domain {spf_domain} aligns with "
                f"the From domain {from_domain}",
            )
        )
    return findings


_TXT_LIFETIME = 5.0  # seconds for one validate lookup, retries included


class _TxtLookups:
    """``validate``'s TXT lookups through the given resolvers.

    A failure is remembered with the resolvers and the reason. After a timeout (a resolver
    that does not answer) the remaining lookups are not sent: each would wait as long again.
    """

    def __init__(self, nameservers: tuple[str, ...], port: int) -> None:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = list(nameservers)
        resolver.port = port
        resolver.lifetime = _TXT_LIFETIME
        self._resolver = resolver
        self.where = ", ".join(
            s if port == 53 else (f"[{s}]:{port}" if ":" in s else f"{s}:{port}")
            for s in nameservers
        )
        self._failures: list[str] = []
        self._timed_out = False
        self._skipped: list[str] = []

    async def txt(self, name: str) -> list[str] | None:
        """TXT strings at ``name`` ([] when none), None when the lookup failed or was skipped."""
        if self._timed_out:
            self._skipped.append(name)
            return None
        try:
            answer = await self._resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout:
            self._timed_out = True
            self._failures.append(f"TXT {name}: no answer within {_TXT_LIFETIME:g}s (timeout)")
            return None
        except dns.resolver.NoNameservers as exc:
            # Each resolver answered, unhelpfully (REFUSED, SERVFAIL, a malformed reply).
            answers = sorted({f"answered {e[3]}" for e in exc.kwargs.get("errors") or ()})
            self._failures.append(f"TXT {name}: " + ("; ".join(answers) or str(exc)))
            return None
        except dns.exception.DNSException as exc:
            self._failures.append(f"TXT {name}: {exc}")
            return None
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    def failures(self) -> list[str]:
        """Why lookups failed, one line each, naming what was not asked after a timeout."""
        lines = list(self._failures)
        if self._skipped:
            lines.append("not asked after the timeout: " + ", ".join(self._skipped))
        return lines


async def _dns_findings(
    campaign: Campaign, nameservers: tuple[str, ...], port: int
) -> list[Finding]:
    lookups = _TxtLookups(nameservers, port)
    config = campaign.config
    from_domain = config.message.from_address.rpartition("@")[2].lower()
    spf_domain = config.envelope_sender.rpartition("@")[2].lower()
    findings = judge_spf(spf_domain, await lookups.txt(spf_domain))
    if not campaign.signers:
        findings.append(Finding("warning", "DKIM: no [dkim] section: messages are not signed"))
    for signer in campaign.signers:
        name = f"{signer.selector}._domainkey.{signer.domain}"
        records = await lookups.txt(name)
        findings += judge_dkim(name, records, signer.public_txt_record())
    findings += judge_dmarc(
        from_domain,
        await lookups.txt(f"_dmarc.{from_domain}"),
        dkim_domains=[s.domain for s in campaign.signers],
        spf_domain=spf_domain,
    )
    findings += [
        Finding("warning", f"DNS: resolver {lookups.where}: {failure}")
        for failure in lookups.failures()
    ]
    return findings


@main.command()
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
@click.option(
    "--nameserver",
    "nameservers",
    multiple=True,
    help="DNS resolver for the lookups (repeatable); default the campaign's [routing] "
    "nameservers, else the system's (/etc/resolv.conf).",
)
@click.option("--dns-port", type=click.IntRange(1, 65535), default=53, hidden=True)
@_debug_option
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
    """Check a campaign: config, templates, recipients, DKIM key, SPF/DKIM/DMARC in DNS."""
    campaign = Campaign.load(campaign_file, os.environ)
    campaign.check_recipients(sample)
    config = campaign.config
    findings = [Finding("ok", f"campaign {config.id}: configuration and templates load")]
    findings += [Finding("warning", w) for w in campaign.warnings]
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
        Finding("ok", f"EHLO name: {ehlo}")
        if is_fqdn(ehlo)
        else Finding("warning", _not_fqdn(ehlo))
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
            findings += trio.run(_dns_findings, campaign, servers, dns_port)
        else:
            findings.append(Finding("warning", "no nameserver: SPF, DKIM and DMARC not checked"))
    for f in findings:
        click.echo(printable(f"{f.level}: {f.text}"))  # DNS text is anyone's
    warnings = sum(1 for f in findings if f.level != "ok")
    click.echo(f"{warnings} warning(s)" if warnings else "campaign looks good")
    raise SystemExit(EXIT_UNDELIVERED if warnings else EXIT_OK)


def _system_or_none() -> tuple[str, ...]:
    try:
        return system_nameservers()
    except ConfigError:
        return ()


# --- sink ----------------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=2525, show_default=True)
@click.option(
    "--every",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Print a line every this many messages.",
)
@_debug_option
def sink(host: str, port: int, every: int) -> None:
    """Run the test SMTP server (accepts everything, keeps nothing) until Ctrl-C."""
    from bulksend.testing.smtp import ServerScript, SMTPServer  # noqa: PLC0415

    async def serve() -> None:
        server = SMTPServer(ServerScript(record=False), host=host, port=port)
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.serve)
            click.echo(f"sink listening on {bound[0]}:{bound[1]} (Ctrl-C stops)")
            started = time.monotonic()

            async def report() -> None:
                shown = [0]
                while True:
                    await server.wait_until(lambda: server.stats.messages >= shown[0] + every)
                    shown[0] = server.stats.messages - server.stats.messages % every
                    rate = server.stats.messages / max(time.monotonic() - started, 1e-9)
                    click.echo(f"{server.stats.messages:,} messages ({rate:,.0f}/s)")

            nursery.start_soon(report)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
        click.echo(f"sink stopped after {server.stats.messages:,} messages")

    trio.run(serve)


# --- demo ----------------------------------------------------------------------------------


def _demo_metrics(f: _F) -> _F:
    return _metrics_options(f, default_port=0)


@main.command()
@click.option(
    "--recipients",
    type=click.IntRange(min=10),
    default=20000,
    show_default=True,
    help="How many recipients the demo campaign has.",
)
@click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Where the campaign, journal and report are written (replaced).",
)
@click.option(
    "--keep-serving",
    is_flag=True,
    help="Keep the metrics endpoint up after the run until SIGINT/SIGTERM.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@_demo_metrics
@_debug_option
def demo(
    *,
    recipients: int,
    directory: Path,
    keep_serving: bool,
    quiet: bool,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run a realistic campaign against local test servers (DNS + SMTP on 127.0.0.x)."""
    from bulksend import demo as world_of  # noqa: PLC0415
    from bulksend.testing.scenario import running  # noqa: PLC0415

    flags = _RunFlags(
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        limit=None,
        force=False,
        accounting=directory / "accounting.jsonl",
        nameservers=("127.0.0.1",),
        dns_port=53,
        smtp_port=25,
        ehlo_hostname="demo.sender.test",
        grace=5.0,
        quiet=quiet,
    )
    path, sites = world_of.write_demo_campaign(directory, recipients)
    journal = directory / "bulksend-demo.journal.sqlite3"

    async def go() -> RunResult:
        async with running(sites) as world:
            flags.dns_port = world.dns_port
            flags.smtp_port = world.smtp_port
            campaign = _load_campaign(path)
            _info(
                f"demo: {recipients:,} recipients over {len(sites)} sites on 127.0.0.x "
                f"(DNS 127.0.0.1:{world.dns_port}, SMTP port {world.smtp_port}); "
                f"files in {directory}/"
            )
            return await execute_run(
                campaign,
                flags.options(journal, campaign),
                flags=flags,
                campaign_path=path,
                stream=sys.stderr,
                watch=world_of.stop_when_only_dead_left,
            )

    result = trio.run(go)
    print_summary(result, journal, sys.stdout, rejects=directory / "rejects.csv")
    sys.stdout.write("\n")
    with Journal.open(journal, None) as j:
        write_report_table(j, sys.stdout, top_domains=12)
    sys.stdout.write(
        f"\nfiles in {directory}/: campaign.toml, recipients.csv, journal, "
        "accounting.jsonl, report.txt\n"
    )
    with Journal.open(journal, None) as j, open_private(directory / "report.txt") as out:
        write_report_table(j, out, top_domains=50)
    sys.stdout.flush()
    server = result.metrics_server
    try:
        if keep_serving and server is not None:
            _serve_until_signal(server)
    finally:
        if server is not None:
            server.close()
    raise SystemExit(EXIT_STOPPED if result.signalled else EXIT_OK)
