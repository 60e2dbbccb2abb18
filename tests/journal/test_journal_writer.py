"""The writer task: batched commits (MockClock), flush, shutdown and disk-full failures."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest
import trio
import trio.testing

from bulksend.errors import JournalError
from bulksend.journal import Journal, JournalWriter, Outcome, Status
from tests.journal.journal_helpers import T0


async def until(condition: Callable[[], bool]) -> None:
    """Yield until ``condition`` holds (commits run in a worker thread)."""
    while not condition():
        await trio.sleep(0.001)


def committed_statuses(journal: Journal) -> dict[int, str]:
    """What another reader sees on disk (or another connection): committed rows only."""
    if isinstance(journal.path, str):  # PostgreSQL
        from bulksend.journal.postgres import PostgresJournal  # noqa: PLC0415

        with PostgresJournal.open(journal.path, None) as other:
            return {s.id: str(s.status) for s in other.iter_states()}
    db = sqlite3.connect(f"file:{journal.path}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT id, status FROM recipients"))
    finally:
        db.close()


async def test_batches_commit_after_the_interval(
    journal: Journal, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        writer = JournalWriter(journal, batch_size=100, interval=0.2, offload=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            due = await writer.fetch_due("a.example", 3, now=T0)
            start = trio.current_time()
            for d in due:
                await writer.record(d.id, Outcome.delivered(), now=T0)
            await trio.sleep(0.1)
            assert writer.committed == 0
            assert committed_statuses(journal)[due[0].id] == "pending"
            await until(lambda: writer.committed == 3)
            assert trio.current_time() - start >= 0.2
            assert writer.batches == 1
            assert {committed_statuses(journal)[d.id] for d in due} == {"delivered"}
            await writer.aclose()


async def test_a_full_batch_commits_at_once(
    journal: Journal, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        writer = JournalWriter(journal, batch_size=4, interval=3600.0, offload=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            due = await writer.fetch_due("a.example", 5, now=T0)
            for d in due:
                await writer.record(d.id, Outcome.delivered(), now=T0)
            await until(lambda: writer.committed == 4)
            assert trio.current_time() < 3600.0  # the size, not the clock, triggered it
            assert writer.batches == 1
            # The fifth waits for the interval, or for a flush.
            await writer.flush()
            assert (writer.committed, writer.batches) == (5, 2)
            assert trio.current_time() < 3600.0
            await writer.aclose()


class Histogram:
    def __init__(self) -> None:
        self.observed: list[float] = []

    def observe(self, amount: float) -> None:
        self.observed.append(amount)


class Metrics:
    def __init__(self) -> None:
        self.journal_commit_seconds = Histogram()


async def test_flush_makes_outcomes_durable(journal: Journal) -> None:
    metrics = Metrics()
    with trio.fail_after(10):
        writer = JournalWriter(journal, interval=3600.0, metrics=metrics)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            [d] = await writer.fetch_due("b.example", 1, now=T0)
            await writer.record(d.id, Outcome.delivered(250, "2.0.0", "ok"), now=T0)
            await writer.flush()
            assert committed_statuses(journal)[d.id] == "delivered"
            await writer.flush()  # nothing pending: returns at once
            await writer.aclose()
    assert len(metrics.journal_commit_seconds.observed) == writer.batches == 1


async def test_aclose_commits_what_is_queued_then_run_returns(journal: Journal) -> None:
    with trio.fail_after(10):
        writer = JournalWriter(journal, interval=3600.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            due = await writer.fetch_due("a.example", 5, now=T0)
            for d in due:
                await writer.record(d.id, Outcome.bounced(550, "5.1.1", "unknown"), now=T0)
            await writer.aclose()
        assert journal.counts()[Status.BOUNCED] == 5
        with pytest.raises(JournalError, match="closed"):
            await writer.record(1, Outcome.delivered(), now=T0)
        with pytest.raises(JournalError, match="closed"):
            await writer.flush()


async def test_cancelled_writer_still_commits_what_it_holds(journal: Journal) -> None:
    with trio.fail_after(10):
        writer = JournalWriter(journal, interval=3600.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            due = await writer.fetch_due("a.example", 2, now=T0)
            for d in due:
                await writer.record(d.id, Outcome.delivered(), now=T0)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert {journal.get(d.id).status for d in due} == {Status.DELIVERED}  # type: ignore[union-attr]


async def test_sync_methods_are_refused_while_the_writer_runs(journal: Journal) -> None:
    with trio.fail_after(10):
        writer = JournalWriter(journal)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            with pytest.raises(RuntimeError, match="JournalWriter"):
                journal.fetch_due("a.example", 1, now=T0)
            assert await writer.due_domains(now=T0) == {"a.example": 5, "b.example": 5}
            assert await writer.next_due_at() == T0
            due = await writer.fetch_due("a.example", 5, now=T0)
            due += await writer.fetch_due("b.example", 5, now=T0)
            assert await writer.next_due_at() is None  # all claimed ...
            assert await writer.waiting()  # ... but not done
            for d in due:
                await writer.record(d.id, Outcome.delivered(), now=T0)
            await writer.flush()
            assert not await writer.waiting()
            await writer.aclose()
        assert journal.counts()[Status.DELIVERED] == 10  # free again afterwards
        assert not journal.waiting()


@pytest.mark.sqlite_only
async def test_disk_full_stops_the_writer(journal: Journal) -> None:
    """SQLITE_FULL (as from ENOSPC): JournalError, the run fails, nothing counts as sent."""
    pages = journal._db.execute("PRAGMA page_count").fetchone()[0]
    journal._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is now full
    writer = JournalWriter(journal, interval=3600.0)
    with trio.fail_after(10), pytest.RaisesGroup(pytest.RaisesExc(JournalError, match="full")):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            due = await writer.fetch_due("a.example", 5, now=T0)
            due += await writer.fetch_due("b.example", 5, now=T0)
            for d in due:
                await writer.record(d.id, Outcome.delivered(250, None, "x" * 1900), now=T0)
            with pytest.raises(JournalError, match="database or disk is full"):
                await writer.flush()
            with pytest.raises(JournalError, match="failed"):
                await writer.record(due[0].id, Outcome.delivered(), now=T0)
            with pytest.raises(JournalError, match="failed"):
                await writer.fetch_due("a.example", 1, now=T0)
            await trio.sleep_forever()  # the writer's failure ends the run
    with pytest.raises(JournalError, match="stopped"):
        journal.record(due[0].id, Outcome.delivered(), now=T0)
    assert set(committed_statuses(journal).values()) == {"pending"}


async def test_outcomes_added_without_awaits_commit_in_full_batches(
    journal: Journal, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(7200):
        writer = JournalWriter(journal, batch_size=4, interval=3600.0, offload=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            due = await writer.fetch_due("a.example", 5, now=T0)
            due += await writer.fetch_due("b.example", 5, now=T0)
            for d in due:  # no checkpoint in between: the writer wakes once per batch
                writer.add(d.id, Outcome.delivered(), now=T0)
            await until(lambda: writer.committed == 8)
            assert writer.batches == 2
            assert trio.current_time() < 3600.0
            await writer.flush()
            assert (writer.committed, writer.batches) == (10, 3)
            await writer.aclose()
    assert set(committed_statuses(journal).values()) == {"delivered"}
