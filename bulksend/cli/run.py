"""Running a campaign from the command line: one process, or ``--workers`` shard processes.

Signals during a run: the first SIGINT or SIGTERM stops gracefully (no new transaction;
in-flight ones get ``--grace`` seconds; the journal is flushed); a second aborts at once
(the journal stays consistent: transactions without a recorded outcome are
counted in doubt on resume).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import trio
from prometheus_client import CollectorRegistry

from bulksend.campaign.render import Campaign
from bulksend.cli.events import both, event_stream
from bulksend.cli.options import RunFlags
from bulksend.cli.output import (
    RunResult,
    attempts_by_kind,
    counts_line,
    exit_code,
    info,
    print_summary,
    resume_command,
    say_halted,
    warn,
    write_tally,
)
from bulksend.cli.progress import AccountingLog, Progress, Tally, snapshot_path
from bulksend.control.commands import CommandError
from bulksend.control.fanout import Fanout
from bulksend.control.server import Operator, load_state
from bulksend.delivery.run import RunOptions, RunSummary, plan_shards, run_campaign
from bulksend.delivery.scheduler import Scheduler
from bulksend.delivery.shard import Shard
from bulksend.delivery.workers import WorkerPool, WorkerState
from bulksend.errors import ConfigError
from bulksend.files import open_private
from bulksend.journal import JournalPeek, JournalSet, Status, campaign_tally
from bulksend.journal.backend import AnyJournal
from bulksend.metrics import Metrics, MetricsServer, register_process_metrics
from bulksend.metrics import serve as serve_registry


def serve_metrics(registry: CollectorRegistry, port: int, host: str) -> MetricsServer:
    """``--metrics-port``/``--metrics-host``: the endpoint, or a one-line error."""
    try:
        return serve_registry(registry, port, host)
    except OSError as exc:
        raise ConfigError(
            f"--metrics-port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "choose another port, or 0 for any free one"
        ) from None


def campaign_sidecar(journal: Path) -> Path:
    """The file next to a journal that names its campaign file (for ``resume``)."""
    return journal.with_name(journal.name + ".campaign")


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


async def watch_signals(
    on_signal: Callable[[int, str], object],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``on_signal(n, name)`` on the n-th SIGINT or SIGTERM (1: stop; 2: abort), forever.

    Started with ``nursery.start``, the signals are ours once it returns.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        received = 0
        async for signum in signals:
            received += 1
            on_signal(received, signal.Signals(signum).name)


async def wait_for_signal() -> None:
    """Return on the first SIGINT or SIGTERM."""
    with trio.CancelScope() as scope:
        await watch_signals(lambda _n, _name: scope.cancel())


def _on_run_signal(
    control: _RunControl, grace: float, progress: Progress
) -> Callable[[int, str], None]:
    def on_signal(received: int, name: str) -> None:
        control.signals = received
        if received == 1 and control.scheduler is None:
            progress.message(f"bulksend: {name}: stopping before sending began")
            control.stop()
        elif received == 1:
            progress.message(
                f"bulksend: {name}: stopping; in-flight messages get up to {grace:g}s "
                "(signal again to abort at once)"
            )
            control.stop()
        else:
            progress.message(f"bulksend: {name}: aborting")
            control.abort.cancel()

    return on_signal


async def execute_run(
    campaign: Campaign,
    options: RunOptions,
    *,
    flags: RunFlags,
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
        metrics_server = serve_metrics(metrics.registry, flags.metrics_port, flags.metrics_host)
        info(f"metrics at {metrics_server.url}")
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
    operator = live_control(options.journal_path, metrics, progress.message)
    events = event_stream(campaign, options.journal_path, flags.events_stdout, metrics)
    summary: RunSummary | None = None
    state = "aborted"
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(watch_signals, _on_run_signal(control, options.grace, progress))
            await nursery.start(progress.run)
            if events is not None:
                await nursery.start(events.run)

            def on_start(scheduler: Scheduler) -> None:
                control.on_start(scheduler)
                progress.attach(scheduler)
                if operator is not None:  # live control: bulksend ctl
                    operator.start(scheduler, nursery)
                if watch is not None:
                    nursery.start_soon(watch, scheduler, progress)

            with control.abort:
                summary = await run_campaign(
                    campaign,
                    options,
                    metrics=metrics,
                    on_start=on_start,
                    on_outcome=tally if events is None else both(tally, events),
                    on_journal=_show_changes,
                    on_import=progress.importing,
                )
            if events is not None:
                await events.aclose(options.grace)
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


def live_control(
    journal: Path | str, metrics: Metrics, say: Callable[[str], None]
) -> Operator | None:
    """The run's live control (bulksend ctl): a SQLite journal's socket, or a PostgreSQL
    journal's shared state; pauses and cancellations from before in force."""
    try:
        if isinstance(journal, str):
            # psycopg is optional: only a PostgreSQL journal needs it.
            from bulksend.control.shared import SharedOperator, read_state  # noqa: PLC0415

            return SharedOperator(journal, read_state(journal), metrics.registry, say)
        return Operator(journal, load_state(journal, time.time()), metrics.registry, say)
    except CommandError as exc:
        raise ConfigError(str(exc)) from None


