"""Outcomes applied as a batch leave exactly the rows one outcome at a time would."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bulksend.config import RetryPolicy
from bulksend.journal import Category, Journal, NewRecipient, Outcome, OutcomeRecord
from bulksend.journal.backend import open_journal
from bulksend.journal.postgres_schema import parse_url
from tests.journal.journal_helpers import IDENTITY, T0, addresses

POLICY = RetryPolicy(initial=300.0, factor=2.0, maximum=4 * 3600.0, jitter=0.2, max_age=86400.0)

OUTCOMES = [
    Outcome.delivered(250, "2.0.0", "queued as A1"),
    Outcome.deferred(451, "4.7.1", "greylisted", Category.POLICY),
    Outcome.bounced(550, "5.1.1", "no such user", Category.BAD_MAILBOX),
    Outcome.in_doubt(),
    Outcome.throttled(60.0, "site paused"),
    Outcome.throttled(30.0, "pushed back", tried=True),
    Outcome.suppressed(),
    Outcome.not_rendered("missing field 'code'"),
    Outcome.released(),
]


def opened(spec: str | Path) -> Journal:
    # The same worker id in both PostgreSQL campaigns: the lease columns compare equal.
    journal: Any = open_journal(
        spec, IDENTITY, policy=POLICY, rng=random.Random(11), now=T0, worker="w"
    )
    journal.import_recipients([NewRecipient(a, {"i": i}) for i, a in enumerate(addresses(90))])
    return journal  # type: ignore[no-any-return]


def rows(journal: Journal) -> list[tuple[Any, ...]]:
    """Every column of every row, as another connection sees them."""
    if isinstance(journal.path, str):
        import psycopg  # noqa: PLC0415

        location = parse_url(journal.path)
        with psycopg.connect(location.conninfo) as db:
            return db.execute(f"SELECT * FROM {location.schema}.recipients ORDER BY id").fetchall()
    db = sqlite3.connect(f"file:{journal.path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT * FROM recipients ORDER BY id").fetchall()
    finally:
        db.close()


def rounds() -> list[list[OutcomeRecord]]:
    """Three rounds of mixed outcomes; the last one past max_age (expiries)."""
    rng = random.Random(5)
    out = []
    for at in (T0, T0 + 3600.0, T0 + POLICY.max_age + 1):
        batch: list[OutcomeRecord] = [(rid, rng.choice(OUTCOMES), at) for rid in range(1, 91)]
        rng.shuffle(batch)
        # A recipient twice in one batch, and one the journal does not know.
        batch[40:40] = [
            (batch[3][0], Outcome.delivered(250, None, "again"), at),
            (999, OUTCOMES[0], at),
        ]
        out.append(batch)
    return out


@pytest.fixture
def two_specs(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> list[str | Path]:
    """Two journals of this backend: files, or two campaigns in one database."""
    if backend == "sqlite":
        return [tmp_path / "batched", tmp_path / "single"]
    url = request.getfixturevalue("postgres_url")
    return [f"{url}?campaign=batched", f"{url}?campaign=single"]


def test_a_batch_leaves_the_rows_one_at_a_time_leaves(two_specs: list[str | Path]) -> None:
    batched, single = map(opened, two_specs)
    try:
        for batch in rounds():
            for journal in (batched, single):
                for domain in ("a.example", "b.example"):
                    journal.fetch_due(domain, 1000, now=batch[0][2] + POLICY.maximum * 2)
            expired_before = sum(r[4] == "expired" for r in rows(single))
            applied, expired = batched.apply(batch)
            one_by_one = [single.record(rid, o, now=at) for rid, o, at in batch]
            assert applied == sum(one_by_one)
            assert expired == sum(r[4] == "expired" for r in rows(single)) - expired_before
            assert rows(batched) == rows(single)
        statuses = {r[4] for r in rows(batched)}
        assert {"delivered", "bounced", "expired", "suppressed", "not_rendered"} <= statuses
    finally:
        batched.close()
        single.close()
