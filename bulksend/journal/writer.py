"""The async front of the journal used during a run: one task holds the store, hands out
claims, answers the scheduler's queries and commits outcomes in batches (see "Batching" in
:mod:`bulksend.journal`).

Senders append outcomes to a plain list (:meth:`JournalWriter.add`: no await, no task
switch); the writer task wakes once per batch (the first outcome starts the ``interval``, a
full batch or a flush ends it), swaps the list for an empty one and applies the batch in one
transaction, in a worker thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import trio

from bulksend.errors import JournalError
from bulksend.journal.outcomes import Outcome
from bulksend.journal.protocol import JournalStore, LeasedStore, OutcomeRecord
from bulksend.journal.records import Due

_T = TypeVar("_T")


@dataclass(slots=True)
class _Flush:
    done: trio.Event = field(default_factory=trio.Event)
    error: JournalError | None = None


class _Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _Outcomes(Protocol):
    def labels(self, *values: str) -> _Counter: ...


class JournalMetrics(Protocol):
    """What the writer reports to (``bulksend.metrics.Metrics`` fits; duck-typed, so the
    journal does not depend on prometheus)."""

    @property
    def journal_commit_seconds(self) -> _Observer: ...

    @property
    def recipients(self) -> _Outcomes:
        """Recipient outcomes by ``outcome``: the writer counts "expired" (it decides expiry
        from ``max_age``; no attempt does) once the expiry is committed."""


class JournalWriter:
    """The one task that writes outcomes during a run, in batched transactions.

    Start ``run`` with ``nursery.start``; record with :meth:`add`, make durable with
    :meth:`flush`, and end with :meth:`aclose` (commits what is queued, then ``run`` returns).
    A write failure makes ``run`` raise :class:`JournalError`, and every later call too.

    ``offload`` (default) runs database work in a worker thread so that an ``fsync`` or a
    large query never stalls the event loop; ``offload=False`` runs it inline (a 500-row
    commit takes milliseconds), which keeps tests under trio's autojump ``MockClock``
    deterministic: autojump treats a task waiting for a thread as idle and jumps the clock.
    """

    def __init__(
        self,
        journal: JournalStore,
        *,
        batch_size: int = 500,
        interval: float = 0.2,
        offload: bool = True,
        metrics: JournalMetrics | None = None,
    ) -> None:
        self.journal = journal
        self.offload = offload
        self.metrics = metrics
        self.batch_size = batch_size
        self.interval = interval
        #: Outcomes and flushes since the last swap; the writer takes both lists at once.
        self._outcomes: list[OutcomeRecord] = []
        self._flushes: list[_Flush] = []
        self._arrived = trio.Event()  # something is in the lists: the interval starts
        self._due = trio.Event()  # commit now: a full batch, a flush, or closing
        self._closed = False
        self._lock = trio.Lock()
        self._failure: JournalError | None = None
        self._started = False
        #: Outcomes committed (an unknown or final recipient's is ignored) and commits made.
        self.committed = 0
        self.batches = 0
        #: Called after each commit with its records and the ids of those that expired
        #: (the journal decides expiry at commit; the event stream reports it then).
        self.on_commit: Callable[[Sequence[OutcomeRecord], Sequence[int]], None] | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit outcomes in batches until :meth:`aclose`; raise JournalError on failure."""
        if self._started:
            raise RuntimeError("JournalWriter.run called twice")
        self._started = True
        self._check_failed()
        self.journal.hold(self)
        task_status.started()
        try:
            await self._loop()
        except JournalError as e:
            self._failure = e
            raise
        finally:
            self._stop()
            self.journal.release(self)

    async def _loop(self) -> None:
        # A leased store's claims are renewed on every commit and claim; an idle writer
        # renews them itself, three times a lease, so a slow site's claims are kept.
        journal = self.journal
        renew_every = journal.lease / 3 if isinstance(journal, LeasedStore) else math.inf
        while True:
            try:
                with trio.move_on_after(renew_every):
                    await self._arrived.wait()
                if not self._arrived.is_set():
                    assert isinstance(journal, LeasedStore)
                    await self._call(lambda: journal.renew_leases(owner=self))
                    continue
                with trio.move_on_after(self.interval):
                    await self._due.wait()
            except trio.Cancelled:
                # Aborting: still commit what is in hand (a few ms, shielded).
                while self._outcomes:
                    await self._commit(*self._swap())
                raise
            await self._commit(*self._swap())
            if self._closed and not self._outcomes:
                return

    def _swap(self) -> tuple[list[OutcomeRecord], list[_Flush]]:
        """Take the next batch (at most ``batch_size``) and the flushes it completes."""
        batch, flushes = self._outcomes, self._flushes
        self._outcomes, self._flushes = [], []
        if len(batch) > self.batch_size:
            # The flushes wait for the rest, which is due at once if it is a batch again.
            batch, self._outcomes = batch[: self.batch_size], batch[self.batch_size :]
            flushes, self._flushes = [], flushes
        self._arrived, self._due = trio.Event(), trio.Event()
        if self._outcomes or self._flushes:
            self._arrived.set()
        if len(self._outcomes) >= self.batch_size or self._flushes or self._closed:
            self._due.set()
        return batch, flushes

    async def _commit(self, batch: list[OutcomeRecord], flushes: list[_Flush]) -> None:
        with trio.CancelScope(shield=True):
            try:
                if batch:
                    ended: list[int] = []
                    applied, expired, seconds = await self._call(
                        lambda: self._timed_apply(batch, ended)
                    )
                    if self.metrics is not None:
                        self.metrics.journal_commit_seconds.observe(seconds)
                        if expired:
                            self.metrics.recipients.labels("expired").inc(expired)
                    if self.on_commit is not None:
                        self.on_commit(batch, ended)
                    self.committed += applied
                    self.batches += 1
            except JournalError as e:
                for f in flushes:
                    f.error = e
                    f.done.set()
                raise
            for f in flushes:
                f.done.set()

    def _timed_apply(
        self, records: Sequence[OutcomeRecord], ended: list[int]
    ) -> tuple[int, int, float]:
        start = time.perf_counter()
        applied, expired = self.journal.apply(records, owner=self, expired=ended)
        return applied, expired, time.perf_counter() - start

    def _stop(self) -> None:
        # Fail the flushes still waiting; later calls are refused.
        self._closed = True
        error = self._failure or JournalError("the journal writer stopped")
        for f in self._flushes:
            f.error = error
            f.done.set()
        self._flushes = []

    def _check_failed(self) -> None:
        if self._failure is not None:
            raise JournalError(f"the journal writer failed: {self._failure}") from self._failure

    def _check_open(self) -> None:
        self._check_failed()
        if self._closed:
            raise JournalError("the journal writer is closed; nothing more is recorded")

    def add(self, recipient_id: int, outcome: Outcome, *, now: float | None = None) -> None:
        """Queue an outcome for the next batch (durable only after :meth:`flush`); no await.

        The queue needs no bound of its own: every outcome is for a recipient claimed by
        :meth:`fetch_due`, and claims are bounded by the senders' batches.

        Raises:
            JournalError: the writer failed or is closed.
        """
        self._check_open()
        outcomes = self._outcomes
        outcomes.append((recipient_id, outcome, time.time() if now is None else now))
        if len(outcomes) == 1:
            self._arrived.set()
        if len(outcomes) >= self.batch_size:
            self._due.set()

    async def record(
        self, recipient_id: int, outcome: Outcome, *, now: float | None = None
    ) -> None:
        """:meth:`add`, for callers that are coroutines anyway."""
        self.add(recipient_id, outcome, now=now)

    async def flush(self) -> None:
        """Return once every outcome recorded before this call is committed.

        Raises:
            JournalError: the commit failed or the writer stopped.
        """
        self._check_open()
        marker = _Flush()
        self._flushes.append(marker)
        self._arrived.set()
        self._due.set()
        await marker.done.wait()
        if marker.error is not None:
            raise marker.error

    async def aclose(self) -> None:
        """Stop taking outcomes; ``run`` commits those queued and returns."""
        self._closed = True
        self._arrived.set()
        self._due.set()
        await trio.lowlevel.checkpoint()

    async def fetch_due(self, domain: str, limit: int, *, now: float | None = None) -> list[Due]:
        """Claim due recipients of ``domain`` (see :meth:`JournalStore.fetch_due`)."""
        self._check_failed()
        return await self._call(lambda: self.journal.fetch_due(domain, limit, now=now, owner=self))

    async def due_domains(self, *, now: float | None = None) -> dict[str, int]:
        """Domains with due recipients and their counts (see :meth:`JournalStore.due_domains`)."""
        self._check_failed()
        return await self._call(lambda: self.journal.due_domains(now=now, owner=self))

    async def next_due_at(self) -> float | None:
        """The earliest due time of any unclaimed waiting recipient."""
        self._check_failed()
        return await self._call(lambda: self.journal.next_due_at(owner=self))

    async def waiting(self) -> bool:
        """Whether any recipient is still waiting (pending or in doubt, claimed or not)."""
        self._check_failed()
        return await self._call(lambda: self.journal.waiting(owner=self))

    async def suppress_waiting(self, suppressed: Callable[[str], bool]) -> int:
        """See :meth:`JournalStore.suppress_waiting`."""
        self._check_failed()
        return await self._call(lambda: self.journal.suppress_waiting(suppressed, owner=self))

    async def update_warmup(self, source: str, change: Callable[[str | None], str]) -> str:
        """See :meth:`JournalStore.update_warmup`."""
        self._check_failed()
        return await self._call(lambda: self.journal.update_warmup(source, change, owner=self))

    async def _call(self, fn: Callable[[], _T]) -> _T:
        async with self._lock:
            if self.offload:
                return await trio.to_thread.run_sync(fn)
            return fn()
