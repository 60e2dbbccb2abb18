"""The recipients import into a SQLite journal (see "Import" in :mod:`bulksend.journal`).

The caller's thread reads the recipients and turns each batch into rows (merge data to JSON
with msgspec); a second thread writes the batches, one transaction each, so reading and
SQLite's work overlap. A batch is inserted as JSON, in one statement per chunk of rows that
SQLite runs without the GIL; at most one chunk waits between the threads: memory stays flat.
"""

from __future__ import annotations

import itertools
import json
import queue
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

import msgspec

from bulksend.journal.connection import Connection
from bulksend.journal.outcomes import Status
from bulksend.journal.records import ImportStats, NewRecipient, _encode_data
from bulksend.journal.schema import _ADDRESS_INDEX, _INDEXES

#: A chunk of rows as one JSON array of ``[id, address, domain, data, status, text]``:
#: SQLite inserts it in one statement, without the GIL, while the next chunk is read.
_INSERT_JSON: Final = """
INSERT INTO recipients (id, address, domain, data, status, next_attempt_at, updated_at, text)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]'), json_extract(value, '$[4]'),
       CASE WHEN json_extract(value, '$[4]') = 'pending' THEN ?2 END, ?2,
       json_extract(value, '$[5]')
FROM json_each(?1)
"""
#: SQLite's JSON functions end a string at a NUL: a chunk holding one is inserted row by row.
_INSERT: Final = (
    "INSERT INTO recipients (id, address, domain, data, status, next_attempt_at, updated_at,"
    " text) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

Row = tuple[Any, ...]

#: Rows per statement (and per item between the threads): a batch's transaction holds several.
CHUNK: Final = 10_000


def import_recipients(
    conn: Connection,
    recipients: Iterable[NewRecipient | str],
    *,
    now: float,
    batch_size: int,
    not_imported: Mapping[str, int] | None,
) -> ImportStats:
    """Write recipients in large transactions, resuming a partial import; build the indexes.

    See :meth:`Journal.import_recipients <bulksend.journal.store.Journal.import_recipients>`.
    Whatever reading raises stops the import: the batches read before are committed, the one
    being read is rolled back (a later import resumes after the last committed one).
    """
    position = int(conn.read("read meta", lambda: conn.meta("import_position")))
    it = iter(recipients)
    skipped = sum(1 for _ in zip(range(position), it, strict=False))
    written = 0
    with _BatchWriter(conn, now) as writer:
        while True:
            # One batch (one transaction), handed over CHUNK rows at a time.
            left = batch_size
            while True:
                rows = list(_import_rows(itertools.islice(it, min(left, CHUNK)), position + 1))
                position += len(rows)
                left -= len(rows)
                if left == 0 or len(rows) < CHUNK:
                    break
                writer.put(_Chunk(rows))
            written += batch_size - left
            last = left > 0
            writer.put(_Chunk(rows, position, dict(not_imported or {}) if last else None))
            if last:
                break
    duplicates = writer.duplicates
    # Into the main file: a journal copied without its -wal (a backup, a move) or one whose
    # -wal is lost keeps its recipients.
    conn.read(
        "checkpoint the import",
        lambda: conn.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall(),
    )
    return ImportStats(written - duplicates, duplicates, skipped)


class _Chunk:
    """Rows to insert; the last chunk of a batch has the import position after it (and the
    last of the import ``not_imported``)."""

    __slots__ = ("json", "not_imported", "position", "rows")

    def __init__(
        self,
        rows: list[Row],
        position: int | None = None,
        not_imported: dict[str, int] | None = None,
    ) -> None:
        encoded = _encode_rows(rows).decode()
        self.json = None if "\\u0000" in encoded else encoded
        self.rows = rows if self.json is None else None  # only one of them waits in memory
        self.position = position
        self.not_imported = not_imported


class _Stopped(Exception):
    """Reading stopped in the middle of a batch: roll it back."""


class _BatchWriter:
    """A thread that writes the import's batches, one transaction each.

    The first error stops the writing; :meth:`put` and leaving the ``with`` block raise it
    in the caller's thread. At most one chunk waits between the threads.
    """

    def __init__(self, conn: Connection, now: float) -> None:
        self._conn = conn
        self._now = now
        self._queue: queue.Queue[_Chunk | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self.duplicates = 0
        self._thread = threading.Thread(target=self._run, name="journal import", daemon=True)

    def __enter__(self) -> _BatchWriter:
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if exc is None and self._error is not None:
            raise self._error

    def put(self, chunk: _Chunk) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)

    def _run(self) -> None:
        try:
            while (chunk := self._queue.get()) is not None:
                self._write_batch(chunk)
        except _Stopped:
            pass
        except BaseException as e:
            self._error = e
            while self._queue.get() is not None:
                pass  # keep taking chunks: the reader never blocks on a dead writer

    def _write_batch(self, chunk: _Chunk) -> None:
        conn = self._conn
        with conn.write("import recipients") as db:
            while True:
                self._insert(db, chunk)
                if chunk.position is not None:
                    break
                next_chunk = self._queue.get()
                if next_chunk is None:
                    raise _Stopped
                chunk = next_chunk
            if conn.imported != chunk.position:
                conn.imported = chunk.position
                db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'import_position'",
                    (str(chunk.position),),
                )
            if chunk.not_imported is not None:
                self.duplicates = _build_indexes(db)
                left_out = chunk.not_imported
                left_out["duplicate"] = left_out.get("duplicate", 0) + self.duplicates
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('not_imported', ?)",
                    (json.dumps(left_out, sort_keys=True),),
                )
                db.execute("UPDATE meta SET value = '1' WHERE key = 'import_complete'")

    def _insert(self, db: sqlite3.Connection, chunk: _Chunk) -> None:
        now = self._now
        if chunk.json is not None:
            db.execute(_INSERT_JSON, (chunk.json, now))
        elif chunk.rows:
            db.executemany(
                _INSERT,
                [(*r[:5], now if r[4] == "pending" else None, now, r[5]) for r in chunk.rows],
            )


