"""Recording what came back in a campaign's journal, while a run may hold it
(``bulksend inbound --journal``; see :mod:`bulksend.journal.feedback`).

How this works. A SQLite journal is written through a connection of its own, without the
journal's ``flock``: the lock keeps a second run out, and this writes only the ``feedback``
table, which no run writes. Each batch is one short ``BEGIN IMMEDIATE`` transaction, so
SQLite's own lock orders it with the run's commits (both connections wait on a busy
timeout). It counts no commit in ``meta`` or the state file: those guard the recipients'
history, which it leaves alone. A PostgreSQL journal is written through a connection of its
own too (:mod:`bulksend.journal.postgres_feedback`). Either way an event is recorded only
for a recipient of that journal, and an asynchronous bounce not for one that bounced inline
(its bounce is already counted).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from bulksend.errors import JournalError
from bulksend.journal.feedback import FeedbackEvent, FeedbackKind
from bulksend.journal.schema import ADD_FEEDBACK_TABLE, APPLICATION_ID, SCHEMA_VERSION
from bulksend.store_urls import is_postgres_url
from bulksend.text import storable

__all__ = [
    "FeedbackLog",
    "SqliteFeedbackLog",
    "open_feedback_log",
    "open_feedback_logs",
    "record_sql",
]

_T = TypeVar("_T")
_BUSY_MS: Final = 10_000
_DETAIL_LIMIT: Final = 500


def record_sql(param: str, least: str, greatest: str) -> str:
    """The upsert of one event, in a dialect's placeholder and two-argument min/max."""
    values = ", ".join([param] * 8)
    return f"""
INSERT INTO feedback (kind, category, status, code, source, detail, first_at, last_at,
                      recipient_id, count)
SELECT {values}, id, 1 FROM recipients
WHERE address = {param} AND NOT ({param} AND status = 'bounced')
ON CONFLICT (recipient_id, kind) DO UPDATE SET category = excluded.category,
    status = excluded.status, code = excluded.code, source = excluded.source,
    detail = excluded.detail, first_at = {least}(feedback.first_at, excluded.first_at),
    last_at = {greatest}(feedback.last_at, excluded.last_at), count = feedback.count + 1
"""  # noqa: S608


def record_args(event: FeedbackEvent) -> tuple[Any, ...]:
    """The parameters of :func:`record_sql` for ``event``."""
    return (
        event.kind.value,
        None if event.category is None else event.category.value,
        event.status,
        event.code,
        event.source,
        storable(event.detail, _DETAIL_LIMIT),
        event.at,
        event.at,
        event.address,
        event.kind is FeedbackKind.ASYNC_BOUNCE,
    )


class FeedbackLog(Protocol):
    """Where a campaign's feedback events are recorded: one journal."""

    @property
    def where(self) -> str: ...

    def record(self, events: Sequence[FeedbackEvent]) -> list[bool]:
        """Record ``events`` in one transaction; whether each was (a recipient of this
        journal, and not an asynchronous bounce of one that bounced inline)."""
        ...

    def close(self) -> None: ...


class SqliteFeedbackLog:
    """The feedback table of a SQLite journal (see the module's comment)."""

    _SQL: Final = record_sql("?", "min", "max")

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise JournalError(f"there is no journal at {str(path)!r}")
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise JournalError(f"cannot open journal {str(path)!r}: {e}") from None
        try:
            self._db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
            (app_id,) = self._db.execute("PRAGMA application_id").fetchone()
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if app_id != APPLICATION_ID or version != SCHEMA_VERSION:
                raise JournalError(f"{self.where} is not a bulksend journal of this version")
            self._transaction(lambda: self._db.execute(ADD_FEEDBACK_TABLE))
        except BaseException:
            self._db.close()
            raise

    @property
    def where(self) -> str:
        return f"journal {str(self.path)!r}"

    def _transaction(self, body: Callable[[], _T]) -> _T:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = body()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise JournalError(f"{self.where}: cannot record feedback: {e}") from None
        return result

    def record(self, events: Sequence[FeedbackEvent]) -> list[bool]:
        return self._transaction(
            lambda: [self._db.execute(self._SQL, record_args(e)).rowcount > 0 for e in events]
        )

    def close(self) -> None:
        self._db.close()


def open_feedback_log(spec: str | Path) -> FeedbackLog:
    """The feedback log of a journal: a SQLite file, or a PostgreSQL journal's URL.

    Raises:
        JournalError: no such journal, not a journal, or the database cannot be reached.
    """
    if isinstance(spec, str) and is_postgres_url(spec):
        from bulksend.journal.postgres_feedback import PostgresFeedbackLog  # noqa: PLC0415

        return PostgresFeedbackLog(spec)
    return SqliteFeedbackLog(Path(spec))


def open_feedback_logs(
    specs: Iterable[str | Path], closing: contextlib.ExitStack
) -> list[FeedbackLog]:
    """The feedback logs of several journals, each closed by ``closing``."""
    logs = []
    for spec in specs:
        log = open_feedback_log(spec)
        closing.callback(log.close)
        logs.append(log)
    return logs
