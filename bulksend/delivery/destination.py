"""One destination per site: its senders, throttles, backoff and connections.

How this works: a :class:`Destination` serves every domain that rolls up to one site (the
same MX set). It *pulls* work: when a sender task is ready for a message it takes one from
a small buffer, which is refilled from the journal one domain at a time, round robin, in
bounded batches. A destination that is slow, throttled, backed off or black-holed only ever
holds its own few recipients and its own connection slots; nothing upstream waits on it.

Sender tasks are started on demand, up to the site's (possibly backed-off) connection
limit, and each owns at most one SMTP connection:

* before each message it waits for the site's token bucket (exact wake-ups, no polling);
* with PIPELINING the next message's MAIL/RCPT/DATA follow the previous message's data
  without waiting for its final reply (RFC 2920), and the replies are read in order;
* when a connection reaches the site's messages-per-connection limit it is closed and the
  next message opens a new one at once; any error drops it, and so does a suspension
  (:func:`~bulksend.delivery.pool.must_retire`); an idle sender keeps it up to
  ``idle_timeout`` only while its site may get work back soon and no other site waits for a
  connection slot (:mod:`bulksend.delivery.pool` keeps that bookkeeping);
* a connection is opened to the route's MX hosts in order, each address in turn; a host
  that fails backs off (per host, not per message: :class:`~bulksend.delivery.pool.HostHealth`,
  which also remembers the hosts whose STARTTLS failed). Opening is paced by the site's
  connection rate, then takes one of the global connection slots.

With egress sources a site has one destination per source address (a *lane*, see
:mod:`bulksend.egress.selection`), whose connections bind that address; a lane that must
wait (blocked, warm-up allowance used) hands its recipients to the site's other lanes
(:attr:`Destination.siblings`) at once. A mailbox provider's shared limits and backoff wrap
the throttle (:mod:`bulksend.delivery.provider`).

Outcomes are recorded without an await, through the run's
:class:`~bulksend.delivery.context.RunContext`. Replies that match a backoff rule put the
site under reduced limits for a while (see :mod:`bulksend.delivery.backoff`); the
recipients concerned are throttle deferrals, not failed attempts. On a graceful stop no new
transaction starts, at a site that waits for a connection slot or its rate as much as at
one that is sending; whatever was taken from the journal and not sent is handed back, and a
message whose final reply is lost is in doubt.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TypeAlias

import trio

from bulksend.campaign.recipients import Recipient
from bulksend.campaign.render import RenderError
from bulksend.config import BackoffRule, SiteLimits, TlsMode
from bulksend.config.egress import EgressSource
from bulksend.delivery.backoff import Backoff
from bulksend.delivery.context import RunContext
from bulksend.delivery.outcome import classify_error
from bulksend.delivery.pool import ConnectionKey, HostHealth, must_retire
from bulksend.delivery.provider import Provider
from bulksend.egress.selection import SOURCE_BLOCKED, Lane, Rotation
from bulksend.egress.warmup import Warmup, count_message
from bulksend.journal import Due, Kind, Outcome
from bulksend.metrics import connection_failure_reason
from bulksend.routing import Route
from bulksend.smtp.client import Envelope, RecipientResult, SMTPClient, Transaction
from bulksend.smtp.errors import (
    PermanentReplyError,
    ReplyError,
    SMTPConnectionError,
    SMTPError,
    TLSError,
)
from bulksend.smtp.protocol import Verb
from bulksend.throttles import Lease
from bulksend.tlspolicy import HostPolicy, PolicyKind, TlsPolicies
from bulksend.tlspolicy.tlsrpt import result_of

log = logging.getLogger("bulksend.delivery")


def _too_many(error: SMTPError | None) -> bool:
    """A 452 to RCPT: "too many recipients" (RFC 5321 §4.5.3.1.10)."""
    return isinstance(error, ReplyError) and error.stage == Verb.RCPT and error.code == 452


def _recipients_limit(results: list[RecipientResult]) -> int | None:
    """How many recipients the server took before answering 452 to the rest, if it did.

    A 452 before any recipient was taken says nothing about a limit (the server may be
    short of storage): None.
    """
    taken = 0
    for result in results:
        error = result.error
        if error is None:
            taken += 1
        elif _too_many(error):
            return taken or None
        elif not (isinstance(error, ReplyError) and error.stage == Verb.RCPT):
            taken += 1
    return None


#: A transaction in flight: its recipients, when it started (trio time), its egress source.
_Sent: TypeAlias = tuple[Transaction, list[Due], float, str]


@dataclass(slots=True)
class _Slot:
    """One sender's state: its connection, what it has in flight, what it holds."""

    client: SMTPClient | None = None
    sent: dict[int, _Sent] = field(default_factory=dict)
    holding: list[Due] = field(default_factory=list)  # taken, not yet sent nor recorded
    source: str = ""  # the egress source its connection leaves from ("": the default)


