"""The feedback table of a PostgreSQL journal, written by ``bulksend inbound`` while workers
run (see :mod:`bulksend.journal.feedback_log`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final

import psycopg
from psycopg import sql

from bulksend.errors import JournalError
from bulksend.journal.feedback import FeedbackEvent
from bulksend.journal.feedback_log import record_args, record_sql
from bulksend.journal.postgres import connect
from bulksend.journal.postgres_load import Cursor
from bulksend.journal.postgres_schema import FEEDBACK_TABLE, NoJournal, parse_url
from bulksend.text import first_line

__all__ = ["PostgresFeedbackLog"]

_SQL: Final = record_sql("%s", "least", "greatest")


class PostgresFeedbackLog:
    """A connection of its own to one campaign's schema; a transaction per batch."""

    def __init__(self, url: str) -> None:
        self.location = parse_url(url)
        try:
            self._db = connect(self.location)
        except psycopg.Error as e:
            raise JournalError(
                f"cannot connect to the PostgreSQL journal {self.location}: {first_line(e)}"
            ) from None
        try:
            with self._tx("open its feedback table") as cur:
                schema = self.location.schema
                cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.recipients",))
                row = cur.fetchone()
                if row is None or not row[0]:
                    raise NoJournal(f"there is no journal at {self.location}")
                cur.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
                cur.execute(FEEDBACK_TABLE)
        except BaseException:
            self._db.close()
            raise

    @property
    def where(self) -> str:
        return f"journal {self.location}"

    @contextmanager
    def _tx(self, what: str) -> Iterator[Cursor]:
        try:
            with self._db.transaction(), self._db.cursor() as cur:
                yield cur
        except psycopg.Error as e:
            raise JournalError(f"{self.location}: cannot {what}: {first_line(e)}") from None

    def record(self, events: Sequence[FeedbackEvent]) -> list[bool]:
        recorded = []
        with self._tx("record feedback") as cur:
            for event in events:
                cur.execute(_SQL, record_args(event))
                recorded.append(cur.rowcount > 0)
        return recorded

    def close(self) -> None:
        self._db.close()