def worker_control(
    journal: Path | str, metrics: Metrics
) -> Callable[[Scheduler, trio.Nursery], None] | None:
    """A worker's live control (``send --workers``: :data:`~bulksend.delivery.workers.LiveControl`);
    what it does goes to the worker's log."""
    operator = live_control(journal, metrics, logging.getLogger("bulksend.control").warning)
    return None if operator is None else operator.start


def _live_workers(pool: WorkerPool, journal: Path) -> list[tuple[str, Path]]:
    """The name and shard journal of each worker of ``pool`` still sending."""
    return [
        (st.name, st.shard.journal(journal))
        for st in pool.workers
        if st.shard is not None and st.summary is None and st.exitcode is None
    ]


def _show_changes(journal: AnyJournal) -> None:
    """Say what changed in the campaign since its journal was written (a resume goes on)."""
    if "policy" in journal.changes:
        info(f"sending policy changed since the last run: {journal.changes['policy']}")
    if "content" in journal.changes:
        warn(f"campaign content changed (--force): {journal.changes['content']}")


def serve_until_signal(server: MetricsServer) -> None:
    """Keep the process (and its metrics endpoint) up until SIGINT or SIGTERM."""

    info(f"serving metrics at {server.url} until SIGINT/SIGTERM")
    trio.run(wait_for_signal)


def _write_sidecar(campaign: Campaign, journal: Path | str) -> None:
    if isinstance(journal, str):
        return  # a PostgreSQL journal: `resume` takes --campaign
    with open_private(campaign_sidecar(journal)) as out:
        out.write(str(campaign.config.source) + "\n")


def _forget_missing_journal(journal: Path | str) -> None:
    """After a run that left no journal (nothing imported), remove the files naming it."""
    if isinstance(journal, Path) and not journal.exists():
        campaign_sidecar(journal).unlink(missing_ok=True)
        snapshot_path(journal).unlink(missing_ok=True)


def run_single(campaign: Campaign, journal: Path | str, flags: RunFlags) -> int:
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
        out = sys.stderr if flags.events_stdout else sys.stdout  # stdout: the events
        print_summary(result, journal, out, rejects=campaign.config.recipients.rejects)
        out.flush()
        halted = say_halted([result.summary])
        if flags.keep_serving and server is not None and not result.signalled:
            serve_until_signal(server)
    finally:
        if server is not None:
            server.close()
    summary = result.summary
    return exit_code(
        halted=halted,
        complete=summary is not None and summary.complete,
        counts=summary.counts if summary is not None else {},
        exit_zero_when_complete=flags.exit_zero_when_complete,
    )


def _sharded(campaign: Campaign, journal: Path, options: RunOptions, count: int) -> RunOptions:
    """Every shard journal's sidecar and, while a shard has its import to do, one plan for
    every shard (placing the sites as an unfinished import began)."""
    shards = [Shard(index, count).journal(journal) for index in range(count)]
    for path in shards:
        _write_sidecar(campaign, path)
    imported, began = _imports(shards)
    if imported:
        return options
    plan = trio.run(plan_shards, campaign, options, count, began)
    return replace(options, shard_plan=plan)


