"""`cancelled` (bulksend ctl cancel): a final state, never sent, no attempt; and the upgrade
of a journal written before it existed (SQLite schema 2 -> 3, PostgreSQL 1 -> 2)."""

from __future__ import annotations

import io
import json
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from bulksend.config import RetryPolicy
from bulksend.journal import (
    Category,
    Journal,
    NewRecipient,
    Outcome,
    Status,
    export_jsonl,
    plan_step,
)
from bulksend.journal.postgres_schema import parse_url
from tests.journal.journal_helpers import IDENTITY, T0, addresses

Opener = Callable[..., Journal]
WHY = "cancelled by bulksend ctl"


def test_cancelled_is_final_and_no_attempt(policy: RetryPolicy) -> None:
    for status in (Status.PENDING, Status.IN_DOUBT):
        step = plan_step(
            Outcome.cancelled(WHY),
            status=status,
            attempts=1,
            first_attempt_at=T0,
            now=T0 + 60,
            policy=policy,
            rng=random.Random(1),
        )
        assert (step.status, step.attempts, step.next_attempt_at) == (Status.CANCELLED, 1, None)
    assert not Status.CANCELLED.waiting
    assert not Outcome.cancelled(WHY).is_attempt


def test_an_operator_bounce_is_bounced_with_no_attempt(
    journal: Journal, policy: RetryPolicy
) -> None:
    bounce = Outcome.operator_bounced("bounced by bulksend ctl")
    step = plan_step(
        bounce,
        status=Status.PENDING,
        attempts=1,
        first_attempt_at=T0,
        now=T0 + 60,
        policy=policy,
        rng=random.Random(1),
    )
    assert (step.status, step.attempts, step.next_attempt_at) == (Status.BOUNCED, 1, None)
    assert not bounce.is_attempt
    tried, untried = journal.fetch_due("a.example", 2, now=T0)
    journal.record(tried.id, Outcome.deferred(451, None, "try later"), now=T0 + 1)
    assert journal.record(untried.id, bounce, now=T0 + 2)
    again = journal.fetch_due("a.example", 99, now=T0 + 10**5)
    assert tried.id in {due.id for due in again}
    assert journal.record(tried.id, bounce, now=T0 + 10**5)
    rows = {s.address: s for s in journal.iter_states([Status.BOUNCED])}
    ended = [rows[tried.address], rows[untried.address]]
    assert [(s.attempts, s.code, s.text, s.category) for s in ended] == [
        (1, None, "bounced by bulksend ctl", None),  # the earlier attempt, and no more
        (0, None, "bounced by bulksend ctl", None),
    ]


def test_the_journal_records_counts_and_exports_cancelled(journal: Journal) -> None:
    due = journal.fetch_due("a.example", 5, now=T0)
    for d in due:
        journal.record(d.id, Outcome.cancelled(WHY), now=T0 + 1)
    assert journal.counts()[Status.CANCELLED] == 5
    assert journal.fetch_due("a.example", 99, now=T0 + 10**6) == []  # never due again
    assert not journal.record(due[0].id, Outcome.delivered(), now=T0 + 2)  # final
    out = io.StringIO()
    export_jsonl(journal.iter_states([Status.CANCELLED]), out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["status"], r["text"]) for r in rows] == [("cancelled", WHY)] * 5


def _downgrade_sqlite(path: Path) -> None:
    """Make ``path`` what bulksend wrote before `cancelled` (schema version 2)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        sql = db.execute("SELECT sql FROM sqlite_schema WHERE name = 'recipients'").fetchone()[0]
        old = sql.replace(" OR status = 'cancelled'", "", 1)
        old = old.replace(" OR category = 'schedule'", "", 1)
        assert "'cancelled'" not in old and "'schedule'" not in old
        version = db.execute("PRAGMA schema_version").fetchone()[0]
        db.execute("PRAGMA writable_schema = ON")
        db.execute("UPDATE sqlite_schema SET sql = ? WHERE name = 'recipients'", (old,))
        db.execute(f"PRAGMA schema_version = {version + 1}")
        db.execute("PRAGMA writable_schema = OFF")
        db.execute("PRAGMA user_version = 2")
    finally:
        db.close()


def test_a_version_2_sqlite_journal_is_upgraded_when_a_run_opens_it(tmp_path: Path) -> None:
    path = tmp_path / "old.journal"
    with Journal.open(path, IDENTITY, now=T0) as j:
        j.import_recipients([NewRecipient(a, {}) for a in addresses(4)], now=T0)
    _downgrade_sqlite(path)
    db = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError):  # the old schema refuses the new state
            db.execute("UPDATE recipients SET status = 'cancelled', next_attempt_at = NULL")
    finally:
        db.close()
    with Journal.open(path, IDENTITY, now=T0 + 1) as j:  # upgraded; the damage check passes
        due = j.fetch_due("a.example", 9, now=T0 + 1)
        assert j.record(due[0].id, Outcome.cancelled(WHY), now=T0 + 2)
        assert j.record(due[1].id, Outcome.stopped("stop_at"), now=T0 + 2)
        assert j.counts()[Status.CANCELLED] == 1
        assert j.counts_by_category([Status.EXPIRED]) == {Category.SCHEDULE: 1}
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    with Journal.open_readonly(path) as j:  # byte for byte a version 3 journal
        assert j.counts()[Status.CANCELLED] == 1


def test_a_version_1_postgres_journal_is_upgraded_when_a_run_opens_it(postgres_url: str) -> None:
    import psycopg  # noqa: PLC0415

    from bulksend.journal.backend import open_journal as open_any  # noqa: PLC0415

    url = postgres_url + "?campaign=oldpg"
    with open_any(url, IDENTITY, now=T0, worker="w1") as j:
        j.import_recipients([NewRecipient(a, {}) for a in addresses(4)], now=T0)
    location = parse_url(url)
    statuses = ", ".join(f"'{s}'" for s in Status if s is not Status.CANCELLED)
    categories = ", ".join(f"'{c}'" for c in Category if c is not Category.SCHEDULE)
    with psycopg.connect(location.conninfo, autocommit=True) as db:
        db.execute(f"SET search_path TO {location.schema}")
        db.execute(
            "ALTER TABLE recipients DROP CONSTRAINT recipients_status_check,"
            f" ADD CONSTRAINT recipients_status_check CHECK (status IN ({statuses})),"
            " DROP CONSTRAINT recipients_category_check,"
            " ADD CONSTRAINT recipients_category_check"
            f" CHECK (category IS NULL OR category IN ({categories}))"
        )
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with open_any(url, IDENTITY, now=T0 + 1, worker="w1") as j:
        due = j.fetch_due("a.example", 9, now=T0 + 1)
        assert j.record(due[0].id, Outcome.cancelled(WHY), now=T0 + 2)
        assert j.record(due[1].id, Outcome.stopped("stop_at"), now=T0 + 2)
        assert j.counts()[Status.CANCELLED] == 1
        assert j.counts_by_category([Status.EXPIRED]) == {Category.SCHEDULE: 1}
    with psycopg.connect(location.conninfo) as db:
        version = db.execute(
            f"SELECT value FROM {location.schema}.meta WHERE key = 'schema_version'"
        ).fetchone()
        assert version == ("2",)
