"""``send --workers N``: N worker processes, and a parent that combines them.

How this works: the parent starts N worker processes with the standard library's
``multiprocessing`` (spawn context: a clean interpreter, no inherited Trio state). With
SQLite journals worker *i* runs :func:`~bulksend.delivery.run.run_campaign` for shard *i/N*
(see :mod:`bulksend.delivery.shard`: sites, not domains, are divided, so each site's limits
and backoff live in one process) with its own journal. With a PostgreSQL journal every
worker runs the whole campaign: they share it through leases, and a throttle store
(``--throttle``) keeps each site's limits in total. Over a pipe, each worker sends the
parent a snapshot every half second (outcome counts, site states, its metrics in the text
exposition format) and its summary at the end; the parent sends "stop" when the user
presses Ctrl-C. The parent's :class:`WorkerPool` serves one merged metrics view
(:class:`MergedMetrics`, an aggregating collector: counters, gauges and histogram series
summed across workers) and one combined progress view. A worker that dies is reported with
its shard, so it can be resumed; the others keep going. A worker whose parent is gone (killed:
its pipe breaks) stops gracefully and quietly, its journal consistent for a resume.
Each worker runs its own live control (``bulksend ctl``, :data:`LiveControl`, passed in by
the CLI, which owns control): on its shard journal's socket, or a PostgreSQL journal's state.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio
from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from bulksend.campaign import Campaign
from bulksend.delivery.run import RunOptions, RunSummary, run_campaign
from bulksend.delivery.scheduler import Scheduler, SiteStatus
from bulksend.delivery.shard import Shard
from bulksend.metrics import Metrics
from bulksend.text import printable

log = logging.getLogger("bulksend.workers")

_REPORT_EVERY = 0.5

#: A worker's live control: given its journal and metrics, what to start with its scheduler
#: once sending begins (None: none). A module-level function, so a spawned worker imports it.
LiveControl = Callable[[Path | str, Metrics], Callable[[Scheduler, trio.Nursery], None] | None]


@dataclass
class WorkerState:
    """What the parent knows of one worker."""

    index: int
    shard: Shard | None  # None: a worker of a shared (PostgreSQL) journal
    outcomes: dict[str, int] = field(default_factory=dict)
    sites: list[SiteStatus] = field(default_factory=list)
    metrics: str = ""
    summary: RunSummary | None = None
    exitcode: int | None = None
    error: str = ""

    @property
    def failed(self) -> bool:
        return self.exitcode not in (None, 0) or bool(self.error)

    @property
    def name(self) -> str:
        return f"worker {self.index}" if self.shard is None else f"shard {self.shard}"


# ------------------------------------------------------------------------------ worker


def _printable_record(record: logging.LogRecord) -> bool:
    record.msg, record.args = printable(record.getMessage()), None
    return True


def _worker_main(
    campaign_path: str,
    environ: Mapping[str, str],
    options: RunOptions,
    conn: multiprocessing.connection.Connection,
    name: str,
    *,
    live: LiveControl | None,
) -> None:
    """Entry point of a worker process (``name``: how its log lines start)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    # Warnings (backoff, TLS fallback) on the shared stderr, remote reply text escaped.
    handler = logging.StreamHandler()
    handler.addFilter(_printable_record)
    handler.setFormatter(logging.Formatter(f"bulksend: {name}: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    trio.run(_worker, campaign_path, environ, options, conn, live)


async def _worker(
    campaign_path: str,
    environ: Mapping[str, str],
    options: RunOptions,
    conn: multiprocessing.connection.Connection,
    live: LiveControl | None,
) -> None:
    metrics = Metrics(process=False)  # the parent exports its own process metrics
    control = _Control()
    try:
        campaign = Campaign.load(campaign_path, environ)
        start = live(options.journal_path, metrics) if live is not None else None
        async with trio.open_nursery() as nursery:

            def started(scheduler: Scheduler) -> None:
                control.started(scheduler)
                if start is not None:
                    start(scheduler, nursery)

            nursery.start_soon(_listen, conn, control)
            nursery.start_soon(_report, conn, control, metrics)
            summary = await run_campaign(campaign, options, metrics=metrics, on_start=started)
            _snapshot(conn, control, metrics)
            _tell(conn, control, ("done", summary))
            nursery.cancel_scope.cancel()
    except Exception as exc:  # reported to the parent, which logs it once
        _tell(conn, control, ("error", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None


def _tell(conn: multiprocessing.connection.Connection, control: _Control, message: Any) -> None:
    """Send the parent a message; if it is gone (killed), stop cleanly and quietly."""
    try:
        conn.send(message)
    except OSError:  # BrokenPipeError, ConnectionResetError: nobody is listening any more
        control.stop()


@dataclass
class _Control:
    """A worker's scheduler, once sending has begun, and whether a stop came first."""

    scheduler: Scheduler | None = None
    stop_requested: bool = False

    def started(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        if self.stop_requested:
            scheduler.stop()

    def stop(self) -> None:
        self.stop_requested = True
        if self.scheduler is not None:
            self.scheduler.stop()


async def _listen(conn: multiprocessing.connection.Connection, control: _Control) -> None:
    while True:
        try:
            message = await trio.to_thread.run_sync(conn.recv, abandon_on_cancel=True)
        except EOFError:
            message = "stop"  # the parent is gone: stop cleanly
        if message == "stop":
            control.stop()
            return


async def _report(
    conn: multiprocessing.connection.Connection, control: _Control, metrics: Metrics
) -> None:
    while True:
        await trio.sleep(_REPORT_EVERY)
        _snapshot(conn, control, metrics)


def _snapshot(
    conn: multiprocessing.connection.Connection, control: _Control, metrics: Metrics
) -> None:
    scheduler = control.scheduler
    if scheduler is None:
        return
    _tell(
        conn,
        control,
        (
            "progress",
            dict(scheduler.context.stats),
            scheduler.sites(),
            generate_latest(metrics.registry).decode(),
        ),
    )


# ------------------------------------------------------------------------------ parent


class WorkerPool:
    """Runs a campaign as ``count`` worker processes: one shard each (``sharded``, SQLite
    journals), or all on the one shared journal."""

    def __init__(
        self,
        campaign_path: Path,
        environ: Mapping[str, str],
        options: RunOptions,
        count: int,
        *,
        sharded: bool = True,
        live: LiveControl | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("need at least one worker")
        self.campaign_path = campaign_path
        self.environ = dict(environ)
        # SSL contexts cannot cross a process boundary; workers build the default ones.
        self.options = replace(options, ssl_verified=None, ssl_opportunistic=None)
        self.live = live
        self.workers = [WorkerState(i, Shard(i, count) if sharded else None) for i in range(count)]
        self._conns: list[multiprocessing.connection.Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []

    def stop(self) -> None:
        """Ask every worker for a graceful stop."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send("stop")

    async def run(self) -> list[WorkerState]:
        """Start the workers and wait for all of them; returns each one's state."""
        context = multiprocessing.get_context("spawn")
        processes = self.processes
        for state in self.workers:
            parent, child = context.Pipe()
            process: multiprocessing.process.BaseProcess = context.Process(
                target=_worker_main,
                args=(
                    str(self.campaign_path),
                    self.environ,
                    replace(self.options, shard=state.shard),
                    child,
                    state.name,
                ),
                kwargs={"live": self.live},
                name=f"bulksend-worker-{state.index}",
            )
            process.start()
            child.close()
            self._conns.append(parent)
            processes.append(process)
        try:
            async with trio.open_nursery() as nursery:
                for state, process, conn in zip(self.workers, processes, self._conns, strict=True):
                    nursery.start_soon(self._follow, state, process, conn)
        finally:
            with trio.CancelScope(shield=True):
                for process in processes:
                    if process.is_alive():
                        process.terminate()
                    await trio.to_thread.run_sync(process.join)
                for conn in self._conns:
                    conn.close()
        return self.workers

    async def _follow(
        self,
        state: WorkerState,
        process: multiprocessing.process.BaseProcess,
        conn: multiprocessing.connection.Connection,
    ) -> None:
        while True:
            try:
                message: Any = await trio.to_thread.run_sync(conn.recv, abandon_on_cancel=True)
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "progress":
                _kind, state.outcomes, state.sites, state.metrics = message
            elif kind == "done":
                state.summary = message[1]
            elif kind == "error":
                state.error = message[1]
        await trio.to_thread.run_sync(process.join)
        state.exitcode = process.exitcode
        if state.failed:
            why = f"exit code {state.exitcode}" + (f": {state.error}" if state.error else "")
            if state.shard is None:
                log.error(
                    "%s ended (%s); the others go on, and its leases expire back to them",
                    state.name,
                    why,
                )
            else:
                log.error(
                    "%s ended (%s); the other shards go on. Resume it with --shard %s",
                    state.name,
                    why,
                    state.shard,
                )

    # -- combined views

    def outcomes(self) -> dict[str, int]:
        """Outcome counts of this run, summed over the workers."""
        total: dict[str, int] = {}
        for state in self.workers:
            for kind, n in state.outcomes.items():
                total[kind] = total.get(kind, 0) + n
        return total

    def sites(self) -> list[SiteStatus]:
        """Every worker's sites (a site lives in one worker), busiest first."""
        sites = [s for state in self.workers for s in state.sites]
        sites.sort(key=lambda s: (-s.connections, -s.domains, s.site))
        return sites

    def collector(self) -> MergedMetrics:
        return MergedMetrics(self)


class MergedMetrics(Collector):
    """A Prometheus collector that sums the workers' latest metrics, series by series."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        values: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
        for state in self.pool.workers:
            if not state.metrics:
                continue
            for family in text_string_to_metric_families(state.metrics):
                families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue  # a creation time, not an amount
                    key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                    values[key] = values.get(key, 0.0) + sample.value
        for (name, sample_name, labels), value in values.items():
            families[name].add_sample(sample_name, dict(labels), value)
        yield from families.values()
