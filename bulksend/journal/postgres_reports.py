"""The report side of the PostgreSQL journal (:class:`~bulksend.journal.protocol.JournalReader`):
counts, the tally's parts and the streamed export, as queries of one campaign's schema."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from bulksend.journal.feedback import (
    COUNTS_SQL,
    FeedbackCounts,
    FeedbackRow,
    feedback_counts,
    feedback_row,
    rows_sql,
)
from bulksend.journal.outcomes import Category, Status
from bulksend.journal.postgres_load import Cursor
from bulksend.journal.postgres_schema import WAITING_IN
from bulksend.journal.records import _STATE_COLUMNS, RecipientState, _state

_T = TypeVar("_T")


class PostgresReports:
    """The report queries of :class:`~bulksend.journal.postgres.PostgresJournal` (a mixin:
    it uses the store's connection, transactions and ownership guard)."""

    if TYPE_CHECKING:
        _db: psycopg.Connection[tuple[Any, ...]]

        def _check_owner(self, owner: object) -> None: ...

        def _tx(self, what: str) -> AbstractContextManager[Cursor]: ...

    def _rows(self, what: str, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._check_owner(None)
        with self._tx(what) as cur:
            cur.execute(query, args)
            return cur.fetchall()

    def counts(self) -> dict[Status, int]:
        """Recipients per status (every status present, zero included)."""
        counts = dict.fromkeys(Status, 0)
        for status, n in self._rows(
            "count recipients", "SELECT status, count(*) FROM recipients GROUP BY status"
        ):
            counts[Status(status)] = n
        return counts

    def counts_by_domain(self) -> dict[str, dict[Status, int]]:
        """Recipients per domain and status (only non-zero statuses)."""
        out: dict[str, dict[Status, int]] = {}
        for domain, status, n in self._rows(
            "count recipients per domain",
            "SELECT domain, status, count(*) FROM recipients GROUP BY domain, status",
        ):
            out.setdefault(domain, {})[Status(status)] = n
        return out

    def counts_by_category(
        self, statuses: Iterable[Status] = (Status.BOUNCED,)
    ) -> dict[Category, int]:
        """Recipients in ``statuses`` (default: bounced) per category of their last reply."""
        return {
            Category(c): n
            for c, n in self._rows(
                "count bounce categories",
                "SELECT coalesce(category, 'other'), count(*) FROM recipients"
                " WHERE status = ANY(%s) GROUP BY 1",
                ([str(s) for s in statuses],),
            )
        }

    def feedback_counts(self) -> FeedbackCounts:
        """Recipients with asynchronous bounces, complaints, unsubscribes (by category)."""
        if not self._has_feedback():
            return {}
        return feedback_counts(self._rows("count feedback", COUNTS_SQL))

    def _has_feedback(self) -> bool:
        # A journal from before the table, not opened by a writer since, has none yet.
        query = "SELECT to_regclass('feedback') IS NOT NULL"
        return bool(self._rows("read the schema", query)[0][0])

    def in_doubt_total(self) -> int:
        """How many sends may have been duplicated (in-doubt events, all recipients)."""
        query = "SELECT coalesce(sum(in_doubt), 0) FROM recipients"
        return int(self._rows("count in-doubt sends", query)[0][0])

    def waiting_by_domain(self) -> dict[str, int]:
        """Recipients still waiting (pending or in doubt, leased or not) per domain."""
        return {
            str(d): int(n)
            for d, n in self._rows(
                "count waiting recipients",
                f"SELECT domain, count(*) FROM recipients WHERE {WAITING_IN} GROUP BY domain",  # noqa: S608
            )
        }

    def import_finished(self) -> bool:
        """Whether the import is complete now (another worker's included): read again."""
        rows = self._rows("read meta", "SELECT value FROM meta WHERE key = 'import_complete'")
        return bool(rows) and rows[0][0] == "1"

    def not_imported(self) -> dict[str, int]:
        """Rows of the recipients file left out of the journal, by reason."""
        rows = self._rows("read meta", "SELECT value FROM meta WHERE key = 'not_imported'")
        return {} if not rows else {str(k): int(n) for k, n in json.loads(rows[0][0]).items()}

    def get(self, recipient_id: int) -> RecipientState | None:
        """One recipient's row."""
        rows = self._rows(
            "read a recipient",
            f"SELECT {_STATE_COLUMNS} FROM recipients WHERE id = %s",  # noqa: S608
            (recipient_id,),
        )
        return _state(rows[0]) if rows else None

    def iter_states(self, statuses: Iterable[Status] | None = None) -> Iterator[RecipientState]:
        """Every recipient's row in id order (streamed), optionally only some statuses."""
        wanted = _wanted("status")
        query = f"SELECT {_STATE_COLUMNS} FROM recipients WHERE {wanted} ORDER BY id"  # noqa: S608
        yield from self._stream("export outcomes", query, statuses, _state)

    def iter_feedback(self, statuses: Iterable[Status] | None = None) -> Iterator[FeedbackRow]:
        """Every feedback row by recipient id, then kind (streamed), optionally only those of
        recipients in some statuses; none in a journal from before the table."""
        if not self._has_feedback():
            return
        query = rows_sql(_wanted("r.status"))
        yield from self._stream("export feedback", query, statuses, feedback_row)

    def _stream(
        self,
        what: str,
        query: str,
        statuses: Iterable[Status] | None,
        row: Callable[[tuple[Any, ...]], _T],
    ) -> Iterator[_T]:
        # A named (server-side) cursor: the rows come a thousand at a time.
        self._check_owner(None)
        wanted = None if statuses is None else [str(s) for s in statuses]
        with self._tx(what), self._db.cursor(name="export") as named:
            named.itersize = 1000
            named.execute(query, {"all": wanted is None, "wanted": wanted or []})
            yield from map(row, named)


def _wanted(column: str) -> str:
    """The condition of :meth:`PostgresReports._stream`'s queries: ``column`` is one of the
    statuses wanted, or any."""
    return f"(%(all)s OR {column} = ANY(%(wanted)s))"
