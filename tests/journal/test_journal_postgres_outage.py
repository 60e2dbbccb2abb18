"""The PostgreSQL journal when its database goes away: a restart during a run is waited out
(reconnect with backoff, the operation run again, a cut-off commit checked), an outage
longer than a lease ends the run with one line. A server of this module's own
(``own_postgres_server``), since it is stopped and started."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from bulksend.campaign import Campaign
from bulksend.delivery.run import RunSummary, run_campaign
from bulksend.errors import JournalError
from bulksend.journal import Outcome, Status
from bulksend.journal.backend import open_journal
from bulksend.journal.postgres import PostgresJournal
from bulksend.testing.scenario import SiteSpec, addresses, campaign_toml, running, write_campaign
from tests.helpers.worlds import limits_policy, run_options
from tests.journal.journal_helpers import IDENTITY, T0

SITES = [SiteSpec("paced", ("p.test", "q.test"), "127.0.0.2")]


def test_a_store_waits_out_a_restart_between_operations(
    own_postgres_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url = own_postgres_server.new_database("between") + "?campaign=c"
    with PostgresJournal.open(url, IDENTITY, now=T0) as journal:
        journal.import_recipients(["a@x.test", "b@x.test"], now=T0)
        own_postgres_server.restart()
        with caplog.at_level(logging.WARNING, logger="bulksend"):
            claimed = journal.fetch_due("x.test", 10, now=T0)
        assert [d.address for d in claimed] == ["a@x.test", "b@x.test"]
        assert "lost the PostgreSQL journal" in caplog.text
        assert "is back" in caplog.text
        assert journal.due_domains(now=T0) == {}  # the claims were committed once, and kept
        assert journal.waiting()
    with open_journal(url, None) as reader:
        assert {s.status for s in reader.iter_states()} == {Status.PENDING}


def test_an_outage_longer_than_the_lease_is_one_line(own_postgres_server: Any) -> None:
    url = own_postgres_server.new_database("long") + "?campaign=c"
    with PostgresJournal.open(url, IDENTITY, now=T0, lease=1) as journal:
        journal.import_recipients(["a@x.test"], now=T0)
        own_postgres_server.halt()
        try:
            with pytest.raises(JournalError) as raised:
                journal.fetch_due("x.test", 10, now=T0)
        finally:
            own_postgres_server.resume()
        message = str(raised.value)
        assert "did not come back within 1 s" in message
        assert "\n" not in message
        # Back: the store carries on (its connection opened again).
        assert [d.address for d in journal.fetch_due("x.test", 10, now=T0)] == ["a@x.test"]


async def test_a_run_survives_a_postgresql_restart_and_sends_everyone_once(
    tmp_path: Path, own_postgres_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url = own_postgres_server.new_database("run") + "?campaign=restart"
    recipients = addresses(["p.test", "q.test"], 80)
    toml = campaign_toml(campaign_id="restart", policy=limits_policy(20))  # about 4 s
    campaign = Campaign.load(write_campaign(tmp_path / "c", recipients, toml=toml), {})
    restarted_after: list[int] = []
    summary: list[RunSummary] = []
    with trio.fail_after(90), caplog.at_level(logging.WARNING, logger="bulksend"):
        async with running(SITES) as world:
            server = world.servers["paced"]

            async def run() -> None:
                summary.append(
                    await run_campaign(campaign, run_options(tmp_path, world, journal=url))
                )

            async def restart() -> None:
                while len(server.received()) < 20:
                    await trio.sleep(0.05)
                restarted_after.append(len(server.received()))
                await trio.to_thread.run_sync(own_postgres_server.restart, 1.0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                nursery.start_soon(restart)
            received = server.received()
    assert restarted_after and restarted_after[0] < len(recipients)  # the restart was mid-run
    assert "lost the PostgreSQL journal" in caplog.text
    assert "is back" in caplog.text
    assert summary[0].complete
    assert sorted(received) == sorted(recipients)  # everyone exactly once
    with open_journal(url, None) as journal:
        assert {s.address: s.status for s in journal.iter_states()} == dict.fromkeys(
            recipients, Status.DELIVERED
        )  # no outcome lost
        assert journal.in_doubt_total() == 0


def _commit_then_lose_the_connection(
    journal: PostgresJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next transaction commits, then its connection breaks before the client hears
    (as a server stopping right after COMMIT): the case a blind retry would do twice."""
    db = journal._db
    real = db.transaction

    @contextmanager
    def committed_then_lost() -> Iterator[Any]:
        with real() as tx:
            yield tx
        db.pgconn.finish()
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(db, "transaction", committed_then_lost)


def test_a_claim_whose_commit_was_cut_off_is_not_made_twice(
    own_postgres_server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = own_postgres_server.new_database("claim_cut") + "?campaign=c"
    with PostgresJournal.open(url, IDENTITY, now=T0) as journal:
        journal.import_recipients(addresses(["x.test"], 4), now=T0)
        _commit_then_lose_the_connection(journal, monkeypatch)
        with caplog.at_level(logging.WARNING, logger="bulksend"):
            claimed = journal.fetch_due("x.test", 2, now=T0)
        assert "lost the PostgreSQL journal" in caplog.text
        assert [d.address for d in claimed] == ["user0@x.test", "user1@x.test"]
        # The committed claim was returned, not claimed again: two are still due.
        assert journal.due_domains(now=T0) == {"x.test": 2}


def test_an_apply_whose_commit_was_cut_off_is_not_applied_twice(
    own_postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = own_postgres_server.new_database("apply_cut") + "?campaign=c"
    with PostgresJournal.open(url, IDENTITY, now=T0) as journal:
        journal.import_recipients(["a@x.test"], now=T0)
        (due,) = journal.fetch_due("x.test", 1, now=T0)
        _commit_then_lose_the_connection(journal, monkeypatch)
        assert journal.apply([(due.id, Outcome.deferred(451, None, "later"), T0 + 1)]) == (1, 0)
        (state,) = journal.iter_states()
        assert (state.status, state.attempts) == (Status.PENDING, 1)  # one attempt, not two