def _imports(shards: list[Path]) -> tuple[bool, dict[str, int] | None]:
    """Whether every shard journal holds its whole import (a resume needs no plan), and the
    placement their import began with (each records it before its first row; ``{}``: by
    hash, before placements were recorded; None: none has begun)."""
    imported, began = True, None
    for path in shards:
        if not path.exists():
            imported = False
            continue
        with JournalPeek(path) as peek:
            imported = imported and peek.import_complete()
            if began is None:
                began = peek.placement()
    return imported, began


def run_workers(campaign: Campaign, journal: Path | str, flags: RunFlags, count: int) -> int:
    """``send --workers N``: N shard processes (SQLite) or N workers of one PostgreSQL
    journal; one progress line, one metrics endpoint."""
    options = flags.options(journal, campaign)
    if isinstance(journal, Path):
        options = _sharded(campaign, journal, options, count)
    pool = WorkerPool(
        campaign.config.source,
        os.environ,
        options,
        count,
        sharded=isinstance(journal, Path),
        live=worker_control,
    )
    server: MetricsServer | None = None
    if flags.metrics_port is not None:
        registry = CollectorRegistry()
        register_process_metrics(registry)
        registry.register(pool.collector())
        server = serve_metrics(registry, flags.metrics_port, flags.metrics_host)
        info(f"metrics at {server.url} (all workers)")
    started = time.monotonic()

    async def go() -> tuple[list[WorkerState], int]:
        signals = 0
        async with trio.open_nursery() as nursery:

            def on_signal(received: int, name: str) -> None:
                nonlocal signals
                signals = received
                if received == 1:
                    info(f"{name}: stopping every worker")
                    pool.stop()
                else:
                    nursery.cancel_scope.cancel()

            async def report_progress() -> None:
                every = 1.0 if sys.stderr.isatty() else 5.0
                while True:
                    await trio.sleep(every)
                    if not flags.quiet:
                        info(_workers_line(pool))

            nursery.start_soon(watch_signals, on_signal)
            nursery.start_soon(report_progress)
            if isinstance(journal, Path):  # one control socket for every shard
                fanout = Fanout(journal, lambda: _live_workers(pool, journal), info)
                nursery.start_soon(fanout.serve)
            states = await pool.run()
            nursery.cancel_scope.cancel()
        return states, signals

    try:
        states, signals = trio.run(go)
        counts, complete = _workers_summary(
            pool, states, journal, started, sys.stdout, rejects=campaign.config.recipients.rejects
        )
        halted = say_halted(st.summary for st in states)
        if flags.keep_serving and server is not None and not signals:
            serve_until_signal(server)
    finally:
        if server is not None:
            server.close()
    return exit_code(
        halted=halted,
        complete=complete,
        counts=counts,
        exit_zero_when_complete=flags.exit_zero_when_complete,
    )


def _workers_summary(
    pool: WorkerPool,
    states: list[WorkerState],
    journal: Path | str,
    started: float,
    out: TextIO,
    *,
    rejects: Path,
) -> tuple[Mapping[Status, int], bool]:
    """Print the merged outcome of the workers; returns the counts and whether all are done."""
    shards = [st.shard for st in states if st.shard is not None]
    journals: list[Path | str] = [journal]
    rejected = [rejects]
    if isinstance(journal, Path) and shards:
        journals = [shard.journal(journal) for shard in shards]
        rejected = [shard.journal(rejects) for shard in shards]
    with JournalSet(journals) as merged:
        counted = campaign_tally(merged)
    complete = all(st.summary is not None and st.summary.complete for st in states)
    write_tally(
        out,
        state="complete" if complete else "stopped before completion",
        elapsed=time.monotonic() - started,
        outcomes=pool.outcomes(),
        tally=counted,
        rejects=rejected,
        how=f" with {len(states)} workers",
    )
    for st in states:
        if st.failed:
            again = resume_command(
                journal
                if st.shard is None or isinstance(journal, str)
                else st.shard.journal(journal)
            )
            out.write(
                f"  {st.name} failed ({st.error or f'exit code {st.exitcode}'}); "
                f"continue with: {again}\n"
            )
    return counted.statuses, complete


def _workers_line(pool: WorkerPool) -> str:
    backed_off = [s.site for s in pool.sites() if s.backed_off]
    line = "workers: " + counts_line(attempts_by_kind(pool.outcomes()))
    if backed_off:
        line += f"  backed off: {', '.join(backed_off[:3])}"
        if len(backed_off) > 3:
            line += f" +{len(backed_off) - 3}"
    return line