def _build_indexes(db: sqlite3.Connection) -> int:
    """Create the secondary indexes (inside the import's last transaction).

    Returns how many duplicate addresses were removed to make the address unique.
    """
    removed = 0
    db.execute("SAVEPOINT address_index")
    try:
        db.execute(_ADDRESS_INDEX)
    except sqlite3.IntegrityError:
        # Duplicates are rare: only then pay for finding them.
        db.execute("ROLLBACK TO address_index")
        db.execute("CREATE INDEX recipients_address_dups ON recipients (address, id)")
        removed = db.execute(
            "DELETE FROM recipients WHERE id NOT IN"
            " (SELECT min(id) FROM recipients GROUP BY address)"
        ).rowcount
        db.execute("DROP INDEX recipients_address_dups")
        db.execute(_ADDRESS_INDEX)
    db.execute("RELEASE address_index")
    for statement in _INDEXES:
        db.execute(statement)
    return removed


_encode_rows: Final = msgspec.json.Encoder().encode


def _import_rows(items: Iterable[NewRecipient | str], first_id: int) -> Iterator[Row]:
    # The import's inner loop: kept lean (1M rows must import in seconds).
    pending = Status.PENDING
    encode = _encode_data
    for rid, item in enumerate(items, first_id):
        r = NewRecipient(item) if type(item) is str else item
        assert isinstance(r, NewRecipient)
        address = r.address
        local, _, given_domain = address.rpartition("@")
        domain = given_domain.lower()
        if domain != given_domain:
            address = f"{local}@{domain}"
        data = None if r.data is None else encode(r.data)
        if r.status is pending:
            if not local or not domain:
                raise ValueError(
                    f"recipient {rid}: {r.address!r} has no domain; import it as invalid"
                )
            yield (rid, address, domain, data, "pending", r.reason or None)
        elif r.status in (Status.SUPPRESSED, Status.INVALID):
            yield (rid, r.address, domain, data, r.status.value, r.reason or None)
        else:
            raise ValueError(f"recipient {rid}: cannot import with status {r.status}")
