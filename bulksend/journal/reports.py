"""Reports from journals: the tally, the CSV and JSON Lines exports (functions over
recipients' rows), the ``report`` table, several shards' journals read as one
(:class:`JournalSet`) and a lock-free look into a running journal (:class:`JournalPeek`).

Everything here reads through :class:`~bulksend.journal.protocol.JournalReader`, so it
works for any journal backend, and for a :class:`JournalSet`.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, TextIO
from urllib.parse import quote

from bulksend.errors import JournalError
from bulksend.journal.backend import AnyJournal, open_journal
from bulksend.journal.feedback import FeedbackCounts, FeedbackKind, FeedbackRow
from bulksend.journal.integrity import (
    _check_damage,
    _check_history,
    _damaged,
    _is_damage,
    _read_state,
)
from bulksend.journal.opening import JournalInUse
from bulksend.journal.outcomes import WAITING, Category, Status
from bulksend.journal.protocol import JournalReader
from bulksend.journal.records import CampaignTally, RecipientState, shard_placement
from bulksend.journal.schema import APPLICATION_ID, WAITING_SQL
from bulksend.journal.store import Journal
from bulksend.store_urls import is_postgres_url
from bulksend.text import write_table

#: The fields of an exported recipient, in order (the CSV header).
EXPORT_FIELDS: Final = (
    "id",
    "address",
    "status",
    "code",
    "enhanced_code",
    "text",
    "category",
    "attempts",
    "in_doubt",
    "time",
)


def campaign_tally(journal: JournalReader) -> CampaignTally:
    """Where the campaign stands (see :class:`CampaignTally`)."""
    return CampaignTally(journal.counts(), journal.not_imported(), journal.in_doubt_total())


#: The fields of an exported feedback row (``report --feedback``), in order.
FEEDBACK_EXPORT_FIELDS: Final = (
    "id",
    "address",
    "domain",
    "status",
    "kind",
    "category",
    "enhanced_code",
    "code",
    "source",
    "detail",
    "first_time",
    "last_time",
    "count",
)


class Exported(Protocol):
    """A row an export writes: a :class:`RecipientState` or a :class:`FeedbackRow`."""

    def as_export(self) -> dict[str, Any]: ...


def export_csv(
    rows: Iterable[Exported], stream: TextIO, fields: Sequence[str] = EXPORT_FIELDS
) -> int:
    """Write rows' ``fields`` (recipients' outcomes by default) as CSV, header first, to a
    text stream; returns the row count.

    Open the stream with ``newline=""``. Fields starting with ``= + - @`` get a ``'``
    prefix so that spreadsheets do not run remote reply text as formulas.
    """
    writer = csv.writer(stream)
    writer.writerow(fields)
    n = 0
    for exported in rows:
        row = exported.as_export()
        writer.writerow([_csv_safe(row[k]) for k in fields])
        n += 1
    return n


def export_jsonl(rows: Iterable[Exported], stream: TextIO) -> int:
    """Write rows (recipients' outcomes, feedback rows) as JSON Lines to a text stream;
    returns the row count."""
    n = 0
    for exported in rows:
        stream.write(json.dumps(exported.as_export(), ensure_ascii=False) + "\n")
        n += 1
    return n


def _csv_safe(value: object) -> object:
    # Reply text comes from remote servers: keep a spreadsheet from reading it as a formula.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def rows_line(tally: CampaignTally) -> str:
    """The recipients file's rows: how many, to send, rejected."""
    return (
        f"recipients file: {tally.rows:,} rows, {tally.rows - tally.rejected:,} to send, "
        f"{tally.rejected:,} rejected"
    )


def write_report(journal: JournalReader, out: TextIO, *, top_domains: int = 20) -> None:
    """The ``report --format table`` text: statuses, categories and the largest domains."""
    counted = campaign_tally(journal)
    total = counted.rows
    out.write(f"campaign journal {journal.path}\n\n")
    rows = [["status", "recipients", "share"]]
    for state, n in counted.by_state().items():
        rows.append(
            [state.replace("_", " "), f"{n:,}", f"{100 * n / total:.1f}%" if total else "-"]
        )
    rows.append(["total", f"{total:,}", ""])
    write_table(rows, out, indent="")
    out.write(f"\n{rows_line(counted)}\n")
    out.write(f"sends in doubt (possibly duplicated): {counted.in_doubt_sends:,}\n")
    for title, statuses in (
        ("bounces by category", [Status.BOUNCED]),
        ("expired by category of the last reply", [Status.EXPIRED]),
    ):
        categories = journal.counts_by_category(statuses)
        if categories:
            out.write(f"\n{title}\n")
            ranked = sorted(categories.items(), key=lambda x: -x[1])
            write_table(
                [["category", "recipients"]] + [[c.value, f"{n:,}"] for c, n in ranked],
                out,
                indent="",
            )
    _write_feedback(counted.statuses, journal.feedback_counts(), out)
    by_domain = journal.counts_by_domain()
    if by_domain and top_domains:
        _write_domains(by_domain, out, top_domains)


#: Gmail's and Yahoo's bulk-sender rules: keep the complaint rate under this.
COMPLAINT_RATE_LIMIT: Final = 0.003


def _write_feedback(counts: Mapping[Status, int], feedback: FeedbackCounts, out: TextIO) -> None:
    """What came back: inline and asynchronous bounces, complaints, unsubscribes, the
    complaint rate; and the asynchronous bounces by category."""
    by_kind = dict.fromkeys(FeedbackKind, 0)
    later: dict[Category, int] = {}
    for (kind, category), n in feedback.items():
        by_kind[kind] += n
        if kind is FeedbackKind.ASYNC_BOUNCE:
            later[category or Category.OTHER] = later.get(category or Category.OTHER, 0) + n
    delivered = counts.get(Status.DELIVERED, 0)
    out.write("\nwhat came back (bulksend inbound, the unsubscribe endpoint)\n")
    rows = [
        ["bounced inline (5xx during the run)", f"{counts.get(Status.BOUNCED, 0):,}"],
        ["bounced later (DSN after delivery)", f"{by_kind[FeedbackKind.ASYNC_BOUNCE]:,}"],
        ["complaints (ARF)", f"{by_kind[FeedbackKind.COMPLAINT]:,}"],
        ["unsubscribes", f"{by_kind[FeedbackKind.UNSUBSCRIBE]:,}"],
    ]
    write_table(rows, out, indent="")
    if delivered:
        rate = by_kind[FeedbackKind.COMPLAINT] / delivered
        over = " (over the 0.3% that Gmail and Yahoo allow)" if rate > COMPLAINT_RATE_LIMIT else ""
        out.write(f"complaint rate: {100 * rate:.2f}% of {delivered:,} delivered{over}\n")
    if later:
        out.write("\nlater bounces by category\n")
        ranked = sorted(later.items(), key=lambda x: -x[1])
        write_table(
            [["category", "recipients"]] + [[c.value, f"{n:,}"] for c, n in ranked],
            out,
            indent="",
        )


def _write_domains(by_domain: dict[str, dict[Status, int]], out: TextIO, top_domains: int) -> None:
    largest = sorted(by_domain.items(), key=lambda x: (-sum(x[1].values()), x[0]))
    shown = largest[:top_domains]
    more = len(largest) - len(shown)
    out.write(f"\ndomains ({len(by_domain):,}; the largest {len(shown)})\n")
    cols = [Status.DELIVERED, Status.BOUNCED, Status.EXPIRED]
    rows = [["domain", "recipients", "delivered", "bounced", "expired", "waiting", "other"]]
    for domain, c in shown:
        n = sum(c.values())
        waiting = sum(c.get(s, 0) for s in WAITING)
        other = n - waiting - sum(c.get(s, 0) for s in cols)
        rows.append(
            [domain, f"{n:,}", *(f"{c.get(s, 0):,}" for s in cols), f"{waiting:,}", f"{other:,}"]
        )
    write_table(rows, out, indent="")
    if more:
        out.write(f"... and {more:,} more domains\n")


class JournalSet:
    """Several shards' journals read as one campaign (``report`` and ``status`` merge them).

    Every journal is opened for reading; counts add up, exports concatenate, one shard after
    the other (ids are per shard: a recipient's position in its shard).
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        """Open ``paths``: SQLite files or PostgreSQL journals' URLs."""
        if not paths:
            raise ValueError("no journal given")
        self.journals: list[AnyJournal] = []
        #: Journals read without their lock because a run holds them (a moment's snapshot).
        self.live: list[Path] = []
        try:
            for path in paths:
                if is_postgres_url(path):  # PostgreSQL: readers never wait for a run
                    self.journals.append(open_journal(path, None))
                    continue
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

    def feedback_counts(self) -> FeedbackCounts:
        total: FeedbackCounts = {}
        for journal in self.journals:
            for key, n in journal.feedback_counts().items():
                total[key] = total.get(key, 0) + n
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

    def iter_feedback(self, statuses: Iterable[Status] | None = None) -> Iterator[FeedbackRow]:
        wanted = None if statuses is None else tuple(statuses)
        for journal in self.journals:
            yield from journal.iter_feedback(wanted)


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

    def counts(self) -> dict[Status, int]:
        """Recipients per status (every status present, zero included)."""
        counts = dict.fromkeys(Status, 0)
        for status, n in self._query("SELECT status, count(*) FROM recipients GROUP BY status"):
            counts[Status(status)] = int(n)
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

    def placement(self) -> dict[str, int] | None:
        """What :meth:`Journal.placement <bulksend.journal.store.Journal.placement>` says."""
        return shard_placement(
            self._meta("shard_placement"), int(self._meta("import_position") or 0)
        )

    def _meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return None if not rows else str(rows[0][0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JournalPeek:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
