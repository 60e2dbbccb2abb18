"""The PostgreSQL journal's own behaviour: leases shared by several workers, their expiry,
the URL and connection errors, and the import's identity checks."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from bulksend.config import RetryPolicy
from bulksend.errors import JournalError
from bulksend.journal import JournalWriter, NewRecipient, Outcome, Status
from bulksend.journal.backend import open_journal
from bulksend.journal.postgres import PostgresJournal
from tests.journal.journal_helpers import IDENTITY, T0, addresses

Worker = Callable[..., PostgresJournal]


@pytest.fixture
def worker(
    journal_spec: str, policy: RetryPolicy, backend: str
) -> Iterator[Callable[..., PostgresJournal]]:
    """Open a store of the campaign as worker ``name`` (each its own connection)."""
    opened: list[PostgresJournal] = []

    def _open(name: str, *, lease: float = 60.0, now: float = T0) -> PostgresJournal:
        j = PostgresJournal.open(
            journal_spec,
            IDENTITY,
            policy=policy,
            rng=random.Random(7),
            now=now,
            worker=name,
            lease=lease,
        )
        opened.append(j)
        return j

    yield _open
    for j in opened:
        j.close()


def test_two_workers_claiming_at_once_never_share_a_recipient(worker: Worker) -> None:
    first = worker("w1")
    first.import_recipients(addresses(2000, ("a.example",)), now=T0)
    stores = [first, worker("w2"), worker("w3")]
    claimed: dict[str, list[int]] = {}
    start = threading.Barrier(len(stores))

    def claim(store: PostgresJournal) -> None:
        ids: list[int] = []
        start.wait()
        while batch := store.fetch_due("a.example", 37, now=T0):
            ids += [d.id for d in batch]
        claimed[store.worker] = ids

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    every = [rid for ids in claimed.values() for rid in ids]
    assert len(every) == len(set(every)) == 2000  # each recipient once, none lost
    assert all(claimed[s.worker] for s in stores)  # all three got some


def test_a_worker_that_stops_renewing_loses_its_claims_in_doubt(worker: Worker) -> None:
    w1 = worker("w1", lease=60.0)
    w1.import_recipients(addresses(6, ("a.example",)), now=T0)
    held = [d.id for d in w1.fetch_due("a.example", 4, now=T0)]
    w1.record(held[0], Outcome.delivered(), now=T0 + 10)  # within a third of the lease: no renewal
    w2 = worker("w2", lease=60.0)
    # Before expiry: w2 gets only what w1 does not hold.
    assert [d.id for d in w2.fetch_due("a.example", 10, now=T0 + 30)] == [5, 6]
    # w1 stops (hangs: no renewal, no outcome); its lease ends at T0 + 60.
    again = w2.fetch_due("a.example", 10, now=T0 + 61)
    assert sorted(d.id for d in again) == sorted(held[1:])
    assert {d.status for d in again} == {Status.IN_DOUBT}
    assert {d.in_doubt for d in again} == {1}
    w2.record(again[0].id, Outcome.delivered(), now=T0 + 62)
    # w1's late deferral of a recipient w2 now holds does not take it from w2 ...
    w1.record(again[1].id, Outcome.deferred(451, None, "later"), now=T0 + 63)
    assert w2.get(again[1].id).status is Status.IN_DOUBT  # type: ignore[union-attr]
    # ... but its late delivery is kept: delivered is never lost.
    w1.record(again[2].id, Outcome.delivered(), now=T0 + 64)
    assert w2.get(again[2].id).status is Status.DELIVERED  # type: ignore[union-attr]
    assert w2.in_doubt_total() == 3


def test_a_renewing_worker_keeps_its_claims(worker: Worker) -> None:
    w1 = worker("w1", lease=60.0)
    w1.import_recipients(addresses(3, ("a.example",)), now=T0)
    held = w1.fetch_due("a.example", 3, now=T0)
    assert w1.renew_leases(now=T0 + 50) == 3
    w2 = worker("w2", lease=60.0)
    assert w2.fetch_due("a.example", 10, now=T0 + 100) == []
    assert w2.due_domains(now=T0 + 100) == {}
    assert len(w2.fetch_due("a.example", 10, now=T0 + 111)) == len(held)


def test_a_restarted_worker_recovers_its_claims_at_once(worker: Worker) -> None:
    w1 = worker("w1")
    w1.import_recipients(addresses(4, ("a.example",)), now=T0)
    w1.fetch_due("a.example", 2, now=T0)
    w1.close()
    other = worker("w2", now=T0 + 1)
    assert other.recovered_in_doubt == 0  # w1's lease still runs
    again = worker("w1", now=T0 + 2)
    assert again.recovered_in_doubt == 2
    assert again.counts()[Status.IN_DOUBT] == 2


def test_an_import_for_other_campaign_content_is_refused(worker: Worker, journal_spec: str) -> None:
    worker("w1").import_recipients(addresses(3), now=T0)
    with pytest.raises(JournalError, match="other campaign content: templates"):
        PostgresJournal.open(journal_spec, {**IDENTITY, "templates": "t2"}, now=T0)
    forced = PostgresJournal.open(journal_spec, {**IDENTITY, "templates": "t2"}, force=True)
    with forced:
        assert forced.forced
        assert forced.counts()[Status.PENDING] == 3


def test_campaigns_in_one_database_are_apart(postgres_url: str) -> None:
    with (
        open_journal(postgres_url + "?campaign=one", IDENTITY, now=T0) as one,
        open_journal(postgres_url + "?campaign=two", IDENTITY, now=T0) as two,
    ):
        one.import_recipients(addresses(5), now=T0)
        two.import_recipients(addresses(2), now=T0)
        assert one.counts()[Status.PENDING] == 5
        assert two.counts()[Status.PENDING] == 2


def test_the_import_streams_in_batches_and_resumes(worker: Worker) -> None:
    w1 = worker("w1")
    rows = [NewRecipient(a, {"n": str(i)}) for i, a in enumerate(addresses(25))]

    def failing() -> Iterator[NewRecipient]:
        yield from rows[:17]
        raise OSError("the recipients file went away")

    with pytest.raises(OSError, match="went away"):
        w1.import_recipients(failing(), now=T0, batch_size=5)
    assert not w1.import_complete
    stats = w1.import_recipients([*rows, NewRecipient(rows[0].address)], now=T0, batch_size=5)
    assert (stats.imported, stats.duplicates, stats.skipped) == (10, 1, 15)
    assert w1.counts()[Status.PENDING] == 25
    assert w1.not_imported() == {"duplicate": 1}
    assert w1.get(25).address == rows[24].address  # type: ignore[union-attr]


def test_a_password_in_the_url_is_refused() -> None:
    # Refused before any connection: no server needed.
    url = "postgresql://postgres:secret@127.0.0.1:1/db?campaign=c1"
    with pytest.raises(JournalError) as e:
        open_journal(url, IDENTITY)
    assert "must not hold a password" in str(e.value)
    assert "secret" not in str(e.value)
    assert "\n" not in str(e.value)


def test_a_password_file_is_read(postgres_url: str, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("anything\n")  # the test server trusts loopback: any password works
    url = f"{postgres_url}?campaign=c1&password_file={secret}"
    with open_journal(url, IDENTITY, now=T0) as j:
        assert "password_file=" not in str(j.path)
    with pytest.raises(JournalError, match="cannot read the PostgreSQL password file"):
        open_journal(f"{postgres_url}?campaign=c1&password_file={tmp_path / 'none'}", IDENTITY)


def test_an_unreachable_database_is_one_clear_line() -> None:
    import socket  # noqa: PLC0415

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        url = f"postgresql://bulksend@127.0.0.1:{port}/nowhere?campaign=c1"
        with pytest.raises(JournalError) as e:
            open_journal(url, IDENTITY)
    message = str(e.value)
    assert message.startswith("cannot connect to the PostgreSQL journal postgresql://")
    assert "\n" not in message
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_a_url_without_a_campaign_is_refused() -> None:
    for url in ("postgresql://u@127.0.0.1:1/db", "postgresql://u@127.0.0.1:1/db?campaign=Bad-1"):
        with pytest.raises(JournalError, match=r"\?campaign=NAME"):
            open_journal(url, IDENTITY)


def test_the_suppression_stores_schema_is_no_campaigns_name() -> None:
    # A campaign named so would share bulksend_suppression, and discarding it would drop it.
    with pytest.raises(JournalError, match=r"\?campaign=suppression is taken"):
        open_journal("postgresql://u@127.0.0.1:1/db?campaign=suppression", IDENTITY)


def test_a_report_on_a_missing_campaign_creates_nothing(postgres_url: str) -> None:
    with pytest.raises(JournalError, match="there is no journal at"):
        open_journal(postgres_url + "?campaign=absent", None)


def test_a_second_worker_finds_the_import_done(worker: Worker) -> None:
    w1, w2 = worker("w1"), worker("w2")  # both opened before the import
    assert w1.import_recipients(addresses(7), now=T0).imported == 7
    assert not w2.import_complete
    assert w2.import_recipients(addresses(7), now=T0).imported == 0  # nothing twice
    assert w2.import_complete
    assert w2.counts()[Status.PENDING] == 7


async def test_a_running_writer_renews_its_leases_and_a_stopped_one_loses_them(
    worker: Worker,
) -> None:
    # Real time: leases of 0.3 s, renewed by the idle writer every 0.1 s.
    w1 = worker("w1", lease=0.3)
    w1.import_recipients(addresses(4, ("a.example",)))
    w2 = worker("w2", lease=60.0)
    with trio.fail_after(20):
        writer = JournalWriter(w1)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            held = await writer.fetch_due("a.example", 3)
            await trio.sleep(1.0)  # three leases long: only renewals keep them
            assert await trio.to_thread.run_sync(lambda: w2.fetch_due("a.example", 10)) != []
            assert w2.counts()[Status.IN_DOUBT] == 0  # w2 got the fourth only
            await writer.aclose()
        await trio.sleep(0.5)  # the writer stopped: its leases run out
        again = w2.fetch_due("a.example", 10)
    assert sorted(d.id for d in again) == sorted(d.id for d in held)
    assert {d.status for d in again} == {Status.IN_DOUBT}


def test_nul_characters_become_replacement_characters(worker: Worker) -> None:
    # PostgreSQL text holds no NUL: an invalid row's or a reply's NUL must not stop anything.
    w1 = worker("w1")
    w1.import_recipients(
        [
            NewRecipient("plain@a.example"),
            NewRecipient("bad\x00address@a.example", None, Status.INVALID, "odd\x00reason"),
        ],
        now=T0,
    )
    [due] = w1.fetch_due("a.example", 5, now=T0)
    assert w1.record(due.id, Outcome.bounced(550, "5.1.1", "no\x00such user"), now=T0 + 1)
    states = list(w1.iter_states())
    assert [(s.address, s.text) for s in states] == [
        ("plain@a.example", "no\ufffdsuch user"),
        ("bad\ufffdaddress@a.example", "odd\ufffdreason"),
    ]
