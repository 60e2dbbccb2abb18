"""Reading journals for reports: several shards' journals as one (:class:`JournalSet`) and a
lock-free look into a running journal (:class:`JournalPeek`).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bulksend.errors import JournalError
from bulksend.journal.exports import _Reports
from bulksend.journal.integrity import (
    _check_damage,
    _check_history,
    _damaged,
    _is_damage,
    _read_state,
)
from bulksend.journal.outcomes import Category, Status
from bulksend.journal.records import RecipientState
from bulksend.journal.schema import APPLICATION_ID, WAITING_SQL
from bulksend.journal.store import Journal, JournalInUse


class JournalSet(_Reports):
    """Several shards' journals read as one campaign (``report`` and ``status`` merge them).

    Every journal is opened for reading; counts add up, exports concatenate (ids are per
    shard: a recipient's position in its shard).
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        if not paths:
            raise ValueError("no journal given")
        self.journals: list[Journal] = []
        #: Journals read without their lock because a run holds them (a moment's snapshot).
        self.live: list[Path] = []
        try:
            for path in paths:
                try:
                    self.journals.append(Journal.open(path, None))
                except JournalInUse:
                    self.journals.append(Journal.open_readonly(path))
                    self.live.append(Path(path))
        except BaseException:
            self.close()
            raise
        self.path = ", ".join(str(j.path) for j in self.journals)

    def close(self) -> None:
        for journal in self.journals:
            journal.close()

    def __enter__(self) -> JournalSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def counts(self) -> dict[Status, int]:
        total = dict.fromkeys(Status, 0)
        for journal in self.journals:
            for status, n in journal.counts().items():
                total[status] += n
        return total

    def counts_by_domain(self) -> dict[str, dict[Status, int]]:
        # A domain lives in one shard, but merging keeps this right if it did not.
        total: dict[str, dict[Status, int]] = {}
        for journal in self.journals:
            for domain, counts in journal.counts_by_domain().items():
                merged = total.setdefault(domain, {})
                for status, n in counts.items():
                    merged[status] = merged.get(status, 0) + n
        return total

    def counts_by_category(
        self, statuses: Iterable[Status] = (Status.BOUNCED,)
    ) -> dict[Category, int]:
        wanted = tuple(statuses)
        total: dict[Category, int] = {}
        for journal in self.journals:
            for category, n in journal.counts_by_category(wanted).items():
                total[category] = total.get(category, 0) + n
        return total

    def in_doubt_total(self) -> int:
        return sum(j.in_doubt_total() for j in self.journals)

    def not_imported(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for journal in self.journals:
            for reason, n in journal.not_imported().items():
                total[reason] = total.get(reason, 0) + n
        return total

    def iter_states(self, statuses: Iterable[Status] | None = None) -> Iterator[RecipientState]:
        wanted = None if statuses is None else tuple(statuses)
        for journal in self.journals:
            yield from journal.iter_states(wanted)


class JournalPeek:
    """A read-only look into a journal, usable while another connection writes to it.

    WAL mode lets a reader see the last committed state without blocking the writer, and it
    takes no lock that a run would notice. ``bulksend status`` uses it too, since the running
    process holds the journal's lock.

    ``check`` refuses a damaged journal, or one that lost history, as :meth:`Journal.open`
    does (``quick_check``: a fraction of a second per million recipients); a run's own
    progress display leaves it off, since the run checked the journal when it opened it.
    """

    def __init__(self, path: Path, *, check: bool = False) -> None:
        self.path = path
        if not path.is_file():
            raise JournalError(f"there is no journal at {str(path)!r}")
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        where = f"journal {str(path)!r}"
        # The state file first: the run commits, then records, so the journal read after it
        # holds at least what it records.
        state = _read_state(path) if check else None
        try:
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read journal {str(path)!r}: {exc}") from None
        try:
            if app_id != APPLICATION_ID:
                raise JournalError(f"{str(path)!r} is not a bulksend journal")
            if check:
                _check_damage(self._db, where, thorough=False)
                _check_history(where, path, state, self._meta, fresh=False)
        except BaseException:
            self._db.close()
            raise

    def _query(self, sql: str, args: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            if _is_damage(exc):
                raise _damaged(f"journal {str(self.path)!r}", str(exc)) from None
            raise JournalError(f"cannot read journal {str(self.path)!r}: {exc}") from None

    def counts(self) -> dict[str, int]:
        """Recipients per status (every status present)."""
        counts = {s.value: 0 for s in Status}
        for status, n in self._query("SELECT status, count(*) FROM recipients GROUP BY status"):
            counts[str(status)] = int(n)
        return counts

    def import_complete(self) -> bool:
        """Whether the recipients import finished (a stopped one resumes on the next run)."""
        rows = self._query("SELECT value FROM meta WHERE key = 'import_complete'")
        return bool(rows) and rows[0][0] == "1"

    def waiting_by_domain(self) -> dict[str, int]:
        """Recipients still waiting (pending or in doubt) per domain."""
        rows = self._query(
            f"SELECT domain, count(*) FROM recipients WHERE {WAITING_SQL} GROUP BY domain"  # noqa: S608
        )
        return {str(d): int(n) for d, n in rows}

    def _meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return None if not rows else str(rows[0][0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JournalPeek:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
