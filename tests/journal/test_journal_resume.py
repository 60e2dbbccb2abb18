"""Resume: final recipients are never sent again; in-doubt ones are resent and counted."""

from __future__ import annotations

from collections.abc import Callable

from bulksend.delivery.outcome import classify_error
from bulksend.journal import Journal, Outcome, Status
from bulksend.smtp.errors import InDoubtError
from tests.journal.journal_helpers import T0, addresses

Opener = Callable[..., Journal]


def fetch_all(journal: Journal, now: float) -> list[int]:
    ids: list[int] = []
    for domain in journal.due_domains(now=now):
        ids += [d.id for d in journal.fetch_due(domain, 1000, now=now)]
    return sorted(ids)


def test_resume_after_a_crash(open_journal: Opener) -> None:
    j = open_journal()
    j.import_recipients(addresses(12), now=T0)
    claimed = j.fetch_due("a.example", 6, now=T0)  # ids 1, 3, 5, 7, 9, 11
    j.record(claimed[0].id, Outcome.delivered(), now=T0 + 1)
    j.record(claimed[1].id, Outcome.bounced(550, "5.1.1", "unknown"), now=T0 + 1)
    j.record(claimed[2].id, Outcome.deferred(451, None, "later"), now=T0 + 1)
    # claimed[3:] were handed to senders when the process died: no outcome committed.
    j.close()

    j = open_journal(now=T0 + 5)
    assert j.recovered_in_doubt == 3
    in_doubt = [s for s in j.iter_states() if s.status is Status.IN_DOUBT]
    assert [(s.id, s.in_doubt, s.next_attempt_at) for s in in_doubt] == [
        (7, 1, T0 + 5),
        (9, 1, T0 + 5),
        (11, 1, T0 + 5),
    ]
    assert j.in_doubt_total() == 3

    due = j.fetch_due("a.example", 2, now=T0 + 5)
    assert [(d.id, d.status) for d in due] == [(7, Status.IN_DOUBT), (9, Status.IN_DOUBT)]
    rest = fetch_all(j, T0 + 5)
    # Never again: delivered 1, bounced 3; deferred 5 is not due yet.
    assert rest == [2, 4, 6, 8, 10, 11, 12]
    for rid in [7, 9, *rest]:
        j.record(rid, Outcome.delivered(), now=T0 + 6)
    assert j.due_domains(now=T0 + 10**6) == {"a.example": 1}  # only 5, later
    counts = j.counts()
    assert (counts[Status.DELIVERED], counts[Status.BOUNCED], counts[Status.PENDING]) == (10, 1, 1)
    assert j.in_doubt_total() == 3  # still counted once delivered
    j.close()

    # A clean reopen finds nothing in flight.
    assert open_journal(now=T0 + 20).recovered_in_doubt == 0


def test_a_lost_final_reply_is_retried_and_counted(journal: Journal) -> None:
    [d] = journal.fetch_due("b.example", 1, now=T0)
    outcome = classify_error(InDoubtError("connection lost after the final dot"))
    journal.record(d.id, outcome, now=T0)
    row = journal.get(d.id)
    assert row is not None
    assert (row.status, row.in_doubt, row.attempts) == (Status.IN_DOUBT, 1, 1)
    assert row.next_attempt_at is not None
    assert row.next_attempt_at > T0
    # Due again after its retry delay, ahead of pending recipients.
    [again, *_] = journal.fetch_due("b.example", 5, now=row.next_attempt_at)
    assert (again.id, again.status, again.in_doubt) == (d.id, Status.IN_DOUBT, 1)
    journal.record(d.id, Outcome.delivered(), now=row.next_attempt_at)
    row = journal.get(d.id)
    assert row is not None
    assert (row.status, row.in_doubt, row.attempts) == (Status.DELIVERED, 1, 2)
