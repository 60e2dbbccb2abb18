"""`not_rendered`: a recipient whose message could not be made is set aside, not bounced,
and a fixed campaign can send to it once."""

from __future__ import annotations

import io
import json
import random
import sqlite3
from collections.abc import Callable

import pytest

from bulksend.config import RetryPolicy
from bulksend.journal import Journal, Outcome, Status, export_jsonl, plan_step
from bulksend.journal.backend import open_peek
from tests.journal.journal_helpers import T0

Opener = Callable[..., Journal]
REASON = "body.txt: 'frist_name' is undefined"


def test_not_rendered_is_no_attempt_and_no_bounce(policy: RetryPolicy) -> None:
    for status in (Status.PENDING, Status.IN_DOUBT):
        step = plan_step(
            Outcome.not_rendered(REASON),
            status=status,
            attempts=2,
            first_attempt_at=T0,
            now=T0 + 60,
            policy=policy,
            rng=random.Random(1),
        )
        assert step.status is Status.NOT_RENDERED
        assert (step.attempts, step.first_attempt_at, step.next_attempt_at) == (2, T0, None)
        assert step.in_doubt_added == 0
    assert not Status.NOT_RENDERED.waiting
    assert not Outcome.not_rendered(REASON).is_attempt


def test_journal_sets_aside_reports_and_requeues(journal: Journal) -> None:
    due = journal.fetch_due("a.example", 5, now=T0)
    assert len(due) == 5
    journal.record(due[0].id, Outcome.not_rendered(REASON), now=T0 + 1)
    journal.record(due[1].id, Outcome.delivered(), now=T0 + 1)
    journal.record(due[2].id, Outcome.bounced(550, "5.1.1", "no such user"), now=T0 + 1)
    for d in due[3:]:
        journal.record(d.id, Outcome.released(), now=T0 + 1)
    counts = journal.counts()
    assert counts[Status.NOT_RENDERED] == 1
    assert counts[Status.BOUNCED] == 1
    state = journal.get(due[0].id)
    assert state is not None
    assert (state.status, state.attempts, state.code, state.text) == (
        Status.NOT_RENDERED,
        0,
        None,
        REASON,
    )
    # Not waiting: not due again, and it does not keep a run from completing.
    assert "user0@a.example" not in {d.address for d in journal.fetch_due("a.example", 99)}
    out = io.StringIO()
    assert export_jsonl(journal.iter_states([Status.NOT_RENDERED]), out) == 1
    row = json.loads(out.getvalue())
    assert (row["address"], row["status"], row["text"]) == (
        "user0@a.example",
        "not_rendered",
        REASON,
    )
    with open_peek(journal.path) as peek:
        assert peek.counts()["not_rendered"] == 1

    # A later outcome does not move it (it is not waiting), only the requeue does.
    assert not journal.record(due[0].id, Outcome.delivered(), now=T0 + 2)
    assert journal.retry_unrendered(now=T0 + 100) == 1
    assert journal.counts()[Status.NOT_RENDERED] == 0
    again = journal.fetch_due("a.example", 99, now=T0 + 100)
    assert [d.id for d in again if d.id == due[0].id] == [due[0].id]
    assert journal.get(due[1].id).status is Status.DELIVERED  # type: ignore[union-attr]
    assert journal.get(due[2].id).status is Status.BOUNCED  # type: ignore[union-attr]
    assert journal.retry_unrendered(now=T0 + 101) == 0


@pytest.mark.sqlite_only
def test_schema_accepts_the_state_and_its_version_says_so(journal: Journal) -> None:
    db = sqlite3.connect(journal.path)
    try:
        db.execute(
            "UPDATE recipients SET status = 'not_rendered', next_attempt_at = NULL WHERE id = 1"
        )
        # Like a final state it is neither due nor claimed.
        assert db.execute("PRAGMA user_version").fetchone()[0] >= 2
    finally:
        db.rollback()
        db.close()
