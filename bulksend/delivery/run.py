"""The public API that runs a campaign: journal it, then deliver it, resumably.

``await run_campaign(campaign, options)`` is what ``bulksend send`` and ``bulksend resume``
call. It opens (or resumes) the journal, imports the recipients if that is not done yet
(streamed, in large batches, in a worker thread), starts the batched journal writer, and
runs the :class:`~bulksend.delivery.scheduler.Scheduler` until every recipient is final or
the caller asks it to stop. Code below the CLI reads no environment or terminal: everything
comes in through :class:`RunOptions`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio

from bulksend.campaign.recipients import Reject, RejectKind, RejectsFile, SuppressionFile
from bulksend.campaign.render import Campaign
from bulksend.config import CampaignConfig
from bulksend.delivery.context import RunContext, RunSettings
from bulksend.delivery.ending import end_at_stop
from bulksend.delivery.pool import ConnectionPool
from bulksend.delivery.scheduler import Scheduler, SitePolicy
from bulksend.delivery.shard import Shard, ShardPlan, domain_rows, make_plan
from bulksend.delivery.throttle import TokenBucket
from bulksend.egress.selection import lanes
from bulksend.errors import ConfigError, JournalError, SuppressionError
from bulksend.journal import (
    CampaignTally,
    Due,
    ImportStats,
    Journal,
    JournalWriter,
    NewRecipient,
    Outcome,
    Status,
    campaign_identity,
    campaign_tally,
)
from bulksend.journal.backend import AnyJournal
from bulksend.journal.backend import open_journal as open_any_journal
from bulksend.metrics import Metrics
from bulksend.routing import Credentials, Relay, Route, Router, RoutingConfig
from bulksend.schedule.windows import SendWindows
from bulksend.suppression.backend import campaign_store, open_suppression_store
from bulksend.suppression.rules import BounceRecorder, Rules
from bulksend.suppression.store import (
    StoreSuppression,
    Suppressions,
    Watched,
)
from bulksend.throttles import LocalThrottles, ThrottleBackend
from bulksend.tlspolicy import FetchSettings, TlsPolicies, TlsState
from bulksend.tlspolicy.policy import SAVE_EVERY

log = logging.getLogger("bulksend")


@dataclass
class RunOptions:
    """How to run a campaign; every field a CLI flag or a test can set.

    Attributes:
        journal: the journal file (created on first run, resumed after), or a PostgreSQL
            journal's ``postgresql://user@host/db?campaign=NAME`` URL.
        nameservers: DNS resolvers when the campaign names none (the CLI reads the system's).
        dns_port, smtp_port: 53 and 25, except against test servers.
        ehlo_hostname: our name in EHLO; by default the campaign's ``ehlo_hostname``, else
            this host's FQDN (see :func:`ehlo_hostname`).
        ssl_verified: the context for TLS that must verify (TLS required, smarthost AUTH);
            by default the system's trust store plus the campaign's ``[tls] ca_file``.
        ssl_opportunistic: the context for opportunistic STARTTLS to MX hosts (no
            verification, RFC 7435); by default one that does not verify.
        force: resume even though the campaign or recipients changed.
        limit: stop after this many recipients have an outcome in this run.
        grace: seconds in-flight transactions get to finish when stopping.
        shard: run only this shard's sites (see :mod:`bulksend.delivery.shard`); the
            journal and rejects files get the shard in their names.
        suppression_check: seconds between looks at the suppression file and store during a
            run; a change is read and applied before the next recipient is taken, and the
            run's inline bounces are written to the store.
        retry_unrendered: make the recipients whose message could not be made in an
            earlier run (``not_rendered``) pending again: the campaign has been fixed.
        throttle: where site limits live: None for this process, or a Redis/Valkey URL
            (``redis://host:port/db``) shared by every worker of the campaign;
            ``throttle_password`` its password (never in the URL, never logged).
        lease: seconds a PostgreSQL journal's claims are leased for (None: the store's
            default, :data:`~bulksend.journal.postgres.DEFAULT_LEASE`); a SQLite journal
            refuses it.
        shard_plan: how the shards divide the campaign (:func:`plan_shards`), made once for
            every shard; None: this shard routes the domains itself (``--shard I/N``).
        placement: for a shard that plans alone, the shard of each of the largest sites, as
            ``bulksend plan`` placed them for every shard (:func:`plan_shards`); None: every
            site by hash.
        tls_state: the TLS policy state file (cached MTA-STS policies, TLS-RPT counts);
            None: kept in memory for this run only.
        tls_save_every: seconds between saves of the TLS-RPT counts to ``tls_state`` during
            the run (a killed run loses at most that much; the end of a run saves the rest).
        sts_fetch: how MTA-STS policies are fetched (tests point it at a local HTTPS server's
            port and CA; not a campaign setting).
    """

    journal: Path | str
    nameservers: tuple[str, ...] = ()
    dns_port: int = 53
    smtp_port: int = 25
    ehlo_hostname: str | None = None
    ssl_verified: ssl.SSLContext | None = None
    ssl_opportunistic: ssl.SSLContext | None = None
    force: bool = False
    limit: int | None = None
    grace: float = 30.0
    shard: Shard | None = None
    suppression_check: float = 30.0
    retry_unrendered: bool = False
    throttle: str | None = None
    throttle_password: str | None = field(default=None, repr=False)
    lease: float | None = None
    shard_plan: ShardPlan | None = field(default=None, repr=False)
    placement: Mapping[str, int] | None = field(default=None, repr=False)
    tls_state: Path | None = None
    tls_save_every: float = SAVE_EVERY
    sts_fetch: FetchSettings | None = None

    @property
    def journal_path(self) -> Path | str:
        """The journal this run uses (its shard's, when sharded).

        Raises:
            ConfigError: a shard of a PostgreSQL journal (one campaign, shared by leases).
        """
        if self.shard is None:
            return self.journal
        if isinstance(self.journal, str):
            raise ConfigError(
                "shards need SQLite journals (one file each); a PostgreSQL journal is one "
                "campaign: run it without --shard and --workers"
            )
        return self.shard.journal(self.journal)


@dataclass
class RunSummary:
    """What a run did and where the campaign stands."""

    imported: ImportStats | None
    outcomes: dict[str, int]  # by kind, this run
    tally: CampaignTally  # the whole campaign
    in_doubt_recovered: int  # claimed without an outcome when the journal was opened
    complete: bool  # no recipient is waiting any more
    elapsed: float
    requeued: int = 0  # not rendered before, pending again (``retry_unrendered``)
    halted: str = ""  # why the run stopped itself (renders failing systematically)

    @property
    def counts(self) -> Mapping[Status, int]:
        """Recipients per status, the whole campaign."""
        return self.tally.statuses


def throttle_backend(options: RunOptions, campaign_id: str) -> ThrottleBackend:
    """The run's throttle backend: this process's, or the shared store ``options.throttle``.

    Raises:
        ConfigError: a shared store is asked for and the ``redis`` extra is not installed.
    """
    if options.throttle is None:
        return LocalThrottles()
    try:
        from bulksend.throttles.redis import RedisThrottles  # noqa: PLC0415 (optional extra)
    except ImportError:
        raise ConfigError(
            "--throttle needs the redis extra: pip install 'bulksend[redis]'"
        ) from None
    return RedisThrottles(options.throttle, campaign_id, password=options.throttle_password)


def ehlo_hostname(config: CampaignConfig, given: str | None) -> str:
    """Our EHLO name: the run's (``--ehlo-hostname``), else the campaign's, else the FQDN."""
    return given or config.ehlo_hostname or socket.getfqdn()


def routing_config(config: CampaignConfig, options: RunOptions) -> RoutingConfig:
    """The campaign's routing section plus the run's options, as routing wants it."""
    section = config.routing
    smarthost = None
    if section.smarthost is not None:
        sh = section.smarthost
        credentials = None
        if sh.username is not None and sh.password is not None:
            credentials = Credentials(sh.username, sh.password)
        smarthost = Relay(sh.host, sh.port, credentials, sh.tls)
    return RoutingConfig(
        nameservers=section.nameservers or options.nameservers,
        dns_port=options.dns_port,
        allow_private=section.allow_private_addresses,
        smtp_port=options.smtp_port,
        overrides={d: Relay(o.host, o.port) for d, o in section.overrides.items()},
        smarthost=smarthost,
        dnssec=section.dnssec,
        mta_sts=section.mta_sts,
    )


Keep = Callable[[str, str], bool]  # does this run own this recipient (domain, address)?


def _recipients(
    campaign: Campaign,
    rejects: RejectsFile,
    keep: Keep,
    not_imported: dict[str, int],
    store: StoreSuppression | None,
) -> Iterator[NewRecipient]:
    """The recipients file as journal rows; rejected rows are kept as invalid/suppressed.

    Rejected rows that get no journal row are counted in ``not_imported`` by reason; an
    address in the suppression ``store`` is suppressed with the store's reason.
    """
    held: list[Reject] = []

    def on_reject(reject: Reject) -> None:
        if keep(reject.raw_email.rpartition("@")[2].strip().lower(), reject.raw_email):
            rejects(reject)
            held.append(reject)

    for recipient in campaign.recipients(on_reject):
        reason = None if store is None else store.reason(recipient.address)
        if reason is not None:
            on_reject(Reject(recipient.line, recipient.address, reason, RejectKind.SUPPRESSED))
        yield from _rejected(held, not_imported)
        if reason is None and keep(recipient.domain, recipient.address):
            yield NewRecipient(recipient.address, dict(recipient.fields))
    yield from _rejected(held, not_imported)


def _rejected(held: list[Reject], not_imported: dict[str, int]) -> Iterator[NewRecipient]:
    for reject in held:
        if reject.kind is RejectKind.SUPPRESSED:
            yield NewRecipient(reject.raw_email, None, Status.SUPPRESSED, reject.reason)
        elif reject.kind is RejectKind.INVALID and "@" in reject.raw_email:
            yield NewRecipient(reject.raw_email, None, Status.INVALID, reject.reason)
        else:
            not_imported[reject.kind.value] = not_imported.get(reject.kind.value, 0) + 1
    held.clear()


def open_journal(campaign: Campaign, options: RunOptions) -> AnyJournal:
    """Open or resume the campaign's journal (checking the campaign did not change)."""
    config = campaign.config
    templates = [p for p in (config.message.text_template, config.message.html_template) if p]
    attachments = [a.path for a in config.message.attachments]
    identity = campaign_identity(config.source, templates, config.recipients.file, attachments)
    if options.shard is not None:
        identity["shard"] = str(options.shard)
    return open_any_journal(
        options.journal_path,
        identity,
        force=options.force,
        policy=config.policy.retry,
        lease=options.lease,
    )


#: How often (in rows read) the import reports its progress and can be stopped.
IMPORT_PROGRESS_EVERY: Final = 10_000


def import_recipients(
    campaign: Campaign,
    journal: AnyJournal,
    shard: Shard | None = None,
    keep: Keep | None = None,
    on_progress: Callable[[int], None] | None = None,
    *,
    store: StoreSuppression | None = None,
) -> ImportStats | None:
    """Import the recipients file into the journal unless that is already complete.

    With a shard, only the recipients ``keep`` accepts (by domain) are imported, and the
    rejects file gets the shard in its name. ``on_progress(rows)`` is called every
    :data:`IMPORT_PROGRESS_EVERY` rows read; whatever it raises stops the import, whose
    uncommitted batch is rolled back (the journal stays not-imported; a later run resumes).
    Addresses in the suppression ``store`` are imported as suppressed.
    """
    if journal.import_complete:
        return None
    path = campaign.config.recipients.rejects
    if shard is not None:
        path = shard.journal(path)
    not_imported: dict[str, int] = {}
    with RejectsFile(path) as rejects:
        rows = _recipients(campaign, rejects, keep or _everything, not_imported, store)
        if on_progress is not None:
            rows = _reporting(rows, on_progress)
        return journal.import_recipients(rows, not_imported=not_imported)


def _reporting(
    rows: Iterator[NewRecipient], on_progress: Callable[[int], None]
) -> Iterator[NewRecipient]:
    for n, row in enumerate(rows, 1):
        if n % IMPORT_PROGRESS_EVERY == 0:
            on_progress(n)
        yield row


def _everything(_domain: str, _address: str) -> bool:
    return True


async def plan_shards(
    campaign: Campaign, options: RunOptions, shards: int, placed: Mapping[str, int] | None
) -> ShardPlan:
    """Route every domain of the recipients file once: the plan by which every shard keeps
    its own recipients. ``send --workers N`` makes it once, in the parent, for all the
    shards: a shard that made its own could see a domain's DNS fail where another saw it
    answer, and the two would then both keep that domain's recipients, or neither. Knowing
    every site's size, it places the largest over the ``shards`` by size (``placed``: as an
    unfinished import began)."""
    router = Router(routing_config(campaign.config, options))
    return await _plan(campaign, router, shards, placed)


async def _plan(
    campaign: Campaign, router: Router, shards: int = 0, placed: Mapping[str, int] | None = None
) -> ShardPlan:
    reader = campaign.recipients()
    rows = await trio.to_thread.run_sync(lambda: domain_rows(reader.raw_emails()))
    made = await make_plan(
        router, rows, _lane_sources(campaign.config), shards=shards, placed=placed
    )
    log.info("%d domains routed to plan the shards", len(made.units))
    return made


async def _shard_plan(
    campaign: Campaign, journal: AnyJournal, options: RunOptions, router: Router
) -> ShardPlan:
    """The plan a shard imports by: the parent's (``send --workers``) or its own, with the
    placement its import began with if it began (however it is resumed), else the one given
    (the parent's, ``--placement``, or none: by hash), recorded before the first row."""
    assert isinstance(journal, Journal)  # shards: SQLite journals only
    assert options.shard is not None
    began = journal.placement()
    plan = options.shard_plan
    if plan is None:  # this shard plans alone (`--shard I/N`): as given, else by hash
        placed = began if began is not None else options.placement
        plan = await _plan(campaign, router, placed=placed)
    elif began is not None:
        plan = ShardPlan(plan.units, began)
    if began is None:
        journal.record_placement(plan.placed)
    elif options.placement is not None and options.placement != began:
        log.warning(
            "%s: its import began with another placement of the sites; it keeps that one",
            journal.path,
        )
    return plan


def shard_filter(made: ShardPlan, shard: Shard) -> Keep:
    """Which recipients a shard owns (see :meth:`ShardPlan.keeps
    <bulksend.delivery.shard.ShardPlan.keeps>`; rows without a domain: shard 0)."""

    def keep(domain: str, address: str) -> bool:
        if not domain:
            return shard.index == 0
        return made.keeps(shard, domain, address)

    return keep


def _lane_sources(config: CampaignConfig) -> Callable[[Route], list[str]]:
    """The egress sources a route's site is split into (none: the site is one unit)."""
    table = SitePolicy(config.policy)

    def sources(route: Route) -> list[str]:
        return [lane.source for lane in lanes(config.egress, table.for_route(route)) if lane.source]

    return sources


async def run_campaign(
    campaign: Campaign,
    options: RunOptions,
    *,
    metrics: Metrics | None = None,
    on_start: Callable[[Scheduler], None] | None = None,
    on_outcome: Callable[[Due, Outcome, str], None] | None = None,
    on_journal: Callable[[AnyJournal], None] | None = None,
    on_import: Callable[[int], None] | None = None,
) -> RunSummary:
    """Journal and deliver a campaign; resumable; returns when done or stopped.

    ``on_start`` receives the scheduler once sending begins (for progress display and for
    ``scheduler.stop()`` on a signal); ``on_outcome`` sees every recipient outcome as it is
    recorded, with the site's metric label (for an accounting log); ``on_journal`` sees the
    journal once opened (``journal.changes``: what changed in the campaign since it was
    written); ``on_import(rows)`` the rows the import has read so far, every few thousand
    (from the import's thread). Cancelling the run during the import stops it within those
    few thousand rows.

    Raises:
        JournalError: the journal is unusable, changed, or a write failed (disk full).
        ConfigError: the routing configuration is unusable, the templates do not fit the
            recipients file (checked before the journal is opened: nothing is sent), or a
            first import found no recipient to send (the journal is then removed again).
    """
    started = time.monotonic()
    metrics = metrics or Metrics()
    config = campaign.config
    await trio.to_thread.run_sync(campaign.check_recipients)
    journal = await trio.to_thread.run_sync(open_journal, campaign, options)
    store = None
    try:
        if on_journal is not None:
            on_journal(journal)
        requeued = 0
        if options.retry_unrendered:
            requeued = await trio.to_thread.run_sync(journal.retry_unrendered)
        router = Router(routing_config(config, options))
        store = await _open_store(campaign, options.journal_path)
        imported = await _import(campaign, journal, options, router, on_import, store=store)
        suppression = await _read_suppression(campaign, journal, imported, store)
        recorder = None if store is None else BounceRecorder(store.store, Rules(config.suppression))
        policy = config.policy
        settings = RunSettings(
            campaign=campaign,
            writer=JournalWriter(journal, metrics=metrics),
            metrics=metrics,
            timeouts=policy.timeouts,
            ehlo_hostname=ehlo_hostname(config, options.ehlo_hostname),
            connections=ConnectionPool(policy.max_total_connections),
            ssl_verified=options.ssl_verified or verified_context(config.tls.ca_certs),
            ssl_opportunistic=options.ssl_opportunistic or _unverified_context(),
            epoch=time.time() - trio.current_time(),
            limit=options.limit,
            total_rate=TokenBucket(policy.total_rate),
            throttles=throttle_backend(options, config.id),
            suppressed=None if suppression is None else suppression.__contains__,
            tls=_tls_policies(router, options, metrics),
            schedule=SendWindows(config.schedule) if config.schedule.active else None,
        )
        watching = trio.CancelScope()
        scheduler = Scheduler(
            settings,
            router,
            policy,
            grace=options.grace,
            on_outcome=_noting(recorder, on_outcome),
            owns=None if options.shard is None else options.shard.owns,
            share=(0, 1) if options.shard is None else (options.shard.index, options.shard.count),
        )
        context = scheduler.context
        try:
            async with (
                context.throttles.open(),
                _closing(context.tls),
                trio.open_nursery() as nursery,
            ):
                await nursery.start(context.writer.run)
                if suppression is not None:
                    nursery.start_soon(
                        _watch_suppression,
                        suppression,
                        recorder,
                        context,
                        options.suppression_check,
                        watching,
                    )
                nursery.start_soon(_save_tls_counts, context, options.tls_save_every)
                nursery.start_soon(end_at_stop, scheduler)  # [schedule] stop_at
                if on_start is not None:
                    on_start(scheduler)
                try:
                    await scheduler.run()
                finally:
                    watching.cancel()
                    with trio.CancelScope(shield=True):
                        await context.writer.aclose()
                        await _write_bounces(recorder, context)
        except BaseExceptionGroup as group:
            # A journal failure (disk full) stops every task at once: report it once.
            failure, _rest = group.split(JournalError)
            if failure is None:
                raise
            raise _first_leaf(failure) from None
        return RunSummary(
            imported=imported,
            outcomes=dict(context.stats),
            tally=campaign_tally(journal),
            in_doubt_recovered=journal.recovered_in_doubt,
            complete=scheduler.complete,
            elapsed=time.monotonic() - started,
            requeued=requeued,
            halted=context.halt_reason,
        )
    finally:
        if store is not None:
            store.store.close()
        journal.close()


@contextlib.asynccontextmanager
async def _closing(tls: TlsPolicies | None) -> AsyncIterator[None]:
    """At the end of the run, the TLS session counts go to the state file."""
    try:
        yield
    finally:
        if tls is not None:
            with trio.CancelScope(shield=True):
                await tls.close()


async def _save_tls_counts(context: RunContext, every: float) -> None:
    """The day's TLS-RPT counts go to the state file as the run goes (and at its end)."""
    if context.tls is not None:
        await context.tls.keep_saving(context.stopping, every)


def _tls_policies(router: Router, options: RunOptions, metrics: Metrics) -> TlsPolicies | None:
    """The run's MTA-STS/DANE decisions; None when nothing is routed by DNS (a smarthost)."""
    config = router.config
    if router.resolver is None or config.smarthost is not None:
        return None
    return TlsPolicies(
        router.resolver,
        metrics.tls_sessions,
        mta_sts=config.mta_sts,
        dnssec=config.dnssec,
        fetch=options.sts_fetch,
        state=None if options.tls_state is None else TlsState(options.tls_state),
        allow_private=config.allow_private,
    )


async def import_campaign(
    campaign: Campaign,
    options: RunOptions,
    *,
    on_import: Callable[[int], None] | None = None,
) -> tuple[ImportStats | None, CampaignTally]:
    """Import the recipients into the journal and send nothing: the first step of a campaign
    that workers then send (``bulksend import``, then ``bulksend worker``). An import that
    is already complete is left as it is (None). Addresses in the campaign's suppression
    store are imported as suppressed. The whole campaign: shards import as they run.

    Raises:
        JournalError, ConfigError: as :func:`run_campaign`.
    """
    if options.shard is not None:
        raise ValueError("import_campaign imports a whole campaign, not a shard")
    await trio.to_thread.run_sync(campaign.check_recipients)
    journal = await trio.to_thread.run_sync(open_journal, campaign, options)
    store = None
    try:
        store = await _open_store(campaign, options.journal_path)
        imported = await _import(campaign, journal, options, None, on_import, store=store)
        return imported, campaign_tally(journal)
    finally:
        if store is not None:
            store.store.close()
        journal.close()


async def _import(
    campaign: Campaign,
    journal: AnyJournal,
    options: RunOptions,
    router: Router | None,
    on_import: Callable[[int], None] | None,
    *,
    store: StoreSuppression | None,
) -> ImportStats | None:
    """Import the recipients (once); a first import with nothing to send leaves no journal.

    A shard's import keeps its own sites' domains, found with ``router``.
    """
    config = campaign.config
    keep = None
    if options.shard is not None and router is not None and not journal.import_complete:
        keep = shard_filter(await _shard_plan(campaign, journal, options, router), options.shard)

    def importing(rows: int) -> None:
        trio.from_thread.check_cancelled()  # a cancelled run stops its import here
        if on_import is not None:
            on_import(rows)

    try:
        imported = await trio.to_thread.run_sync(
            lambda: import_recipients(
                campaign, journal, options.shard, keep, importing, store=store
            )
        )
    except BaseException:
        with contextlib.suppress(JournalError):
            if not any(journal.counts().values()):
                journal.discard()  # a failed first import leaves no journal behind
        raise
    if imported is not None and options.shard is None and not journal.waiting():
        # Nothing to send: leave no journal that a corrected file would resume into.
        journal.discard()
        raise ConfigError(
            f"{config.recipients.file}: no recipient to send (the file has no rows, or "
            f"every row was rejected: see {config.recipients.rejects}); fix the file and "
            "send again"
        )
    return imported


async def _open_store(campaign: Campaign, journal: Path | str) -> StoreSuppression | None:
    """Open the campaign's suppression store (see :func:`campaign_store`), unless it has
    none, and read its active keys."""
    path = campaign_store(campaign.config, journal)
    if path is None:
        return None
    store = await trio.to_thread.run_sync(open_suppression_store, path)
    view = StoreSuppression(store)
    try:
        await trio.to_thread.run_sync(view.reload)
    except BaseException:
        store.close()
        raise
    return view


async def _read_suppression(
    campaign: Campaign,
    journal: AnyJournal,
    imported: ImportStats | None,
    store: StoreSuppression | None,
) -> Suppressions | None:
    """Read the suppression file, if any, beside the store; on a resume, mark the waiting
    recipients suppressed by either."""
    sources: list[Watched] = [] if store is None else [store]
    if store is not None:  # the commands' --store, where the default is unclear
        log.info("suppression store: %s", store.path)
    path = campaign.config.recipients.suppression
    if path is not None:
        suppression = SuppressionFile(path)
        await trio.to_thread.run_sync(suppression.reload)
        sources.append(suppression)
    if not sources:
        return None
    suppressions = Suppressions(sources)
    if imported is None or imported.skipped:
        # Imported (some of it) by an earlier run: the list may have grown since.
        n = await trio.to_thread.run_sync(journal.suppress_waiting, suppressions.__contains__)
        log.info("%d waiting recipients are suppressed now", n)
    return suppressions


def _noting(
    recorder: BounceRecorder | None, on_outcome: Callable[[Due, Outcome, str], None] | None
) -> Callable[[Due, Outcome, str], None] | None:
    """The outcome hook, with the recorder (if any) noting the bounces that feed the store."""
    if recorder is None:
        return on_outcome

    def noting(due: Due, outcome: Outcome, site_label: str) -> None:
        recorder.note(due.address, outcome)
        if on_outcome is not None:
            on_outcome(due, outcome, site_label)

    return noting


async def _write_bounces(recorder: BounceRecorder | None, context: RunContext) -> None:
    """Write the bounces noted so far to the store (a failure is logged: delivery goes on)."""
    if recorder is None:
        return
    pending = recorder.take()
    if not pending:
        return
    try:
        made = await trio.to_thread.run_sync(recorder.write, pending, context.now())
    except SuppressionError as exc:
        log.warning("%s; %d bounces not recorded in the suppression store", exc, len(pending))
        return
    for entry in made:
        context.metrics.suppressions.labels(entry.reason, entry.source).inc()
    if made:
        log.info("%d addresses entered the suppression store", len(made))


async def _watch_suppression(
    suppressions: Suppressions,
    recorder: BounceRecorder | None,
    context: RunContext,
    every: float,
    scope: trio.CancelScope,
) -> None:
    """Write the run's bounces to the store; re-read a suppression source when it changes
    and mark the waiting recipients it suppresses.

    Senders see the new list at once (``RunSettings.suppressed``); the journal then marks those
    not yet claimed, so they are never fetched again.
    """
    with scope:
        while True:
            await trio.sleep(every)
            await _write_bounces(recorder, context)
            # A look at the store may wait on its lock (a write of many bounces): in a thread.
            changed = [
                source
                for source in suppressions.sources
                if await trio.to_thread.run_sync(source.changed)
            ]
            for source in changed:
                try:
                    await trio.to_thread.run_sync(source.reload)
                except (ConfigError, SuppressionError) as exc:
                    log.warning("%s; keeping the suppressions read before", exc)
                    continue
            if not changed:
                continue
            n = await context.writer.suppress_waiting(suppressions.__contains__)
            log.warning(
                "suppressions changed (%s): %d waiting recipients suppressed",
                ", ".join(str(source.path) for source in changed),
                n,
            )
            if n:
                context.events.final()  # they may have been the last ones waiting


def _first_leaf(group: BaseExceptionGroup[JournalError]) -> JournalError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def verified_context(ca_certs: str | None) -> ssl.SSLContext:
    """The system's trust store, plus the campaign's own CA certificates (``[tls] ca_file``)."""
    context = ssl.create_default_context()
    if ca_certs is not None:
        context.load_verify_locations(cadata=ca_certs)
    return context


def _unverified_context() -> ssl.SSLContext:
    # Opportunistic TLS (RFC 7435): encrypt when offered, without authenticating the server;
    # a policy of "required" uses the verifying context instead.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
