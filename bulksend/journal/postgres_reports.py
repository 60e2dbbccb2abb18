"""The report side of the PostgreSQL journal (:class:`~bulksend.journal.protocol.JournalReader`):
counts, the tally's parts and the streamed export, as queries of one campaign's schema."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import psycopg

from bulksend.journal.feedback import COUNTS_SQL, FeedbackCounts, feedback_counts
from bulksend.journal.outcomes import Category, Status
from bulksend.journal.postgres_load import Cursor
from bulksend.journal.postgres_schema import WAITING_IN
from bulksend.journal.records import _STATE_COLUMNS, RecipientState, _state


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
        if not self._rows("read the schema", "SELECT to_regclass('feedback') IS NOT NULL")[0][0]:
            return {}  # a journal from before the table, not opened by a writer since
        return feedback_counts(self._rows("count feedback", COUNTS_SQL))

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
        self._check_owner(None)
        wanted = None if statuses is None else [str(s) for s in statuses]
        with self._tx("export outcomes"), self._db.cursor(name="states") as named:
            named.itersize = 1000
            named.execute(
                f"SELECT {_STATE_COLUMNS} FROM recipients"  # noqa: S608
                " WHERE %(all)s OR status = ANY(%(wanted)s) ORDER BY id",
                {"all": wanted is None, "wanted": wanted or []},
            )
            yield from map(_state, named)