class Destination:
    """The senders, limits and connection pool of one site."""

    def __init__(
        self,
        context: RunContext,
        route: Route,
        limits: SiteLimits,
        backoff: Backoff,
        *,
        label: str,
        lane: Lane | None = None,
        provider: Provider | None = None,
        warmups: tuple[Warmup, ...] = (),
    ) -> None:
        self.context = context
        self.route = route  # the newest routed domain's (see Scheduler): the site's hosts
        self.limits = limits
        self.backoff = backoff
        self.label = label
        # A relay's AUTH credentials ride on its route (see delivery.run.routing_config).
        self.credentials = route.auth
        self._transaction_seconds = context.metrics.transaction_seconds
        # Rate, connection rate and cap, backoff: this process's or shared (bulksend.throttles).
        self.throttle = context.throttles.site(
            str(route.site), limits, backoff, changed=self._backoff_changed, now=context.now
        )
        # A mailbox provider's limits and backoff hold over all its sites, besides their own.
        self.provider = provider
        if provider is not None:
            self.throttle = provider.wrap(self.throttle)
            provider.join(self._back_off)
        self._leases: dict[SMTPClient, Lease] = {}
        self._domains: deque[str] = deque()
        self._buffer: deque[Due] = deque()
        self._fetching = trio.Lock()
        self._work = trio.Event()  # set when a domain is attached
        self._hosts = HostHealth()
        self._senders = 0
        self._clients: dict[SMTPClient, ConnectionKey] = {}
        # When the last recipient this site handed back (throttle, backoff, stop) is due again:
        # while that is near, an idle connection may wait for it.
        self._back_at = -math.inf
        self.last_error = ""
        self.outcomes: dict[Kind, int] = dict.fromkeys(Kind, 0)  # this run's (``ctl status``)
        self._connect_failure: SMTPError | None = None  # why the last connect failed
        #: MTA-STS/DANE decisions for an MX site (the scheduler sets it); None for a relay.
        self.tls: TlsPolicies | None = None
        self.tls_policy = ""  # the TLS policy of the last connection (HostPolicy.label)
        self.tls_failure = ""  # the last TLS failure or policy refusal, with its host
        self._nursery: trio.Nursery | None = None
        self._timer_armed = False
        # Recipients in one transaction: the site's setting for a message the same for
        # everyone (else 1), lowered to what the server showed it accepts (452 after N).
        self.per_transaction = limits.recipients_per_transaction if context.campaign.shared else 1
        # Egress: the source addresses its connections leave from (none: the default one),
        # and the site's other lanes (other sources), which take what this one cannot send.
        self._sources = Rotation(() if lane is None else lane.sources)
        self.siblings: list[Destination] = []
        self._warmups = warmups  # the lane's source's daily allowances, if it warms up

    # ------------------------------------------------------------------ scheduling

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self._domains)

    @property
    def senders(self) -> int:
        return self._senders

    def attach(self, domain: str, nursery: trio.Nursery) -> None:
        """Serve ``domain`` (which has due recipients) and start senders as allowed."""
        self._nursery = nursery
        if domain not in self._domains:
            self._domains.append(domain)
        self.wake()
        self._spawn()

    def detach(self, domain: str) -> None:
        """Stop fetching ``domain``'s recipients (its route expired: it is routed again)."""
        if domain in self._domains:
            self._domains.remove(domain)

    def wake(self) -> None:
        """Wake idle senders (to see a stop, or new work)."""
        if self.context.halted:
            self.context.connections.stop()  # and those waiting for a connection slot
        self._work.set()
        self._work = trio.Event()

    def _spawn(self) -> None:
        assert self._nursery is not None
        limit = self.backoff.limits.max_connections
        while self._senders < limit and (self._domains or self._buffer):
            self._senders += 1
            self.context.sender_started()
            self._nursery.start_soon(self._sender)

    async def _take(self, slot: _Slot, *, wait: bool) -> Due | None:
        """The next recipient to send.

        None when there is none: at once if not ``wait``, else when :meth:`_rest` finds none.
        """
        while True:
            await self._wait_while_suspended()
            if self.context.stopping.is_set():
                return None
            if self._buffer:
                due = self._buffer.popleft()
                if self.context.suppressed(due.address):
                    # Suppressed since it was claimed: never sent (invariant 8).
                    self.context.record(due, Outcome.suppressed(), self.label)
                    continue
                schedule = self.context.schedule
                if schedule is not None and (held := schedule.hold(due, self.context.now())):
                    self._record(due, held)  # outside its send window: not an attempt
                    continue
                self.context.take_one()
                return due
            if not self._domains:
                if not wait or not await self._rest(slot):
                    return None
                continue
            async with self._fetching:
                if self._buffer or not self._domains:
                    continue
                domain = self._domains[0]
                self._domains.rotate(-1)
                # Enough for every sender to pipeline a while (claims are cheap, no fsync),
                # and for one whole transaction.
                limit = min(self.context.settings.fetch_batch, max(16 * self._senders, 16))
                limit = max(limit, self.per_transaction)
                batch = await self.context.writer.fetch_due(domain, limit, now=self.context.now())
                if batch:
                    self._buffer.extend(batch)
                elif domain in self._domains:
                    self._domains.remove(domain)
                    self.context.events.domain_idle(domain)

    async def _rest(self, slot: _Slot) -> bool:
        """Wait, idle, for work (a domain attached); False when there is none to wait for.

        A site with nothing coming back soon keeps no connection. Otherwise an idle
        connection waits up to ``idle_timeout``, but gives its global slot up as soon as a
        sender of another site waits for one (see :mod:`bulksend.delivery.pool`).
        """
        timeout = self.limits.idle_timeout
        now = self.context.now()
        if not now - timeout <= self._back_at <= now + timeout:
            return False
        pool = self.context.connections
        key = None if slot.client is None else self._clients.get(slot.client)
        if key is not None and not pool.rest(key, self.wake):
            return False
        deadline = trio.current_time() + timeout
        try:
            while not (self._domains or self.context.stopping.is_set()):
                if key is not None and pool.retiring(key):
                    return False
                work = self._work
                with trio.move_on_at(deadline) as waited:
                    await work.wait()
                if waited.cancelled_caught:
                    break
        finally:
            if key is not None:
                pool.busy(key)
        return bool(self._domains) and not (key is not None and pool.retiring(key))

    def _record(self, due: Due, outcome: Outcome) -> None:
        """Record an outcome of this site's, noting when a recipient handed back is due."""
        if outcome.kind is Kind.THROTTLED:
            back_at = self.context.now() + (outcome.retry_after or 0.0)
            self._back_at = max(self._back_at, back_at)
        self.outcomes[outcome.kind] += 1
        self.context.record(due, outcome, self.label)

    def _release_buffer(self, retry_after: float, reason: str) -> None:
        """Hand back everything taken but not sent: a throttle deferral, not an attempt."""
        while self._buffer:
            due = self._buffer.popleft()
            self._record(due, Outcome.throttled(retry_after, reason))

    # --------------------------------------------------------------------- senders

    async def _sender(self) -> None:
        slot = _Slot()
        counted = True
        try:
            while self._may_continue():
                # A connection due to retire (its site suspended, say) collects what it
                # owes and frees its slot before anything else.
                if (client := self._retiring(slot)) is not None:
                    await self._close(client, slot.sent)
                if slot.client is not None and not self._buffer:
                    # We may wait: send the held data first.
                    self._finish(await slot.client.flush(), slot.sent)
                pipelining = slot.client is not None and slot.client.in_flight > 0
                due = await self._take(slot, wait=not pipelining)
                if due is not None:
                    slot.holding = [due, *self._more_for(due)]
                    await self._deliver(slot)
                elif slot.client is not None and slot.client.in_flight:
                    # Nothing more to pipeline: collect the replies still owed.
                    self._finish(await slot.client.drain(), slot.sent)
                else:
                    break
            if slot.client is not None:
                # Before leaving: the run ends when the last sender leaves, and a close it
                # interrupted would end the session without QUIT (RFC 5321 §4.1.1.10).
                await self._close(slot.client, slot.sent)
                slot.client = None
            self._leave()
            counted = False
        finally:
            with trio.CancelScope(shield=True):
                if counted:
                    self._leave()
                if slot.client is not None:
                    await self._discard(slot.client)
                self._abandon(slot)
                if self._senders == 0 and self._buffer:
                    self._release_buffer(0.0, "released")

    def _leave(self) -> None:
        self._senders -= 1
        self.context.sender_ended()

    def _more_for(self, due: Due) -> list[Due]:
        """Recipients to share ``due``'s transaction: only for a campaign whose message is
        the same for everyone, up to :attr:`per_transaction`, same domain."""
        room = self.per_transaction - 1
        if room <= 0:
            return []
        suppressed = self.context.suppressed
        group = [d for d in self._buffer if d.domain == due.domain and not suppressed(d.address)][
            :room
        ]
        for d in group:
            self._buffer.remove(d)
            self.context.take_one()
        return group

    async def _deliver(self, slot: _Slot) -> None:
        """Send the held recipients' message over the slot's connection (opened if need be).

        ``slot.holding`` is emptied, before any await, the moment the recipients' fate is
        someone else's business: an outcome recorded, or a transaction registered in
        ``slot.sent``. Until then a stop hands them back.
        """
        group = slot.holding
        try:
            envelope, data = self._render(group)
        except RenderError as exc:
            slot.holding = []
            self.context.not_rendered(group, exc, self.label)
            return
        self.context.renders.passed()
        if (client := self._retiring(slot)) is not None:
            await self._close(client, slot.sent)
        if slot.client is None:
            slot.client = await self._connect(slot)
            if slot.client is None:
                return
        delay = max(self.context.total_rate.reserve(), await self.throttle.reserve())
        if delay > 0:
            # Never sit on message data while waiting.
            self._finish(await slot.client.flush(), slot.sent)
            self.context.metrics.throttle_wait_seconds.labels(self.label).inc(delay)
            await trio.sleep(delay)
            if not slot.client.usable:  # the flush found the connection gone
                held, slot.holding = slot.holding, []
                for due in held:  # nothing started for them: hand them back
                    self._record(due, Outcome.released())
                return
        if self._warmups:
            wait, used = await count_message(self._warmups, self.context.now())
            if used is not None:
                self._warmed_up(slot, used, wait)
                return
        if self.context.halted:
            return  # no new transaction after a stop: the held recipients are handed back
        txn = Transaction(envelope, data)
        slot.sent[id(txn)] = (txn, group, trio.current_time(), slot.source)
        slot.holding = []
        # With more recipients ready, this message's data rides with the next one's commands.
        more = bool(self._buffer)
        self._finish(await slot.client.submit(txn, hold=more), slot.sent)
        if (client := self._retiring(slot)) is not None:
            # Replaced at once: the next message opens a fresh connection.
            await self._close(client, slot.sent)

    def _warmed_up(self, slot: _Slot, warmup: Warmup, wait: float) -> None:
        """Today's warm-up allowance is used: the lane rests until the next day begins, and
        what it holds goes to the site's other sources, or waits (throttle deferrals)."""
        now = self.context.now()
        allowance = warmup.allowance(now)
        reason = f"warm-up of {warmup.name}: today's allowance of {allowance} messages is used"
        self._back_off(BackoffRule(suspend=wait, duration=wait), now, reason)
        held, slot.holding = slot.holding, []
        for due in held:
            self._record(due, Outcome.throttled(self._handed_over(wait), reason))

    def _retiring(self, slot: _Slot) -> SMTPClient | None:
        """The slot's connection, taken from it, if it must close now (see
        :func:`~bulksend.delivery.pool.must_retire`); else None."""
        client = slot.client
        if client is None or not must_retire(
            messages_sent=client.messages_sent,
            limit=self.limits.messages_per_connection,
            usable=client.usable
            and not self.throttle.lost(self._leases[client])
            and not self._source_blocked(slot.source),
            suspended=self._suspended_for() > 0,
        ):
            return None
        slot.client = None
        return client

    def _render(self, group: list[Due]) -> tuple[Envelope, bytes]:
        campaign = self.context.campaign
        if len(group) > 1:
            addresses = tuple(d.address for d in group)
            data = campaign.render_shared(addresses)
            envelope = Envelope(
                campaign.envelope_sender(addresses[0]),
                addresses,
                eightbitmime=not data.isascii(),
                smtputf8=not all(a.isascii() for a in addresses),
            )
            return envelope, data
        due = group[0]
        rendered = campaign.render(Recipient(due.address, due.data or {}, due.id))
        envelope = Envelope(
            rendered.envelope_sender,
            (rendered.recipient,),
            eightbitmime=rendered.needs_8bitmime,
            smtputf8=rendered.needs_smtputf8,
        )
        return envelope, rendered.data

    def _may_continue(self) -> bool:
        """False when this sender should end: stopping, or above a backed-off limit."""
        if self.context.stopping.is_set():
            return False
        return self._senders <= self.backoff.limits.max_connections

    def _suspended_for(self) -> float:
        """Seconds the site stays suspended or paused (0: neither). Asked before every
        message: a site never suspended reads no clock."""
        suspended, paused = self.backoff.limits.suspended_until, self.backoff.paused_until
        until = paused if paused > suspended else suspended  # not max(): 4 calls a message
        return 0.0 if until == -math.inf else max(until - self.context.now(), 0.0)

    def _source_blocked(self, source: str) -> bool:
        """Whether ``source``, one of several the site's connections take in turn, is left
        out (a receiver blocked it): its connection closes."""
        return self._sources.several and self._sources.blocked(source, self.context.now())

    def _refuses_source(self, error: SMTPError) -> bool:
        """Whether opening a connection failed on a reply that refuses the source address
        (a greeting such as "554 ... Client host [192.0.2.1] blocked using zen.spamhaus.org")."""
        if not isinstance(error, ReplyError):
            return False
        reply = error.reply
        return self.backoff.match(reply.code, reply.enhanced_code, reply.text) is SOURCE_BLOCKED

    @property
    def available(self) -> bool:
        """Whether this lane may send now (not suspended)."""
        return self._suspended_for() == 0

    def _handed_over(self, wait: float) -> float:
        """How long a recipient this lane must put off waits: ``wait``, or nothing when
        another lane of the site (another source address) can send it now."""
        return 0.0 if any(s.available for s in self.siblings) else wait

    async def _wait_while_suspended(self) -> None:
        """Honour a suspension: hand back what was taken, sleep until it ends (or a stop, or
        an operator's change: :meth:`limits_changed`)."""
        while (left := self._suspended_for()) > 0 and not self.context.stopping.is_set():
            if self.backoff.paused_until > self.context.now():
                # An operator's pause: due again at once, fetched here when it ends.
                self._release_buffer(0.0, self.backoff.paused_reason)
            else:
                self._release_buffer(self._handed_over(left), self.backoff.reason)
            work = self._work
            with trio.move_on_after(left):
                await work.wait()

    def limits_changed(self) -> None:
        """An operator changed this site's limits or pause (``bulksend ctl``): act now."""
        self.wake()
        if self._nursery is not None:
            self._spawn()

    def hand_back(self, domain: str, outcome: Outcome) -> int:
        """Record ``outcome`` for each of ``domain``'s recipients taken and not yet sent
        (``bulksend ctl``: a domain paused or cancelled); returns how many."""
        mine = [due for due in self._buffer if due.domain == domain]
        for due in mine:
            self._buffer.remove(due)
            self._record(due, outcome)
        return len(mine)

    # ------------------------------------------------------------------- outcomes

    def _finish(self, done: list[Transaction], sent: dict[int, _Sent]) -> None:
        if not done:
            return
        now = trio.current_time()  # the replies that finished them came in one read
        for txn in done:
            record = sent.pop(id(txn), None)
            if record is None:
                continue
            if txn.data_sent:
                self._transaction_seconds.observe(now - record[2])
            self._record_results(txn, record[1], record[3])

    def _record_results(self, txn: Transaction, items: list[Due], source: str) -> None:
        """Journal a finished transaction's per-recipient outcomes (no await: all of them)."""
        results = txn.results
        accepted = _recipients_limit(results)
        if accepted is not None and accepted < self.per_transaction:
            log.info("%s: the server takes %d recipients per transaction", self.label, accepted)
            self.per_transaction = accepted
        for due, result in zip(items, results, strict=True):
            if result.error is None and result.reply is not None:
                reply = result.reply
                outcome = Outcome.delivered(reply.code, reply.enhanced_code, reply.text)
            elif accepted is not None and _too_many(result.error):
                # Our transaction was too big, not the recipient's fault: next one, now.
                outcome = Outcome.throttled(0.0, f"too many recipients: {result.error}")
            else:
                assert result.error is not None
                outcome = self._judge(result.error, source)
            self._record(due, outcome)

    def _judge(self, error: SMTPError, source: str) -> Outcome:
        """Classify an error from a connection of egress ``source``; a reply that matches a
        backoff rule backs the site off, or, refusing the source itself where the site's
        connections take several sources in turn, leaves that source out for a while."""
        self.last_error = str(error)
        if isinstance(error, ReplyError):
            reply = error.reply
            rule = self.backoff.match(reply.code, reply.enhanced_code, reply.text)
            if rule is not None:
                now = self.context.now()
                if rule is SOURCE_BLOCKED and self._sources.several:
                    if not self._sources.blocked(source, now):
                        log.warning("%s: source %s blocked: %s", self.label, source, reply)
                    if not self._sources.block(source, now + (rule.suspend or 0.0), now):
                        reason = f"source {source} blocked: {reply}"
                        return Outcome.throttled(0.0, reason, tried=True)
                if self.provider is None or not self.provider.back_off(rule, now, str(reply)):
                    self._back_off(rule, now, str(reply))
                wait = self._handed_over(max(self.backoff.limits.suspended_until - now, 0.0))
                return Outcome.throttled(wait, f"site backed off: {reply}", tried=True)
        return classify_error(error)

    def _back_off(self, rule: BackoffRule, now: float, reason: str) -> None:
        """Put a backoff rule in force for this site."""
        if self.backoff.apply(rule, now, reason):
            self.throttle.publish()
            self._backoff_changed("suspend" if rule.suspend else "reduce")

    def _backoff_changed(self, action: str) -> None:
        m = self.context.metrics
        m.backoff_events.labels(self.label, action).inc()
        m.backoff_active.labels(self.label).set(1 if self.backoff.active else 0)
        if self.backoff.active and not self._timer_armed and self._nursery is not None:
            self._timer_armed = True
            self._nursery.start_soon(self._restore_timer)

    async def _restore_timer(self) -> None:
        try:
            while self.backoff.active:
                await trio.sleep_until(
                    self.backoff.restore_at - self.context.epoch
                )  # trio time of the restore moment
                if self.backoff.restore(self.context.now()):
                    self._backoff_changed("restore")
                    if self._domains or self._buffer:
                        self._spawn()
        finally:
            self._timer_armed = False

    def _abandon(self, slot: _Slot) -> None:
        """Stopped with work unfinished: in doubt if its data went out, else handed back."""
        held, slot.holding = slot.holding, []
        for due in held:
            self._record(due, Outcome.released())
        sent = slot.sent
        for txn, items, _started, source in sent.values():
            if txn.done:
                # Its replies were read before the stop: record what they said.
                self._record_results(txn, items, source)
                continue
            if txn.data_sent:
                outcome = Outcome.in_doubt("stopped before the final reply arrived")
            else:
                outcome = Outcome.released()
            for due in items:
                self._record(due, outcome)
        sent.clear()

    # ----------------------------------------------------------------- connections

    async def _connect(self, slot: _Slot) -> SMTPClient | None:
        """Take a global connection slot and open a connection in it.

        None when that fails (see :meth:`_open_first`) or when stopping: then no connection
        is opened and the recipients the slot holds stay held, to be handed back.
        """
        d = self.context
        # Pace before taking a slot: a slot is never held while waiting for the site's rate
        # or for one of its connections (a lease, which holds across workers).
        waited = await self.throttle.pace_connection()
        if waited:
            d.metrics.throttle_wait_seconds.labels(self.label).inc(waited)
        lease = await self.throttle.lease()
        pool = d.connections
        key = await pool.acquire(str(self.route.site))
        client = None
        try:
            if key is not None:
                client = await self._open_first(slot, key)
        finally:
            if client is None:
                self.throttle.release(lease)
                if key is not None:
                    pool.release(key)
        if client is not None:
            self._leases[client] = lease
        return client

    async def _open_first(self, slot: _Slot, key: ConnectionKey) -> SMTPClient | None:
        """Open a connection to the first MX host/address that answers.

        On failure the recipient the slot holds is deferred: as an attempt when hosts were
        tried and failed, as a throttle deferral when every host is backing off.
        """
        now = self.context.now()
        last: SMTPError | None = None
        tried = False
        domain = slot.holding[0].domain if slot.holding else ""
        source = self._sources.next(now)
        slot.source = "" if source is None else source.name
        for host in self.route.hosts:
            if not self._hosts.ready(host.name, now):
                continue
            policy = HostPolicy(PolicyKind.OPPORTUNISTIC, domain, host.name)
            if self.tls is not None:
                policy = await self.tls.host_policy(domain, host.name)
                if policy.refusal:  # never contacted: not the host's failure either
                    tried, last = True, TLSError(policy.refusal)
                    self.tls_policy, self.tls_failure = policy.label, policy.refusal
                    self.tls.failed(policy, policy.refusal_result)
                    continue
                self.tls_failure = policy.warning or self.tls_failure
            for address in host.addresses:
                tried = True
                try:
                    client = await self._open_with_fallback(
                        address, host.port, host.name, key, policy, source=source
                    )
                except SMTPError as exc:
                    last = exc
                    reason = connection_failure_reason(exc)
                    self.context.metrics.connections_failed.labels(self.label, reason).inc()
                    if self._refuses_source(exc):  # not the host failing: our address refused
                        held, slot.holding = slot.holding, []
                        outcome = self._judge(exc, slot.source)
                        for due in held:
                            self._record(due, outcome)
                        return None
                    if isinstance(exc, PermanentReplyError) and exc.stage == Verb.GREETING:
                        break  # this host refuses service; try the next host
                    continue
                self._hosts.succeeded(host.name)
                return client
            self._hosts.failed(host.name, now)
        if tried and last is not None:
            self.last_error = str(last)
            self._connect_failure = last
            outcome = classify_error(last)
            if outcome.kind is Kind.BOUNCED:
                # A refused greeting is not the recipient's fault: try again later.
                outcome = classify_error(SMTPConnectionError(str(last)))
        else:
            # Every host failed recently and backs off. This is the destination failing,
            # not our own pacing: a real deferred attempt, so a site that stays dead
            # expires at max_age like any other undeliverable recipient.
            outcome = classify_error(
                SMTPConnectionError(f"every MX host is backing off; last error: {self.last_error}")
            )
            if self._connect_failure is not None:  # filed under what made the hosts fail
                category = classify_error(self._connect_failure).category
                outcome = dataclasses.replace(outcome, category=category)
        held, slot.holding = slot.holding, []
        for due in held:
            self._record(due, outcome)
        return None

    async def _open_with_fallback(
        self,
        address: str,
        port: int,
        server_name: str,
        key: ConnectionKey,
        policy: HostPolicy,
        *,
        source: EgressSource | None,
    ) -> SMTPClient:
        """Open a connection; with opportunistic TLS, a failed handshake means plaintext.

        A host whose TLS failed once is reached in plaintext for the rest of the run
        (RFC 7435 opportunistic security: better unencrypted than undelivered). Under an
        MTA-STS or DANE policy TLS is authenticated first (:mod:`bulksend.tlspolicy`): a
        failure is final when the policy is enforced, and only counted in testing mode.
        """
        tls = self.tls
        if tls is not None and policy.kind is not PolicyKind.OPPORTUNISTIC:
            self.tls_policy = policy.label
            try:
                client = await self._open(
                    address, port, server_name, TlsMode.REQUIRED, key, source=source, policy=policy
                )
            except TLSError as exc:
                tls.failed(policy, result_of(exc), address)
                self.tls_failure = f"{server_name}: {exc}"
                if policy.enforce:
                    raise
                log.warning("%s: %s (MTA-STS testing: delivering anyway)", server_name, exc)
            else:
                tls.succeeded(policy)
                return client
        mode = self._hosts.tls_mode(server_name, self.limits.tls)
        try:
            client = await self._open(address, port, server_name, mode, key, source=source)
            if tls is not None:
                kind = PolicyKind.NONE if mode is TlsMode.NONE else PolicyKind.OPPORTUNISTIC
                tls.succeeded(dataclasses.replace(policy, kind=kind), tls=client.tls_active)
                if policy.kind is PolicyKind.OPPORTUNISTIC:
                    self.tls_policy = kind.value
            return client
        except TLSError as exc:
            authenticating = self.credentials is not None
            if not self._hosts.starttls_failed(server_name, mode, authenticating=authenticating):
                raise
            log.warning("%s: STARTTLS failed (%s); continuing without TLS", server_name, exc)
            self.tls_failure = f"{server_name}: STARTTLS failed ({exc})"
            self.context.metrics.connections_failed.labels(self.label, "tls").inc()
            return await self._open(address, port, server_name, TlsMode.NONE, key, source=source)

    async def _open(
        self,
        address: str,
        port: int,
        server_name: str,
        mode: TlsMode,
        key: ConnectionKey,
        *,
        source: EgressSource | None,
        policy: HostPolicy | None = None,
    ) -> SMTPClient:
        """Connect, greet, STARTTLS and AUTH as the site requires, in ``key``'s slot; under
        a DANE ``policy`` the certificate is checked against the TLSA records instead of the
        trust store (RFC 7672 §3.1)."""
        d = self.context.settings
        client: SMTPClient | None = None
        try:
            client = await SMTPClient.connect(
                address,
                port,
                hostname=d.ehlo_hostname if source is None else source.ehlo or d.ehlo_hostname,
                timeouts=d.timeouts,
                local_address=None if source is None else source.address,
            )
            verify = mode is TlsMode.REQUIRED or self.credentials is not None
            dane = policy is not None and policy.kind is PolicyKind.DANE
            context = d.ssl_verified if verify and not dane else d.ssl_opportunistic
            await client.handshake(tls=mode, ssl_context=context, server_hostname=server_name)
            if policy is not None:
                policy.verify(client.peer_chain())
            if self.credentials is not None:
                await client.authenticate(
                    self.credentials.username, self.credentials.password.reveal()
                )
        except BaseException:
            if client is not None:
                with trio.CancelScope(shield=True):
                    await client.aclose()
            raise
        self._clients[client] = key
        metrics = self.context.metrics
        metrics.connections_open.labels(self.label).inc()
        tls = "tls" if client.tls_active else "plaintext"
        metrics.connections_opened.labels(self.label, tls).inc()
        return client

    async def _close(self, client: SMTPClient, sent: dict[int, _Sent]) -> None:
        """Collect the replies still owed, say QUIT, close."""
        try:
            if client.usable:
                self._finish(await client.drain(), sent)
            await client.quit()
        finally:
            self._closed(client)

    async def _discard(self, client: SMTPClient) -> None:
        """Close without waiting for anything (cancelled or failed)."""
        try:
            await client.aclose()
        finally:
            self._closed(client)

    def _closed(self, client: SMTPClient) -> None:
        key = self._clients.pop(client, None)
        lease = self._leases.pop(client, None)
        if lease is not None:
            self.throttle.release(lease)
        if key is not None:  # count each connection's end once
            self.context.metrics.connections_open.labels(self.label).dec()
            self.context.connections.release(key)

    @property
    def open_connections(self) -> int:
        return len(self._clients)

    @property
    def in_flight(self) -> int:
        """Transactions sent and not yet answered, over every connection."""
        return sum(client.in_flight for client in self._clients)

    @property
    def buffered(self) -> int:
        """Recipients taken from the journal, not yet sent."""
        return len(self._buffer)
